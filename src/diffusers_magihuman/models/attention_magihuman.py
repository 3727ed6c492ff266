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
"""Attention kernels of the MagiHuman DiT and the attention backends that reach them through diffusers' dispatcher.

* `magihuman_flash_4`, `magihuman_local_flex`, `magihuman_sdpa`: attention backends (functions with the signature of
  diffusers' backends) that `transformer.set_attention_backend(name)` / `diffusers.attention_backend(name)` select once
  the package is imported. They understand the model's own attention pattern, passed as `attn_mask` (a
  [`MagiHumanAttentionMask`]): padded batches and the SR-1080p local windows, and run under diffusers' Ulysses context
  parallelism.
* The original's non-Hopper local fallback (per-range attention merged by log-sum-exp), kept for parity checks only.
"""

import functools
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from .attention_flash4 import _kernels, flash_attention_4, flash_attention_4_varlen


_COMPILED_FLEX_ATTENTION = None


def _flex_local_attention(query, key, value, block_mask, scale=None) -> torch.Tensor:
    r"""One flex-attention call `(B, S, H, D)` -> `(B, S, H, D)` under the local `BlockMask` (GQA native). Outside a
    compiled region it runs a compiled flex kernel: eager flex would materialise the full score matrix."""
    global _COMPILED_FLEX_ATTENTION
    from torch.nn.attention.flex_attention import flex_attention

    fn = flex_attention
    if not torch.compiler.is_compiling():
        if _COMPILED_FLEX_ATTENTION is None:
            _COMPILED_FLEX_ATTENTION = torch.compile(flex_attention, dynamic=False)
        fn = _COMPILED_FLEX_ATTENTION
    if scale is None:
        scale = query.shape[-1] ** -0.5
    q, k, v = (x.transpose(1, 2) for x in (query, key, value))
    out = fn(q, k, v, block_mask=block_mask, scale=scale, enable_gqa=k.shape[1] != q.shape[1])
    return out.transpose(1, 2)


