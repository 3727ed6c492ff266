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
"""The daVinci-MagiHuman single-stream audio+video DiT as a diffusers model.

The model packs a video latent, an audio latent and text embeddings into one token sequence (video, then audio, then
the real text rows), runs a stack of pre-norm transformer layers over it and unpacks the video and audio predictions.
The original code is GAIR-NLP/daVinci-MagiHuman, ``inference/model/dit/dit_module.py`` and
``inference/pipeline/data_proxy.py``; comments say where this port follows it on purpose.
"""

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.loaders import PeftAdapterMixin
from diffusers.models.attention import AttentionMixin, AttentionModuleMixin
from diffusers.models.attention_dispatch import dispatch_attention_fn
from diffusers.models.cache_utils import CacheMixin
from diffusers.models.modeling_utils import ModelMixin
from diffusers.utils import BaseOutput, apply_lora_scale, logging
from diffusers.utils.torch_utils import maybe_allow_in_graph

from .attention_flash4 import flash_attention_4_supported, is_flash_attention_4_available
from .attention_magihuman import (  # noqa: F401  (MAGIHUMAN_ATTENTION_BACKENDS is re-exported)
    MAGIHUMAN_ATTENTION_BACKENDS,
    MAGIHUMAN_BACKEND_FUNCTIONS,
    MAGIHUMAN_FLASH_4,
    MAGIHUMAN_LOCAL_FLEX,
    MAGIHUMAN_LOCAL_KERNELS,
    MAGIHUMAN_SDPA,
    MagiHumanAttentionMask,
    _local_per_frame,
    _upstream_local_fallback,
    magihuman_backend_member,
)
from .magihuman_legacy_keys import check_not_legacy_folder
from .magihuman_packing import (  # noqa: F401  (re-exported: the public names of this module)
    _MODALITY_PAD,
    MODALITIES,
    MODALITY_AUDIO,
    MODALITY_TEXT,
    MODALITY_VIDEO,
    MagiHumanTokenLayout,
    apply_per_modality,
    apply_per_modality_multi,
    get_magihuman_coords,
    patchify_video,
    unpatchify_video,
)
from .rope_magihuman import MagiHumanRotaryPosEmbed, apply_magihuman_rotary_emb  # noqa: F401


try:  # diffusers' context-parallel plan types (private module, as in diffusers' own transformers)
    from diffusers.models._modeling_parallel import ContextParallelInput, ContextParallelOutput
except ImportError:  # pragma: no cover - a diffusers without context parallelism
    ContextParallelInput = ContextParallelOutput = None


logger = logging.get_logger(__name__)  # pylint: disable=invalid-name




_LOCAL_ATTN_KERNELS = ("auto", "varlen", "per_frame", "flex")

# Attention backends that accept `enable_gqa=True` (K/V with fewer heads, query head h -> kv head h // group).
# (`_native_efficient` is not one: torch's memory-efficient kernel rejects unequal head counts, seen on an H200.)
_GQA_FLAG_BACKENDS = {"native", "_native_math", "_native_flash", "_native_cudnn", "flex", "xformers"}
# Attention backends whose kernels take fewer K/V heads natively, with the same head mapping (flash-attn convention).
# (Our own backends take fewer K/V heads too: see `MAGIHUMAN_ATTENTION_BACKENDS`.)
_GQA_NATIVE_BACKENDS = {
    "flash",
    "flash_hub",
    "flash_varlen",
    "flash_varlen_hub",
    "flash_4_hub",
    "_flash_3",
    "_flash_varlen_3",
    "_flash_3_hub",
    "_flash_3_varlen_hub",
}


@dataclass
class MagiHumanTransformerOutput(BaseOutput):
    """
    The output of [`MagiHumanTransformer3DModel`].

    Args:
        sample (`torch.Tensor` of shape `(batch_size, num_channels, num_frames, height, width)`):
            The video prediction (a flow velocity), float32.
        audio_sample (`torch.Tensor` of shape `(batch_size, audio_sequence_length, audio_channels)`):
            The audio prediction, float32. Rows marked as padding by `audio_attention_mask` are zero.
    """

    sample: torch.Tensor
    audio_sample: torch.Tensor


# ---------------------------------------------------------------------------------------------------------------------
# Small numerics helpers
# ---------------------------------------------------------------------------------------------------------------------


def _is_plain_linear(module: nn.Module) -> bool:
    # A bare `nn.Linear` without accelerate / diffusers hooks: safe to call `F.linear` on its (cast) weight directly.
    return type(module) is nn.Linear and not hasattr(module, "_hf_hook") and not hasattr(module, "_diffusers_hook")


def linear_compute_dtype(module: nn.Module) -> torch.dtype | None:
    r"""
    The dtype a block linear computes in: the compute dtype of a layerwise-casting hook, else that of the wrapped
    layer (PEFT's `base_layer`), else the floating dtype of its weight (a `compute_dtype` attribute for quantized
    layers such as GGUF's). `None` when unknown (e.g. 4-bit storage): the input is then passed unchanged.
    """
    registry = getattr(module, "_diffusers_hook", None)
    if registry is not None:
        hook = registry.get_hook("layerwise_casting")
        if hook is not None:
            return hook.compute_dtype
    base_layer = getattr(module, "base_layer", None)
    if isinstance(base_layer, nn.Module):
        return linear_compute_dtype(base_layer)
    compute_dtype = getattr(module, "compute_dtype", None)
    if isinstance(compute_dtype, torch.dtype):
        return compute_dtype
    weight = getattr(module, "weight", None)
    if isinstance(weight, torch.Tensor) and weight.dtype.is_floating_point and weight.dtype.itemsize >= 2:
        return weight.dtype
    return None


def apply_linear(module: nn.Module, hidden_states: torch.Tensor) -> torch.Tensor:
    r"""
    Calls a block linear in the dtype of its weights (see [`linear_compute_dtype`]): the input is cast to it and the
    result stays in it. With bf16 weights this is the original's arithmetic (bf16 inputs and weights, fp32 accumulation
    inside the kernel, bf16 result); fp32 / fp16 weights, layerwise casting and adapters compute in their own dtype.

    Args:
        module (`nn.Module`): an `nn.Linear` or a drop-in replacement (PEFT, quantized, hooked).
        hidden_states (`torch.Tensor` of shape `(..., in_features)`): any floating dtype.

    Returns:
        `torch.Tensor` of shape `(..., out_features)` in the compute dtype.
    """
    dtype = linear_compute_dtype(module)
    if dtype is not None:
        hidden_states = hidden_states.to(dtype)
    return module(hidden_states)


def experts_compute_dtype(owner: nn.Module, name: str, default: torch.dtype) -> torch.dtype:
    r"""Compute dtype of the linear `owner.<name>` (the video expert in modality-expert layers), or `default`."""
    module = experts_of(owner, name)
    if not isinstance(module, nn.Module):
        module = module[0]
    if isinstance(module, nn.ModuleList):  # `to_out = [Linear, Dropout]`
        module = module[0]
    dtype = linear_compute_dtype(module)
    return default if dtype is None else dtype


def gelu7(hidden_states: torch.Tensor, alpha: float = 1.702, limit: float = 7.0) -> torch.Tensor:
    r"""`z * sigmoid(1.702 z)` with `z = min(x, 7)`, in fp32. No lower clamp."""
    hidden_states = hidden_states.float().clamp(max=limit)
    return hidden_states * torch.sigmoid(alpha * hidden_states)


def swiglu7(gate: torch.Tensor, linear: torch.Tensor, alpha: float = 1.702, limit: float = 7.0) -> torch.Tensor:
    r"""
    GPT-OSS style clamped SwiGLU in fp32: `g' sigmoid(1.702 g') (l' + 1)` with `g' = min(g, 7)` and
    `l' = clamp(l, -7, 7)`. Note the **+1** on the linear branch.
    """
    gate = gate.float().clamp(max=limit)
    linear = linear.float().clamp(min=-limit, max=limit)
    return gate * torch.sigmoid(alpha * gate) * (linear + 1)


# ---------------------------------------------------------------------------------------------------------------------
# Packing, coordinates, token layout
class MagiHumanModalityExperts(nn.Module):
    r"""
    One modality's modules of a modality-expert layer (norms and linears, no forward of its own). The layer holds three,
    named `video`, `audio` and `text`, so an expert's path ends like the shared module's (`blocks.0.attn.video.to_q`
    vs `blocks.1.attn.to_q`) and the usual LoRA target lists (`["to_q", "to_k", "to_v", "to_out.0"]`) reach it.
    """


def _add_modules(owner: nn.Module, name: str, factory, num_experts: int) -> None:
    # Shared layers get `owner.<name>`; modality-expert layers get `owner.video.<name>`, `owner.audio.<name>`,
    # `owner.text.<name>`, each a real module, so PEFT targets, quantizers and layerwise casting see plain
    # `nn.Linear`s.
    if num_experts == 1:
        owner.add_module(name, factory())
        return
    for modality in MODALITIES:
        if modality not in owner._modules:
            owner.add_module(modality, MagiHumanModalityExperts())
        owner._modules[modality].add_module(name, factory())


