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
"""Exact local-attention kernels of the MagiHuman DiT that do not go through diffusers' dispatcher: the compiled
block-sparse flex-attention call, and the original's non-Hopper fallback (per-range attention merged by
log-sum-exp) used for parity checks."""

import torch


_COMPILED_FLEX_ATTENTION = None


def _flex_local_attention(query, key, value, block_mask) -> torch.Tensor:
    r"""One flex-attention call `(B, S, H, D)` -> `(B, S, H, D)` under the local `BlockMask` (GQA native). Outside a
    compiled region it runs a compiled flex kernel: eager flex would materialise the full score matrix."""
    global _COMPILED_FLEX_ATTENTION
    from torch.nn.attention.flex_attention import flex_attention

    fn = flex_attention
    if not torch.compiler.is_compiling():
        if _COMPILED_FLEX_ATTENTION is None:
            _COMPILED_FLEX_ATTENTION = torch.compile(flex_attention, dynamic=False)
        fn = _COMPILED_FLEX_ATTENTION
    q, k, v = (x.transpose(1, 2) for x in (query, key, value))
    out = fn(q, k, v, block_mask=block_mask, scale=query.shape[-1] ** -0.5, enable_gqa=k.shape[1] != q.shape[1])
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
