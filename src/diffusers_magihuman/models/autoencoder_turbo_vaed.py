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
"""The daVinci-MagiHuman Turbo-VAE: a distilled, decode-only replacement for the Wan2.2 VAE decoder.

It maps normalised Wan2.2 latents `[B, 48, T, h, w]` to RGB video `[B, 3, 4(T-1)+1, 16h, 16w]` in [-1, 1] (not
clamped). The module tree under `decoder.` mirrors upstream's `TurboVAED.decoder`, so an original checkpoint loads
after stripping its `module.` prefix (see `conversion/convert_turbo_vae_to_diffusers.py`). Behaviour follows the
original decoder, quirks included.
"""

import contextlib
import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.autoencoders.vae import AutoencoderMixin, DecoderOutput
from diffusers.models.modeling_utils import ModelMixin
from diffusers.utils import logging
from diffusers.utils.accelerate_utils import apply_forward_hook

from ..constants import WAN22_LATENTS_MEAN, WAN22_LATENTS_STD


logger = logging.get_logger(__name__)

# Working set of the fused decode path per element of its largest activation: model-dtype tensors (x this many bytes
# per element of the dtype) plus float32 extras (bytes). See `AutoencoderTurboVAED._estimate_window_bytes`.
FUSED_BYTES_PER_MODEL_BYTE = 4
FUSED_EXTRA_BYTES = 2


def _frames_to_batch(x: torch.Tensor) -> torch.Tensor:
    """`[B, C, T, H, W]` -> `[B*T, C, H, W]` (frame-major, as upstream's `b c t h w -> (b t) c h w`)."""
    b, c, t, h, w = x.shape
    return x.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w)