def experts_of(owner: nn.Module, name: str):
    r"""The shared module `owner.<name>`, or the experts `(owner.video.<name>, owner.audio.<name>, owner.text.<name>)`.

    Returns:
        `nn.Module` or `tuple[nn.Module, nn.Module, nn.Module]`.
    """
    if name in owner._modules:
        return owner._modules[name]
    return tuple(owner._modules[modality]._modules[name] for modality in MODALITIES)


def _apply_out(module: nn.ModuleList, hidden_states: torch.Tensor) -> torch.Tensor:
    # `to_out = ModuleList([Linear, Dropout])`, as in diffusers' `Attention`.
    return module[1](apply_linear(module[0], hidden_states))


def _out_factory(in_features: int, out_features: int):
    return lambda: nn.ModuleList([nn.Linear(in_features, out_features, bias=False), nn.Dropout(0.0)])


def _linear_factory(in_features: int, out_features: int):
    return lambda: nn.Linear(in_features, out_features, bias=False)


def _norm_factory(dim: int, eps: float):
    return lambda: MagiHumanRMSNorm(dim, eps=eps)


# ---------------------------------------------------------------------------------------------------------------------
# Modules
# ---------------------------------------------------------------------------------------------------------------------


class MagiHumanRMSNorm(nn.Module):
    r"""
    RMSNorm whose weight is stored **as an offset from 1**: `y = rms(x) * (1 + weight)`, math in fp32, result
    in the input dtype. A fresh norm (zero weight) is the identity scale.

    Args:
        dim (`int`): normalised width (last axis).
        eps (`float`, defaults to `1e-6`).
    """

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.zeros(dim, dtype=torch.float32))

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        input_dtype = hidden_states.dtype
        hidden_states = hidden_states.float()
        hidden_states = hidden_states * torch.rsqrt(torch.mean(hidden_states**2, dim=-1, keepdim=True) + self.eps)
        return (hidden_states * (self.weight.float() + 1)).to(input_dtype)


def _resolve_backend_name(backend) -> str:
    # The name of `backend` (an `AttentionBackendName` member or a string), or of diffusers' active backend for `None`.
    if backend is None:
        try:
            from diffusers.models.attention_dispatch import _AttentionBackendRegistry

            backend = _AttentionBackendRegistry.get_active_backend()[0]
        except (ImportError, AttributeError):  # private API; fall back to the default backend
            return "native"
    return getattr(backend, "value", str(backend))


def _needs_grad(query: torch.Tensor) -> bool:
    return torch.is_grad_enabled() and query.requires_grad


