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
"""Opt-in FP8 compute for the DiT's block linears through torchao (Hopper / Ada / Blackwell GPUs).

Every `nn.Linear` inside `blocks.*` whose sizes are multiples of 16 becomes torchao's dynamic float8 linear with
per-row scales: weights e4m3 with one scale per output row, activations quantized per token at each call, a
`torch._scaled_mm` GEMM with a bf16 result. The embedders, output heads, norms, RoPE and attention itself stay as they
are. This is the same route as `quantize_(model, Float8DynamicActivationFloat8WeightConfig(granularity=PerRow()))`,
with the filter and checks this model needs::

    from diffusers_magihuman.utils.fp8 import enable_fp8_compute

    pipe = MagiHumanPipeline.from_pretrained(path, torch_dtype=torch.bfloat16).to("cuda")
    enable_fp8_compute(pipe.transformer)  # before `compile_repeated_blocks` / the first call
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from diffusers.utils import logging
from torch import nn


logger = logging.get_logger(__name__)


# `torch._scaled_mm` needs K and N divisible by 16.
_FP8_ALIGNMENT = 16


def fp8_block_linear_filter(skip_layers: Iterable[int] = ()) -> Callable[[nn.Module, str], bool]:
    r"""
    A torchao `filter_fn` that selects the block linears FP8 can run.

    Args:
        skip_layers (`Iterable[int]`, *optional*): layer indices whose linears stay in their dtype (e.g. `(0, 39)`,
            the first and last layers, when they dominate the error).

    Returns:
        `Callable[[nn.Module, str], bool]`: `True` for an `nn.Linear` under `blocks.<i>.` (with `i` not skipped) whose
        in and out features are multiples of 16 (the per-head attention gate, 40 outputs, stays in bf16).
    """
    skip = {int(i) for i in skip_layers}

    def select(module: nn.Module, fqn: str) -> bool:
        if not isinstance(module, nn.Linear) or not fqn.startswith("blocks."):
            return False
        layer = fqn.split(".")[1]
        if not layer.isdigit() or int(layer) in skip:
            return False
        return module.in_features % _FP8_ALIGNMENT == 0 and module.out_features % _FP8_ALIGNMENT == 0

    return select


def fp8_device_problem(device: torch.device | None = None) -> str | None:
    """Why FP8 compute cannot run on `device` (default: the current CUDA device), or `None` when it can."""
    if device is None or device.type != "cuda":
        if not torch.cuda.is_available():
            return (
                "FP8 compute needs an NVIDIA GPU with float8 tensor cores (compute capability 8.9+: Ada, Hopper, "
                "Blackwell); no CUDA device is available."
            )
        device = torch.device("cuda", torch.cuda.current_device())
    capability = torch.cuda.get_device_capability(device)
    if capability < (8, 9):
        return (
            f"FP8 compute needs compute capability 8.9+ (Ada, Hopper, Blackwell); {torch.cuda.get_device_name(device)} "
            f"has {capability[0]}.{capability[1]}."
        )
    return None


def _check_fp8_device(transformer: nn.Module) -> None:
    cuda = [p.device for p in transformer.parameters() if p.device.type == "cuda"]
    problem = fp8_device_problem(cuda[0] if cuda else None)
    if problem:
        raise RuntimeError(f"{problem} Run the model in bf16 instead.")


# The value written into `up_proj` rows whose channel `down_proj` ignores (see `_fill_dead_swiglu_rows`).
_DEAD_ROW_VALUE = 2.0**-16


def _swiglu_projection_pairs(transformer: nn.Module):
    """Yield `(up_proj, down_proj)` of every swiglu7 feed-forward (one pair per modality expert) whose `up_proj` holds
    the gate rows `[0, width)` and linear rows `[width, 2 * width)` of `down_proj`'s `width` input channels."""
    for block in getattr(transformer, "blocks", ()):
        ff = getattr(block, "ff", None)
        if ff is None or getattr(ff, "activation", None) != "swiglu7":
            continue
        for up, down in ff.projection_pairs():
            if not isinstance(up, nn.Linear) or not isinstance(down, nn.Linear) or up.weight.device.type == "meta":
                continue
            if up.weight.shape[0] == 2 * down.in_features:
                yield up, down


def _zero_columns(weight) -> torch.Tensor:
    """Boolean mask of the all-zero input columns of a plain or torchao float8 weight `(out, in)`: the channels a
    `down_proj` ignores."""
    qdata = getattr(weight, "qdata", None)
    if isinstance(qdata, torch.Tensor) and qdata.element_size() == 1:
        # float8 e4m3 / e5m2: +0 and -0 are the bit patterns 0x00 and 0x80 (a zero column quantizes to zeros)
        return ((qdata.view(torch.uint8) & 0x7F) == 0).all(dim=0)
    return (weight == 0).all(dim=0)