def _attention_with_lse(query, key, value, out_dtype=torch.bfloat16) -> tuple[torch.Tensor, torch.Tensor]:
    # fp32 attention of one key range: output rounded to `out_dtype` (bf16 in the original) and fp32 log-sum-exp
    # `[B, Lq, H]`, like a flash-attn call.
    heads, kv_heads = query.shape[2], key.shape[2]
    query, key, value = query.float(), key.float(), value.float()
    if kv_heads != heads:
        key = key.repeat_interleave(heads // kv_heads, dim=2)
        value = value.repeat_interleave(heads // kv_heads, dim=2)
    scores = torch.einsum("bqhd,bkhd->bhqk", query, key) * query.shape[-1] ** -0.5
    lse = torch.logsumexp(scores, dim=-1)
    out = torch.einsum("bhqk,bkhd->bqhd", torch.softmax(scores, dim=-1), value)
    return out.to(out_dtype), lse.transpose(1, 2)


def _upstream_local_fallback(
    query, key, value, num_video: int, per_frame: int, window: int, out_dtype: torch.dtype = torch.bfloat16
) -> torch.Tensor:
    r"""
    The original's non-Hopper local attention (`_custom_flex_flash_attn_func`): per video frame, one attention
    over the local video window and one over the audio+text keys, each rounded to bf16, merged in fp32 by log-sum-exp
    and rounded to bf16 again; audio/text queries attend to everything in one call. Numerically this differs from one
    softmax only by that intermediate bf16 rounding.
    """
    num_frames = num_video // per_frame
    seq_len = key.shape[1]
    outputs = []
    for frame in range(num_frames):
        q = query[:, frame * per_frame : (frame + 1) * per_frame]
        start = max(frame - window, 0) * per_frame
        end = min(frame + window + 1, num_frames) * per_frame
        out, lse = _attention_with_lse(q, key[:, start:end], value[:, start:end], out_dtype)
        if seq_len > num_video:
            out_r, lse_r = _attention_with_lse(q, key[:, num_video:], value[:, num_video:], out_dtype)
            max_lse = torch.maximum(lse, lse_r)
            se, se_r = torch.exp(lse - max_lse), torch.exp(lse_r - max_lse)
            sum_se = se + se_r
            out = out * (se / sum_se).unsqueeze(-1) + out_r * (se_r / sum_se).unsqueeze(-1)
        outputs.append(out.to(out_dtype))
    if seq_len > num_video:
        outputs.append(_attention_with_lse(query[:, num_video:], key, value, out_dtype)[0])
    return torch.cat(outputs, dim=1)


# ---------------------------------------------------------------------------------------------------------------------
# MagiHuman attention backends (selected by name through diffusers' dispatcher)
# ---------------------------------------------------------------------------------------------------------------------

# Our backend names and what they run. `register_magihuman_extensions()` (in `_diffusers_compat.py`) adds them to
# diffusers' `AttentionBackendName` and attention-backend registry at package import, so that
# `transformer.set_attention_backend(name)` and `diffusers.attention_backend(name)` select them.
MAGIHUMAN_FLASH_4 = "magihuman_flash_4"
MAGIHUMAN_LOCAL_FLEX = "magihuman_local_flex"
MAGIHUMAN_SDPA = "magihuman_sdpa"
MAGIHUMAN_ATTENTION_BACKENDS = {
    MAGIHUMAN_FLASH_4: "FlashAttention-4 (`flash_attn.cute`, Hopper/Blackwell, inference only): dense calls on the "
    "FA4 kernel, local layers as one FA4 variable-length call (each query frame against its window + audio/text).",
    MAGIHUMAN_LOCAL_FLEX: "PyTorch SDPA for dense calls, one compiled block-sparse flex-attention call (a `BlockMask` "
    "of the local rule) for local layers.",
    MAGIHUMAN_SDPA: "PyTorch SDPA for dense calls, one SDPA call per query frame (its window + audio/text keys) for "
    "local layers. Any device; the exact reference of the two above.",
}
# The kernel each of our backends runs local layers with (the names of `MagiHumanAttnProcessor.local_attn_kernel`).
MAGIHUMAN_LOCAL_KERNELS = {MAGIHUMAN_FLASH_4: "varlen", MAGIHUMAN_LOCAL_FLEX: "flex", MAGIHUMAN_SDPA: "per_frame"}

# name -> diffusers `AttentionBackendName` member, filled by `register_magihuman_extensions()`. Empty when diffusers'
# registry could not be extended; the processor then calls the backend functions directly.
_BACKEND_MEMBERS: dict = {}


def magihuman_backend_member(name: str):
    r"""The diffusers `AttentionBackendName` member of one of our backend names, or `None` if not registered."""
    return _BACKEND_MEMBERS.get(name)


@dataclass(eq=False)
class MagiHumanAttentionMask:
    r"""
    The attention pattern of one packed MagiHuman batch, passed as `attn_mask` to our attention backends (stock
    backends never receive it). It is not a tensor: the backends read the token layout and compute the pattern with
    their own kernel.

    * Padded batches (samples of different lengths): each sample attends only among its `layout.seq_lens[b]` real
      tokens; padding rows neither attend nor are attended (their output is zero).
    * `is_local` (SR-1080p local layers): a video query of latent frame `i` sees the video keys of frames
      `i - F .. i + F` and all audio/text keys; audio/text queries see every key of their sample
      (see `MagiHumanTokenLayout.local_attention_allowed`).

    Args:
        layout ([`MagiHumanTokenLayout`]): the layout of the full (unsharded) packed sequence.
        is_local (`bool`): apply the local rule.
    """

    layout: Any
    is_local: bool = False

    def is_trivial(self) -> bool:
        r"""Whether this pattern is plain full attention (no padding; global, or a window covering every frame)."""
        return not self.layout.has_padding and not self.local_window_applies()

    def local_window_applies(self) -> bool:
        layout = self.layout
        window = layout.frame_receptive_field
        return self.is_local and 0 <= window < layout.num_frames - 1


def _sdpa(query, key, value, scale) -> torch.Tensor:
    # `(B, S, H, D)` in and out, GQA by fewer K/V heads (query head h uses K/V head h // group), exactly the call of
    # diffusers' `native` backend.
    q, k, v = (x.permute(0, 2, 1, 3) for x in (query, key, value))
    out = F.scaled_dot_product_attention(q, k, v, scale=scale, enable_gqa=k.shape[1] != q.shape[1])
    return out.permute(0, 2, 1, 3)


def _flash_4_dense(query, key, value, scale) -> torch.Tensor:
    return flash_attention_4(query, key, value, scale)


def _local_per_frame(query, key, value, layout, scale, dense) -> torch.Tensor:
    # One dense call per query frame over the keys of its window + all audio/text keys, and one for the audio/text
    # queries over every key: the same single softmax as the masked call, without a mask.
    num_video, per_frame, window = layout.num_video_tokens, layout.tokens_per_frame, layout.frame_receptive_field
    num_frames = num_video // per_frame
    key_rest, value_rest = key[:, num_video:], value[:, num_video:]
    outputs = []
    for frame in range(num_frames):
        start = max(frame - window, 0) * per_frame
        end = min(frame + window + 1, num_frames) * per_frame
        outputs.append(
            dense(
                query[:, frame * per_frame : (frame + 1) * per_frame],
                torch.cat([key[:, start:end], key_rest], dim=1),
                torch.cat([value[:, start:end], value_rest], dim=1),
                scale,
            )
        )
    if query.shape[1] > num_video:
        outputs.append(dense(query[:, num_video:], key, value, scale))
    return torch.cat(outputs, dim=1)


def _local_varlen(query, key, value, layout, scale) -> torch.Tensor:
    # One FA4 varlen call: queries in place, each frame's keys (window + audio/text) gathered once.
    batch_size, seq_len = query.shape[:2]
    plan = layout.local_varlen_plan(batch_size, seq_len, query.device)
    key = key.flatten(0, 1).index_select(0, plan["kv_index"])
    value = value.flatten(0, 1).index_select(0, plan["kv_index"])
    out = flash_attention_4_varlen(
        query.flatten(0, 1),
        key,
        value,
        plan["cu_seqlens_q"],
        plan["cu_seqlens_k"],
        plan["max_seqlen_q"],
        plan["max_seqlen_k"],
        scale,
    )
    return out.unflatten(0, (batch_size, seq_len))


def _local_flex(query, key, value, layout, scale) -> torch.Tensor:
    return _flex_local_attention(query, key, value, layout.local_block_mask(query.shape[1], query.device), scale)


_DENSE_KERNELS = {MAGIHUMAN_FLASH_4: _flash_4_dense, MAGIHUMAN_LOCAL_FLEX: _sdpa, MAGIHUMAN_SDPA: _sdpa}


def _attend_sample(query, key, value, mask: MagiHumanAttentionMask, scale, backend: str) -> torch.Tensor:
    dense = _DENSE_KERNELS[backend]
    if not mask.local_window_applies():
        return dense(query, key, value, scale)
    layout = mask.layout
    if backend == MAGIHUMAN_FLASH_4:
        return _local_varlen(query, key, value, layout, scale)
    if backend == MAGIHUMAN_LOCAL_FLEX:
        return _local_flex(query, key, value, layout, scale)
    return _local_per_frame(query, key, value, layout, scale, dense)


def _attend(query, key, value, mask: MagiHumanAttentionMask | None, scale, backend: str) -> torch.Tensor:
    r"""Our backends' attention on whole sequences `(B, S, H, D)` (`S` = the full packed length under `mask`)."""
    if mask is None:
        return _DENSE_KERNELS[backend](query, key, value, scale)
    layout = mask.layout
    if query.shape[1] != layout.seq_len or key.shape[1] != layout.seq_len:
        raise ValueError(
            f"The MagiHuman attention mask describes {layout.seq_len} tokens, but the query/key have "
            f"{query.shape[1]}/{key.shape[1]}."
        )
    if not layout.has_padding:
        return _attend_sample(query, key, value, mask, scale, backend)
    # Attend sample by sample on its real tokens: padding neither attends nor is attended, and each sample gives the
    # same result as alone (no key-padding mask needed, so every kernel applies).
    out = query.new_zeros(query.shape)
    for b, length in enumerate(layout.seq_lens):
        out[b : b + 1, :length] = _attend_sample(
            query[b : b + 1, :length], key[b : b + 1, :length], value[b : b + 1, :length], mask, scale, backend
        )
    return out


def _check_call(backend: str, query, attn_mask, dropout_p: float, is_causal: bool) -> None:
    if attn_mask is not None and not isinstance(attn_mask, MagiHumanAttentionMask):
        raise ValueError(
            f"The `{backend}` attention backend takes no tensor `attn_mask` (only the MagiHuman DiT's own attention "
            f"pattern); got {type(attn_mask).__name__}. Use a stock backend such as `native` for masked attention."
        )
    if dropout_p or is_causal:
        raise ValueError(f"The `{backend}` attention backend supports neither dropout nor causal attention.")
    if backend == MAGIHUMAN_FLASH_4 and not torch.compiler.is_compiling():
        if torch.is_grad_enabled() and query.requires_grad:
            raise RuntimeError(
                "The `magihuman_flash_4` attention backend (FlashAttention-4) is inference-only (no backward). For "
                "training, select another backend (e.g. `native`) or leave the choice automatic."
            )
        _kernels()  # raises a clear error when FA4 is not installed


def _context_parallel_forward_op(
    ctx,
    query,
    key,
    value,
    attn_mask,
    dropout_p,
    is_causal,
    scale,
    enable_gqa,
    return_lse,
    _save_ctx=True,
    _parallel_config=None,
    *,
    mask=None,
    backend=MAGIHUMAN_SDPA,
):
    # Called by diffusers' Ulysses template after its all-to-all: q/k/v hold the whole sequence for this rank's
    # head group, so the MagiHuman pattern (padding, local windows) applies unchanged.
    if return_lse:
        raise ValueError(f"The `{backend}` attention backend does not return the log-sum-exp (ring attention).")
    if _save_ctx:
        ctx.save_for_backward(query, key, value)
        ctx.magihuman_mask, ctx.magihuman_scale, ctx.magihuman_backend = mask, scale, backend
    return _attend(query, key, value, mask, scale, backend)


def _context_parallel_backward_op(ctx, grad_out, *args, **kwargs):
    query, key, value = (x.detach().requires_grad_(True) for x in ctx.saved_tensors)
    with torch.enable_grad():
        out = _attend(query, key, value, ctx.magihuman_mask, ctx.magihuman_scale, ctx.magihuman_backend)
        grads = torch.autograd.grad(out, (query, key, value), grad_outputs=grad_out)
    return grads


def _magihuman_attention(
    backend: str, query, key, value, attn_mask, dropout_p, is_causal, scale, _parallel_config
) -> torch.Tensor:
    _check_call(backend, query, attn_mask, dropout_p, is_causal)
    if scale is None:
        scale = query.shape[-1] ** -0.5
    if _parallel_config is None:
        return _attend(query, key, value, attn_mask, scale, backend)

    cp_config = _parallel_config.context_parallel_config
    if cp_config.ring_degree > 1:
        raise ValueError(
            f"The `{backend}` attention backend supports Ulysses context parallelism only "
            f"(`ContextParallelConfig(ulysses_degree=N)`), not ring attention (ring_degree={cp_config.ring_degree}): "
            "its padding and local-window pattern needs each rank to hold whole sequences."
        )
    degree = cp_config.ulysses_degree
    heads, kv_heads = query.shape[2], key.shape[2]
    if heads % degree or kv_heads % degree:
        raise ValueError(
            f"Ulysses over {degree} ranks needs the query heads ({heads}) and key/value heads ({kv_heads}) divisible "
            "by it."
        )
    if not (torch.is_grad_enabled() and any(x.requires_grad for x in (query, key, value))):
        return _ulysses_inference(query, key, value, attn_mask, scale, backend, cp_config)

    # With gradients: diffusers' Ulysses autograd function, which splits q and k/v by the same head count.
    from diffusers.models.attention_dispatch import _templated_context_parallel_attention

    if kv_heads != heads:
        key = key.repeat_interleave(heads // kv_heads, dim=2)
        value = value.repeat_interleave(heads // kv_heads, dim=2)
    forward_op = functools.partial(_context_parallel_forward_op, mask=attn_mask, backend=backend)
    return _templated_context_parallel_attention(
        query,
        key,
        value,
        None,
        0.0,
        False,
        scale,
        False,
        False,
        forward_op=forward_op,
        backward_op=_context_parallel_backward_op,
        _parallel_config=_parallel_config,
    )


def _ulysses_inference(query, key, value, mask, scale, backend: str, cp_config) -> torch.Tensor:
    # Ulysses with grouped K/V heads, using diffusers' all-to-all: each rank gathers the whole sequence for a
    # contiguous slice of the query heads and the matching slice of the K/V heads (rank r: query heads r*H/N ..
    # (r+1)*H/N - 1 use K/V heads r*Hkv/N .. (r+1)*Hkv/N - 1 under the mapping h -> h // (H/Hkv)), attends under the
    # full pattern, and sends the result back. K/V travel with their own head count, not repeated to the query's
    # (5x less K/V traffic for the 40/8 heads of the released model).
    from diffusers.models.attention_dispatch import _all_to_all_dim_exchange

    group = cp_config._ulysses_mesh.get_group()
    query, key, value = (_all_to_all_dim_exchange(x.contiguous(), 2, 1, group) for x in (query, key, value))
    out = _attend(query, key, value, mask, scale, backend)
    return _all_to_all_dim_exchange(out.contiguous(), 1, 2, group)


def magihuman_flash_4_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attn_mask: MagiHumanAttentionMask | None = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    scale: float | None = None,
    enable_gqa: bool = False,
    _parallel_config=None,
) -> torch.Tensor:
    r"""
    The `magihuman_flash_4` attention backend: FlashAttention-4 custom ops (traceable by `torch.compile`).

    Args:
        query (`torch.Tensor` of shape `(batch_size, seq_len, heads, head_dim)`), key, value (`torch.Tensor` of shape
            `(batch_size, seq_len, kv_heads, head_dim)`): bf16/fp16 on a Hopper/Blackwell GPU; `kv_heads` may divide
            `heads` (GQA).
        attn_mask ([`MagiHumanAttentionMask`], *optional*): padding / local-window pattern; local layers run as one
            FA4 variable-length call.
        scale (`float`, *optional*): softmax scale, `head_dim ** -0.5` by default.
        enable_gqa (`bool`): ignored, GQA is read from the shapes.
        _parallel_config: diffusers' context-parallel config (Ulysses only).

    Returns:
        `torch.Tensor` of shape `(batch_size, seq_len, heads, head_dim)`.
    """
    return _magihuman_attention(
        MAGIHUMAN_FLASH_4, query, key, value, attn_mask, dropout_p, is_causal, scale, _parallel_config
    )


def magihuman_local_flex_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attn_mask: MagiHumanAttentionMask | None = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    scale: float | None = None,
    enable_gqa: bool = False,
    _parallel_config=None,
) -> torch.Tensor:
    r"""The `magihuman_local_flex` attention backend: SDPA for dense calls, one block-sparse flex-attention call for
    local layers. Arguments and shapes as [`magihuman_flash_4_attention`], any dtype and device."""
    return _magihuman_attention(
        MAGIHUMAN_LOCAL_FLEX, query, key, value, attn_mask, dropout_p, is_causal, scale, _parallel_config
    )


def magihuman_sdpa_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attn_mask: MagiHumanAttentionMask | None = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    scale: float | None = None,
    enable_gqa: bool = False,
    _parallel_config=None,
) -> torch.Tensor:
    r"""The `magihuman_sdpa` attention backend: SDPA for dense calls, one SDPA call per query frame for local layers.
    Arguments and shapes as [`magihuman_flash_4_attention`], any dtype and device."""
    return _magihuman_attention(
        MAGIHUMAN_SDPA, query, key, value, attn_mask, dropout_p, is_causal, scale, _parallel_config
    )


MAGIHUMAN_BACKEND_FUNCTIONS = {
    MAGIHUMAN_FLASH_4: magihuman_flash_4_attention,
    MAGIHUMAN_LOCAL_FLEX: magihuman_local_flex_attention,
    MAGIHUMAN_SDPA: magihuman_sdpa_attention,
}
