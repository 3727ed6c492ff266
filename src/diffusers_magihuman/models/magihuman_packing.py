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
"""Token packing of the MagiHuman DiT: patchify / unpatchify, the RoPE coordinates of the packed sequence, the
per-sample token layout (which rows are video, audio, text, padding; the local-attention rule) and the routing of
tokens to per-modality experts."""

from dataclasses import dataclass, field

import torch
import torch.nn as nn


# Modality ids of the packed sequence; they are also the expert index of the modality-expert ("mm") layers.
MODALITY_VIDEO = 0
MODALITY_AUDIO = 1
MODALITY_TEXT = 2
MODALITIES = ("video", "audio", "text")
_MODALITY_PAD = 3  # padding rows of a batch with different lengths; they belong to no expert


# ---------------------------------------------------------------------------------------------------------------------


def patchify_video(hidden_states: torch.Tensor, patch_size: tuple[int, int, int]) -> torch.Tensor:
    r"""
    Video latent to tokens, **channel-major** like the original's `UnfoldNd` im2col: token
    `t*H'*W' + h*W' + w`, channel `((c*pT + dt)*pH + dh)*pW + dw`.

    Args:
        hidden_states (`torch.Tensor` of shape `(batch_size, channels, frames, height, width)`)
        patch_size (`tuple[int, int, int]`): `(pT, pH, pW)`.

    Returns:
        `torch.Tensor` of shape `(batch_size, frames/pT * height/pH * width/pW, channels*pT*pH*pW)`.
    """
    batch_size, channels, frames, height, width = hidden_states.shape
    p_t, p_h, p_w = patch_size
    hidden_states = hidden_states.reshape(
        batch_size, channels, frames // p_t, p_t, height // p_h, p_h, width // p_w, p_w
    )
    hidden_states = hidden_states.permute(0, 2, 4, 6, 1, 3, 5, 7)
    return hidden_states.reshape(batch_size, (frames // p_t) * (height // p_h) * (width // p_w), -1)


def unpatchify_video(
    tokens: torch.Tensor, patch_size: tuple[int, int, int], grid_size: tuple[int, int, int]
) -> torch.Tensor:
    r"""
    Tokens to video latent, **spatial-major** like the original's `depack_token_sequence`: the channel axis of
    a token is read as `(pT, pH, pW, C)` with `C` fastest. This is deliberately not the inverse of [`patchify_video`]:
    the trained `final_linear_video` rows are in that order.

    Args:
        tokens (`torch.Tensor` of shape `(batch_size, T'*H'*W', pT*pH*pW*C)`)
        patch_size (`tuple[int, int, int]`): `(pT, pH, pW)`.
        grid_size (`tuple[int, int, int]`): `(T', H', W')`.

    Returns:
        `torch.Tensor` of shape `(batch_size, C, T'*pT, H'*pH, W'*pW)`.
    """
    batch_size = tokens.shape[0]
    p_t, p_h, p_w = patch_size
    grid_t, grid_h, grid_w = grid_size
    tokens = tokens.reshape(batch_size, grid_t, grid_h, grid_w, p_t, p_h, p_w, -1)
    tokens = tokens.permute(0, 7, 1, 4, 2, 5, 3, 6)
    return tokens.reshape(batch_size, -1, grid_t * p_t, grid_h * p_h, grid_w * p_w)


def get_magihuman_coords(
    grid_size: tuple[int, int, int],
    audio_length: int,
    text_length: int,
    coords_style: str = "v2",
    text_offset: int = 0,
    temporal_patch_size: int = 1,
    device: torch.device | None = None,
) -> torch.Tensor:
    r"""
    The 9-column coordinates `(t, h, w, T, H, W, T_ref, H_ref, W_ref)` of one packed sample, fp32.

    * video `(t, h, w)` on the `(T', H', W')` patch grid, reference = size ("extra" interpolation, fixed upstream);
    * audio `i`: `(i, 0, 0)`, size `(N, 1, 1)`, reference `((N-1)//4 + 1) // pT` (v2) or `T'` (v1);
    * text `j`: v2 `(j - n, 0, 0)` with reference 1 (zero RoPE angle), v1 `(j + text_offset, 0, 0)` with reference 2.

    Args:
        grid_size (`tuple[int, int, int]`): the video patch grid `(T', H', W')`.
        audio_length (`int`): real audio tokens `N`.
        text_length (`int`): real text tokens `n`.
        coords_style (`str`): `"v2"` (base / distill) or `"v1"` (super-resolution models).
        text_offset (`int`): v1 only, added to the text positions (0 in every release).
        temporal_patch_size (`int`): `pT` (1 in every release).

    Returns:
        `torch.Tensor` of shape `(T'*H'*W' + N + n, 9)`.
    """
    grid_t, grid_h, grid_w = grid_size
    if coords_style not in ("v1", "v2"):
        raise ValueError(f"`coords_style` must be 'v1' or 'v2', got {coords_style!r}.")

    def _axis_rows(shape, ref_shape, offset_t=0):
        size_t, size_h, size_w = shape
        t = torch.arange(size_t, device=device, dtype=torch.float32) + offset_t
        h = torch.arange(size_h, device=device, dtype=torch.float32)
        w = torch.arange(size_w, device=device, dtype=torch.float32)
        grid = torch.stack(torch.meshgrid(t, h, w, indexing="ij"), dim=-1).reshape(-1, 3)
        meta = torch.tensor([*shape, *ref_shape], device=device, dtype=torch.float32).expand(grid.shape[0], -1)
        return torch.cat([grid, meta], dim=-1)

    def _check_scale(name, size, ref):
        # Upstream asserts that no RoPE scale (ref-1)/(size-1) is infinite.
        if size == 1 and ref != 1:
            raise ValueError(
                f"coords_style={coords_style!r} gives an infinite RoPE scale for {name} with length 1 (reference "
                f"extent {ref}); the original model rejects this input too. Use at least 2 {name} tokens."
            )

    rows = [_axis_rows((grid_t, grid_h, grid_w), (grid_t, grid_h, grid_w))]
    if audio_length > 0:
        if coords_style == "v1":
            audio_ref = grid_t
        else:
            audio_ref = ((audio_length - 1) // 4 + 1) // temporal_patch_size
        _check_scale("audio", audio_length, audio_ref)
        rows.append(_axis_rows((audio_length, 1, 1), (audio_ref, 1, 1)))
    if text_length > 0:
        if coords_style == "v1":
            text_ref, offset = 2, text_offset
        else:
            text_ref, offset = 1, -text_length
        _check_scale("text", text_length, text_ref)
        rows.append(_axis_rows((text_length, 1, 1), (text_ref, 1, 1), offset_t=offset))
    return torch.cat(rows, dim=0)


@dataclass
class MagiHumanTokenLayout:
    r"""
    Where each modality sits in the packed `(batch_size, seq_len)` sequence. Built once per forward and shared by all
    blocks (no tensors to learn; it only routes tokens to experts and describes the attention pattern).

    Per sample the order is `[video | real audio | real text | padding]`. The video part has the same length in every
    sample; samples shorter than `seq_len` are right-padded.

    Args:
        batch_size (`int`), seq_len (`int`): the packed shape.
        seq_lens (`list[int]`): real tokens per sample.
        num_video_tokens (`int`): `T'*H'*W'`.
        num_frames (`int`): `T'`; tokens_per_frame (`int`): `H'*W'`.
        group_sizes (`list[int]`): flattened token counts per group (video, audio, text, padding) after sorting by
            modality.
        permutation, inverse_permutation (`torch.Tensor` or `None`): a stable sort of the flattened `batch*seq` tokens
            by modality and its inverse; `None` when the flattened order is already sorted (always for batch size 1).
        frame_receptive_field (`int`): local-attention half window in latent frames (negative: unlimited).
        audio_lengths, text_lengths (`list[int]`): real audio / text tokens per sample.
        full_layout ([`MagiHumanTokenLayout`], *optional*): set on the layout of one context-parallel rank's shard of
            the sequence: the layout of the whole sequence, whose attention pattern the attention backends apply.
    """

    batch_size: int
    seq_len: int
    seq_lens: list[int]
    num_video_tokens: int
    num_frames: int
    tokens_per_frame: int
    group_sizes: list[int]
    permutation: torch.Tensor | None = None
    inverse_permutation: torch.Tensor | None = None
    frame_receptive_field: int = -1
    audio_lengths: list[int] = field(default_factory=list)
    text_lengths: list[int] = field(default_factory=list)
    full_layout: "MagiHumanTokenLayout | None" = None
    _cache: dict = field(default_factory=dict, repr=False)

    @property
    def has_padding(self) -> bool:
        return any(length != self.seq_len for length in self.seq_lens)

    @property
    def attention_layout(self) -> "MagiHumanTokenLayout":
        r"""The layout whose attention pattern applies: the whole sequence's (`full_layout`) on a context-parallel
        shard, else this one."""
        return self if self.full_layout is None else self.full_layout

    def local_attention_allowed(self, q_idx: torch.Tensor, kv_idx: torch.Tensor) -> torch.Tensor:
        r"""
        The local-attention rule of one sample, on packed token indices: a video query of frame `i` sees video
        keys of frames `i - F .. i + F`; every query sees the audio and text keys; audio/text queries see everything.
        """
        num_video, per_frame, window = self.num_video_tokens, self.tokens_per_frame, self.frame_receptive_field
        near = (q_idx // per_frame - kv_idx // per_frame).abs() <= window
        return (q_idx >= num_video) | (kv_idx >= num_video) | near

    def local_attention_mask(self, seq_len: int, device: torch.device | None = None) -> torch.Tensor:
        r"""Dense boolean `(seq_len, seq_len)` form of [`local_attention_allowed`] (`True` = attend); for debugging."""
        idx = torch.arange(seq_len, device=device)
        return self.local_attention_allowed(idx[:, None], idx[None, :])

    def local_block_mask(self, seq_len: int, device: torch.device):
        r"""flex-attention `BlockMask` of [`local_attention_allowed`] for one unpadded sample, built once per forward
        (the model builds it before the blocks run, so compiled blocks only read it)."""
        cache_key = ("flex_local", seq_len)
        if cache_key not in self._cache:
            from torch.nn.attention.flex_attention import create_block_mask

            def local_mask_mod(batch_idx, head_idx, q_idx, kv_idx):
                return self.local_attention_allowed(q_idx, kv_idx)

            # `_compile` evaluates the rule block by block; uncompiled, it materialises int64 index grids of
            # seq_len**2 (~35 GB at 1080p).
            self._cache[cache_key] = create_block_mask(
                local_mask_mod, None, None, seq_len, seq_len, device=device, _compile=device.type == "cuda"
            )
        return self._cache[cache_key]

    def local_varlen_plan(self, batch_size: int, seq_len: int, device: torch.device) -> dict:
        r"""
        The local-attention rule of [`local_attention_allowed`] as one variable-length attention call over
        `batch_size` unpadded samples of `seq_len` tokens, flattened to `batch_size * seq_len` rows (queries stay in
        place). Sequence `(b, i)` is the queries of video frame `i` against the keys of its window `i - F .. i + F`
        followed by the audio/text keys; a last sequence per sample is its audio/text queries against all its keys.
        Keys are gathered once per layer with `kv_index`. Cached; the model builds it before the blocks run.

        Returns:
            `dict` with `kv_index` (int64 `(total_k,)`), `cu_seqlens_q`, `cu_seqlens_k` (int32), `max_seqlen_q`,
            `max_seqlen_k` (`int`).
        """
        cache_key = ("varlen_local", batch_size, seq_len, str(device))
        if cache_key in self._cache:
            return self._cache[cache_key]
        num_video, per_frame, window = self.num_video_tokens, self.tokens_per_frame, self.frame_receptive_field
        num_frames = num_video // per_frame
        rest = torch.arange(num_video, seq_len)
        every = torch.arange(seq_len)
        pieces, q_lens, k_lens = [], [], []
        for b in range(batch_size):
            offset = b * seq_len
            for frame in range(num_frames):
                start = max(frame - window, 0) * per_frame
                end = min(frame + window + 1, num_frames) * per_frame
                pieces += [torch.arange(start, end) + offset, rest + offset]
                q_lens.append(per_frame)
                k_lens.append(end - start + len(rest))
            if seq_len > num_video:
                pieces.append(every + offset)
                q_lens.append(seq_len - num_video)
                k_lens.append(seq_len)

        def offsets(lengths):
            return torch.tensor([0] + lengths, dtype=torch.int64).cumsum(0).to(device=device, dtype=torch.int32)

        plan = {
            "kv_index": torch.cat(pieces).to(device),
            "cu_seqlens_q": offsets(q_lens),
            "cu_seqlens_k": offsets(k_lens),
            "max_seqlen_q": max(q_lens),
            "max_seqlen_k": max(k_lens),
        }
        self._cache[cache_key] = plan
        return plan

    def modality_ids(self) -> torch.Tensor:
        r"""The modality of every packed token, `(batch_size, seq_len)` int64 on CPU: `MODALITY_VIDEO`,
        `MODALITY_AUDIO`, `MODALITY_TEXT` or padding."""
        rows = []
        for audio, text, length in zip(self.audio_lengths, self.text_lengths, self.seq_lens):
            row = [MODALITY_VIDEO] * self.num_video_tokens + [MODALITY_AUDIO] * audio + [MODALITY_TEXT] * text
            rows.append(row + [_MODALITY_PAD] * (self.seq_len - length))
        return torch.tensor(rows, dtype=torch.int64)

    def shard(self, rank: int, world_size: int, device: torch.device | None = None) -> "MagiHumanTokenLayout":
        r"""
        The layout of one context-parallel rank's shard: tokens `rank * seq_len / world_size` to
        `(rank + 1) * seq_len / world_size` of every sample (the split diffusers' context-parallel hooks make along the
        sequence axis). Its expert routing (`group_sizes`, `permutation`) covers the shard's tokens; its
        `attention_layout` is this (whole-sequence) layout, whose pattern the attention backends apply after
        Ulysses' all-to-all. `seq_len` must be divisible by `world_size` (see `build(pad_to_multiple_of=...)`).
        """
        if self.seq_len % world_size:
            raise ValueError(f"A sequence of {self.seq_len} tokens does not split evenly over {world_size} ranks.")
        local_len = self.seq_len // world_size
        ids = self.modality_ids()[:, rank * local_len : (rank + 1) * local_len].reshape(-1)
        group_sizes = [int((ids == modality).sum()) for modality in (MODALITY_VIDEO, MODALITY_AUDIO, MODALITY_TEXT)]
        group_sizes.append(ids.numel() - sum(group_sizes))
        permutation = inverse = None
        if bool((ids[1:] < ids[:-1]).any()):  # not already sorted by modality
            permutation = torch.argsort(ids, stable=True)
            inverse = torch.argsort(permutation)
            permutation, inverse = permutation.to(device), inverse.to(device)
        return MagiHumanTokenLayout(
            batch_size=self.batch_size,
            seq_len=local_len,
            seq_lens=[local_len] * self.batch_size,
            num_video_tokens=self.num_video_tokens,
            num_frames=self.num_frames,
            tokens_per_frame=self.tokens_per_frame,
            group_sizes=group_sizes,
            permutation=permutation,
            inverse_permutation=inverse,
            frame_receptive_field=self.frame_receptive_field,
            audio_lengths=self.audio_lengths,
            text_lengths=self.text_lengths,
            full_layout=self,
        )

    @classmethod
    def build(
        cls,
        audio_lengths: list[int],
        text_lengths: list[int],
        grid_size: tuple[int, int, int],
        frame_receptive_field: int,
        device: torch.device,
        pad_to_multiple_of: int = 1,
    ) -> "MagiHumanTokenLayout":
        r"""The layout of a batch with these real audio / text lengths; `pad_to_multiple_of` right-pads every sample
        to a common length divisible by it (context parallelism splits the sequence evenly over the ranks)."""
        grid_t, grid_h, grid_w = grid_size
        num_video = grid_t * grid_h * grid_w
        seq_lens = [num_video + a + t for a, t in zip(audio_lengths, text_lengths)]
        seq_len = -(-max(seq_lens) // pad_to_multiple_of) * pad_to_multiple_of
        batch_size = len(seq_lens)
        group_sizes = [
            num_video * batch_size,
            sum(audio_lengths),
            sum(text_lengths),
            sum(seq_len - length for length in seq_lens),
        ]
        layout = cls(
            batch_size=batch_size,
            seq_len=seq_len,
            seq_lens=seq_lens,
            num_video_tokens=num_video,
            num_frames=grid_t,
            tokens_per_frame=grid_h * grid_w,
            group_sizes=group_sizes,
            frame_receptive_field=frame_receptive_field,
            audio_lengths=list(audio_lengths),
            text_lengths=list(text_lengths),
        )
        if batch_size > 1:  # one sample is always sorted: [video | audio | text | padding]
            ids = layout.modality_ids().reshape(-1)
            layout.permutation = torch.argsort(ids, stable=True)
            layout.inverse_permutation = torch.argsort(layout.permutation)
            layout.permutation = layout.permutation.to(device)
            layout.inverse_permutation = layout.inverse_permutation.to(device)
        return layout


def apply_per_modality(module, hidden_states: torch.Tensor, layout: MagiHumanTokenLayout, fn=None):
    r"""
    Applies a shared module, or per-modality experts (one module each for video, audio, text), to packed tokens. There
    is no routing network: a token's expert is its modality. Padding rows get zeros.

    Args:
        module (`nn.Module` or `tuple[nn.Module, nn.Module, nn.Module]`): shared module, or the experts in the order
            video, audio, text (see [`experts_of`]).
        hidden_states (`torch.Tensor` of shape `(batch_size, seq_len, ...)`)
        layout ([`MagiHumanTokenLayout`])
        fn (`Callable[[nn.Module, torch.Tensor], torch.Tensor]`, *optional*): how to call one module (default
            `module(x)`).

    Returns:
        `torch.Tensor` of shape `(batch_size, seq_len, ...)`.
    """
    return apply_per_modality_multi([module], hidden_states, layout, fn)[0]


def apply_per_modality_multi(modules, hidden_states: torch.Tensor, layout: MagiHumanTokenLayout, fn=None):
    r"""
    [`apply_per_modality`] for several modules that read the same input (e.g. `to_q`, `to_k`, `to_v`, `to_gate`):
    the tokens are sorted by modality once for all of them.

    Returns:
        `list[torch.Tensor]`, one output per module.
    """
    if fn is None:

        def fn(m, x):
            return m(x)

    if all(isinstance(module, nn.Module) for module in modules):
        return [fn(module, hidden_states) for module in modules]

    lead_shape = hidden_states.shape[:2]
    flat = hidden_states.flatten(0, 1)
    if layout.permutation is not None:
        flat = flat.index_select(0, layout.permutation)
    chunks = flat.split(layout.group_sizes, dim=0)[:3]  # video, audio, text (the padding rows get zeros)
    num_pad = layout.group_sizes[3]
    results = []
    for module in modules:
        outputs = [fn(expert, chunk) for expert, chunk in zip(module, chunks)]
        if num_pad:
            outputs.append(outputs[0].new_zeros((num_pad,) + outputs[0].shape[1:]))
        out = torch.cat(outputs, dim=0)
        if layout.inverse_permutation is not None:
            out = out.index_select(0, layout.inverse_permutation)
        results.append(out.unflatten(0, lead_shape))
    return results
