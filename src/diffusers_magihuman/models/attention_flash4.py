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
"""
FlashAttention-4 (`pip install flash-attn-4`, module `flash_attn.cute`) as two `torch.library` custom ops.

FA4 is a CuTe-DSL kernel that `torch.compile` cannot trace. Wrapped as opaque custom ops with a shape-only "fake"
implementation, it runs inside the compiled DiT blocks without a graph break. diffusers 0.42 only knows FA4 as the
`flash_4_hub` backend (a Hub download, eager only); these ops are what our `magihuman_flash_4` attention backend runs
(see `attention_magihuman.py`), selected by name or automatically when FA4 is installed on a Hopper/Blackwell GPU and
no backend was chosen (see `MagiHumanAttnProcessor`).

Both ops take diffusers' / flash-attn's layout: `(batch, seq_len, heads, head_dim)` (dense) or
`(total_tokens, heads, head_dim)` (varlen), bf16 or fp16 on CUDA; K/V may have fewer heads (GQA, query head `h` uses
K/V head `h // (heads // kv_heads)`).
"""

from __future__ import annotations

import functools

import torch


@functools.lru_cache(maxsize=None)
def _flash_attn_cute():
    try:
        import flash_attn.cute as flash_attn_cute
    except Exception:  # not installed, no CUDA toolchain, or an incompatible cutlass-dsl
        return None
    if not hasattr(flash_attn_cute, "flash_attn_func"):
        return None
    return flash_attn_cute


def is_flash_attention_4_available() -> bool:
    r"""Whether FlashAttention-4 (`flash_attn.cute`) imports here. It says nothing about the GPU: FA4 needs Hopper
    (sm90) or Blackwell (sm100/sm120)."""
    return _flash_attn_cute() is not None


@functools.lru_cache(maxsize=None)
def _cuda_major(index: int) -> int:
    return torch.cuda.get_device_capability(index)[0]


@torch.compiler.assume_constant_result  # evaluated eagerly when traced: no import inside a compiled graph
def flash_attention_4_supported(device: torch.device) -> bool:
    r"""FA4 is installed and `device` is a CUDA GPU it has kernels for (compute capability 9.x or 10+). Asked once per
    attention call, so both answers are cached."""
    if device.type != "cuda" or not is_flash_attention_4_available():
        return False
    return _cuda_major(torch.cuda.current_device() if device.index is None else device.index) >= 9


def _kernels():
    module = _flash_attn_cute()
    if module is None:
        raise RuntimeError(
            "FlashAttention-4 is not installed (`flash_attn.cute` does not import). Install it with "
            "`pip install 'diffusers-magihuman[flash4]'` on a Hopper/Blackwell GPU, or select another attention "
            "backend (e.g. `magihuman_sdpa`) / pass `use_flash_attention_4=False` to the attention processor."
        )
    return module


def _first(out):
    return out[0] if isinstance(out, (tuple, list)) else out


@torch.library.custom_op("diffusers_magihuman::flash_attention_4", mutates_args=())
def flash_attention_4(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, scale: float) -> torch.Tensor:
    r"""Non-causal attention `(B, Sq, H, D), (B, Sk, Hkv, D), (B, Sk, Hkv, D) -> (B, Sq, H, D)`."""
    out = _kernels().flash_attn_func(query, key, value, softmax_scale=scale, causal=False)
    return _first(out).contiguous()


@flash_attention_4.register_fake
def _flash_attention_4_fake(query, key, value, scale):
    return torch.empty_like(query, memory_format=torch.contiguous_format)


@torch.library.custom_op("diffusers_magihuman::flash_attention_4_varlen", mutates_args=())
def flash_attention_4_varlen(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    cu_seqlens_k: torch.Tensor,
    max_seqlen_q: int,
    max_seqlen_k: int,
    scale: float,
) -> torch.Tensor:
    r"""
    Non-causal attention of packed variable-length sequences: `query (Tq, H, D)`, `key`/`value (Tk, Hkv, D)`;
    sequence `i` is queries `cu_seqlens_q[i]:cu_seqlens_q[i+1]` against keys `cu_seqlens_k[i]:cu_seqlens_k[i+1]`
    (int32 offsets). Returns `(Tq, H, D)`.
    """
    out = _kernels().flash_attn_varlen_func(
        query,
        key,
        value,
        cu_seqlens_q=cu_seqlens_q,
        cu_seqlens_k=cu_seqlens_k,
        max_seqlen_q=max_seqlen_q,
        max_seqlen_k=max_seqlen_k,
        softmax_scale=scale,
        causal=False,
    )
    return _first(out).contiguous()


@flash_attention_4_varlen.register_fake
def _flash_attention_4_varlen_fake(query, key, value, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, scale):
    return torch.empty_like(query, memory_format=torch.contiguous_format)
