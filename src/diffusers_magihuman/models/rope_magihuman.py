# Copyright 2026 The diffusers-magihuman Authors. All rights reserved.
#
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#
#     http://www.apache.org/licenses/LICENSE-2.0
#
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.
"""The coordinate RoPE of the MagiHuman DiT (the original's `ElementWiseFourierEmbed`)."""

import torch
import torch.nn as nn


def apply_magihuman_rotary_emb(
    hidden_states: torch.Tensor, freqs_cos: torch.Tensor, freqs_sin: torch.Tensor
) -> torch.Tensor:
    r"""
    Rotates the first `2 * freqs_cos.shape[-1]` dims of every head with split-halves pairing: for `i < R/2` the
    pair is `(x_i, x_{i+R/2})`. The remaining head dims pass through unchanged.

    Args:
        hidden_states (`torch.Tensor` of shape `(batch_size, seq_len, heads, head_dim)`): fp32 queries or keys.
        freqs_cos, freqs_sin (`torch.Tensor` of shape `(batch_size, seq_len, R/2)`): the RoPE table halves.
    """
    half = freqs_cos.shape[-1]
    cos, sin = freqs_cos.unsqueeze(-2), freqs_sin.unsqueeze(-2)
    x1, x2 = hidden_states[..., :half], hidden_states[..., half : 2 * half]
    # `x_rot * cat(cos, cos) + cat(-x2, x1) * cat(sin, sin)` written per half, without the doubled tables and the
    # rotated copy: `a + (-b) * c` and `a - b * c` round identically, so this is bit-exact and does fewer passes.
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin, hidden_states[..., 2 * half :]], dim=-1)


class MagiHumanRotaryPosEmbed(nn.Module):
    r"""
    Coordinate RoPE of the original (`ElementWiseFourierEmbed`): `head_dim // 8` bands per axis for the three axes
    `(t, h, w)`, so `3/4` of each head is rotated. Angle `theta[a, k] = (pos_a - centre_a) * scale_a * band_k` with
    `scale = (ref - 1)/(size - 1)` (1 when `ref = size = 1`) and `centre = (size - 1)/2` for `h`, `w` (0 for `t`).

    The bands `theta^(-k/B)` are a persistent buffer (`rope.bands`), loaded from the checkpoint like upstream.

    Args:
        head_dim (`int`): attention head dim `D` (must be divisible by 8).
        theta (`float`, defaults to `10000.0`).
    """

    def __init__(self, head_dim: int, theta: float = 10000.0):
        super().__init__()
        num_bands = head_dim // 8
        exponent = torch.arange(0, num_bands, dtype=torch.int64).to(torch.float32) / num_bands
        self.register_buffer("bands", 1.0 / (theta**exponent), persistent=True)

    def forward(self, coords: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        r"""
        Args:
            coords (`torch.Tensor` of shape `(..., 9)`): see [`get_magihuman_coords`].

        Returns:
            `(freqs_cos, freqs_sin)`, each `torch.Tensor` of shape `(..., 3 * head_dim // 8)` in fp32: axes `t, h, w`
            with the band index fastest.
        """
        coords = coords.float()
        positions, sizes, refs = coords[..., :3], coords[..., 3:6], coords[..., 6:9]
        scales = (refs - 1) / (sizes - 1)
        scales = torch.where((refs == 1) & (sizes == 1), torch.ones_like(scales), scales)
        centers = (sizes - 1) / 2
        centers = torch.cat([torch.zeros_like(centers[..., :1]), centers[..., 1:]], dim=-1)  # time is not centred
        positions = positions - centers
        proj = positions.unsqueeze(-1) * scales.unsqueeze(-1) * self.bands.float()
        return proj.cos().flatten(-2), proj.sin().flatten(-2)