class MagiHumanAttnProcessor:
    r"""
    Attention processor of MagiHuman: q/k/v/gate projections (per modality in mm layers), per-head q/k RMSNorm,
    coordinate RoPE in fp32, q/k/v in the projections' dtype, attention through diffusers' `dispatch_attention_fn`,
    per-head sigmoid gating and the output projection.

    Global layers attend over the whole packed sample. Local layers (SR-1080p) let a video token of latent frame
    `i` see the video tokens of frames `i - F .. i + F` plus all audio and text tokens, while audio and text tokens see
    everything: one softmax over that union. Samples of a padded batch attend among their real tokens only.

    Every kernel is an attention backend reached through `dispatch_attention_fn`:

    * our backends (`magihuman_flash_4`, `magihuman_local_flex`, `magihuman_sdpa`) receive the pattern as
      `attn_mask` (a [`MagiHumanAttentionMask`]) and compute it in one call: FA4 varlen, one flex `BlockMask` call,
      or one SDPA call per query frame for the local layers;
    * stock backends take no such mask, so the processor calls them sample by sample on the real tokens, and for
      local layers once per query frame over the gathered keys of its window plus the audio/text keys (the same masked
      softmax); the stock `flex` backend gets a `BlockMask` instead.

    With no backend chosen (`set_attention_backend`, `attention_backend(...)`), attention runs on `magihuman_flash_4`
    when FlashAttention-4 is installed, the tensors are on a Hopper/Blackwell GPU and no gradient is needed, and on
    diffusers' default (`native` SDPA) otherwise. Under context parallelism (Ulysses), calls that need the pattern
    (padding, local layers) run on `magihuman_sdpa` when a stock backend is chosen, since the pattern must be applied
    after the all-to-all, where each rank holds whole sequences.

    Args:
        upcast (`bool`, *optional*):
            Run the attention kernel on fp32 copies of the bf16 q/k/v and round its output to bf16, which is how the
            reference fixtures were computed. `None` (default) does so on CPU only; on accelerators the bf16 tensors go
            to the kernel as in the original.
        local_attn_mode (`str`, defaults to `"masked"`):
            `"masked"`: one softmax over the union of the local ranges (see above). `"upstream_fallback"`: reproduce
            the original's non-Hopper fallback bit for bit (one fp32 attention per key range, each rounded to bf16,
            merged by log-sum-exp in fp32). Meant for parity checks; it ignores the attention backend.
        local_attn_kernel (`str`, defaults to `"auto"`):
            Pins the kernel of `"masked"` local layers whatever the backend: `"varlen"` (the `magihuman_flash_4`
            backend: one FA4 variable-length call, each query frame a sequence against its window + audio/text keys),
            `"flex"` (the `magihuman_local_flex` backend, or the stock `flex` backend with a `BlockMask` when that is
            the chosen one), `"per_frame"` (one call of the chosen backend per query frame). `"auto"`: the local kernel
            of the backend in use (`varlen` for `magihuman_flash_4`, `flex` for `magihuman_local_flex` and `flex`,
            `per_frame` otherwise). One SR-1080p forward on an H200 (5 s clip, compiled): varlen FA4 6.00 s,
            per-frame SDPA 6.70 s, flex 7.80 s (docs/performance.md).
        use_flash_attention_4 (`bool`, *optional*):
            `None` (default): the automatic choice above. `True`: always `magihuman_flash_4` (raises if FA4 is not
            installed or gradients are needed); `False`: never automatically (an explicitly chosen
            `magihuman_flash_4` backend still runs).
    """

    _attention_backend = None
    _parallel_config = None

    def __init__(
        self,
        upcast: bool | None = None,
        local_attn_mode: str = "masked",
        local_attn_kernel: str = "auto",
        use_flash_attention_4: bool | None = None,
    ):
        if local_attn_mode not in ("masked", "upstream_fallback"):
            raise ValueError(f"`local_attn_mode` must be 'masked' or 'upstream_fallback', got {local_attn_mode!r}.")
        if local_attn_kernel not in _LOCAL_ATTN_KERNELS:
            raise ValueError(f"`local_attn_kernel` must be one of {_LOCAL_ATTN_KERNELS}, got {local_attn_kernel!r}.")
        if local_attn_kernel == "varlen" and use_flash_attention_4 is False:
            raise ValueError("`local_attn_kernel='varlen'` runs on FlashAttention-4; it needs `use_flash_attention_4`.")
        self.local_attn_kernel = local_attn_kernel
        self.upcast = upcast
        self.local_attn_mode = local_attn_mode
        self.use_flash_attention_4 = use_flash_attention_4

    # -- which backend --------------------------------------------------------------------------------------------------

    def _automatic_flash_attention_4(self, device: torch.device) -> bool:
        # FA4 is the automatic choice only when nothing else was asked for.
        if self.use_flash_attention_4 is not None or self._attention_backend is not None or self.upcast:
            return False
        if _resolve_backend_name(None) != "native":  # a backend chosen globally (`attention_backend(...)`, env)
            return False
        return flash_attention_4_supported(device)

    def uses_flash_attention_4(self, device: torch.device) -> bool:
        r"""Whether attention on `device` runs on the `magihuman_flash_4` backend (for inference; with gradients the
        automatic choice falls back to the default backend)."""
        if self.use_flash_attention_4 is not None:
            return self.use_flash_attention_4
        if self._automatic_flash_attention_4(device):
            return True
        return _resolve_backend_name(self._attention_backend) == MAGIHUMAN_FLASH_4

    def backend_name(self, query: torch.Tensor) -> str:
        r"""The name of the attention backend a call with `query` runs on (see the class docstring)."""
        if self.use_flash_attention_4:
            if _needs_grad(query):
                raise RuntimeError(
                    "The FlashAttention-4 ops are inference-only (no backward). For training, use "
                    "`MagiHumanAttnProcessor(use_flash_attention_4=None)` (automatic) or `False`."
                )
            return MAGIHUMAN_FLASH_4
        if not _needs_grad(query) and self._automatic_flash_attention_4(query.device):
            return MAGIHUMAN_FLASH_4
        return _resolve_backend_name(self._attention_backend)

    def local_kernel(self, device: torch.device, use_fa4: bool | None = None) -> str:
        r"""The kernel `"masked"` local layers use on `device`: `"varlen"`, `"per_frame"` or `"flex"` (`use_fa4`:
        whether the `magihuman_flash_4` backend runs, if already known)."""
        if self.local_attn_kernel != "auto":
            return self.local_attn_kernel
        if use_fa4 is None:
            use_fa4 = self.uses_flash_attention_4(device)
        return self._auto_local_kernel(MAGIHUMAN_FLASH_4 if use_fa4 else _resolve_backend_name(self._attention_backend))

    def _local_kernel_for(self, backend: str) -> str:
        if self.local_attn_kernel != "auto":
            return self.local_attn_kernel
        return self._auto_local_kernel(backend)

    @staticmethod
    def _auto_local_kernel(backend: str) -> str:
        if backend in MAGIHUMAN_LOCAL_KERNELS:
            return MAGIHUMAN_LOCAL_KERNELS[backend]
        return "flex" if backend == "flex" else "per_frame"

    # -- forward ------------------------------------------------------------------------------------------------------

    def __call__(
        self,
        attn: "MagiHumanAttention",
        hidden_states: torch.Tensor,
        rotary_emb: tuple[torch.Tensor, torch.Tensor],
        token_layout: MagiHumanTokenLayout,
    ) -> torch.Tensor:
        heads, kv_heads, head_dim = attn.heads, attn.kv_heads, attn.head_dim

        # Projections in the weights' dtype (bf16 in the released layout, like the original), head-major. Only q and k
        # are materialised in fp32: v stays in the projection dtype and the gate is upcast where it is used, so skipping
        # their fp32 round trip is exact.
        if attn.fused_projections:
            qkv = apply_per_modality(experts_of(attn, "to_qkv"), hidden_states, token_layout, apply_linear)
            query, key, value, gate = qkv.split(
                [heads * head_dim, kv_heads * head_dim, kv_heads * head_dim, attn.gate_size], dim=-1
            )
        else:
            names = ["to_q", "to_k", "to_v"] + (["to_gate"] if attn.gate_size else [])
            projections = [experts_of(attn, name) for name in names]
            outputs = apply_per_modality_multi(projections, hidden_states, token_layout, apply_linear)
            query, key, value = outputs[:3]
            gate = outputs[3] if attn.gate_size else None
        query = query.float().unflatten(-1, (heads, head_dim))
        key = key.float().unflatten(-1, (kv_heads, head_dim))
        value = value.contiguous().unflatten(-1, (kv_heads, head_dim))

        # Per-head RMSNorm (per modality in mm layers), RoPE in fp32; v is not normalised or rotated.
        query = apply_per_modality(experts_of(attn, "norm_q"), query, token_layout)
        key = apply_per_modality(experts_of(attn, "norm_k"), key, token_layout)
        freqs_cos, freqs_sin = rotary_emb
        query = apply_magihuman_rotary_emb(query, freqs_cos, freqs_sin)
        key = apply_magihuman_rotary_emb(key, freqs_cos, freqs_sin)

        # q/k/v in the projections' dtype, softmax scale 1/sqrt(D), output in that dtype.
        query, key = query.to(value.dtype), key.to(value.dtype)
        hidden_states = self._attention(query, key, value, token_layout, attn.is_local)

        # gate = sigmoid of the `to_gate` output, per token and head (the product is fp32).
        if attn.gate_size:
            hidden_states = hidden_states * torch.sigmoid(gate.float()).unsqueeze(-1)
        # Into the output projection in its dtype (added to the fp32 residual by the block).
        hidden_states = hidden_states.flatten(2).to(experts_compute_dtype(attn, "to_out", value.dtype))
        return apply_per_modality(experts_of(attn, "to_out"), hidden_states, token_layout, _apply_out)

    # -- attention core -----------------------------------------------------------------------------------------------

    def _attention(self, query, key, value, layout: MagiHumanTokenLayout, is_local: bool) -> torch.Tensor:
        dtype = query.dtype
        upcast = self.upcast if self.upcast is not None else query.device.type == "cpu"
        if upcast:
            query, key, value = query.float(), key.float(), value.float()
        # Under context parallelism the blocks see this rank's shard of the sequence; the attention pattern is that of
        # the whole sequence, which the backend applies after the all-to-all.
        pattern = MagiHumanAttentionMask(layout.attention_layout, is_local=is_local)

        if is_local and self.local_attn_mode == "upstream_fallback" and layout.frame_receptive_field >= 0:
            if self._parallel_config is not None:
                raise ValueError(
                    "`local_attn_mode='upstream_fallback'` (a parity check) does not run under context parallelism."
                )
            out = self._per_sample(query, key, value, pattern, self._upstream_fallback_sample(dtype))
            return out.to(dtype)

        backend = self.backend_name(query)
        stock = backend not in MAGIHUMAN_ATTENTION_BACKENDS
        if self._parallel_config is not None and stock and not pattern.is_trivial():
            backend = MAGIHUMAN_SDPA  # stock backends cannot apply the pattern after Ulysses' all-to-all
        kernel = self._local_kernel_for(backend) if pattern.local_window_applies() else None

        if backend in MAGIHUMAN_ATTENTION_BACKENDS and kernel in (None, MAGIHUMAN_LOCAL_KERNELS[backend]):
            out = self._dispatch(query, key, value, backend, attn_mask=None if pattern.is_trivial() else pattern)
        elif kernel == "varlen":
            out = self._dispatch(query, key, value, MAGIHUMAN_FLASH_4, attn_mask=pattern)
        elif kernel == "flex" and backend != "flex":
            out = self._dispatch(query, key, value, MAGIHUMAN_LOCAL_FLEX, attn_mask=pattern)
        elif pattern.is_trivial():
            out = self._dispatch(query, key, value, backend)  # plain attention (diffusers' Ulysses under CP)
        else:
            if self._parallel_config is not None:
                raise ValueError(
                    f"`local_attn_kernel={self.local_attn_kernel!r}` runs one `{backend}` call per sample and query "
                    "frame, which cannot see whole sequences under context parallelism; use `local_attn_kernel='auto'`."
                )
            out = self._per_sample(query, key, value, pattern, self._stock_sample(backend, kernel))
        return out.to(dtype)

    def _attention_sample(self, query, key, value, layout: MagiHumanTokenLayout, is_local: bool, out_dtype=None):
        # Kept for the benchmarks: the attention of q/k/v `(B, S, H, D)` under `layout`, as a block computes it.
        return self._attention(query, key, value, layout, is_local)

    @staticmethod
    def _per_sample(query, key, value, pattern: MagiHumanAttentionMask, attend_sample) -> torch.Tensor:
        # Attend sample by sample on the real tokens: padding neither attends nor is attended, and each sample gives
        # the same result as alone, on every backend (no key-padding mask needed).
        layout = pattern.layout
        if not layout.has_padding:
            return attend_sample(query, key, value, pattern)
        out = query.new_zeros(query.shape)
        for b, length in enumerate(layout.seq_lens):
            out[b : b + 1, :length] = attend_sample(
                query[b : b + 1, :length], key[b : b + 1, :length], value[b : b + 1, :length], pattern
            ).to(out.dtype)
        return out

    def _upstream_fallback_sample(self, out_dtype: torch.dtype):
        def attend_sample(query, key, value, pattern):
            layout = pattern.layout
            return _upstream_local_fallback(
                query, key, value, layout.num_video_tokens, layout.tokens_per_frame, layout.frame_receptive_field,
                out_dtype,
            )

        return attend_sample

    def _stock_sample(self, backend: str, kernel: str | None):
        # One sample on a stock backend (or with a pinned per-frame kernel): unmasked calls only, except the stock
        # `flex` backend, which takes the local rule as a `BlockMask`.
        def dense(query, key, value, scale=None):
            return self._dispatch(query, key, value, backend)

        def attend_sample(query, key, value, pattern):
            if kernel is None:
                return dense(query, key, value)
            layout = pattern.layout
            if kernel == "flex":
                block_mask = layout.local_block_mask(query.shape[1], query.device)
                return self._dispatch(query, key, value, backend, attn_mask=block_mask)
            return _local_per_frame(query, key, value, layout, None, dense)

        return attend_sample

    def _dispatch(self, query, key, value, backend: str, attn_mask=None) -> torch.Tensor:
        heads, kv_heads = query.shape[2], key.shape[2]
        ours = backend in MAGIHUMAN_ATTENTION_BACKENDS
        enable_gqa = False
        if kv_heads != heads and not ours:  # ours take grouped K/V heads, also under context parallelism
            if self._parallel_config is None and backend in _GQA_FLAG_BACKENDS:
                enable_gqa = True
            elif self._parallel_config is not None or backend not in _GQA_NATIVE_BACKENDS:
                # Query head h uses kv head h // group (flash-attn convention), hence repeat_interleave. Under context
                # parallelism diffusers' all-to-all splits q and k/v by the same head count.
                key = key.repeat_interleave(heads // kv_heads, dim=2)
                value = value.repeat_interleave(heads // kv_heads, dim=2)
        kwargs = dict(attn_mask=attn_mask, dropout_p=0.0, is_causal=False, scale=query.shape[-1] ** -0.5)
        if ours:
            member = magihuman_backend_member(backend)
            if member is None:  # diffusers' registry could not be extended: call the backend function itself
                function = MAGIHUMAN_BACKEND_FUNCTIONS[backend]
                return function(query, key, value, **kwargs, _parallel_config=self._parallel_config)
        else:
            member = self._attention_backend
        return dispatch_attention_fn(
            query, key, value, **kwargs, enable_gqa=enable_gqa, backend=member, parallel_config=self._parallel_config
        )


class MagiHumanAttention(nn.Module, AttentionModuleMixin):
    r"""
    Self-attention of one MagiHuman layer (GQA, gated, q/k RMSNorm, coordinate RoPE).

    Parameters: `to_q` (`hidden -> Hq*D`), `to_k`, `to_v` (`hidden -> Hkv*D`), `to_gate` (`hidden -> Hq`, one
    sigmoid gate per query head; absent without gating), `norm_q`, `norm_k` (width `D`) and `to_out` (`[Linear(Hq*D ->
    hidden), Dropout]`, like diffusers' `Attention`). Modality-expert layers have one of each per modality instead,
    under `video`, `audio` and `text` (e.g. `attn.audio.to_q`), so the usual LoRA targets reach the experts too.

    [`fuse_projections`] adds a fused `to_qkv` (rows `q | k | v | gate`, one GEMM instead of four) that the processor
    then uses; [`unfuse_projections`] removes it. Off by default.

    Args:
        hidden_size (`int`), num_attention_heads (`int`), num_key_value_heads (`int`), head_dim (`int`)
        num_experts (`int`): 1 (shared) or 3 (modality experts).
        enable_gating (`bool`): per-head sigmoid output gate.
        is_local (`bool`): SR-1080p local attention (see [`MagiHumanAttnProcessor`]).
        eps (`float`): q/k norm epsilon.
        processor (*optional*): defaults to [`MagiHumanAttnProcessor`].
    """

    _default_processor_cls = MagiHumanAttnProcessor
    _available_processors = [MagiHumanAttnProcessor]
    _supports_qkv_fusion = True

    def __init__(
        self,
        hidden_size: int,
        num_attention_heads: int,
        num_key_value_heads: int,
        head_dim: int,
        num_experts: int = 1,
        enable_gating: bool = True,
        is_local: bool = False,
        eps: float = 1e-6,
        processor=None,
    ):
        super().__init__()
        self.heads = num_attention_heads
        self.kv_heads = num_key_value_heads
        self.head_dim = head_dim
        self.gate_size = num_attention_heads if enable_gating else 0
        self.is_local = is_local
        self.num_experts = num_experts
        _add_modules(self, "to_q", _linear_factory(hidden_size, num_attention_heads * head_dim), num_experts)
        _add_modules(self, "to_k", _linear_factory(hidden_size, num_key_value_heads * head_dim), num_experts)
        _add_modules(self, "to_v", _linear_factory(hidden_size, num_key_value_heads * head_dim), num_experts)
        if enable_gating:
            _add_modules(self, "to_gate", _linear_factory(hidden_size, num_attention_heads), num_experts)
        _add_modules(self, "norm_q", _norm_factory(head_dim, eps), num_experts)
        _add_modules(self, "norm_k", _norm_factory(head_dim, eps), num_experts)
        _add_modules(self, "to_out", _out_factory(num_attention_heads * head_dim, hidden_size), num_experts)
        self.set_processor(processor if processor is not None else self._default_processor_cls())

    def _projection_names(self) -> list[str]:
        return ["to_q", "to_k", "to_v"] + (["to_gate"] if self.gate_size else [])

    @torch.no_grad()
    def fuse_projections(self):
        r"""
        Adds a fused `to_qkv` linear (per modality in expert layers) holding the rows of `to_q | to_k | to_v | to_gate`,
        and makes the processor run that one GEMM instead of four. The separate projections stay (LoRA on them is
        not used while fused, as in diffusers); outputs are unchanged up to GEMM reduction-order noise.
        """
        if self.fused_projections:
            return
        groups = [experts_of(self, name) for name in self._projection_names()]
        owners = [self] if self.num_experts == 1 else [self._modules[modality] for modality in MODALITIES]
        for index, owner in enumerate(owners):
            linears = [group if isinstance(group, nn.Module) else group[index] for group in groups]
            if not all(type(linear) is nn.Linear for linear in linears):
                raise ValueError(
                    "`fuse_projections` needs plain `nn.Linear` projections; fuse before adding LoRA adapters, "
                    "quantizing or enabling layerwise casting."
                )
            weight = torch.cat([linear.weight for linear in linears], dim=0)
            fused = nn.Linear(weight.shape[1], weight.shape[0], bias=False, device=weight.device, dtype=weight.dtype)
            fused.weight.copy_(weight)
            owner.add_module("to_qkv", fused)
        self.fused_projections = True

    def unfuse_projections(self):
        r"""Removes the fused `to_qkv` added by [`fuse_projections`]; the processor uses the separate projections."""
        if not self.fused_projections:
            return
        owners = [self] if self.num_experts == 1 else [self._modules[modality] for modality in MODALITIES]
        for owner in owners:
            del owner._modules["to_qkv"]
        self.fused_projections = False

    def forward(
        self,
        hidden_states: torch.Tensor,
        rotary_emb: tuple[torch.Tensor, torch.Tensor],
        token_layout: MagiHumanTokenLayout,
    ) -> torch.Tensor:
        r"""
        Args:
            hidden_states (`torch.Tensor` of shape `(batch_size, seq_len, hidden_size)`): the pre-normed input.
            rotary_emb (`tuple[torch.Tensor, torch.Tensor]`): `(cos, sin)`, each `(batch_size, seq_len, 3*D/8)`.
            token_layout ([`MagiHumanTokenLayout`])

        Returns:
            `torch.Tensor` of shape `(batch_size, seq_len, hidden_size)` in the compute dtype of `to_out`.
        """
        return self.processor(self, hidden_states, rotary_emb, token_layout)


class MagiHumanFeedForward(nn.Module):
    r"""
    MLP of one layer: `up_proj`, clamped activation in fp32, `down_proj`; each linear computes in its weight dtype. In
    modality-expert layers there is one of each per modality (`video.up_proj`, `audio.up_proj`, `text.up_proj`).

    `gelu7` layers have a plain `hidden -> I` `up_proj`. `swiglu7` layers have `hidden -> 2*I` with the gate rows
    first and the linear rows second (the conversion script de-interleaves the original's alternating rows). With
    `pad_to_multiple_of`, `I` is zero-padded (gate rows, linear rows and `down_proj` columns), which is exact: a zero
    gate gives a zero activation.

    Args:
        hidden_size (`int`), intermediate_size (`int`): the (unpadded) `I`.
        activation (`str`): `"gelu7"` or `"swiglu7"`.
        num_experts (`int`): 1 or 3.
        pad_to_multiple_of (`int`, *optional*): swiglu7 only.
    """

    # Eager inference activates `up_proj`'s output this many elements at a time when it is larger (see
    # `_activate_in_chunks`): 2**26 fp32 elements is 256 MiB per temporary.
    _activation_chunk_elements = 2**26

    def __init__(
        self,
        hidden_size: int,
        intermediate_size: int,
        activation: str = "swiglu7",
        num_experts: int = 1,
        pad_to_multiple_of: int | None = None,
    ):
        super().__init__()
        if activation not in ("gelu7", "swiglu7"):
            raise ValueError(f"`activation` must be 'gelu7' or 'swiglu7', got {activation!r}.")
        self.activation = activation
        if activation == "swiglu7" and pad_to_multiple_of:
            intermediate_size = -(-intermediate_size // pad_to_multiple_of) * pad_to_multiple_of
        self.intermediate_size = intermediate_size
        in_features = 2 * intermediate_size if activation == "swiglu7" else intermediate_size
        _add_modules(self, "up_proj", _linear_factory(hidden_size, in_features), num_experts)
        _add_modules(self, "down_proj", _linear_factory(intermediate_size, hidden_size), num_experts)

    def projection_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        """`[(up_proj, down_proj)]`: the shared pair, or one pair per modality expert (video, audio, text)."""
        ups, downs = experts_of(self, "up_proj"), experts_of(self, "down_proj")
        if isinstance(ups, nn.Module):
            return [(ups, downs)]
        return list(zip(ups, downs))

    def forward(self, hidden_states: torch.Tensor, token_layout: MagiHumanTokenLayout) -> torch.Tensor:
        r"""
        Args:
            hidden_states (`torch.Tensor` of shape `(batch_size, seq_len, hidden_size)`): the pre-normed input.

        Returns:
            `torch.Tensor` of shape `(batch_size, seq_len, hidden_size)` in fp32 (bf16-rounded values).
        """
        up_proj, down_proj = experts_of(self, "up_proj"), experts_of(self, "down_proj")
        hidden_states = apply_per_modality(up_proj, hidden_states, token_layout, apply_linear)
        out_dtype = experts_compute_dtype(self, "down_proj", torch.float32)
        chunk_rows = max(1, self._activation_chunk_elements // hidden_states.shape[-1])
        num_rows = hidden_states.numel() // hidden_states.shape[-1]
        if (
            num_rows > chunk_rows
            and not torch.compiler.is_compiling()
            and not (torch.is_grad_enabled() and hidden_states.requires_grad)
        ):
            hidden_states = self._activate_in_chunks(hidden_states, out_dtype, chunk_rows)
        else:
            hidden_states = self._activate(hidden_states).to(out_dtype)
        return apply_per_modality(down_proj, hidden_states, token_layout, apply_linear).float()

    def _activate(self, hidden_states: torch.Tensor) -> torch.Tensor:
        # The clamped activation in fp32 (both activations up-cast their inputs first).
        if self.activation == "swiglu7":
            gate, linear = hidden_states.chunk(2, dim=-1)
            return swiglu7(gate, linear)
        return gelu7(hidden_states)

    def _activate_in_chunks(self, hidden_states: torch.Tensor, out_dtype: torch.dtype, chunk_rows: int) -> torch.Tensor:
        # Eager inference over long sequences (65k tokens at 1080p): the fp32 activation of the whole `up_proj` output
        # would need several fp32 copies of a (tokens, 2*I) tensor at once (about 7 GiB each at 1080p). Done `chunk_rows`
        # tokens at a time into the down-projection's input dtype, it needs only one chunk's temporaries. The
        # activation is element-wise, so the result is bit-identical; compiled graphs fuse it and take the plain path.
        rows = hidden_states.reshape(-1, hidden_states.shape[-1])
        out = torch.empty(rows.shape[0], self.intermediate_size, dtype=out_dtype, device=rows.device)
        for start in range(0, rows.shape[0], chunk_rows):
            out[start : start + chunk_rows] = self._activate(rows[start : start + chunk_rows])
        return out.reshape(*hidden_states.shape[:-1], self.intermediate_size)


@maybe_allow_in_graph
class MagiHumanTransformerBlock(nn.Module):
    r"""
    One pre-norm MagiHuman layer over the packed sequence: `h += attn(norm1(h))`, `h += ff(norm2(h))` with an fp32
    residual stream. Modality-expert layers hold per-modality norms and linears.

    Args:
        hidden_size (`int`), num_attention_heads (`int`), num_key_value_heads (`int`), head_dim (`int`)
        intermediate_size (`int`): MLP width `I`.
        activation (`str`): `"gelu7"` or `"swiglu7"`.
        num_experts (`int`): 1 or 3.
        enable_attn_gating (`bool`), is_local (`bool`)
        post_norm (`bool`): extra RMSNorm on the attention and MLP outputs before the residual adds (unused by every
            release, kept for completeness).
        eps (`float`), pad_to_multiple_of (`int`, *optional*): see [`MagiHumanFeedForward`].
    """

    def __init__(
        self,
        hidden_size: int,
        num_attention_heads: int,
        num_key_value_heads: int,
        head_dim: int,
        intermediate_size: int,
        activation: str = "swiglu7",
        num_experts: int = 1,
        enable_attn_gating: bool = True,
        is_local: bool = False,
        post_norm: bool = False,
        eps: float = 1e-6,
        pad_to_multiple_of: int | None = None,
    ):
        super().__init__()
        _add_modules(self, "norm1", _norm_factory(hidden_size, eps), num_experts)
        self.attn = MagiHumanAttention(
            hidden_size,
            num_attention_heads,
            num_key_value_heads,
            head_dim,
            num_experts=num_experts,
            enable_gating=enable_attn_gating,
            is_local=is_local,
            eps=eps,
        )
        _add_modules(self, "norm2", _norm_factory(hidden_size, eps), num_experts)
        self.ff = MagiHumanFeedForward(
            hidden_size, intermediate_size, activation, num_experts, pad_to_multiple_of=pad_to_multiple_of
        )
        self.post_norm = post_norm
        if post_norm:
            _add_modules(self, "attn_post_norm", _norm_factory(hidden_size, eps), num_experts)
            _add_modules(self, "ff_post_norm", _norm_factory(hidden_size, eps), num_experts)

    def forward(
        self,
        hidden_states: torch.Tensor,
        rotary_emb: tuple[torch.Tensor, torch.Tensor],
        token_layout: MagiHumanTokenLayout,
    ) -> torch.Tensor:
        r"""
        Args:
            hidden_states (`torch.Tensor` of shape `(batch_size, seq_len, hidden_size)`): fp32 residual stream.
            rotary_emb (`tuple[torch.Tensor, torch.Tensor]`): `(cos, sin)` of [`MagiHumanRotaryPosEmbed`].
            token_layout ([`MagiHumanTokenLayout`])

        Returns:
            `torch.Tensor` of shape `(batch_size, seq_len, hidden_size)`, fp32.
        """
        normed = apply_per_modality(experts_of(self, "norm1"), hidden_states, token_layout)
        attn_output = self.attn(normed.to(experts_compute_dtype(self.attn, "to_q", normed.dtype)), rotary_emb, token_layout)
        if self.post_norm:
            attn_output = apply_per_modality(experts_of(self, "attn_post_norm"), attn_output, token_layout)
        hidden_states = hidden_states + attn_output

        normed = apply_per_modality(experts_of(self, "norm2"), hidden_states, token_layout)
        ff_output = self.ff(normed.to(experts_compute_dtype(self.ff, "up_proj", normed.dtype)), token_layout)
        if self.post_norm:
            ff_output = apply_per_modality(experts_of(self, "ff_post_norm"), ff_output, token_layout)
        return hidden_states + ff_output


def default_swiglu7_intermediate_size(hidden_size: int) -> int:
    """`floor(floor(8d/3) / 4) * 4`, as upstream computes it (13652 for d = 5120)."""
    return int(hidden_size * 4 * 2 / 3) // 4 * 4


class MagiHumanTransformer3DModel(ModelMixin, ConfigMixin, AttentionMixin, CacheMixin, PeftAdapterMixin):
    r"""
    The daVinci-MagiHuman denoiser: a timestep-free single-stream DiT over packed video, audio and text tokens.

    Inputs are packed inside the model: video tokens (channel-major `pT x pH x pW` patches), then the real audio
    tokens, then the real text tokens, each embedded by its own fp32 linear. Layers listed in `mm_layers` have one
    expert (norms and linears) per modality; the others are shared. Outputs are the video prediction (spatial-major
    unpacking) and the audio prediction.

    Dtypes: the weights decide. A fresh model is fp32. Each block linear computes in the dtype of its weights (or the
    compute dtype of layerwise casting) and returns that dtype; q/k/v and the attention run in the dtype of the q/k/v
    projections. Embedders, norms, RoPE, activations and the output heads compute in fp32, as does the residual
    stream. `from_pretrained(..., dtype=torch.bfloat16)` keeps `_keep_in_fp32_modules` in fp32 and gives the released
    layout, which reproduces the original's mixed precision (bf16 block matmuls with bf16 results, fp32 elsewhere).

    Module names: `blocks.{i}.norm1`, `.attn.{to_q, to_k, to_v, to_gate, norm_q, norm_k, to_out.0}`, `.norm2`,
    `.ff.{up_proj, down_proj}`; in modality-expert layers each of these exists once per modality under `video`,
    `audio` and `text` (`blocks.0.video.norm1`, `blocks.0.attn.audio.to_q`, `blocks.0.ff.text.up_proj`). Use
    `diffusers_magihuman.conversion.convert_magihuman_to_diffusers` to convert the original checkpoints.

    Context parallelism: `enable_parallelism(config=ContextParallelConfig(ulysses_degree=N))` (diffusers' own, see
    `_cp_plan`) splits the packed sequence over `N` ranks. The sequence is right-padded to a multiple of `N` (padding
    is masked, never attended), each rank routes its shard's tokens to the experts and rotates them with their own RoPE
    rows, and attention runs on whole sequences per head group after Ulysses' all-to-all, so local windows stay exact.
    `N` must divide both `num_attention_heads` and `num_key_value_heads`; ring attention is not supported.

    Args:
        num_layers (`int`, defaults to 40): number of transformer layers.
        hidden_size (`int`, defaults to 5120): residual width.
        head_dim (`int`, defaults to 128): attention head dim (divisible by 8; `3/4` of it is rotated).
        num_attention_heads (`int`, defaults to 40): query heads.
        num_key_value_heads (`int`, defaults to 8): key/value heads (GQA; query head `h` uses kv head `h // group`).
        in_channels (`int`, defaults to 48): video latent channels.
        out_channels (`int`, *optional*): video output channels, defaults to `in_channels`.
        patch_size (`tuple[int, int, int]`, defaults to `(1, 2, 2)`): video patch `(pT, pH, pW)`.
        audio_in_channels (`int`, defaults to 64): audio latent channels (input and output).
        text_in_channels (`int`, defaults to 3584): text embedding width.
        mm_layers (`list[int]`): modality-expert layers.
        gelu7_layers (`list[int]`): layers with the (ungated) gelu7 MLP; all others use swiglu7.
        local_attn_layers (`list[int]`): SR-1080p local-attention layers; indices `>= num_layers` are ignored as in
            the original.
        post_norm_layers (`list[int]`): layers with post-norms (none in any release).
        enable_attn_gating (`bool`, defaults to `True`): per-head sigmoid attention gate.
        norm_eps (`float`, defaults to `1e-6`).
        coords_style (`str`, defaults to `"v2"`): RoPE coordinates of audio/text, `"v2"` for base/distill, `"v1"` for
            the super-resolution models.
        frame_receptive_field (`int`, defaults to 11): local-attention half window in latent frames.
        text_offset (`int`, defaults to 0): v1 text position offset.
        gelu7_intermediate_size (`int`, *optional*): defaults to `4 * hidden_size`.
        swiglu7_intermediate_size (`int`, *optional*): defaults to `floor(floor(8 * hidden_size / 3) / 4) * 4`.
        pad_swiglu_to_multiple_of (`int`, *optional*): zero-pad the swiglu7 width to a multiple of this (exact; faster
            GEMMs, e.g. 8 makes 13652 -> 13656). Checkpoints must be converted with the same value.
        rope_theta (`float`, defaults to 10000.0): RoPE base (the bands are also loaded from the checkpoint).
    """

    _supports_gradient_checkpointing = True
    _no_split_modules = ["MagiHumanTransformerBlock"]
    _repeated_blocks = ["MagiHumanTransformerBlock"]
    _keep_in_fp32_modules = [
        "video_embedder",
        "audio_embedder",
        "text_embedder",
        "rope",
        "norm_out_video",
        "norm_out_audio",
        "proj_out_video",
        "proj_out_audio",
        "norm1",
        "norm2",
        "norm_q",
        "norm_k",
        "attn_post_norm",
        "ff_post_norm",
    ]
    _skip_layerwise_casting_patterns = ["embedder", "rope", "norm", r"^proj_out_video$", r"^proj_out_audio$"]
    # diffusers' context parallelism: the RoPE tables and the packed sequence are split along the sequence axis before
    # the blocks (the forward pads it to a multiple of the degree and routes each shard with its own token layout), and
    # all-gathered after them. The split and gather points are two identities outside the blocks, so the hooks never
    # sit on a (compiled) block.
    _cp_plan = (
        {
            "rope": {
                0: ContextParallelInput(split_dim=1, expected_dims=3, split_output=True),
                1: ContextParallelInput(split_dim=1, expected_dims=3, split_output=True),
            },
            "context_parallel_split": {0: ContextParallelInput(split_dim=1, expected_dims=3, split_output=True)},
            "context_parallel_gather": ContextParallelOutput(gather_dim=1, expected_dims=3),
        }
        if ContextParallelInput is not None
        else None
    )

    @register_to_config
    def __init__(
        self,
        num_layers: int = 40,
        hidden_size: int = 5120,
        head_dim: int = 128,
        num_attention_heads: int = 40,
        num_key_value_heads: int = 8,
        in_channels: int = 48,
        out_channels: int | None = None,
        patch_size: tuple[int, int, int] = (1, 2, 2),
        audio_in_channels: int = 64,
        text_in_channels: int = 3584,
        mm_layers: tuple[int, ...] = (0, 1, 2, 3, 36, 37, 38, 39),
        gelu7_layers: tuple[int, ...] = (0, 1, 2, 3),
        local_attn_layers: tuple[int, ...] = (),
        post_norm_layers: tuple[int, ...] = (),
        enable_attn_gating: bool = True,
        norm_eps: float = 1e-6,
        coords_style: str = "v2",
        frame_receptive_field: int = 11,
        text_offset: int = 0,
        gelu7_intermediate_size: int | None = None,
        swiglu7_intermediate_size: int | None = None,
        pad_swiglu_to_multiple_of: int | None = None,
        rope_theta: float = 10000.0,
    ):
        super().__init__()
        if head_dim % 8 != 0:
            raise ValueError(f"`head_dim` must be divisible by 8 (3 RoPE axes of head_dim/8 bands), got {head_dim}.")
        if num_attention_heads % num_key_value_heads != 0:
            raise ValueError(
                f"`num_attention_heads` ({num_attention_heads}) must be a multiple of `num_key_value_heads` "
                f"({num_key_value_heads})."
            )
        if coords_style not in ("v1", "v2"):
            raise ValueError(f"`coords_style` must be 'v1' or 'v2', got {coords_style!r}.")
        for name, layers in (
            ("mm_layers", mm_layers),
            ("gelu7_layers", gelu7_layers),
            ("local_attn_layers", local_attn_layers),
            ("post_norm_layers", post_norm_layers),
        ):
            if any(int(i) < 0 for i in layers):
                raise ValueError(f"`{name}` must hold non-negative layer indices, got {list(layers)}.")
        out_channels = out_channels or in_channels
        p_t, p_h, p_w = patch_size
        patch_volume = p_t * p_h * p_w
        gelu7_width = gelu7_intermediate_size or 4 * hidden_size
        swiglu7_width = swiglu7_intermediate_size or default_swiglu7_intermediate_size(hidden_size)

        # 1. Input embedders (fp32) and RoPE.
        self.video_embedder = nn.Linear(in_channels * patch_volume, hidden_size, bias=True)
        self.audio_embedder = nn.Linear(audio_in_channels, hidden_size, bias=True)
        self.text_embedder = nn.Linear(text_in_channels, hidden_size, bias=True)
        self.rope = MagiHumanRotaryPosEmbed(head_dim, theta=rope_theta)

        # 2. Transformer layers.
        mm_set, gelu_set = set(mm_layers), set(gelu7_layers)
        local_set, post_set = set(local_attn_layers), set(post_norm_layers)
        self.blocks = nn.ModuleList(
            [
                MagiHumanTransformerBlock(
                    hidden_size,
                    num_attention_heads,
                    num_key_value_heads,
                    head_dim,
                    intermediate_size=gelu7_width if i in gelu_set else swiglu7_width,
                    activation="gelu7" if i in gelu_set else "swiglu7",
                    num_experts=len(MODALITIES) if i in mm_set else 1,
                    enable_attn_gating=enable_attn_gating,
                    is_local=i in local_set,
                    post_norm=i in post_set,
                    eps=norm_eps,
                    pad_to_multiple_of=pad_swiglu_to_multiple_of,
                )
                for i in range(num_layers)
            ]
        )

        # 3. Output heads (fp32).
        self.norm_out_video = MagiHumanRMSNorm(hidden_size, eps=norm_eps)
        self.norm_out_audio = MagiHumanRMSNorm(hidden_size, eps=norm_eps)
        self.proj_out_video = nn.Linear(hidden_size, patch_volume * out_channels, bias=False)
        self.proj_out_audio = nn.Linear(hidden_size, audio_in_channels, bias=False)

        # Identities: where diffusers' context-parallel hooks split the packed sequence before the blocks and gather it
        # after them (`_cp_plan`).
        self.context_parallel_split = nn.Identity()
        self.context_parallel_gather = nn.Identity()

        self.gradient_checkpointing = False

    # -- speed --------------------------------------------------------------------------------------------------------

    def enable_group_offload(self, onload_device: torch.device, *args, num_resident_blocks: int = 0, **kwargs) -> None:
        r"""
        diffusers' group offloading ([`~hooks.group_offloading.apply_group_offloading`]), with one addition:
        `num_resident_blocks` layers stay on `onload_device` and only the others are offloaded.

        With `use_stream=True` the next offloaded block is copied while the blocks before it compute; keeping every
        other block resident gives each copy the time of two blocks to hide in. Measured at 256p on an H200, a fully
        offloaded forward is bound by the host-to-device copies (about 2.3x the full-GPU time); see
        docs/performance.md for the resident counts that fit 24 GB and what they cost.

        Args:
            num_resident_blocks (`int`, defaults to 0):
                How many of the transformer layers to keep on `onload_device`, spread evenly between the offloaded
                ones (the first layer is always resident when any is). 0 offloads all of them, as diffusers does.
                Needs `offload_type="block_level"`; each resident layer costs about 0.71 GB (bf16, full-size model).
            onload_device, args, kwargs: as for [`~ModelMixin.enable_group_offload`].
        """
        if not num_resident_blocks:
            return super().enable_group_offload(onload_device, *args, **kwargs)
        if args:
            raise TypeError("With `num_resident_blocks`, pass the other group-offload options by keyword.")
        offload_type = kwargs.get("offload_type", "block_level")
        num_layers = len(self.blocks)
        if getattr(offload_type, "value", offload_type) != "block_level":
            raise ValueError("`num_resident_blocks` needs `offload_type='block_level'`.")
        if not 0 < num_resident_blocks < num_layers:
            raise ValueError(
                f"`num_resident_blocks` must be between 0 and {num_layers - 1} (the model has {num_layers} layers), "
                f"got {num_resident_blocks}. Use `.to(onload_device)` to keep every layer on the device."
            )
        num_offloaded = num_layers - num_resident_blocks
        offloaded = {(i + 1) * num_layers // (num_offloaded + 1) for i in range(num_offloaded)}
        all_blocks = self.blocks
        # diffusers groups the blocks of every ModuleList child; show it only the offloaded ones (same objects, so
        # the hooks land on the real layers), then put the full list back and move the resident layers over.
        self._modules["blocks"] = nn.ModuleList([block for i, block in enumerate(all_blocks) if i in offloaded])
        try:
            super().enable_group_offload(onload_device, **kwargs)
        finally:
            self._modules["blocks"] = all_blocks
        for i, block in enumerate(all_blocks):
            if i not in offloaded:
                block.to(onload_device)

    def compile_repeated_blocks(self, *args, **kwargs):
        r"""
        Regional compile ([`~ModelMixin.compile_repeated_blocks`]): `torch.compile` each transformer layer, so the 40
        layers share one graph per layer kind. Layers under group offloading are left eager (their offload hooks
        cannot be traced, and they are bound by the weight copies anyway); resident layers are compiled.
        """
        offloaded = [_has_group_offload_hook(block) for block in self.blocks]
        if not any(offloaded):
            return super().compile_repeated_blocks(*args, **kwargs)
        if all(offloaded):
            logger.warning("Every layer is group-offloaded; nothing to compile (see `num_resident_blocks`).")
        for block, is_offloaded in zip(self.blocks, offloaded):
            if not is_offloaded:
                block.compile(*args, **kwargs)

    @torch.no_grad()
    def _prepare_local_attention(self, layout: MagiHumanTokenLayout, device: torch.device) -> None:
        """Builds, before the (possibly compiled) blocks run, what the local layers' kernels read from `layout`: the
        FA4 varlen plans or the flex `BlockMask`s (see `MagiHumanAttnProcessor.local_attn_kernel`)."""
        if self.config.frame_receptive_field < 0 or layout.frame_receptive_field >= layout.num_frames - 1:
            return
        # One plan / mask per distinct sample length: padded batches attend sample by sample on their real tokens.
        lengths = sorted(set(layout.seq_lens)) if layout.has_padding else [layout.seq_len]
        for block in self.blocks:
            processor = block.attn.processor
            if not block.attn.is_local or getattr(processor, "local_attn_mode", "masked") != "masked":
                continue
            kernel = processor.local_kernel(device) if hasattr(processor, "local_kernel") else "per_frame"
            if kernel == "varlen":
                if layout.has_padding:
                    for length in lengths:
                        layout.local_varlen_plan(1, length, device)
                else:
                    layout.local_varlen_plan(layout.batch_size, layout.seq_len, device)
            elif kernel == "flex" and device.type == "cuda":
                for length in lengths:
                    layout.local_block_mask(length, device)

    def _context_parallel_rank(self) -> tuple[int, int]:
        # (rank, number of ranks) of the context-parallel split of the sequence; (0, 1) without it.
        config = getattr(self, "_parallel_config", None)
        cp_config = getattr(config, "context_parallel_config", None)
        mesh = getattr(cp_config, "_flattened_mesh", None)
        if mesh is None or mesh.size() == 1:
            return 0, 1
        return torch.distributed.get_rank(mesh.get_group()), mesh.size()

    def enable_parallelism(self, *, config, cp_plan=None):
        r"""
        [`~ModelMixin.enable_parallelism`] with this model's checks first (a clear error before anything changes).
        Context parallelism splits the packed text+video+audio sequence over the ranks (Ulysses): with
        `ContextParallelConfig(ulysses_degree=N)`, `N` must divide `num_attention_heads` and `num_key_value_heads`
        (every rank attends with whole K/V head groups), there must be a GPU per rank on CUDA hosts, and ring attention
        is refused (the padding and local-window pattern needs whole sequences per rank).

        Args:
            config (`ContextParallelConfig` or `ParallelConfig`): as for diffusers.
            cp_plan (`dict`, *optional*): defaults to `_cp_plan`.
        """
        cp_config = config if hasattr(config, "ulysses_degree") else getattr(config, "context_parallel_config", None)
        if cp_config is not None:
            self._check_context_parallel_config(cp_config)
        return super().enable_parallelism(config=config, cp_plan=cp_plan)

    def _check_context_parallel_config(self, cp_config) -> None:
        heads, kv_heads = self.config.num_attention_heads, self.config.num_key_value_heads
        ring, ulysses = cp_config.ring_degree or 1, cp_config.ulysses_degree or 1
        if ring > 1:
            raise ValueError(
                f"MagiHumanTransformer3DModel supports Ulysses context parallelism only; got ring_degree={ring}. Use "
                "`ContextParallelConfig(ulysses_degree=N)`: the padding and local-attention pattern needs every rank "
                "to hold whole sequences."
            )
        if heads % ulysses or kv_heads % ulysses:
            divisors = [n for n in range(2, kv_heads + 1) if kv_heads % n == 0 and heads % n == 0]
            raise ValueError(
                f"`ulysses_degree={ulysses}` must divide the {heads} attention heads and the {kv_heads} key/value heads "
                f"of this model (each rank attends with whole head groups); use one of {divisors}."
            )
        if torch.cuda.is_available():
            # Ranks on this host (torchrun sets LOCAL_WORLD_SIZE); diffusers would silently put several on one GPU.
            ranks_here = int(os.environ.get("LOCAL_WORLD_SIZE", 0)) or (
                torch.distributed.get_world_size() if torch.distributed.is_initialized() else ulysses
            )
            gpus = torch.cuda.device_count()
            if ranks_here > gpus:
                raise ValueError(
                    f"Context parallelism over {ranks_here} ranks on this host needs as many GPUs, but only {gpus} are "
                    f"visible. Launch at most {gpus} processes (`torchrun --nproc-per-node {gpus}`) and use "
                    f"`ulysses_degree <= {gpus}`."
                )

    def set_attention_backend(self, backend: str) -> None:
        r"""
        [`~ModelMixin.set_attention_backend`], which also knows this package's backends: `magihuman_flash_4`,
        `magihuman_local_flex` and `magihuman_sdpa` (see `MAGIHUMAN_ATTENTION_BACKENDS`). Selecting
        `magihuman_flash_4` without FlashAttention-4 installed raises here, before anything runs.
        """
        name = getattr(backend, "value", backend)
        if isinstance(name, str) and name.lower() == MAGIHUMAN_FLASH_4 and not is_flash_attention_4_available():
            raise RuntimeError(
                "The `magihuman_flash_4` attention backend needs FlashAttention-4 (`flash_attn.cute`) on a "
                "Hopper/Blackwell GPU; it does not import here. Install it with "
                "`pip install 'diffusers-magihuman[flash4]'`, or select another backend (e.g. `magihuman_sdpa`, "
                "`native`)."
            )
        return super().set_attention_backend(backend)

    def pad_swiglu_(self, multiple_of: int = 8) -> "MagiHumanTransformer3DModel":
        r"""
        Zero-pads the swiglu7 MLP width of every layer **in place** to a multiple of `multiple_of` (13652 -> 13656 for
        8) and records it in the config (`pad_swiglu_to_multiple_of`), so `save_pretrained` writes a consistent folder.

        This is exact: a padded gate row is zero, its activation `0 * sigmoid(0) * (l + 1)` is zero, and the padded
        `down_proj` columns are zero. It speeds up the `down_proj` GEMM on GPUs: an unpadded bf16 row of 13652 values
        (27304 bytes) is not 16-byte aligned, which keeps cuBLAS off its fastest kernels. Only the reduction length
        changes, so outputs can differ from the unpadded model by fp32 accumulation-order noise.

        Call it right after loading, before LoRA, quantization, offloading or `compile`.

        Args:
            multiple_of (`int`, defaults to 8): the width multiple.

        Returns:
            The model itself.
        """
        multiple_of = int(multiple_of)
        if multiple_of < 1:
            raise ValueError(f"`multiple_of` must be a positive integer, got {multiple_of}.")
        current = self.config.pad_swiglu_to_multiple_of
        if current and multiple_of % current != 0:
            raise ValueError(
                f"The model is already padded to a multiple of {current}; pad to a multiple of that ({current}, "
                f"{2 * current}, ...) so the width still matches a model built from the config."
            )
        for index, block in enumerate(self.blocks):
            ff = block.ff
            if ff.activation != "swiglu7":
                continue
            width = ff.intermediate_size
            padded = -(-width // multiple_of) * multiple_of
            if padded == width:
                continue
            pairs = ff.projection_pairs()
            ups, downs = [up for up, _ in pairs], [down for _, down in pairs]
            for linear in ups + downs:
                if not _is_plain_linear(linear) or linear.bias is not None or linear.weight.device.type == "meta":
                    raise ValueError(
                        f"`pad_swiglu_` needs the plain, loaded `nn.Linear` MLP weights of block {index}; call it "
                        "right after loading, before LoRA, quantization, offloading or layerwise casting."
                    )
            for up in ups:
                # rows: gate [0, width) and linear [width, 2 * width) -> gate [0, padded), linear [padded, ...)
                weight = up.weight
                new = weight.new_zeros(2 * padded, weight.shape[1])
                new[:width] = weight[:width]
                new[padded : padded + width] = weight[width:]
                up.weight = nn.Parameter(new, requires_grad=weight.requires_grad)
                up.out_features = 2 * padded
            for down in downs:
                weight = down.weight
                new = weight.new_zeros(weight.shape[0], padded)
                new[:, :width] = weight
                down.weight = nn.Parameter(new, requires_grad=weight.requires_grad)
                down.in_features = padded
            ff.intermediate_size = padded
        self.register_to_config(pad_swiglu_to_multiple_of=multiple_of)
        return self

    def enable_cache(self, config) -> None:
        r"""
        [`~CacheMixin.enable_cache`]: FirstBlockCache, MagCache, TaylorSeer and Pyramid Attention Broadcast work on
        this model. FasterCache is refused: it splits each call's batch into the unconditional and conditional halves
        of a batched classifier-free-guidance call and reads a timestep argument, while this model takes no timestep and
        the pipelines run the guidance passes as separate calls.
        """
        from diffusers.hooks import FasterCacheConfig

        if isinstance(config, FasterCacheConfig):
            raise ValueError(
                "FasterCache does not work with MagiHumanTransformer3DModel: it needs a batched (uncond, cond) "
                "classifier-free-guidance call with a timestep input, and this model has no timestep and runs the "
                "guidance passes as separate calls. Use FirstBlockCacheConfig, MagCacheConfig, TaylorSeerCacheConfig "
                "or PyramidAttentionBroadcastConfig instead."
            )
        super().enable_cache(config)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        r"""
        [`~ModelMixin.from_pretrained`], refusing (before any weight loads) a local folder converted before the
        attention projections were split (fused `to_qkv`); the message says how to re-convert or upgrade it.
        """
        path = os.fspath(pretrained_model_name_or_path) if isinstance(pretrained_model_name_or_path, (str, os.PathLike)) else None
        if path is not None and os.path.isdir(path):
            check_not_legacy_folder(os.path.join(path, kwargs.get("subfolder") or ""))
        return super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)

    # -- input handling -----------------------------------------------------------------------------------------------

    @staticmethod
    def _real_indices(mask: torch.Tensor | None, batch_size: int, length: int, name: str) -> list[torch.Tensor] | None:
        # Per-sample indices of real tokens, or None when every token is real (then no gather is needed).
        if mask is None:
            return None
        if mask.shape != (batch_size, length):
            raise ValueError(f"`{name}` must have shape {(batch_size, length)}, got {tuple(mask.shape)}.")
        mask = mask.bool()
        if bool(mask.all()):
            return None
        return [torch.nonzero(mask[b], as_tuple=False).squeeze(-1) for b in range(batch_size)]

    def _embed(self, linear: nn.Linear, hidden_states: torch.Tensor) -> torch.Tensor:
        # fp32 islands are explicit: robust to `.to(bf16)` and layerwise casting of the whole model.
        return linear(hidden_states.to(linear.weight.dtype)).float()

    @apply_lora_scale("attention_kwargs")
    def forward(
        self,
        hidden_states: torch.Tensor,
        audio_hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        audio_attention_mask: torch.Tensor | None = None,
        encoder_attention_mask: torch.Tensor | None = None,
        attention_kwargs: dict[str, Any] | None = None,
        return_dict: bool = True,
    ) -> MagiHumanTransformerOutput | tuple[torch.Tensor, torch.Tensor]:
        r"""
        The [`MagiHumanTransformer3DModel`] forward method. There is no timestep input: the model infers the noise
        level from the latents.

        Args:
            hidden_states (`torch.Tensor` of shape `(batch_size, in_channels, num_frames, height, width)`):
                Noisy video latent (fp32). `num_frames`, `height`, `width` must be divisible by the patch size.
            audio_hidden_states (`torch.Tensor` of shape `(batch_size, audio_sequence_length, audio_in_channels)`):
                Noisy audio latent.
            encoder_hidden_states (`torch.Tensor` of shape `(batch_size, text_sequence_length, text_in_channels)`):
                Text embeddings.
            audio_attention_mask (`torch.Tensor` of shape `(batch_size, audio_sequence_length)`, *optional*):
                `True`/1 for real audio tokens. `None`: all real.
            encoder_attention_mask (`torch.Tensor` of shape `(batch_size, text_sequence_length)`, *optional*):
                `True`/1 for real text tokens; padded rows are dropped, like the original. `None`: all real.
            attention_kwargs (`dict`, *optional*): only `scale` (LoRA scale) is read.
            return_dict (`bool`, defaults to `True`): return a [`MagiHumanTransformerOutput`] instead of a tuple.

        Returns:
            [`MagiHumanTransformerOutput`] or `tuple(sample, audio_sample)`, both fp32: `sample` of shape
            `(batch_size, out_channels, num_frames, height, width)` and `audio_sample` of shape
            `(batch_size, audio_sequence_length, audio_in_channels)` (zero at padded rows).
        """
        config = self.config
        if hidden_states.ndim != 5:
            raise ValueError(
                f"`hidden_states` must be a video latent (batch, channels, frames, height, width), got shape "
                f"{tuple(hidden_states.shape)}."
            )
        batch_size, _, num_frames, height, width = hidden_states.shape
        p_t, p_h, p_w = config.patch_size
        if num_frames % p_t or height % p_h or width % p_w:
            raise ValueError(
                f"Video latent frames/height/width {(num_frames, height, width)} must be divisible by the patch size "
                f"{tuple(config.patch_size)}."
            )
        if audio_hidden_states.ndim != 3 or audio_hidden_states.shape[0] != batch_size:
            raise ValueError(
                f"`audio_hidden_states` must have shape (batch={batch_size}, length, {config.audio_in_channels}), got "
                f"{tuple(audio_hidden_states.shape)}."
            )
        if encoder_hidden_states.ndim != 3 or encoder_hidden_states.shape[0] != batch_size:
            raise ValueError(
                f"`encoder_hidden_states` must have shape (batch={batch_size}, length, {config.text_in_channels}), "
                f"got {tuple(encoder_hidden_states.shape)}."
            )
        device = hidden_states.device
        grid_size = (num_frames // p_t, height // p_h, width // p_w)
        num_video = grid_size[0] * grid_size[1] * grid_size[2]
        audio_len, text_len = audio_hidden_states.shape[1], encoder_hidden_states.shape[1]

        # 1. Embed each modality (fp32 linears) and pack [video | real audio | real text | padding].
        video = self._embed(self.video_embedder, patchify_video(hidden_states, config.patch_size))
        audio = self._embed(self.audio_embedder, audio_hidden_states)
        text = self._embed(self.text_embedder, encoder_hidden_states)

        audio_idx = self._real_indices(audio_attention_mask, batch_size, audio_len, "audio_attention_mask")
        text_idx = self._real_indices(encoder_attention_mask, batch_size, text_len, "encoder_attention_mask")
        audio_lengths = [audio_len] * batch_size if audio_idx is None else [len(i) for i in audio_idx]
        text_lengths = [text_len] * batch_size if text_idx is None else [len(i) for i in text_idx]
        cp_rank, cp_world_size = self._context_parallel_rank()
        layout = MagiHumanTokenLayout.build(
            audio_lengths,
            text_lengths,
            grid_size,
            config.frame_receptive_field,
            device,
            pad_to_multiple_of=cp_world_size,  # context parallelism splits the sequence evenly: pad, never drop
        )
        self._prepare_local_attention(layout, device)  # built here, read by the (possibly compiled) blocks

        coords_kwargs = {
            "coords_style": config.coords_style,
            "text_offset": config.text_offset,
            "temporal_patch_size": p_t,
            "device": device,
        }
        if audio_idx is None and text_idx is None and not layout.has_padding:
            packed = torch.cat([video, audio, text], dim=1)
            coords = get_magihuman_coords(grid_size, audio_len, text_len, **coords_kwargs)
            coords = coords.unsqueeze(0).expand(batch_size, -1, -1)
        else:
            packed = video.new_zeros(batch_size, layout.seq_len, video.shape[-1])
            # Padding rows: size = ref = 1 at position 0, i.e. a finite, zero RoPE angle.
            coords = torch.tensor([0, 0, 0, 1, 1, 1, 1, 1, 1], dtype=torch.float32, device=device)
            coords = coords.repeat(batch_size, layout.seq_len, 1)
            for b in range(batch_size):
                audio_b = audio[b] if audio_idx is None else audio[b, audio_idx[b]]
                text_b = text[b] if text_idx is None else text[b, text_idx[b]]
                length = layout.seq_lens[b]
                packed[b, :length] = torch.cat([video[b], audio_b, text_b], dim=0)
                coords[b, :length] = get_magihuman_coords(
                    grid_size, audio_lengths[b], text_lengths[b], **coords_kwargs
                )
        rotary_emb = self.rope(coords)

        # 2. Transformer layers on the fp32 residual stream. Under context parallelism the hooks of `_cp_plan` hand the
        # blocks this rank's shard of `packed` and of the RoPE tables, and the blocks route it with the shard's layout.
        if cp_world_size > 1:
            layout = layout.shard(cp_rank, cp_world_size, device)
        hidden = self.context_parallel_split(packed)
        if torch.is_grad_enabled() and self.gradient_checkpointing:
            for block in self.blocks:
                hidden = self._gradient_checkpointing_func(block, hidden, rotary_emb, layout)
        else:
            for block in self.blocks:
                hidden = block(hidden, rotary_emb, layout)

        hidden = self.context_parallel_gather(hidden)

        # 3. Output heads (fp32) and unpacking.
        video_out = hidden[:, :num_video].float()
        video_out = self.proj_out_video(
            self.norm_out_video(video_out).to(self.proj_out_video.weight.dtype)
        ).float()
        sample = unpatchify_video(video_out, config.patch_size, grid_size)

        if audio_idx is None:
            audio_rows = hidden[:, num_video : num_video + audio_len].float()
            audio_sample = self.proj_out_audio(self.norm_out_audio(audio_rows).to(self.proj_out_audio.weight.dtype))
            audio_sample = audio_sample.float()
        else:
            audio_sample = hidden.new_zeros(batch_size, audio_len, config.audio_in_channels)
            for b in range(batch_size):
                rows = hidden[b, num_video : num_video + audio_lengths[b]].float()
                rows = self.proj_out_audio(self.norm_out_audio(rows).to(self.proj_out_audio.weight.dtype))
                audio_sample[b, audio_idx[b]] = rows.float()

        if not return_dict:
            return (sample, audio_sample)
        return MagiHumanTransformerOutput(sample=sample, audio_sample=audio_sample)


def _has_group_offload_hook(module: nn.Module) -> bool:
    """Whether diffusers' group offloading hooks `module` or one of its submodules (block or leaf level)."""
    try:
        from diffusers.hooks.group_offloading import _GROUP_OFFLOADING
    except ImportError:  # pragma: no cover - diffusers internals moved
        _GROUP_OFFLOADING = "group_offloading"
    for submodule in module.modules():
        registry = getattr(submodule, "_diffusers_hook", None)
        if registry is not None and registry.get_hook(_GROUP_OFFLOADING) is not None:
            return True
    return False