@torch.no_grad()
def _fill_dead_swiglu_rows(transformer: nn.Module) -> None:
    """Give the zero `up_proj` rows of channels that `down_proj` ignores a small constant value.

    Padding the SwiGLU width adds channels whose gate and linear rows in `up_proj` and whose column in `down_proj` are
    all zero. A zero weight row has a zero per-row float8 scale, and torchao's quantization then divides zero by zero:
    the whole `up_proj` output turns NaN. A channel whose `down_proj` column is zero adds nothing to the output
    whatever its activation is (the SwiGLU activation of finite inputs is finite), so its `up_proj` rows can hold any
    finite value: this keeps the model's output exactly as it was and every row's scale positive.
    """
    for up, down in _swiglu_projection_pairs(transformer):
        dead = _zero_columns(down.weight)
        # gate rows [0, width) and linear rows [width, 2 * width) of those channels, where they are zero
        zero = (up.weight == 0).all(dim=1) & torch.cat([dead, dead])
        if bool(zero.any()):
            up.weight[zero] = _DEAD_ROW_VALUE


@torch.no_grad()
def _linears_with_zero_rows(transformer: nn.Module, select: Callable[[nn.Module, str], bool]) -> set[str]:
    return {
        name
        for name, module in transformer.named_modules()
        if select(module, name) and module.weight.device.type != "meta" and bool((module.weight == 0).all(dim=1).any())
    }


def enable_fp8_compute(
    transformer: nn.Module, skip_layers: Iterable[int] = (), check_device: bool = True
) -> int:
    r"""
    Quantize the DiT's block linears to dynamic float8 (per-row scales) with torchao, in place.

    Exact preparation first: the SwiGLU width is zero-padded to a multiple of 16 (`pad_swiglu_(16)`: 13652 -> 13664
    at full size, which changes no output) so that the down projections qualify too. Call it after moving the model to
    its GPU and before compiling. It changes the numbers (see docs/performance.md for the measured error): opt-in.

    Args:
        transformer ([`MagiHumanTransformer3DModel`]): bf16 weights (e.g. `from_pretrained(..., torch_dtype=
            torch.bfloat16)`).
        skip_layers (`Iterable[int]`, *optional*): layer indices kept in bf16.
        check_device (`bool`, defaults to `True`): refuse when no GPU with float8 tensor cores is available.

    Returns:
        `int`: the number of linears converted.

    Raises:
        `ImportError`: torchao is not installed (`pip install torchao`).
        `RuntimeError`: no GPU with compute capability 8.9+.
        `ValueError`: a layer index out of range, or a model whose block linears are not bf16.
    """
    try:
        from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerRow, quantize_
    except ImportError as error:
        raise ImportError(
            "FP8 compute uses torchao's float8 linears: `pip install torchao` (or `pip install "
            "'diffusers-magihuman[fp8]'`), then call `enable_fp8_compute` again."
        ) from error
    skip_layers = tuple(skip_layers)
    num_layers = len(transformer.blocks)
    bad = [i for i in skip_layers if not 0 <= int(i) < num_layers]
    if bad:
        raise ValueError(f"`skip_layers` must be layer indices in [0, {num_layers}), got {bad}.")
    if check_device:
        _check_fp8_device(transformer)
    block_linears = [m for name, m in transformer.named_modules() if isinstance(m, nn.Linear) and name.startswith("blocks.")]
    dtypes = {m.weight.dtype for m in block_linears}
    if dtypes - {torch.bfloat16}:
        raise ValueError(
            "FP8 compute expects bf16 block linears (load with `torch_dtype=torch.bfloat16`), found "
            f"{sorted(str(d) for d in dtypes)}."
        )
    pad = getattr(transformer, "pad_swiglu_", None)
    width = getattr(getattr(transformer, "config", None), "pad_swiglu_to_multiple_of", None)
    if callable(pad) and (not width or width % _FP8_ALIGNMENT != 0):
        pad(_FP8_ALIGNMENT)  # exact (zero rows and columns); lets the down projections qualify
    _fill_dead_swiglu_rows(transformer)
    base_select = fp8_block_linear_filter(skip_layers)
    zero_rows = _linears_with_zero_rows(transformer, base_select)
    if zero_rows:
        logger.warning(
            "FP8 compute: %d block linear(s) have an all-zero weight row, whose per-row float8 scale would be zero "
            "(NaN outputs); they stay in bf16: %s",
            len(zero_rows),
            ", ".join(sorted(zero_rows)[:8]) + (" ..." if len(zero_rows) > 8 else ""),
        )

    def select(module: nn.Module, fqn: str) -> bool:
        return base_select(module, fqn) and fqn not in zero_rows

    count = sum(1 for name, m in transformer.named_modules() if select(m, name))
    # `set_inductor_config=False`: torchao's default rewrites process-wide inductor settings (coordinate-descent
    # tuning over every Triton kernel among them), which changes every later compile in the process and made the
    # first compiled call of the 256p stage run for over 5 minutes on an H200 without finishing (bf16: ~22 s).
    config = Float8DynamicActivationFloat8WeightConfig(granularity=PerRow(), set_inductor_config=False)
    quantize_(transformer, config, filter_fn=select)
    return count