def _batch_to_frames(x: torch.Tensor, batch_size: int) -> torch.Tensor:
    """`[B*T, C, H, W]` -> `[B, C, T, H, W]`."""
    bt, c, h, w = x.shape
    return x.reshape(batch_size, bt // batch_size, c, h, w).permute(0, 2, 1, 3, 4)


def _replicate_pad_time(x: torch.Tensor, pad: int) -> torch.Tensor:
    """Pads `[B, C, T, H, W]` in time with `pad` copies of the first frame in front and of the last frame behind."""
    if pad == 0:
        return x
    return torch.cat([x[:, :, :1].expand(-1, -1, pad, -1, -1), x, x[:, :, -1:].expand(-1, -1, pad, -1, -1)], dim=2)


def _memory_format_of(x: torch.Tensor) -> torch.memory_format:
    """`torch.channels_last_3d` / `torch.channels_last` when the channels of `x` are innermost in memory (also for a
    slice of such a tensor, e.g. a window without its first frame), else contiguous."""
    if x.ndim in (4, 5) and x.shape[1] > 1 and x.stride(1) == 1 and not x.is_contiguous():
        return torch.channels_last_3d if x.ndim == 5 else torch.channels_last
    return torch.contiguous_format


def _padded_time_buffer(x: torch.Tensor, pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """An uninitialised `[B, C, T + 2 pad, H, W]` buffer in the memory format of `x` and its middle `T` frames."""
    b, c, t, h, w = x.shape
    out = torch.empty((b, c, t + 2 * pad, h, w), dtype=x.dtype, device=x.device, memory_format=_memory_format_of(x))
    return out, (out[:, :, pad : pad + t] if pad else out)


def _fill_time_edges(out: torch.Tensor, pad: int) -> torch.Tensor:
    """Replicate padding in time in place: copies frame `pad` into the first `pad` frames and the last real frame
    into the last `pad` frames of `out`."""
    if pad:
        out[:, :, :pad] = out[:, :, pad : pad + 1]
        out[:, :, -pad:] = out[:, :, -pad - 1 : -pad]
    return out


def _replicate_pad_time_keep_layout(x: torch.Tensor, pad: int) -> torch.Tensor:
    """[`_replicate_pad_time`] that keeps the memory format of `x` (a `torch.cat` of expanded views may not)."""
    if pad == 0:
        return x
    out, middle = _padded_time_buffer(x, pad)
    middle.copy_(x)
    return _fill_time_edges(out, pad)


def _fused_norm_act_pad(x: torch.Tensor, eps: float, activation: str | None, pad: int) -> torch.Tensor:
    r"""`pad_time(act(rms_norm(x)))` with few passes over memory (the fast decode path).

    The reference path materialises `x.float()`, its square, the float32 product and its bf16 cast, the activation
    and the padded copy (about 8 passes over float32/bf16 copies of `x`). Here: one float32 reduction that reads `x`
    once (`vector_norm` with `dtype=float32` accumulates in float32), one multiply that computes in float32 and
    rounds straight into the padded output buffer, one in-place activation and a copy of the `pad` edge frames.

    The product and its rounding are the reference's (`mul` promotes to float32, the `out=` cast rounds to the
    model dtype); the mean of squares is `||x||^2 / C` instead of `mean(x^2)`: the same sum in a different order plus
    one square root and square, so it differs by float32 rounding (~1e-7 relative), below bf16 noise.

    Args:
        x (`torch.Tensor`): `[B, C, T, H, W]`, any memory format (kept).
        eps (`float`): RMS norm epsilon.
        activation (`str`, *optional*): `"silu"`, `"relu"` or None.
        pad (`int`): Replicated frames on each side in time.

    Returns:
        `torch.Tensor`: `[B, C, T + 2 pad, H, W]` in the dtype and memory format of `x`.
    """
    norm = torch.linalg.vector_norm(x, 2, dim=1, keepdim=True, dtype=torch.float32)
    inv_rms = norm.square_().div_(x.shape[1]).add_(eps).rsqrt_()
    out, middle = _padded_time_buffer(x, pad)
    torch.mul(x, inv_rms, out=middle)
    if activation == "silu":
        F.silu(middle, inplace=True)
    elif activation == "relu":
        F.relu_(middle)
    return _fill_time_edges(out, pad)


def unpatchify(x: torch.Tensor, patch_size: int) -> torch.Tensor:
    r"""Folds channel patches back into space, like Wan's `b (c r q) t h w -> b c t (h q) (w r)`.

    Channel `c * p * p + pw * p + ph` goes to output pixel `(p * y + ph, p * x + pw)`.

    Args:
        x (`torch.Tensor`): `[B, C * p * p, T, H, W]`.
        patch_size (`int`): `p`.

    Returns:
        `torch.Tensor`: `[B, C, T, H * p, W * p]`.
    """
    if patch_size == 1:
        return x
    b, cpp, t, h, w = x.shape
    c = cpp // (patch_size * patch_size)
    x = x.reshape(b, c, patch_size, patch_size, t, h, w)  # [b, c, pw, ph, t, h, w]
    x = x.permute(0, 1, 4, 5, 3, 6, 2)  # [b, c, t, h, ph, w, pw]
    return x.reshape(b, c, t, h * patch_size, w * patch_size)


class TurboVAEDRMSNorm(nn.Module):
    r"""Channel RMS norm without a weight: `x * rsqrt(mean_c(x^2) + eps)` over dim 1.

    The mean of squares is taken in float32; the product is formed in float32 (type promotion) and cast back to the
    input dtype, as upstream does.
    """

    def __init__(self, eps: float) -> None:
        super().__init__()
        self.eps = eps

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        variance = hidden_states.float().pow(2).mean(1, keepdim=True)
        return (hidden_states * torch.rsqrt(variance + self.eps)).to(hidden_states.dtype)


class TurboVAEDConv3d(nn.Module):
    r"""3D convolution with replicate padding in time and zero padding in space (upstream `TurboVAEDCausalConv3d`).

    Despite upstream's name it is not causal: `(kt - 1) // 2` copies of the first / last frame are added on each
    side in time, so `T` is preserved.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int | tuple[int, int, int] = 3) -> None:
        super().__init__()
        if isinstance(kernel_size, int):
            kernel_size = (kernel_size, kernel_size, kernel_size)
        self.kernel_size = kernel_size
        self.conv = nn.Conv3d(
            in_channels, out_channels, kernel_size, padding=(0, kernel_size[1] // 2, kernel_size[2] // 2)
        )

    @property
    def time_pad(self) -> int:
        return (self.kernel_size[0] - 1) // 2

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        hidden_states = _replicate_pad_time(hidden_states, self.time_pad)
        return self.conv(hidden_states)

    def forward_padded(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """The convolution of an input that is already replicate-padded by `time_pad` frames in time."""
        return self.conv(hidden_states)


class TurboVAEDDepthwiseSeparableConv3d(nn.Module):
    r"""Depthwise (groups = C) k×k×k convolution followed by a pointwise 1×1×1 convolution (`decoder_is_dw_conv`).

    Time is replicate-padded first, as in [`TurboVAEDConv3d`].
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3) -> None:
        super().__init__()
        self.kernel_size = (kernel_size, kernel_size, kernel_size)
        self.depthwise_conv = nn.Conv3d(
            in_channels,
            in_channels,
            self.kernel_size,
            groups=in_channels,
            padding=(0, kernel_size // 2, kernel_size // 2),
        )
        self.pointwise_conv = nn.Conv3d(in_channels, out_channels, kernel_size=1)

    @property
    def time_pad(self) -> int:
        return (self.kernel_size[0] - 1) // 2

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        hidden_states = _replicate_pad_time(hidden_states, self.time_pad)
        return self.pointwise_conv(self.depthwise_conv(hidden_states))

    def forward_padded(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """The convolutions of an input that is already replicate-padded by `time_pad` frames in time."""
        return self.pointwise_conv(self.depthwise_conv(hidden_states))


class TurboVAEDResnetBlock3d(nn.Module):
    r"""Pre-norm residual block: `RMS -> act1 -> conv1 -> RMS -> SiLU -> conv2 (+ RMS -> 1×1×1 shortcut)`.

    Args:
        in_channels (`int`): Input channels.
        out_channels (`int`, *optional*): Output channels (default `in_channels`).
        eps (`float`): Epsilon of the shortcut norm (`resnet_norm_eps`); the two main norms use 1e-8 (upstream).
        first_activation (`str`): `"silu"` or `"relu"` for act1. Upstream switches act1 to ReLU in the resnets of
            up-blocks that own an upsampler (`is_upsampler_modified`).
        is_dw_conv (`bool`): Use depthwise-separable convolutions of size `dw_kernel_size`, else dense 3×3×3.
        dw_kernel_size (`int`): Kernel size of the depthwise convolutions.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int | None = None,
        eps: float = 1e-6,
        first_activation: str = "silu",
        is_dw_conv: bool = False,
        dw_kernel_size: int = 3,
    ) -> None:
        super().__init__()
        out_channels = out_channels or in_channels
        if first_activation not in ("silu", "relu"):
            raise ValueError(f"first_activation must be 'silu' or 'relu', got {first_activation!r}.")

        conv_cls = TurboVAEDDepthwiseSeparableConv3d if is_dw_conv else TurboVAEDConv3d
        kernel_size = dw_kernel_size if is_dw_conv else 3

        self.norm1 = TurboVAEDRMSNorm(1e-8)
        self.act1 = nn.ReLU() if first_activation == "relu" else nn.SiLU()
        self.conv1 = conv_cls(in_channels, out_channels, kernel_size)
        self.norm2 = TurboVAEDRMSNorm(1e-8)
        self.act2 = nn.SiLU()
        self.conv2 = conv_cls(out_channels, out_channels, kernel_size)

        self.norm3 = None
        self.conv_shortcut = None
        if in_channels != out_channels:
            self.norm3 = TurboVAEDRMSNorm(eps)
            self.conv_shortcut = conv_cls(in_channels, out_channels, 1)
        # Set by `AutoencoderTurboVAED.set_decode_options`: fused norm/activation/padding, fewer temporaries.
        self.fused = False
        self._first_activation = first_activation

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        if self.fused:
            return self._forward_fused(inputs)
        hidden_states = self.conv1(self.act1(self.norm1(inputs)))
        # dropout is 0 upstream and omitted here
        hidden_states = self.conv2(self.act2(self.norm2(hidden_states)))
        if self.conv_shortcut is not None:
            inputs = self.conv_shortcut(self.norm3(inputs))
        return hidden_states + inputs

    def _forward_fused(self, inputs: torch.Tensor) -> torch.Tensor:
        # Same operations as `forward`; each temporary is released before the next convolution runs, so the
        # working set is about the input, one padded buffer and one convolution output.
        padded = _fused_norm_act_pad(inputs, self.norm1.eps, self._first_activation, self.conv1.time_pad)
        hidden_states = self.conv1.forward_padded(padded)
        del padded
        padded = _fused_norm_act_pad(hidden_states, self.norm2.eps, "silu", self.conv2.time_pad)
        del hidden_states
        hidden_states = self.conv2.forward_padded(padded)
        del padded
        if self.conv_shortcut is not None:
            shortcut = _fused_norm_act_pad(inputs, self.norm3.eps, None, self.conv_shortcut.time_pad)
            inputs = self.conv_shortcut.forward_padded(shortcut)
            del shortcut
        return hidden_states.add_(inputs)


class TurboVAEDUpsample2x(nn.Module):
    r"""Nearest-exact 2× spatial upsampling of `[N, C, H, W]`, computed in float32 and cast back (upstream
    `WanUpsample`); the fused path skips the float32 round trip, which cannot change a copied value."""

    def __init__(self) -> None:
        super().__init__()
        self.fused = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fused:
            # Nearest upsampling only copies values (at scale 2, "nearest-exact" output pixel i reads input i // 2), so
            # one broadcast copy in the model dtype gives the same result without the float32 round trip. It keeps the
            # memory format of `x` and, being a plain copy, has no 2^31-element limit (a 1080p window upsamples
            # 2.4e9 values in one call).
            n, c, h, w = x.shape
            out = torch.empty((n, c, 2 * h, 2 * w), dtype=x.dtype, device=x.device, memory_format=_memory_format_of(x))
            out.view(n, c, h, 2, w, 2).copy_(x[:, :, :, None, :, None].expand(n, c, h, 2, w, 2))
            return out
        return F.interpolate(x.float(), scale_factor=(2.0, 2.0), mode="nearest-exact").to(x.dtype)


class TurboVAEDResample(nn.Module):
    r"""Upsampler of an up-block (upstream `WanResample`).

    * `"upsample3d"`: `time_conv` (3,1,1) C -> 2C, channel halves interleaved in time (`T -> 2T`, or `2T - 1` on the
      first chunk, which drops output frame 0), then per frame 2× nearest + Conv2d 3×3.
    * `"upsample2d"`: only the per-frame spatial part.

    Args:
        dim (`int`): Channels (kept).
        mode (`str`): `"upsample2d"` or `"upsample3d"`.
    """

    def __init__(self, dim: int, mode: str) -> None:
        super().__init__()
        if mode not in ("upsample2d", "upsample3d"):
            raise ValueError(f"mode must be 'upsample2d' or 'upsample3d', got {mode!r}.")
        self.mode = mode
        # Sequential so that the conv is `resample.1`, the original checkpoint key.
        self.resample = nn.Sequential(TurboVAEDUpsample2x(), nn.Conv2d(dim, dim, 3, padding=1))
        self.time_conv = TurboVAEDConv3d(dim, dim * 2, (3, 1, 1)) if mode == "upsample3d" else None
        self.fused = False

    def forward(self, x: torch.Tensor, is_first_chunk: bool = True) -> torch.Tensor:
        if self.fused:
            return self._forward_fused(x, is_first_chunk)
        b, c, t, h, w = x.shape
        if self.time_conv is not None:
            x = self.time_conv(x)
            # `b (n c) t h w -> b c (t n) h w`: out[:, c, 2t + n] = conv[:, n * C + c, t]
            x = x.reshape(b, 2, c, t, h, w).permute(0, 2, 3, 1, 4, 5).reshape(b, c, 2 * t, h, w)
            if is_first_chunk:
                x = x[:, :, 1:]
        return _batch_to_frames(self.resample(_frames_to_batch(x)), b)

    def _forward_fused(self, x: torch.Tensor, is_first_chunk: bool) -> torch.Tensor:
        # As `forward`, keeping the memory format of `x` (channels-last stays channels-last, where the per-frame
        # reshapes are views instead of copies).
        b, c, t, h, w = x.shape
        memory_format = _memory_format_of(x)
        if self.time_conv is not None:
            y = self.time_conv.forward_padded(_replicate_pad_time_keep_layout(x, self.time_conv.time_pad))
            x = torch.empty((b, c, 2 * t, h, w), dtype=y.dtype, device=y.device, memory_format=memory_format)
            x[:, :, 0::2] = y[:, :c]  # out[:, c, 2t + n] = conv[:, n * C + c, t]
            x[:, :, 1::2] = y[:, c:]
            del y
            if is_first_chunk:
                x = x[:, :, 1:]
        frames = x.permute(0, 2, 1, 3, 4).reshape(-1, c, h, w)
        if memory_format == torch.channels_last_3d:
            frames = frames.contiguous(memory_format=torch.channels_last)
        frames = self.resample(frames)
        out = frames.reshape(b, -1, c, 2 * h, 2 * w).permute(0, 2, 1, 3, 4)
        return out.contiguous(memory_format=memory_format)


class TurboVAEDPixelShuffleUpsampler(nn.Module):
    r"""Per-frame Conv2d 3×3 C -> C then `pixel_shuffle(2)` (C/4 channels at 2× size); upstream
    `TurboVAEDConv2dSplitUpsampler`, used when `use_unpatchify=False`."""

    def __init__(self, in_channels: int, upscale_factor: int = 2) -> None:
        super().__init__()
        self.upscale_factor = upscale_factor
        self.conv = nn.Conv2d(in_channels, in_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        # Upstream loops over frames; one batched conv differs only by rounding (~1e-6 in fp32).
        frames = F.pixel_shuffle(self.conv(_frames_to_batch(x)), self.upscale_factor)
        return _batch_to_frames(frames, b)


class TurboVAEDMidBlock3d(nn.Module):
    r"""`num_layers` SiLU resnets at constant width."""

    def __init__(
        self,
        in_channels: int,
        num_layers: int = 1,
        resnet_eps: float = 1e-6,
        is_dw_conv: bool = False,
        dw_kernel_size: int = 3,
    ) -> None:
        super().__init__()
        self.resnets = nn.ModuleList(
            [
                TurboVAEDResnetBlock3d(
                    in_channels, in_channels, eps=resnet_eps, is_dw_conv=is_dw_conv, dw_kernel_size=dw_kernel_size
                )
                for _ in range(num_layers)
            ]
        )

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        for resnet in self.resnets:
            hidden_states = resnet(hidden_states)
        return hidden_states


class TurboVAEDUpBlock3d(nn.Module):
    r"""`[conv_in resnet if the width changes] -> [upsampler] -> resnets`.

    Args:
        in_channels (`int`): Input channels.
        out_channels (`int`): Output channels.
        num_layers (`int`): Number of resnets after the upsampler.
        resnet_eps (`float`): `resnet_norm_eps`.
        spatio_temporal_scale (`bool`): Whether the block has an upsampler.
        spatio_only (`bool`): Spatial-only (`upsample2d`) instead of spatio-temporal (`upsample3d`) upsampler.
        is_dw_conv (`bool`), dw_kernel_size (`int`): Convolution type of the resnets.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        num_layers: int = 1,
        resnet_eps: float = 1e-6,
        spatio_temporal_scale: bool = True,
        spatio_only: bool = False,
        is_dw_conv: bool = False,
        dw_kernel_size: int = 3,
    ) -> None:
        super().__init__()
        self.conv_in = None
        if in_channels != out_channels:
            # the width-changing resnet always uses SiLU
            self.conv_in = TurboVAEDResnetBlock3d(
                in_channels, out_channels, eps=resnet_eps, is_dw_conv=is_dw_conv, dw_kernel_size=dw_kernel_size
            )

        self.upsamplers = None
        if spatio_temporal_scale:
            mode = "upsample2d" if spatio_only else "upsample3d"
            self.upsamplers = nn.ModuleList([TurboVAEDResample(out_channels, mode)])

        # Upstream quirk: act1 is ReLU in every resnet of a block that has an upsampler.
        first_activation = "relu" if spatio_temporal_scale else "silu"
        self.resnets = nn.ModuleList(
            [
                TurboVAEDResnetBlock3d(
                    out_channels,
                    out_channels,
                    eps=resnet_eps,
                    first_activation=first_activation,
                    is_dw_conv=is_dw_conv,
                    dw_kernel_size=dw_kernel_size,
                )
                for _ in range(num_layers)
            ]
        )

    def forward(self, hidden_states: torch.Tensor, is_first_chunk: bool) -> torch.Tensor:
        if self.conv_in is not None:
            hidden_states = self.conv_in(hidden_states)
        if self.upsamplers is not None:
            for upsampler in self.upsamplers:
                hidden_states = upsampler(hidden_states, is_first_chunk=is_first_chunk)
        for resnet in self.resnets:
            hidden_states = resnet(hidden_states)
        return hidden_states


class TurboVAEDDecoder3d(nn.Module):
    r"""The Turbo-VAE decoder network (upstream `TurboVAEDDecoder3d`).

    All per-block lists are given in **encoder order** and reversed here, as upstream does.

    Args:
        in_channels (`int`): Latent channels.
        out_channels (`int`): Output (RGB) channels.
        block_out_channels (`tuple[int, ...]`): Widths, encoder order.
        spatio_temporal_scaling (`tuple[bool, ...]`): Which blocks upsample, encoder order.
        layers_per_block (`tuple[int, ...]`): Resnets of the mid block followed by each up block, encoder order
            (`len(block_out_channels) + 1` entries, the last one belongs to the mid block).
        patch_size (`int`): Spatial unpatchify size (must be 2).
        resnet_norm_eps (`float`): Epsilon of the shortcut norms.
        is_dw_conv (`tuple[bool, ...]`): Depthwise-separable convs per block (same layout as `layers_per_block`).
        dw_kernel_size (`int`): Depthwise kernel size.
        spatio_only (`tuple[bool, ...]`): Spatial-only upsamplers, encoder order.
        use_unpatchify (`bool`): Unpatchify the `conv_out` channels (True) or use a final per-frame
            conv + pixel-shuffle stage (False).
    """

    def __init__(
        self,
        in_channels: int = 48,
        out_channels: int = 3,
        block_out_channels: tuple[int, ...] = (64, 128, 256, 512),
        spatio_temporal_scaling: tuple[bool, ...] = (False, True, True, True),
        layers_per_block: tuple[int, ...] = (2, 2, 2, 3, 3),
        patch_size: int = 2,
        resnet_norm_eps: float = 1e-6,
        is_dw_conv: tuple[bool, ...] = (False, False, False, False, False),
        dw_kernel_size: int = 5,
        spatio_only: tuple[bool, ...] = (False, True, False, False),
        use_unpatchify: bool = True,
    ) -> None:
        super().__init__()
        n = len(block_out_channels)
        for name, value, expected in (
            ("spatio_temporal_scaling", spatio_temporal_scaling, n),
            ("spatio_only", spatio_only, n),
            ("layers_per_block", layers_per_block, n + 1),
            ("is_dw_conv", is_dw_conv, n + 1),
        ):
            if len(value) != expected:
                raise ValueError(
                    f"decoder_{name} has {len(value)} entries but {expected} are needed for "
                    f"{n} decoder_block_out_channels."
                )
        if patch_size != 2:
            raise ValueError(
                f"The Turbo-VAE decoder only supports patch_size=2 (upstream asserts it), got {patch_size}."
            )

        self.patch_size = patch_size
        self.use_unpatchify = use_unpatchify

        block_out_channels = tuple(reversed(block_out_channels))
        spatio_temporal_scaling = tuple(reversed(spatio_temporal_scaling))
        layers_per_block = tuple(reversed(layers_per_block))
        is_dw_conv = tuple(reversed(is_dw_conv))
        spatio_only = tuple(reversed(spatio_only))

        channels = block_out_channels[0]
        self.conv_in = TurboVAEDConv3d(in_channels, channels, 3)
        self.mid_block = TurboVAEDMidBlock3d(
            channels,
            num_layers=layers_per_block[0],
            resnet_eps=resnet_norm_eps,
            is_dw_conv=is_dw_conv[0],
            dw_kernel_size=dw_kernel_size,
        )

        self.up_blocks = nn.ModuleList()
        for i in range(n):
            self.up_blocks.append(
                TurboVAEDUpBlock3d(
                    channels,
                    block_out_channels[i],
                    num_layers=layers_per_block[i + 1],
                    resnet_eps=resnet_norm_eps,
                    spatio_temporal_scale=spatio_temporal_scaling[i],
                    spatio_only=spatio_only[i],
                    is_dw_conv=is_dw_conv[i + 1],
                    dw_kernel_size=dw_kernel_size,
                )
            )
            channels = block_out_channels[i]

        self.norm_up_1 = None
        self.upsampler2d_1 = None
        if not use_unpatchify:
            if channels % 4 != 0:
                raise ValueError(
                    f"use_unpatchify=False pixel-shuffles the last width ({channels}) by 2, so it must be divisible "
                    "by 4."
                )
            self.norm_up_1 = TurboVAEDRMSNorm(1e-8)
            self.upsampler2d_1 = TurboVAEDPixelShuffleUpsampler(channels, upscale_factor=2)
            channels = channels // 4

        self.norm_out = TurboVAEDRMSNorm(1e-8)
        self.conv_act = nn.SiLU()
        conv_out_channels = out_channels * patch_size * patch_size if use_unpatchify else out_channels
        self.conv_out = TurboVAEDConv3d(channels, conv_out_channels, 3)

        num_upsample3d = sum(1 for s, o in zip(spatio_temporal_scaling, spatio_only) if s and not o)
        self.temporal_upscale = 2**num_upsample3d
        self.spatial_upscale = 2 ** sum(1 for s in spatio_temporal_scaling if s) * 2
        # Set by `AutoencoderTurboVAED.set_decode_options`.
        self.fused = False
        self.channels_last = False

    def forward(self, hidden_states: torch.Tensor, is_first_chunk: bool) -> torch.Tensor:
        r"""
        Args:
            hidden_states (`torch.Tensor`): Denormalised latent window `[B, C_lat, t, h, w]`.
            is_first_chunk (`bool`): The window starts the clip (each `upsample3d` then drops its first frame).

        Returns:
            `torch.Tensor`: `[B, out_channels, t', h * 16, w * 16]` with `t' = 4t - 3` on the first chunk else `4t`
            (real config).
        """
        if self.channels_last:
            # cuDNN's fastest 3D convolutions are channels-last (NDHWC); every later op keeps the layout.
            hidden_states = hidden_states.contiguous(memory_format=torch.channels_last_3d)
        if self.fused:
            hidden_states = _replicate_pad_time_keep_layout(hidden_states, self.conv_in.time_pad)
            hidden_states = self.conv_in.forward_padded(hidden_states)
        else:
            hidden_states = self.conv_in(hidden_states)
        hidden_states = self.mid_block(hidden_states)
        for up_block in self.up_blocks:
            hidden_states = up_block(hidden_states, is_first_chunk=is_first_chunk)

        if self.fused and self.upsampler2d_1 is None:
            padded = _fused_norm_act_pad(hidden_states, self.norm_out.eps, "silu", self.conv_out.time_pad)
            del hidden_states
            hidden_states = self.conv_out.forward_padded(padded)
            del padded
            return unpatchify(hidden_states, self.patch_size).contiguous()

        if self.upsampler2d_1 is not None:
            hidden_states = self.upsampler2d_1(self.conv_act(self.norm_up_1(hidden_states)))

        hidden_states = self.conv_out(self.conv_act(self.norm_out(hidden_states)))
        if self.use_unpatchify:
            hidden_states = unpatchify(hidden_states, self.patch_size)
        return hidden_states.contiguous() if self.channels_last else hidden_states


class AutoencoderTurboVAED(ModelMixin, AutoencoderMixin, ConfigMixin):
    r"""Decode-only Turbo-VAE of daVinci-MagiHuman (a distilled Wan2.2 decoder).

    `decode` takes the **normalised** Wan2.2 latent the DiT produces, denormalises it with the Wan2.2 tables and
    decodes it in overlapping temporal windows (`first_chunk_size` latent frames, then `step_size` per window, plus
    one latent frame of context on each side), so peak memory does not grow with clip length.

    Args:
        latent_channels (`int`, defaults to 48): Latent channels.
        out_channels (`int`, defaults to 3): Output channels.
        decoder_block_out_channels (`tuple[int, ...]`): Block widths, **encoder order** (reversed by the decoder).
        decoder_layers_per_block (`tuple[int, ...]`): Resnets per block, encoder order; `len(widths) + 1` entries.
        decoder_spatio_temporal_scaling (`tuple[bool, ...]`): Blocks with an upsampler, encoder order.
        decoder_spatio_only (`tuple[bool, ...]`): Upsamplers that are spatial only, encoder order.
        decoder_is_dw_conv (`tuple[bool, ...]`): Depthwise-separable convs per block, like `decoder_layers_per_block`.
        decoder_dw_kernel_size (`int`, defaults to 5): Depthwise kernel size.
        decoder_causal (`bool`, defaults to False): Must be False (upstream asserts it).
        patch_size (`int`, defaults to 2): Must be 2.
        patch_size_t (`int`, defaults to 1): Temporal patch size (unused by the decoder, kept for the config).
        resnet_norm_eps (`float`, defaults to 1e-6): Epsilon of the resnet shortcut norms.
        first_chunk_size (`int`, defaults to 7): Latent frames of the first window.
        step_size (`int`, defaults to 7): Latent frames of each further window.
        temporal_compression_ratio (`int`, defaults to 4): Pixel frames per latent frame; sets the window overlap.
        spatial_compression_ratio (`int`, defaults to 16): Pixels per latent pixel (informational, like upstream).
        use_unpatchify (`bool`, defaults to True): Final unpatchify (True) or pixel-shuffle stage (False).
        latents_mean (`list[float]`, *optional*): Per-channel latent means (default: Wan2.2).
        latents_std (`list[float]`, *optional*): Per-channel latent stds (default: Wan2.2).
    """

    _supports_gradient_checkpointing = False
    # `decode` is not `forward`: the decoder must be its own offload group so group offload onloads it.
    _group_offload_block_modules = ["decoder"]
    _no_split_modules = ["TurboVAEDResnetBlock3d", "TurboVAEDResample"]
    # The first and last convolutions are the most precision sensitive; the model has no norm parameters.
    _skip_layerwise_casting_patterns = [r"^decoder\.conv_in", r"^decoder\.conv_out"]

    @register_to_config
    def __init__(
        self,
        latent_channels: int = 48,
        out_channels: int = 3,
        decoder_block_out_channels: tuple[int, ...] = (64, 128, 256, 512),
        decoder_layers_per_block: tuple[int, ...] = (2, 2, 2, 3, 3),
        decoder_spatio_temporal_scaling: tuple[bool, ...] = (False, True, True, True),
        decoder_spatio_only: tuple[bool, ...] = (False, True, False, False),
        decoder_is_dw_conv: tuple[bool, ...] = (False, False, False, False, False),
        decoder_dw_kernel_size: int = 5,
        decoder_causal: bool = False,
        patch_size: int = 2,
        patch_size_t: int = 1,
        resnet_norm_eps: float = 1e-6,
        first_chunk_size: int = 7,
        step_size: int = 7,
        temporal_compression_ratio: int = 4,
        spatial_compression_ratio: int = 16,
        use_unpatchify: bool = True,
        latents_mean: list[float] | None = None,
        latents_std: list[float] | None = None,
    ) -> None:
        super().__init__()
        if decoder_causal:
            raise ValueError("decoder_causal=True is not supported (upstream asserts decoder_causal == False).")
        if first_chunk_size < 1 or step_size < 1:
            raise ValueError(f"first_chunk_size and step_size must be >= 1, got {first_chunk_size} and {step_size}.")
        for name, table in (("latents_mean", latents_mean), ("latents_std", latents_std)):
            if table is not None and len(table) != latent_channels:
                raise ValueError(f"{name} has {len(table)} values but latent_channels is {latent_channels}.")
        if latents_mean is None or latents_std is None:
            if latent_channels != len(WAN22_LATENTS_MEAN):
                raise ValueError(
                    f"latent_channels={latent_channels} needs explicit latents_mean/latents_std; the default Wan2.2 "
                    f"tables have {len(WAN22_LATENTS_MEAN)} channels."
                )
            # store the defaults in the config so saved models are self-describing
            self.register_to_config(
                latents_mean=list(latents_mean or WAN22_LATENTS_MEAN),
                latents_std=list(latents_std or WAN22_LATENTS_STD),
            )

        self.decoder = TurboVAEDDecoder3d(
            in_channels=latent_channels,
            out_channels=out_channels,
            block_out_channels=tuple(decoder_block_out_channels),
            spatio_temporal_scaling=tuple(decoder_spatio_temporal_scaling),
            layers_per_block=tuple(decoder_layers_per_block),
            patch_size=patch_size,
            resnet_norm_eps=resnet_norm_eps,
            is_dw_conv=tuple(decoder_is_dw_conv),
            dw_kernel_size=decoder_dw_kernel_size,
            spatio_only=tuple(decoder_spatio_only),
            use_unpatchify=use_unpatchify,
        )
        if self.decoder.temporal_upscale != temporal_compression_ratio:
            logger.warning(
                f"temporal_compression_ratio={temporal_compression_ratio} but the decoder upsamples time by "
                f"{self.decoder.temporal_upscale}; the window overlap follows the config value, as upstream."
            )

        self.use_slicing = False
        self.use_tiling = False
        # spatial tiling, in output pixels (used only after `enable_tiling()`)
        self.tile_sample_min_height = 512
        self.tile_sample_min_width = 512
        self.tile_sample_stride_height = 384
        self.tile_sample_stride_width = 384
        self._decode_options = dict(
            channels_last=None, fused=None, cudnn_benchmark=False, compile_decoder=False, window_frames=None
        )
        self._compiled_decoders: dict = {}  # a plain dict, so the compiled wrapper is not a registered submodule

    # ------------------------------------------------------------------ speed options
    def set_decode_options(
        self,
        channels_last: bool | None = None,
        fused: bool | None = None,
        cudnn_benchmark: bool = False,
        compile_decoder: bool = False,
        window_frames: int | str | None = None,
    ) -> None:
        r"""Choose how `decode` computes. Every option but `window_frames` gives the same video up to rounding noise.

        Options not given return to their defaults. For example `vae.set_decode_options(cudnn_benchmark=True)` for
        many decodes in one process, or `vae.set_decode_options(channels_last=False, fused=False)` for the reference
        path (the original's operations, eager) on a GPU.

        Args:
            channels_last (`bool`, *optional*): Run the decoder in channels-last layout (NDHWC / NHWC), where cuDNN's
                bf16 convolutions are fastest. `None` (default): on when decoding on a CUDA device.
            fused (`bool`, *optional*): Fused eager path: each RMS norm + activation + replicate time padding writes
                one padded buffer in the model dtype (the reference materialises several float32 copies), residual
                adds are in place, nearest upsampling runs in the model dtype. Same products and roundings as the
                reference except the norm's mean of squares, which is summed in another order (float32 rounding,
                ~1e-7 relative). Peak memory per window is about half of the reference's, so fewer windows need
                spatial tiles. `None` (default): on when decoding on a CUDA device and `compile_decoder` is off.
            cudnn_benchmark (`bool`, defaults to False): Let cuDNN time its algorithms for each new convolution shape
                during the decode (`torch.backends.cudnn.benchmark`, restored afterwards). Faster steady state; the
                first decode of each window shape pays the timing, and the chosen algorithms may differ run to run
                (rounding noise).
            compile_decoder (`bool`, defaults to False): Run the decoder through `torch.compile` (as the original
                does), which fuses the elementwise work. The first decode of each window shape compiles (tens of
                seconds); worth it for many decodes in one process.
            window_frames (`int` or `"auto"`, *optional*): Latent frames per temporal window instead of the config's
                `first_chunk_size` / `step_size`. Larger windows decode fewer context frames twice (the default
                7-frame windows decode 9 frames to keep 7), but frames near the window seams change (each window sees
                different context), so this is **not** the reference result. `"auto"`: among the windows (up to the
                whole clip) whose estimated working set fits the decode memory budget, the one that decodes the fewest
                latent frames in total (padding and context included), the larger on a tie.
        """
        if window_frames is not None and window_frames != "auto":
            if isinstance(window_frames, bool) or not isinstance(window_frames, int) or window_frames < 1:
                raise ValueError(f"`window_frames` must be a positive int, 'auto' or None, got {window_frames!r}.")
        for name, value in (("channels_last", channels_last), ("fused", fused)):
            if value is not None and not isinstance(value, bool):
                raise ValueError(f"`{name}` must be True, False or None (auto), got {value!r}.")
        self._decode_options = dict(
            channels_last=channels_last,
            fused=fused,
            cudnn_benchmark=bool(cudnn_benchmark),
            compile_decoder=bool(compile_decoder),
            window_frames=window_frames,
        )

    @property
    def _options(self) -> dict:
        # also for a model unpickled from before the options existed
        return getattr(self, "_decode_options", None) or dict(
            channels_last=None, fused=None, cudnn_benchmark=False, compile_decoder=False, window_frames=None
        )

    def _resolve_decode_options(self, device: torch.device) -> dict:
        """The options with `None` (auto) resolved for `device`, applied to the decoder's modules."""
        options = dict(self._options)
        on_cuda = device.type == "cuda"
        if options["channels_last"] is None:
            options["channels_last"] = on_cuda
        if options["fused"] is None:
            options["fused"] = on_cuda and not options["compile_decoder"]
        if options["fused"] and torch.is_grad_enabled() and any(p.requires_grad for p in self.decoder.parameters()):
            # the fused path writes into preallocated buffers (`out=`, in-place activations), which autograd
            # refuses; a differentiable decode takes the reference path
            options["fused"] = False
        self.decoder.channels_last = options["channels_last"]
        fusable = (TurboVAEDDecoder3d, TurboVAEDResnetBlock3d, TurboVAEDResample, TurboVAEDUpsample2x)
        for module in self.decoder.modules():
            if isinstance(module, fusable):
                module.fused = options["fused"]
        return options

    @contextlib.contextmanager
    def _cudnn_benchmark(self, enabled: bool):
        if not enabled:
            yield
            return
        previous = torch.backends.cudnn.benchmark
        torch.backends.cudnn.benchmark = True
        try:
            yield
        finally:
            torch.backends.cudnn.benchmark = previous

    def _run_decoder(self, z: torch.Tensor, is_first_chunk: bool) -> torch.Tensor:
        if not self._options["compile_decoder"]:
            return self.decoder(z, is_first_chunk=is_first_chunk)
        compiled = self._compiled_decoders.get("decoder")
        if compiled is None:
            compiled = self._compiled_decoders["decoder"] = torch.compile(self.decoder)
        return compiled(z, is_first_chunk=is_first_chunk)

    def enable_tiling(
        self,
        tile_sample_min_height: int | None = None,
        tile_sample_min_width: int | None = None,
        tile_sample_stride_height: int | None = None,
        tile_sample_stride_width: int | None = None,
    ) -> None:
        r"""Decode each temporal window in overlapping spatial tiles, blended linearly across the overlap.

        This bounds memory at high resolution (e.g. 1080p) at the cost of small seam differences; upstream has no
        spatial tiling, so outputs are no longer bit-identical to it. Sizes are in output pixels and must be
        multiples of the spatial upscale (16).

        Args:
            tile_sample_min_height (`int`, *optional*): Tile height (default 512).
            tile_sample_min_width (`int`, *optional*): Tile width (default 512).
            tile_sample_stride_height (`int`, *optional*): Vertical tile stride (default 384, i.e. 128 px overlap).
            tile_sample_stride_width (`int`, *optional*): Horizontal tile stride (default 384).
        """
        self.use_tiling = True
        self.tile_sample_min_height = tile_sample_min_height or self.tile_sample_min_height
        self.tile_sample_min_width = tile_sample_min_width or self.tile_sample_min_width
        self.tile_sample_stride_height = tile_sample_stride_height or self.tile_sample_stride_height
        self.tile_sample_stride_width = tile_sample_stride_width or self.tile_sample_stride_width
        up = self.decoder.spatial_upscale
        for name in ("min_height", "min_width", "stride_height", "stride_width"):
            value = getattr(self, f"tile_sample_{name}")
            if value % up != 0:
                raise ValueError(f"tile_sample_{name}={value} must be a multiple of the spatial upscale {up}.")
        if (
            self.tile_sample_stride_height > self.tile_sample_min_height
            or self.tile_sample_stride_width > self.tile_sample_min_width
        ):
            raise ValueError("Tile strides must not exceed the tile sizes (the tiles must overlap or touch).")

    def encode(self, *args, **kwargs):
        raise NotImplementedError(
            "Turbo-VAE is decode-only; use the Wan2.2 VAE (pipe.vae) to encode images or videos into latents."
        )

    def _denormalize(self, z: torch.Tensor) -> torch.Tensor:
        # As the original: z / (1 / std) + mean (division by the stored reciprocal, not z * std), with float32
        # tables even for a bf16 model; the result is cast back to the latent dtype.
        mean = torch.tensor(self.config.latents_mean, dtype=torch.float32, device=z.device)
        inv_std = 1.0 / torch.tensor(self.config.latents_std, dtype=torch.float32, device=z.device)
        shape = (1, -1, 1, 1, 1)
        return (z / inv_std.view(shape) + mean.view(shape)).to(z.dtype)

    @staticmethod
    def _blend(a: torch.Tensor, b: torch.Tensor, extent: int, dim: int) -> torch.Tensor:
        """Linearly cross-fades the last `extent` positions of `a` into the first `extent` of `b` along `dim`."""
        extent = min(a.shape[dim], b.shape[dim], extent)
        if extent <= 0:
            return b
        shape = [1] * b.ndim
        shape[dim] = extent
        weight = (torch.arange(extent, device=b.device, dtype=torch.float32) / extent).view(shape).to(b.dtype)
        head = b.narrow(dim, 0, extent) * weight + a.narrow(dim, a.shape[dim] - extent, extent) * (1 - weight)
        return torch.cat([head, b.narrow(dim, extent, b.shape[dim] - extent)], dim=dim)

    @staticmethod
    def _tile_starts(size: int, tile: int, stride: int) -> list[int]:
        """Latent start offsets of the tiles along one axis: every `stride`, until a tile reaches the end."""
        starts = [0]
        while starts[-1] + tile < size:
            starts.append(starts[-1] + stride)
        return starts

    def _tiled_decode_window(self, z: torch.Tensor, is_first_chunk: bool) -> torch.Tensor:
        up = self.decoder.spatial_upscale
        height, width = z.shape[-2:]
        tile_h, tile_w = self.tile_sample_min_height // up, self.tile_sample_min_width // up
        stride_h, stride_w = self.tile_sample_stride_height // up, self.tile_sample_stride_width // up
        blend_h = self.tile_sample_min_height - self.tile_sample_stride_height
        blend_w = self.tile_sample_min_width - self.tile_sample_stride_width
        row_starts = self._tile_starts(height, tile_h, stride_h)
        col_starts = self._tile_starts(width, tile_w, stride_w)

        rows = [
            [
                self._run_decoder(z[:, :, :, i : i + tile_h, j : j + tile_w], is_first_chunk=is_first_chunk)
                for j in col_starts
            ]
            for i in row_starts
        ]
        result_rows = []
        for r, row in enumerate(rows):
            pieces = []
            for c in range(len(row)):
                tile = row[c]
                if r > 0:
                    tile = self._blend(rows[r - 1][c], tile, blend_h, dim=3)
                if c > 0:
                    tile = self._blend(row[c - 1], tile, blend_w, dim=4)
                row[c] = tile
                # every tile but the last of a row/column keeps only its stride; the next one blends over the rest
                pieces.append(tile if c == len(row) - 1 else tile[..., : self.tile_sample_stride_width])
            stitched = torch.cat(pieces, dim=4)
            result_rows.append(stitched if r == len(rows) - 1 else stitched[..., : self.tile_sample_stride_height, :])
        return torch.cat(result_rows, dim=3)

    # ------------------------------------------------------------------ memory-bounded exact decode
    def set_decode_memory_budget(self, max_bytes: int | None) -> None:
        r"""Bound the working set of each decoded window to `max_bytes` (estimated), on any device.

        By default (`None`) the budget is the memory free on a CUDA device when the decode starts (what the driver
        reports plus the caching allocator's unused blocks, 90% of it), and unbounded elsewhere. A window that would
        not fit is decoded in spatial tiles with a halo of the decoder's receptive field, so the result is the same
        as the whole-window decode (each tile sees every latent pixel its outputs depend on), unlike
        [`~AutoencoderTurboVAED.enable_tiling`], which blends overlapping tiles.
        """
        if max_bytes is not None and max_bytes <= 0:
            raise ValueError(f"`max_bytes` must be positive or None, got {max_bytes}.")
        self._decode_memory_budget = max_bytes

    def _memory_budget(self, device: torch.device) -> int | None:
        budget = getattr(self, "_decode_memory_budget", None)
        if budget is not None:
            return budget
        if device.type == "cuda" and torch.cuda.is_available():
            free, total = torch.cuda.mem_get_info(device)
            # Memory the allocator has cached but not handed out is left out: after a long DiT run it is
            # fragmented into blocks smaller than one decode buffer. A per-process cap
            # (`torch.cuda.set_per_process_memory_fraction`) bounds what this process may still reserve.
            get_fraction = getattr(torch.cuda, "get_per_process_memory_fraction", None)
            if get_fraction is not None:
                cap = int(get_fraction(device) * total) - torch.cuda.memory_reserved(device)
                free = min(free, max(cap, 0))
            return int(0.9 * free)
        return None

    @staticmethod
    def _conv_radius(conv: nn.Module | None) -> int:
        """Spatial reach (pixels on each side) of one of the decoder's convolutions."""
        if conv is None:
            return 0
        if isinstance(conv, TurboVAEDDepthwiseSeparableConv3d):
            return conv.kernel_size[1] // 2
        if isinstance(conv, TurboVAEDConv3d):
            return conv.kernel_size[1] // 2
        return conv.kernel_size[-1] // 2  # nn.Conv2d / nn.Conv3d

    def _spatial_halo(self) -> int:
        """Latent pixels of context each side that a decoded pixel depends on (the receptive-field radius).

        Walks the decoder: a k x k convolution at spatial scale s (output pixels per latent pixel) reaches
        `(k // 2) / s` latent pixels; upsamplers (nearest 2x) double s; norms and activations are per pixel.
        """
        dec = self.decoder
        reach, scale = 0.0, 1

        def resnet_reach(block) -> int:
            return self._conv_radius(block.conv1) + self._conv_radius(block.conv2)

        reach += self._conv_radius(dec.conv_in)
        for resnet in dec.mid_block.resnets:
            reach += resnet_reach(resnet) / scale
        for block in dec.up_blocks:
            if block.conv_in is not None:
                reach += resnet_reach(block.conv_in) / scale
            if block.upsamplers is not None:
                for upsampler in block.upsamplers:
                    scale *= 2
                    reach += self._conv_radius(upsampler.resample[1]) / scale
            for resnet in block.resnets:
                reach += resnet_reach(resnet) / scale
        if dec.upsampler2d_1 is not None:
            reach += self._conv_radius(dec.upsampler2d_1.conv) / scale
            scale *= 2
        reach += self._conv_radius(dec.conv_out) / scale
        return int(math.ceil(reach)) + 1

    def _largest_activation(self, frames: int, height: int, width: int) -> int:
        """Elements (channels x frames x pixels) of the largest block output when decoding `[1, C, frames, h, w]`."""
        dec = self.decoder
        channels, t, scale = dec.conv_in.conv.out_channels, frames, 1
        peak = channels * t * height * width
        for block in dec.up_blocks:
            if block.upsamplers is not None:
                for upsampler in block.upsamplers:
                    if upsampler.time_conv is not None:
                        t *= 2
                    scale *= 2
            last = block.resnets[-1].conv2 if len(block.resnets) else None
            if last is not None:
                channels = getattr(last, "conv", getattr(last, "pointwise_conv", None)).out_channels
            peak = max(peak, channels * t * height * scale * width * scale)
        return peak

    def _estimate_window_bytes(self, frames: int, height: int, width: int) -> int:
        """Estimated peak working set of decoding a latent window `[1, C, frames, height, width]`.

        The largest activation (channels x frames x pixels at some stage of the decoder) times 28 bytes per element
        for a bf16 model: input, padded copy and output of a convolution in the model dtype, plus the float32
        temporaries of the RMS norm. The factor is calibrated on the measured whole-window 1080p decode (35.6 GB
        for a 1.2e9-element last stage, bf16); float32 models count twice the model-dtype part. The largest activation
        of a 9-frame 1080p window is in fact the 2.4e9-element 128-channel stage, so the estimate (63 GiB) is about
        twice what that window holds: the tensors alive at once peak at 13 bytes per element (29 GiB), counted on the
        meta device (tests/test_turbo_vae_speed_options.py). The fused path (`set_decode_options(fused=True)`) keeps
        no float32 copies: about the input, one padded buffer and one convolution output in the model dtype, 7.1
        bytes per element counted the same way (16 GiB); it is estimated at 4 x the dtype size + 2 bytes (10 for
        bf16), a margin for the convolution workspace and the allocator's rounding.
        """
        elem = torch.finfo(self.dtype).bits // 8 if self.dtype.is_floating_point else 4
        peak = self._largest_activation(frames, height, width)
        if self.decoder.fused:
            return int(peak * (FUSED_BYTES_PER_MODEL_BYTE * elem + FUSED_EXTRA_BYTES))
        return int(peak * (6 * elem + 16))

    def _plan_tiles(self, frames: int, height: int, width: int, budget: int) -> tuple[int, int]:
        """The fewest (rows, columns) of tiles whose haloed windows fit `budget`.

        Tiles narrower than the halo save little (each still decodes its halo), so at most `size // halo` tiles
        per axis are tried; if none fits, the smallest estimate is used and the decode may still run out of memory.
        """
        halo = self._spatial_halo()
        max_rows, max_cols = max(1, height // halo), max(1, width // halo)
        candidates = sorted(
            ((r * c, r, c) for r in range(1, max_rows + 1) for c in range(1, max_cols + 1)), key=lambda x: (x[0], -x[2])
        )
        best, best_bytes = (1, 1), None
        for _, rows, cols in candidates:
            tile_h = min(height, -(-height // rows) + 2 * halo)
            tile_w = min(width, -(-width // cols) + 2 * halo)
            need = self._estimate_window_bytes(frames, tile_h, tile_w)
            if need <= budget:
                return rows, cols
            if best_bytes is None or need < best_bytes:
                best, best_bytes = (rows, cols), need
        logger.warning(
            f"Turbo-VAE: a {height}x{width} latent window needs about {best_bytes / 2**30:.1f} GiB even in "
            f"{best[0]}x{best[1]} tiles, more than the {budget / 2**30:.1f} GiB free; trying anyway. Free GPU memory "
            "(e.g. `enable_model_cpu_offload()`) or decode with `output_type='latent'` and later."
        )
        return best

    def _exact_tiled_decode_window(self, z: torch.Tensor, is_first_chunk: bool, rows: int, cols: int) -> torch.Tensor:
        """Decode `z` in `rows x cols` spatial tiles, each with a receptive-field halo, and keep only their centres.

        Every convolution, norm and upsampler of the decoder is local or per pixel in space, and the halo covers the
        receptive field, so each kept pixel is computed from the same inputs as in the whole-window decode.
        """
        halo = self._spatial_halo()
        up = self.decoder.spatial_upscale
        height, width = z.shape[-2:]
        row_edges = [round(i * height / rows) for i in range(rows + 1)]
        col_edges = [round(j * width / cols) for j in range(cols + 1)]
        out = None
        for i0, i1 in zip(row_edges[:-1], row_edges[1:]):
            for j0, j1 in zip(col_edges[:-1], col_edges[1:]):
                a0, a1 = max(0, i0 - halo), min(height, i1 + halo)
                b0, b1 = max(0, j0 - halo), min(width, j1 + halo)
                tile = self._run_decoder(z[:, :, :, a0:a1, b0:b1], is_first_chunk=is_first_chunk)
                if out is None:
                    out = tile.new_empty(tile.shape[:3] + (height * up, width * up))
                out[..., i0 * up : i1 * up, j0 * up : j1 * up] = tile[
                    ..., (i0 - a0) * up : (i1 - a0) * up, (j0 - b0) * up : (j1 - b0) * up
                ]
                del tile
        return out

    def _decode_window(self, z: torch.Tensor, is_first_chunk: bool) -> torch.Tensor:
        if self.use_tiling and (
            z.shape[-2] * self.decoder.spatial_upscale > self.tile_sample_min_height
            or z.shape[-1] * self.decoder.spatial_upscale > self.tile_sample_min_width
        ):
            return self._tiled_decode_window(z, is_first_chunk)
        budget = self._memory_budget(z.device)
        if budget is not None:
            frames, height, width = z.shape[2], z.shape[3], z.shape[4]
            if z.shape[0] * self._estimate_window_bytes(frames, height, width) > budget:
                if z.shape[0] > 1:  # one sample at a time first: exact, and often enough
                    return torch.cat([self._decode_window(zs, is_first_chunk) for zs in z.split(1)], dim=0)
                rows, cols = self._plan_tiles(frames, height, width, budget)
                if rows * cols > 1:
                    logger.info(
                        f"Turbo-VAE: decoding {height}x{width} latent windows in {rows}x{cols} exact tiles to stay "
                        f"within {budget / 2**30:.1f} GiB."
                    )
                    return self._exact_tiled_decode_window(z, is_first_chunk, rows, cols)
        return self._run_decoder(z, is_first_chunk=is_first_chunk)

    def _window_sizes(self, z: torch.Tensor) -> tuple[int, int]:
        """(first window, step) in latent frames: the config's, or the `window_frames` decode option."""
        window = self._options["window_frames"]
        if window is None:
            return self.config.first_chunk_size, self.config.step_size
        if window != "auto":
            return window, window
        num_frames, height, width = z.shape[2], z.shape[3], z.shape[4]
        budget = self._memory_budget(z.device)
        best = None
        for frames in range(max(1, min(self.config.first_chunk_size, self.config.step_size)), num_frames + 1):
            # a window shorter than the clip also decodes one latent frame of context on each side
            largest = num_frames if frames >= num_frames else frames + 2
            if budget is not None and z.shape[0] * self._estimate_window_bytes(largest, height, width) > budget:
                continue
            cost = self._decoded_latent_frames(num_frames, frames, frames)
            if best is None or cost <= best[0]:  # fewest decoded frames, then the larger window
                best = (cost, frames)
        if best is None:
            return self.config.first_chunk_size, self.config.step_size
        return best[1], best[1]

    @staticmethod
    def _decoded_latent_frames(num_frames: int, first: int, step: int) -> int:
        """Latent frames the sliding-window decode runs through the decoder (padding and context included)."""
        padded = first if num_frames <= first else first + -(-(num_frames - first) // step) * step
        if padded == first:
            return first
        windows = (padded - first) // step
        return (first + 1) + (windows - 1) * (step + 2) + (step + 1)

    def _sliding_window_decode(self, z: torch.Tensor, output_device: torch.device | str | None) -> torch.Tensor:
        first, step = self._window_sizes(z)
        overlap = self.config.temporal_compression_ratio  # 1 latent frame of context = 4 pixel frames
        num_frames = z.shape[2]

        # As the original: pad the end with copies of the last latent frame up to first + n * step frames.
        if num_frames < first:
            num_pad = first - num_frames
        else:
            num_pad = (step - (num_frames - first) % step) % step
        if num_pad > 0:
            z = torch.cat([z, z[:, :, -1:].expand(-1, -1, num_pad, -1, -1)], dim=2)
            num_frames += num_pad

        def collect(x: torch.Tensor) -> torch.Tensor:
            return x if output_device is None else x.to(output_device)

        chunks = []
        if num_frames == first:
            chunks.append(collect(self._decode_window(z, is_first_chunk=True)))
        else:
            # first window [0, first + 1) with one frame of right context, whose output frames are dropped
            out = self._decode_window(z[:, :, : first + 1], is_first_chunk=True)
            chunks.append(collect(out[:, :, :-overlap]))
            del out
            # later windows: one latent frame of left context (and right context unless last); every window after
            # the first runs with is_first_chunk=False and is trimmed by `overlap` frames per context side
            for start in range(first, num_frames, step):
                is_last = start + step == num_frames
                stop = start + step + (0 if is_last else 1)
                out = self._decode_window(z[:, :, start - 1 : stop], is_first_chunk=False)
                out = out[:, :, overlap:] if is_last else out[:, :, overlap:-overlap]
                chunks.append(collect(out))
                del out

        sample = torch.cat(chunks, dim=2)
        del chunks
        if num_pad > 0:
            sample = sample[:, :, : sample.shape[2] - num_pad * overlap]
        return sample

    @apply_forward_hook
    def decode(
        self,
        z: torch.Tensor,
        return_dict: bool = True,
        output_device: torch.device | str | None = None,
    ) -> DecoderOutput | tuple[torch.Tensor]:
        r"""Decodes normalised Wan2.2 latents into video.

        Args:
            z (`torch.Tensor`): Normalised DiT latent `[B, latent_channels, T, h, w]` (any float dtype; it is cast to
                the model dtype first, like upstream's `decode_video`).
            return_dict (`bool`, defaults to True): Return a [`~models.autoencoders.vae.DecoderOutput`] instead of a
                tuple.
            output_device (`torch.device` or `str`, *optional*): Move every decoded window there as it is produced
                (e.g. `"cpu"`, upstream's `output_offload`) so only one window lives on the accelerator.

        Returns:
            [`~models.autoencoders.vae.DecoderOutput`] or `tuple`: `sample` of shape
            `[B, out_channels, 4(T-1)+1, 16h, 16w]` (real config) in the model dtype, not clamped.
        """
        if z.ndim != 5:
            raise ValueError(
                f"Expected a 5-D latent [B, {self.config.latent_channels}, T, h, w], got shape {tuple(z.shape)}; "
                "add the batch dimension with z.unsqueeze(0)."
            )
        if z.shape[1] != self.config.latent_channels:
            raise ValueError(
                f"Expected {self.config.latent_channels} latent channels in dim 1, got shape {tuple(z.shape)}."
            )
        if z.shape[2] < 1:
            raise ValueError("Cannot decode a latent with 0 frames.")

        # upstream casts the latent to the weight dtype before denormalising (decode_video: latent.to(self.dtype))
        z = self._denormalize(z.to(self.dtype))

        options = self._resolve_decode_options(z.device)
        with self._cudnn_benchmark(options["cudnn_benchmark"] and z.device.type == "cuda"):
            if self.use_slicing and z.shape[0] > 1:
                sample = torch.cat([self._sliding_window_decode(zs, output_device) for zs in z.split(1)], dim=0)
            else:
                sample = self._sliding_window_decode(z, output_device)

        if not return_dict:
            return (sample,)
        return DecoderOutput(sample=sample)

    def forward(
        self, z: torch.Tensor, return_dict: bool = True, output_device: torch.device | str | None = None
    ) -> DecoderOutput | tuple[torch.Tensor]:
        r"""Same as [`~AutoencoderTurboVAED.decode`]."""
        return self.decode(z, return_dict=return_dict, output_device=output_device)