def _zero_scale_rows(weight) -> torch.Tensor | None:
    """Boolean mask of the output rows whose per-row float8 scale is zero, or `None` when `weight` holds no such
    per-row scale (a plain tensor, or a scale of another granularity)."""
    scale = getattr(weight, "scale", None)
    if not isinstance(scale, torch.Tensor) or not scale.numel() or scale.device.type == "meta":
        return None
    rows = weight.shape[0]
    if scale.shape[0] != rows or scale.numel() != rows:
        return None if bool((scale != 0).all()) else torch.ones(rows, dtype=torch.bool, device=scale.device)
    return scale.reshape(rows) == 0


@torch.no_grad()
def repair_dead_float8_rows(transformer: nn.Module) -> list[str]:
    """Make the zero-scale float8 rows of padded SwiGLU channels exact zeros again, in place; returns the linears fixed.

    A folder whose SwiGLU width was zero-padded (the converter's default) has all-zero `up_proj` rows for the padded
    channels. Quantized per row at load time (diffusers' `TorchAoConfig` with torchao's float8 per-row config) those
    rows get a zero scale and NaN values, and every output of the layer turns NaN. The channels are dead: their
    `down_proj` columns are zero. Setting such a row's float8 values to 0 and its scale to 1 makes its output exactly
    the zero the unquantized row gives, so the model computes what the checkpoint says. Only rows whose channel's
    `down_proj` column is zero are touched; any other zero scale is left for `check_float8_scales` to refuse.
    """
    fixed = []
    for up, down in _swiglu_projection_pairs(transformer):
        weight = up.weight
        zero, qdata = _zero_scale_rows(weight), getattr(weight, "qdata", None)
        if zero is None or not bool(zero.any()) or not isinstance(qdata, torch.Tensor) or qdata.element_size() != 1:
            continue
        dead = _zero_columns(down.weight).to(zero.device)
        if not bool((zero <= torch.cat([dead, dead])).all()):
            continue  # a zero scale on a live channel: not ours to change
        rows = zero.nonzero().flatten()
        qdata.view(torch.uint8)[rows] = 0  # +0.0 in float8
        weight.scale.view(-1)[rows] = 1.0
        fixed.append(up)
    if not fixed:
        return []
    names = {module: name for name, module in transformer.named_modules()}
    return [names[up] for up in fixed]


def linears_with_zero_float8_scales(transformer: nn.Module) -> list[str]:
    """Names of quantized linears holding a zero per-row weight scale.

    A float8 weight quantized per row from an all-zero row gets a zero scale, and `0 / 0` makes that row NaN: every
    output of the layer then turns NaN. It happens when a folder whose SwiGLU width was zero-padded (the converter's
    default, `pad_swiglu_to_multiple_of=8`) is quantized with diffusers' `TorchAoConfig` (float8, per row) at load time:
    the padded `up_proj` rows are zero (`repair_dead_float8_rows` fixes those exactly; the pipelines call it).
    `enable_fp8_compute` prepares the rows before quantizing, so its models never show up here. Works on any weight
    that exposes a `scale` tensor (torchao's `Float8Tensor`).
    """
    found = []
    for name, module in transformer.named_modules():
        zero = _zero_scale_rows(getattr(module, "weight", None))
        if zero is not None and bool(zero.any()):
            found.append(name)
    return found


def check_float8_scales(transformer: nn.Module) -> None:
    """Before any step: repair the padded SwiGLU rows of float8 weights quantized at load time
    (`repair_dead_float8_rows`, exact), then raise if any other quantized linear has a zero float8 scale (its outputs
    would be NaN).

    Done once per model (remembered on it): one pass over the weight scales, no forward.
    """
    if transformer is None or getattr(transformer, "_magihuman_float8_scales_checked", False):
        return
    fixed = repair_dead_float8_rows(transformer)
    if fixed:
        logger.info(
            "Float8 weights: the zero-padded SwiGLU rows of %d up_proj layer(s) had a zero per-row scale (NaN); set to "
            "exact zeros, as in the unquantized checkpoint.",
            len(fixed),
        )
    bad = linears_with_zero_float8_scales(transformer)
    if bad:
        raise ValueError(
            f"{len(bad)} quantized linear(s) of the transformer have a zero float8 weight scale, so every step would "
            f"give NaN ({', '.join(bad[:4])}{' ...' if len(bad) > 4 else ''}). A per-row float8 scale is zero where a "
            "weight row is all zeros and that row is not a padded SwiGLU channel this package can repair. Load the "
            "model in bf16 and call `diffusers_magihuman.utils.fp8.enable_fp8_compute(pipe.transformer)` instead (it "
            "keeps such layers in bf16), or leave these layers out with `modules_to_not_convert`."
        )
    transformer._magihuman_float8_scales_checked = True
