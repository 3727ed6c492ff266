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
"""Convert an original daVinci-MagiHuman DiT checkpoint into a diffusers `MagiHumanTransformer3DModel` folder.

Usage::

    python conversion/convert_magihuman_to_diffusers.py --checkpoint /ckpts/distill --variant distill --output out/ \
        [--vae Wan2.2-TI2V-5B-Diffusers/vae] [--audio-vae stable-audio-open-1.0] [--text-encoder t5gemma-9b-9b-ul2] \
        [--turbo-vae turbo_vae/checkpoint-340000.ckpt --turbo-vae-config turbo_vae/TurboV3-Wan22-TinyShallow_7_7.json]
    # writes a pipeline folder: out/model_index.json, out/scheduler/, out/transformer/ and the bundled components
    MagiHumanPipeline.from_pretrained("out")          # MagiHumanSRPipeline for sr_540p / sr_1080p
    MagiHumanTransformer3DModel.from_pretrained("out", subfolder="transformer")

Components that are not bundled are recorded as absent; pass them when loading
(``MagiHumanPipeline.from_pretrained("out", vae=..., text_encoder=..., tokenizer=...)``). ``--link`` symlinks
diffusers-format component folders instead of copying them. ``--transformer-only`` writes just ``out/transformer/``.

Input: an original checkpoint folder (``model.safetensors.index.json`` plus shards, a shard optionally stored as
``<shard>.safetensors.zst``; or one ``model.safetensors``), with upstream's key names (331 keys at full size).
``--variant`` picks the architecture settings the original applies in code, outside the checkpoint (its config
overrides for the SR evaluators and its data proxy):

=============  ============  ==========================================================================
variant        coords style  local attention
=============  ============  ==========================================================================
``base``       v2            none
``distill``    v2            none
``sr_540p``    v1            none
``sr_1080p``   v1            layers 0-2, 4-6, ..., 32-34, 35-39 (every layer but 3, 7, ..., 31), +-11 frames
=============  ============  ==========================================================================

``--config FILE`` overrides fields for other (e.g. tiny) checkpoints: a JSON with a ``model_config`` (or
``arch_config``) object using the original ``ModelConfig`` field names (``num_layers``, ``hidden_size``, ``head_dim``,
``num_query_groups``, ``num_heads_q``, ``num_heads_kv``, ``mm_layers``, ``gelu7_layers``, ``local_attn_layers``,
``post_norm_layers``, ``enable_attn_gating``, ``video_in_channels``, ``audio_in_channels``, ``text_in_channels``) and
optionally ``data_proxy_config`` (``t_patch_size``, ``patch_size``, ``frame_receptive_field``, ``coords_style``,
``text_offset``). Fields given in the JSON win over the variant defaults, except that the SR variants always use
coords ``v1`` (the original's SR evaluator hard-codes it). Layer indices ``>= num_layers`` are dropped, as the original
ignores them.

Layout changes (all exact; :func:`convert_to_original_state_dict` inverts them):

1. Renames: ``adapter.{video,audio,text}_embedder`` -> ``{video,audio,text}_embedder``, ``adapter.rope.bands`` ->
   ``rope.bands``, ``final_norm_{video,audio}`` -> ``norm_out_{video,audio}``, ``final_linear_{video,audio}`` ->
   ``proj_out_{video,audio}``, and per layer ``block.layers.{i}.`` -> ``blocks.{i}.`` with
   ``attention.pre_norm`` -> ``norm1``, ``attention.linear_qkv`` -> ``attn.to_qkv``, ``attention.q_norm`` ->
   ``attn.norm_q``, ``attention.k_norm`` -> ``attn.norm_k``, ``attention.linear_proj`` -> ``attn.to_out``,
   ``mlp.pre_norm`` -> ``norm2``, ``mlp.up_gate_proj`` -> ``ff.up_proj``, ``mlp.down_proj`` -> ``ff.down_proj``,
   ``attn_post_norm`` -> ``attn_post_norm``, ``mlp_post_norm`` -> ``ff_post_norm``.
2. Modality experts: in mm layers the original stores each linear as one ``[3*out, in]`` tensor and each norm as one
   ``[3*w]`` tensor, experts stacked in the order video, audio, text. They are split into one module per expert,
   named with a modality suffix: ``...{name}_video.weight``, ``...{name}_audio.weight``, ``...{name}_text.weight``
   (e.g. ``blocks.0.attn.to_qkv_audio.weight``).
3. swiglu7 ``up_gate_proj`` (per expert ``[2I, d]``) has alternating rows (row ``2j`` the gate of channel ``j``, row
   ``2j+1`` its linear partner). ``ff.up_proj`` stores all gate rows first, then all linear rows:
   ``[w[0::2]; w[1::2]]``. gelu7 layers are a plain ``[4d, d]`` up projection and are only renamed.
4. ``--pad-swiglu-to-multiple-of N`` (default 8; 1 disables): the swiglu7 width ``I`` is zero-padded to a multiple of ``N`` (gate
   rows, linear rows and ``ff.down_proj`` columns), which leaves the outputs unchanged.
5. Dtypes (``--dtype``): ``bf16`` (default) stores the block linears in bf16 (the distill / SR checkpoints are all fp32
   and the original rounds them to bf16 when loading, round-to-nearest-even) and keeps embedders, norms, the RoPE bands
   and the final linears in fp32; ``fp32`` stores everything in fp32; ``keep`` keeps the stored dtypes.

The conversion stops with :class:`CheckpointConversionError`, before writing anything, when an original key is left
unused, a model tensor would stay unfilled, or a shape differs (the original's ``strict=False`` load would hide these).
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load as load_safetensors_bytes

from diffusers.utils import logging

from diffusers_magihuman.conversion._io import (
    CorruptCheckpointError,
    atomic_output_folder,
    check_output_folder,
    corrupt_file_error,
    positive_int,
    read_json,
)
from diffusers_magihuman.constants import SR_1080P_GLOBAL_LAYERS
from diffusers_magihuman.models.transformer_magihuman import (
    MODALITIES,
    MagiHumanTransformer3DModel,
    default_swiglu7_intermediate_size,
)


logger = logging.get_logger(__name__)  # pylint: disable=invalid-name

VARIANTS = ("base", "distill", "sr_540p", "sr_1080p")

# The original's `post_override_config` with `SR2_1080` set: every layer but 3, 7, 11, ..., 31 is local.
SR_1080P_LOCAL_ATTN_LAYERS = [i for i in range(40) if i not in SR_1080P_GLOBAL_LAYERS]

_TOP_LEVEL_KEYS = {
    "adapter.video_embedder.weight": "video_embedder.weight",
    "adapter.video_embedder.bias": "video_embedder.bias",
    "adapter.audio_embedder.weight": "audio_embedder.weight",
    "adapter.audio_embedder.bias": "audio_embedder.bias",
    "adapter.text_embedder.weight": "text_embedder.weight",
    "adapter.text_embedder.bias": "text_embedder.bias",
    "adapter.rope.bands": "rope.bands",
    "final_norm_video.weight": "norm_out_video.weight",
    "final_norm_audio.weight": "norm_out_audio.weight",
    "final_linear_video.weight": "proj_out_video.weight",
    "final_linear_audio.weight": "proj_out_audio.weight",
}
# original per-layer suffix -> diffusers module path inside `blocks.{i}` (of a shared layer; in modality-expert layers
# the modality goes after the first atom of `attn.` / `ff.` paths and first otherwise: `attn.audio.to_q`, `video.norm1`).
# `linear_qkv` (rows q | k | v | gate) is split into `attn.to_q`, `attn.to_k`, `attn.to_v` and `attn.to_gate`.
_QKV_PROJECTIONS = ("attn.to_q", "attn.to_k", "attn.to_v", "attn.to_gate")
_LAYER_KEYS = {
    "attention.pre_norm.weight": "norm1",
    "attention.linear_qkv.weight": "attn.to_qkv",
    "attention.q_norm.weight": "attn.norm_q",
    "attention.k_norm.weight": "attn.norm_k",
    "attention.linear_proj.weight": "attn.to_out.0",
    "mlp.pre_norm.weight": "norm2",
    "mlp.up_gate_proj.weight": "ff.up_proj",
    "mlp.down_proj.weight": "ff.down_proj",
    "attn_post_norm.weight": "attn_post_norm",
    "mlp_post_norm.weight": "ff_post_norm",
}
_LAYER_KEYS_INVERSE = {value: key for key, value in _LAYER_KEYS.items()}
_BLOCK_LINEAR_SUFFIXES = ("linear_qkv.weight", "linear_proj.weight", "up_gate_proj.weight", "down_proj.weight")
_DTYPES = ("bf16", "fp32", "keep")


class CheckpointConversionError(ValueError):
    """The original checkpoint does not match the requested architecture; nothing was written."""


# ---------------------------------------------------------------------------------------------------------------------
# Reading the original checkpoint
# ---------------------------------------------------------------------------------------------------------------------


def _decompress_zstd(path: str) -> bytes:
    try:
        import zstandard
    except ImportError:
        zstandard = None
    if zstandard is not None:
        with open(path, "rb") as handle:
            return zstandard.ZstdDecompressor().stream_reader(handle).read()
    if shutil.which("zstd") is None:
        raise ImportError(
            f"{path} is zstd-compressed but neither the `zstandard` module nor the `zstd` command is available. "
            "Install one (`pip install zstandard` or your OS package `zstd`), or decompress the shard by hand."
        )
    result = subprocess.run(["zstd", "-d", "-c", path], capture_output=True, check=False)
    if result.returncode != 0:
        raise corrupt_file_error(path, RuntimeError(result.stderr.decode(errors="replace").strip()), "compressed shard")
    return result.stdout


def _read_shard(path: str, names: list[str] | None, read) -> dict[str, Any]:
    """`{name: read(handle, name)}` for the listed names (all when None) of one plain safetensors shard; a name the
    shard lacks, or a damaged file, raises an error naming the file."""
    out = {}
    try:
        with safe_open(path, framework="pt") as handle:
            keys = set(handle.keys())
            for name in keys if names is None else names:
                if name not in keys:
                    raise CheckpointConversionError(
                        f"{path} does not contain {name!r}, which the index lists there: the shard and "
                        "model.safetensors.index.json come from different downloads; download both again."
                    )
                out[name] = read(handle, name)
    except CheckpointConversionError:
        raise
    except Exception as e:  # safetensors' SafetensorError (truncated header/data), OSError
        raise corrupt_file_error(path, e, "checkpoint shard") from None
    return out


def _load_shard(path: str, names: list[str] | None, block_dtype: torch.dtype | None) -> dict[str, torch.Tensor]:
    def _cast(name, tensor):
        if block_dtype is not None and name.endswith(_BLOCK_LINEAR_SUFFIXES):
            return tensor.to(block_dtype)
        return tensor

    if os.path.exists(path):
        return _read_shard(path, names, lambda handle, name: _cast(name, handle.get_tensor(name)))
    if os.path.exists(path + ".zst"):
        try:
            loaded = load_safetensors_bytes(_decompress_zstd(path + ".zst"))
        except (ImportError, CorruptCheckpointError):
            raise
        except Exception as e:  # zstd frame errors, SafetensorError on the decompressed bytes
            raise corrupt_file_error(path + ".zst", e, "compressed checkpoint shard") from None
        names = list(loaded) if names is None else names
        missing = [name for name in names if name not in loaded]
        if missing:
            raise CheckpointConversionError(f"{path}.zst does not contain {missing}, which the index lists there.")
        return {name: _cast(name, loaded.pop(name)) for name in names}
    raise FileNotFoundError(f"Checkpoint shard {path} (or {path}.zst) not found.")


def _shard_plan(checkpoint_dir: str | os.PathLike) -> tuple[str, dict[str | None, list[str] | None]]:
    """`(checkpoint_dir, {shard file name: [tensor names] | None})` of an original checkpoint folder, after checking that
    the index is readable and every shard it names is present (`None` names: a single-file checkpoint, all keys)."""
    checkpoint_dir = os.fspath(checkpoint_dir)
    if not os.path.isdir(checkpoint_dir):
        raise FileNotFoundError(f"Original checkpoint folder {checkpoint_dir} does not exist.")
    index_path = os.path.join(checkpoint_dir, "model.safetensors.index.json")
    if not os.path.exists(index_path):
        single = os.path.join(checkpoint_dir, "model.safetensors")
        if not (os.path.exists(single) or os.path.exists(single + ".zst")):
            raise FileNotFoundError(
                f"{checkpoint_dir} has neither model.safetensors.index.json nor model.safetensors(.zst): not an "
                "original daVinci-MagiHuman checkpoint folder (e.g. the Hub's base/, distill/, 540p_sr/, 1080p_sr/)."
            )
        return checkpoint_dir, {"model.safetensors": None}
    weight_map = read_json(index_path, "checkpoint index").get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise CorruptCheckpointError(
            f"The checkpoint index {index_path!r} has no `weight_map` object (name -> shard file); download it again."
        )
    shards: dict[str | None, list[str] | None] = {}
    for name, shard in weight_map.items():
        shards.setdefault(shard, []).append(name)
    absent = [
        shard
        for shard in shards
        if not (os.path.exists(os.path.join(checkpoint_dir, shard)) or os.path.exists(os.path.join(checkpoint_dir, shard) + ".zst"))
    ]
    if absent:
        raise FileNotFoundError(
            f"{index_path} lists {len(absent)} shard(s) that are not in {checkpoint_dir}: {', '.join(sorted(absent))} "
            "(nor as .zst). Download the missing files."
        )
    return checkpoint_dir, shards


def read_original_shapes(checkpoint_dir: str | os.PathLike) -> dict[str, tuple[tuple[int, ...], str]]:
    """
    `{original key: (shape, dtype name)}` of an original checkpoint, read from the safetensors headers only (no tensor
    data is loaded; `.zst` shards are decompressed). A truncated or corrupt shard raises an error naming it: the
    header records every tensor's byte range, and a file shorter than that fails here.
    """
    checkpoint_dir, shards = _shard_plan(checkpoint_dir)
    out = {}
    for shard, names in shards.items():
        path = os.path.join(checkpoint_dir, shard)
        if os.path.exists(path):

            def header(handle, name):
                tensor_slice = handle.get_slice(name)
                return tuple(tensor_slice.get_shape()), str(tensor_slice.get_dtype())

            out.update(_read_shard(path, names, header))
        else:
            for name, tensor in _load_shard(path, names, None).items():
                out[name] = (tuple(tensor.shape), str(tensor.dtype).replace("torch.", ""))
    return out


def check_original_checkpoint(
    checkpoint_dir: str | os.PathLike,
    variant: str,
    config: str | os.PathLike | Mapping | None = None,
    pad_swiglu_to_multiple_of: int | None = None,
) -> dict[str, Any]:
    """
    Checks, without loading any tensor data, that an original checkpoint converts for `variant`: the index and every
    shard are readable, and every key and shape fits the architecture. Raises what [`convert_transformer`] would.

    Returns:
        `dict` with `transformer_config`, `num_parameters` and `checkpoint_bytes` (files on disk).
    """
    check_pad_multiple(pad_swiglu_to_multiple_of)
    model_config = transformer_config_from_original(variant, config)
    if pad_swiglu_to_multiple_of:
        model_config["pad_swiglu_to_multiple_of"] = int(pad_swiglu_to_multiple_of)
    shapes = read_original_shapes(checkpoint_dir)
    meta = {name: torch.empty(shape, device="meta") for name, (shape, _) in shapes.items()}
    converted = convert_state_dict(meta, model_config)
    checkpoint_dir, shards = _shard_plan(checkpoint_dir)
    size = 0
    for shard in shards:
        path = os.path.join(checkpoint_dir, shard)
        size += os.path.getsize(path) if os.path.exists(path) else os.path.getsize(path + ".zst")
    return {
        "transformer_config": model_config,
        "num_parameters": sum(t.numel() for t in converted.values()),
        "checkpoint_bytes": size,
    }


def load_original_state_dict(
    checkpoint_dir: str | os.PathLike, block_dtype: torch.dtype | None = None, progress=None
) -> dict[str, torch.Tensor]:
    """
    Reads an original checkpoint folder like upstream's `load_model_checkpoint`.

    Args:
        checkpoint_dir (`str`): folder with `model.safetensors.index.json` and its shards (each shard may be stored as
            `<shard>.zst`), or with a single `model.safetensors` (or `model.safetensors.zst`).
        block_dtype (`torch.dtype`, *optional*): cast the block linears (`linear_qkv`, `linear_proj`, `up_gate_proj`,
            `down_proj`) to this dtype while reading, shard by shard (keeps memory low for the fp32 releases).
        progress (`Callable[[str], None]`, *optional*): called with each shard's file name once it is read.

    Returns:
        `dict[str, torch.Tensor]` with the original key names.
    """
    checkpoint_dir, shards = _shard_plan(checkpoint_dir)
    state_dict = {}
    for shard, names in shards.items():
        state_dict.update(_load_shard(os.path.join(checkpoint_dir, shard), names, block_dtype))
        if progress is not None:
            progress(shard)
    return state_dict


# ---------------------------------------------------------------------------------------------------------------------
# Config
# ---------------------------------------------------------------------------------------------------------------------


def transformer_config_from_original(
    variant: str, config_json: str | os.PathLike | Mapping | None = None
) -> dict[str, Any]:
    """
    Builds the `MagiHumanTransformer3DModel` config of an original checkpoint.

    Args:
        variant (`str`): one of `base`, `distill`, `sr_540p`, `sr_1080p`.
        config_json (`str`, `os.PathLike` or `dict`, *optional*): overrides, as a path to (or the contents of) a JSON
            with a `model_config` (or `arch_config`) object in the original `ModelConfig` field names and optionally a
            `data_proxy_config` object (see the module docstring).

    Returns:
        `dict` of `MagiHumanTransformer3DModel.__init__` arguments.
    """
    if variant not in VARIANTS:
        raise ValueError(f"Unknown variant {variant!r}; choose one of {', '.join(VARIANTS)}.")
    overrides: dict[str, Any] = {}
    if config_json is not None:
        if isinstance(config_json, Mapping):
            overrides = dict(config_json)
        else:
            overrides = read_json(config_json, "--config JSON")
    model_cfg = overrides.get("model_config", overrides.get("arch_config"))
    if config_json is not None and not isinstance(model_cfg, Mapping):
        raise CheckpointConversionError(
            "The --config JSON needs a `model_config` (or `arch_config`) object with the original ModelConfig fields."
        )
    model_cfg = dict(model_cfg or {})
    proxy_cfg = overrides.get("data_proxy_config")
    if proxy_cfg is None:
        proxy_cfg = overrides.get("evaluation_config", {}).get("data_proxy_config", {})
    proxy_cfg = dict(proxy_cfg)

    num_layers = int(model_cfg.get("num_layers", 40))
    hidden_size = int(model_cfg.get("hidden_size", 5120))
    head_dim = int(model_cfg.get("head_dim", 128))
    # `post_override_config`: num_heads_q = hidden // head_dim, num_heads_kv = num_query_groups (0 means "derive").
    num_heads_q = int(model_cfg.get("num_heads_q") or hidden_size // head_dim)
    num_heads_kv = int(model_cfg.get("num_heads_kv") or model_cfg.get("num_query_groups", 8))
    t_patch = int(proxy_cfg.get("t_patch_size", 1))
    patch = int(proxy_cfg.get("patch_size", 2))
    video_in_channels = int(model_cfg.get("video_in_channels", 48 * 4))
    if video_in_channels % (t_patch * patch * patch):
        raise CheckpointConversionError(
            f"video_in_channels={video_in_channels} is not divisible by the patch volume {t_patch}x{patch}x{patch}."
        )

    if "local_attn_layers" in model_cfg:
        local_layers = list(model_cfg["local_attn_layers"])
    else:
        local_layers = SR_1080P_LOCAL_ATTN_LAYERS if variant == "sr_1080p" else []
    coords_style = proxy_cfg.get("coords_style", "v2")
    if variant.startswith("sr_"):
        if coords_style != "v1":
            logger.warning(f"variant {variant}: using coords_style 'v1' like the original SR data proxy.")
        coords_style = "v1"

    def _layers(values):
        # Like the original, indices that name no layer are ignored.
        return sorted({int(i) for i in values if 0 <= int(i) < num_layers})

    return {
        "num_layers": num_layers,
        "hidden_size": hidden_size,
        "head_dim": head_dim,
        "num_attention_heads": num_heads_q,
        "num_key_value_heads": num_heads_kv,
        "in_channels": video_in_channels // (t_patch * patch * patch),
        "patch_size": (t_patch, patch, patch),
        "audio_in_channels": int(model_cfg.get("audio_in_channels", 64)),
        "text_in_channels": int(model_cfg.get("text_in_channels", 3584)),
        "mm_layers": _layers(model_cfg.get("mm_layers", [0, 1, 2, 3, 36, 37, 38, 39])),
        "gelu7_layers": _layers(model_cfg.get("gelu7_layers", [0, 1, 2, 3])),
        "local_attn_layers": _layers(local_layers),
        "post_norm_layers": _layers(model_cfg.get("post_norm_layers", [])),
        "enable_attn_gating": bool(model_cfg.get("enable_attn_gating", True)),
        "norm_eps": 1e-6,
        "coords_style": coords_style,
        "frame_receptive_field": int(proxy_cfg.get("frame_receptive_field", 11)),
        "text_offset": int(proxy_cfg.get("text_offset", 0)),
    }


# ---------------------------------------------------------------------------------------------------------------------
# State-dict conversion
# ---------------------------------------------------------------------------------------------------------------------


def _config_dict(config) -> dict[str, Any]:
    return {key: value for key, value in dict(config).items() if not key.startswith("_")}


def _build_meta_model(config) -> MagiHumanTransformer3DModel:
    with torch.device("meta"):
        return MagiHumanTransformer3DModel(**_config_dict(config))


def _swiglu_sizes(config: Mapping) -> tuple[int, int]:
    width = config.get("swiglu7_intermediate_size") or default_swiglu7_intermediate_size(config["hidden_size"])
    multiple = config.get("pad_swiglu_to_multiple_of")
    padded = -(-width // multiple) * multiple if multiple else width
    return width, padded


def _deinterleave_up(weight: torch.Tensor, width: int, padded: int) -> torch.Tensor:
    gate, linear = weight[0::2], weight[1::2]
    if padded != width:
        zeros = weight.new_zeros((padded - width, weight.shape[1]))
        gate, linear = torch.cat([gate, zeros]), torch.cat([linear, zeros])
    return torch.cat([gate, linear], dim=0)


def _interleave_up(weight: torch.Tensor, width: int, padded: int) -> torch.Tensor:
    gate, linear = weight[:width], weight[padded : padded + width]
    return torch.stack([gate, linear], dim=1).reshape(2 * width, weight.shape[1])


def _pad_columns(weight: torch.Tensor, width: int, padded: int) -> torch.Tensor:
    if padded == width:
        return weight
    return torch.cat([weight, weight.new_zeros((weight.shape[0], padded - width))], dim=1)


def _expert_path(module: str, modality: str | None) -> str:
    # "attn.to_q" -> "attn.audio.to_q"; "norm1" -> "video.norm1"; shared layers (modality None) keep the path.
    if modality is None:
        return module
    atoms = module.split(".")
    if len(atoms) > 1 and atoms[0] in ("attn", "ff"):
        return ".".join([atoms[0], modality] + atoms[1:])
    return ".".join([modality] + atoms)


def _split_expert_path(path: str) -> tuple[str, str | None]:
    # The inverse of `_expert_path`: "attn.audio.to_q" -> ("attn.to_q", "audio").
    atoms = path.split(".")
    for position in (0, 1):
        if len(atoms) > position and atoms[position] in MODALITIES:
            return ".".join(atoms[:position] + atoms[position + 1 :]), atoms[position]
    return path, None


def _qkv_sizes(config: Mapping) -> list[int]:
    head_dim = config.get("head_dim", 128)
    heads, kv_heads = config.get("num_attention_heads", 40), config.get("num_key_value_heads", 8)
    gate = heads if config.get("enable_attn_gating", True) else 0
    return [heads * head_dim, kv_heads * head_dim, kv_heads * head_dim, gate]


def convert_to_original_state_dict(state_dict: Mapping[str, torch.Tensor], config) -> dict[str, torch.Tensor]:
    """
    The inverse of [`convert_state_dict`]: diffusers keys and layout back to the original checkpoint's.

    Args:
        state_dict (`dict[str, torch.Tensor]`): a `MagiHumanTransformer3DModel` state dict (meta tensors work).
        config (`dict`): the model config.

    Returns:
        `dict[str, torch.Tensor]` with the original key names and layout (dtypes unchanged).
    """
    config = _config_dict(config)
    inverse_top = {value: key for key, value in _TOP_LEVEL_KEYS.items()}
    gelu7_layers = set(config.get("gelu7_layers", []))
    width, padded = _swiglu_sizes(config)
    qkv_sizes = _qkv_sizes(config)
    original: dict[str, torch.Tensor] = {}
    grouped: dict[tuple[int, str], dict[str, torch.Tensor]] = {}
    for key, tensor in state_dict.items():
        if key in inverse_top:
            original[inverse_top[key]] = tensor
            continue
        parts = key.split(".")
        if parts[0] != "blocks" or parts[-1] != "weight" or len(parts) < 4:
            raise CheckpointConversionError(f"Unexpected diffusers key {key!r}.")
        layer = int(parts[1])
        module, expert = _split_expert_path(".".join(parts[2:-1]))
        if module in _QKV_PROJECTIONS:
            grouped.setdefault((layer, "attn.to_qkv"), {}).setdefault(expert, {})[module] = tensor
        else:
            grouped.setdefault((layer, module), {})[expert] = tensor

    for (layer, module), experts in grouped.items():
        suffix = _LAYER_KEYS_INVERSE.get(module)
        if suffix is None:
            raise CheckpointConversionError(f"Unexpected diffusers module blocks.{layer}.{module}.")
        tensors = [experts[None]] if None in experts else [experts[name] for name in MODALITIES]
        if module == "attn.to_qkv":
            names = [name for name, size in zip(_QKV_PROJECTIONS, qkv_sizes) if size]
            tensors = [torch.cat([parts[name] for name in names], dim=0) for parts in tensors]
        elif layer not in gelu7_layers and module == "ff.up_proj":
            tensors = [_interleave_up(t, width, padded) for t in tensors]
        elif layer not in gelu7_layers and module == "ff.down_proj":
            tensors = [t[:, :width] for t in tensors]
        original[f"block.layers.{layer}.{suffix}"] = tensors[0] if len(tensors) == 1 else torch.cat(tensors, dim=0)
    return original


def _format_problems(title: str, items: list[str], limit: int = 20) -> str:
    shown = "\n  ".join(items[:limit])
    more = f"\n  ... and {len(items) - limit} more" if len(items) > limit else ""
    return f"{title} ({len(items)}):\n  {shown}{more}"


def convert_state_dict(original_state_dict: Mapping[str, torch.Tensor], config) -> dict[str, torch.Tensor]:
    """
    Converts an original state dict to `MagiHumanTransformer3DModel` keys and layout (see the module docstring).

    Every original key must be used exactly once, every model tensor filled, and every shape must match the config;
    otherwise a [`CheckpointConversionError`] lists all problems.

    Args:
        original_state_dict (`dict[str, torch.Tensor]`): original keys (e.g. from [`load_original_state_dict`]).
        config (`dict`): `MagiHumanTransformer3DModel` config (e.g. from [`transformer_config_from_original`]).

    Returns:
        `dict[str, torch.Tensor]`: diffusers keys; dtypes as stored.
    """
    config = _config_dict(config)
    model_shapes = {key: tuple(t.shape) for key, t in _build_meta_model(config).state_dict().items()}
    expected = {
        key: tuple(t.shape)
        for key, t in convert_to_original_state_dict(
            {key: torch.empty(shape, device="meta") for key, shape in model_shapes.items()}, config
        ).items()
    }
    unused = sorted(set(original_state_dict) - set(expected))
    missing = sorted(set(expected) - set(original_state_dict))
    wrong = sorted(
        f"{key}: checkpoint {tuple(original_state_dict[key].shape)}, expected {expected[key]}"
        for key in set(expected) & set(original_state_dict)
        if tuple(original_state_dict[key].shape) != expected[key]
    )
    if unused or missing or wrong:
        problems = []
        if unused:
            problems.append(_format_problems("original keys the model has no place for", unused))
        if missing:
            problems.append(_format_problems("model tensors the checkpoint does not provide", missing))
        if wrong:
            problems.append(_format_problems("shape mismatches", wrong))
        raise CheckpointConversionError(
            "The checkpoint does not match the requested architecture (num_layers="
            f"{config['num_layers']}, hidden_size={config['hidden_size']}, mm_layers={config['mm_layers']}, "
            f"gelu7_layers={config['gelu7_layers']}). Check --variant / --config. Nothing was written.\n"
            + "\n".join(problems)
        )

    mm_layers = set(config["mm_layers"])
    gelu7_layers = set(config["gelu7_layers"])
    width, padded = _swiglu_sizes(config)
    qkv_sizes = _qkv_sizes(config)
    converted: dict[str, torch.Tensor] = {}
    for key, tensor in original_state_dict.items():
        if key in _TOP_LEVEL_KEYS:
            converted[_TOP_LEVEL_KEYS[key]] = tensor
            continue
        _, _, layer, suffix = key.split(".", 3)
        layer = int(layer)
        module = _LAYER_KEYS[suffix]
        experts = tensor.chunk(len(MODALITIES), dim=0) if layer in mm_layers else (tensor,)
        if layer not in gelu7_layers and module == "ff.up_proj":
            experts = [_deinterleave_up(t, width, padded) for t in experts]
        elif layer not in gelu7_layers and module == "ff.down_proj":
            experts = [_pad_columns(t, width, padded) for t in experts]
        modalities = MODALITIES if layer in mm_layers else (None,)
        for modality, expert in zip(modalities, experts):
            if module == "attn.to_qkv":  # rows q | k | v | gate -> one projection each
                pieces = zip(_QKV_PROJECTIONS, expert.split(qkv_sizes, dim=0), qkv_sizes)
                for name, piece, size in pieces:
                    if size:
                        converted[f"blocks.{layer}.{_expert_path(name, modality)}.weight"] = piece.clone()
            else:
                converted[f"blocks.{layer}.{_expert_path(module, modality)}.weight"] = expert.clone()

    if set(converted) != set(model_shapes) or any(tuple(converted[k].shape) != model_shapes[k] for k in converted):
        raise CheckpointConversionError("Internal error: converted keys/shapes do not match the model; please report.")
    return converted


def _is_fp32_tensor(key: str) -> bool:
    atoms = key.split(".")
    return any(name in atoms for name in MagiHumanTransformer3DModel._keep_in_fp32_modules)


def cast_state_dict(state_dict: dict[str, torch.Tensor], dtype: str = "bf16") -> dict[str, torch.Tensor]:
    """
    Applies the `--dtype` policy: `bf16` (block linears bf16, the fp32 allow-list fp32), `fp32`, or `keep`.
    """
    if dtype not in _DTYPES:
        raise ValueError(f"dtype must be one of {_DTYPES}, got {dtype!r}.")
    if dtype == "keep":
        return state_dict
    out = {}
    for key, tensor in state_dict.items():
        if dtype == "fp32" or _is_fp32_tensor(key):
            out[key] = tensor.to(torch.float32)
        else:
            out[key] = tensor.to(torch.bfloat16)
    return out


def check_pad_multiple(value) -> None:
    """`pad_swiglu_to_multiple_of` must be `None` or an integer >= 1 (1 keeps the original width)."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(
            f"pad_swiglu_to_multiple_of (--pad-swiglu-to-multiple-of) must be an integer >= 1 (1 keeps the original "
            f"width, 8 is the default), got {value!r}."
        )


def convert_transformer(
    checkpoint_dir: str | os.PathLike,
    variant: str,
    config: str | os.PathLike | Mapping | None = None,
    dtype: str = "bf16",
    pad_swiglu_to_multiple_of: int | None = None,
    progress=None,
) -> MagiHumanTransformer3DModel:
    """
    Loads and converts an original checkpoint into a [`MagiHumanTransformer3DModel`].

    Args:
        checkpoint_dir (`str`): the original checkpoint folder.
        variant (`str`): `base`, `distill`, `sr_540p` or `sr_1080p`.
        config (`str`, `os.PathLike` or `dict`, *optional*): `--config` overrides (see the module docstring).
        dtype (`str`, defaults to `"bf16"`): `bf16`, `fp32` or `keep`.
        pad_swiglu_to_multiple_of (`int`, *optional*): zero-pad the swiglu7 width (exact).
        progress (`Callable[[str], None]`, *optional*): called with each shard's file name once it is read.

    Returns:
        [`MagiHumanTransformer3DModel`] in eval mode, on CPU.
    """
    if dtype not in _DTYPES:
        raise ValueError(f"dtype must be one of {_DTYPES}, got {dtype!r}.")
    check_pad_multiple(pad_swiglu_to_multiple_of)
    model_config = transformer_config_from_original(variant, config)
    if pad_swiglu_to_multiple_of:
        model_config["pad_swiglu_to_multiple_of"] = int(pad_swiglu_to_multiple_of)
    original = load_original_state_dict(
        checkpoint_dir, block_dtype=torch.bfloat16 if dtype == "bf16" else None, progress=progress
    )
    state_dict = cast_state_dict(convert_state_dict(original, model_config), dtype)
    del original
    model = _build_meta_model(model_config)
    model.load_state_dict(state_dict, strict=True, assign=True)
    return model.eval()


def save_transformer(
    model: MagiHumanTransformer3DModel, output_dir: str | os.PathLike, max_shard_size: str = "10GB"
) -> str:
    """
    Writes `output_dir/transformer/` (sharded safetensors + config.json). The folder is written under a temporary
    name first and renamed at the end, so a failed write leaves no half folder behind.

    Returns:
        `str`: the path of the written `transformer` folder.
    """
    output_dir = os.fspath(output_dir)
    target = os.path.join(output_dir, "transformer")
    if os.path.exists(target) and os.listdir(target):
        raise FileExistsError(f"{target} exists and is not empty; remove it or choose another --output.")
    os.makedirs(output_dir, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".transformer-", dir=output_dir)
    try:
        model.save_pretrained(staging, safe_serialization=True, max_shard_size=max_shard_size)
        if os.path.exists(target):
            os.rmdir(target)
        os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


# ---------------------------------------------------------------------------------------------------------------------
# Pipeline folders (model_index.json + scheduler/ + optional bundled components)
# ---------------------------------------------------------------------------------------------------------------------

PIPELINE_CLASS = {
    "base": "MagiHumanPipeline",
    "distill": "MagiHumanPipeline",
    "sr_540p": "MagiHumanSRPipeline",
    "sr_1080p": "MagiHumanSRPipeline",
}
# The distilled checkpoint samples with the DMD-2 rule (original `cfg_number = 1`); the others with UniPC.
SCHEDULER_SAMPLER = {"base": "unipc", "distill": "dmd", "sr_540p": "unipc", "sr_1080p": "unipc"}


def _sibling(module: str):
    """Import a sibling converter module of this package lazily (only the pipeline-folder writer needs them)."""
    import importlib

    return importlib.import_module(f"diffusers_magihuman.conversion.{module}")


def _is_diffusers_folder(path: str) -> bool:
    return os.path.isfile(os.path.join(path, "config.json"))


def plan_pipeline_components(
    vae: str | None = None,
    audio_vae: str | None = None,
    text_encoder: str | None = None,
    turbo_vae: str | None = None,
    turbo_vae_config: str | None = None,
) -> dict[str, tuple[str, str] | None]:
    """Checks the component inputs (existence and kind) and returns `{name: (kind, path) | None}`.

    Raises a clear error before anything is converted or written.
    """
    plan: dict[str, tuple[str, str] | None] = {}
    if vae is not None:
        if not _is_diffusers_folder(vae):
            raise FileNotFoundError(
                f"--vae {vae!r} is not a diffusers model folder (no config.json). Give the `vae/` folder of "
                "Wan2.2-TI2V-5B-Diffusers."
            )
        plan["vae"] = ("diffusers", vae)
    if audio_vae is not None:
        if os.path.isfile(os.path.join(audio_vae, "model_config.json")):
            plan["audio_vae"] = ("original", audio_vae)
        elif _is_diffusers_folder(audio_vae):
            plan["audio_vae"] = ("diffusers", audio_vae)
        else:
            raise FileNotFoundError(
                f"--audio-vae {audio_vae!r} has neither model_config.json (original Stable-Audio-Open layout) nor "
                "config.json (a diffusers AutoencoderOobleck folder)."
            )
    if text_encoder is not None:
        if not os.path.isfile(os.path.join(text_encoder, "config.json")):
            raise FileNotFoundError(f"--text-encoder {text_encoder!r} is not a transformers model folder (no config.json).")
        plan["text_encoder"] = ("transformers", text_encoder)
    if turbo_vae is not None:
        if os.path.isdir(turbo_vae) and _is_diffusers_folder(turbo_vae):
            plan["turbo_vae"] = ("diffusers", turbo_vae)
        elif os.path.isfile(turbo_vae):
            if turbo_vae_config is None or not os.path.isfile(turbo_vae_config):
                raise FileNotFoundError("--turbo-vae given as a .ckpt needs --turbo-vae-config (the original JSON).")
            plan["turbo_vae"] = ("original", turbo_vae)
            plan["turbo_vae_config"] = ("original", turbo_vae_config)
        else:
            raise FileNotFoundError(f"--turbo-vae {turbo_vae!r} is neither a .ckpt file nor a converted model folder.")
    elif turbo_vae_config is not None:
        raise ValueError("--turbo-vae-config needs --turbo-vae.")
    return plan


def _place_folder(src: str, dst: str, link: bool) -> None:
    if os.path.exists(dst):
        raise FileExistsError(f"{dst} exists; remove it or choose another --output.")
    if link:
        os.symlink(os.path.abspath(src), dst, target_is_directory=True)
    else:
        shutil.copytree(src, dst)


def _entry(module) -> list[str]:
    """The `model_index.json` entry diffusers writes for a component (ours as `diffusers_magihuman`)."""
    from diffusers.pipelines.pipeline_loading_utils import _fetch_class_library_tuple

    library, class_name = _fetch_class_library_tuple(module)
    if library.startswith("diffusers_magihuman"):
        library = "diffusers_magihuman"
    elif library.startswith("diffusers"):
        library = "diffusers"
    elif library.startswith("transformers"):
        library = "transformers"
    return [library, class_name]


def write_pipeline_folder(
    output_dir: str | os.PathLike, variant: str, plan: dict | None = None, link: bool = False
) -> str:
    """Writes `scheduler/`, the planned components and `model_index.json` next to `output_dir/transformer/`.

    Args:
        output_dir: the folder that already holds `transformer/` (from [`save_transformer`]).
        variant: `base`, `distill`, `sr_540p` or `sr_1080p` (pipeline class and scheduler rule).
        plan: from [`plan_pipeline_components`]; absent components are recorded as `[null, null]`.
        link: symlink diffusers-format folders instead of copying them.

    Returns:
        `str`: `output_dir`.
    """
    import diffusers

    from diffusers_magihuman.schedulers.scheduling_magihuman import MagiHumanScheduler

    if variant not in PIPELINE_CLASS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}.")
    output_dir = os.fspath(output_dir)
    plan = dict(plan or {})
    if not os.path.isdir(os.path.join(output_dir, "transformer")):
        raise FileNotFoundError(f"{output_dir}/transformer/ is missing; convert the transformer first.")
    index: dict[str, Any] = {
        "_class_name": PIPELINE_CLASS[variant],
        "_diffusers_version": diffusers.__version__,
        "transformer": ["diffusers_magihuman", "MagiHumanTransformer3DModel"],
        "scheduler": ["diffusers_magihuman", "MagiHumanScheduler"],
        "vae": [None, None],
        "audio_vae": [None, None],
        "text_encoder": [None, None],
        "tokenizer": [None, None],
        "turbo_vae": [None, None],
    }
    MagiHumanScheduler(sampler=SCHEDULER_SAMPLER[variant]).save_pretrained(os.path.join(output_dir, "scheduler"))

    if "vae" in plan:
        from diffusers import AutoencoderKLWan

        _, src = plan["vae"]
        _place_folder(src, os.path.join(output_dir, "vae"), link)
        index["vae"] = ["diffusers", AutoencoderKLWan.load_config(src).get("_class_name", "AutoencoderKLWan")]
    if "audio_vae" in plan:
        kind, src = plan["audio_vae"]
        dst = os.path.join(output_dir, "audio_vae")
        if kind == "original":
            audio_vae = _sibling("convert_oobleck_to_diffusers").load_oobleck_original(src)
            audio_vae.save_pretrained(dst)
            index["audio_vae"] = _entry(audio_vae)
        else:
            _place_folder(src, dst, link)
            from diffusers import AutoencoderOobleck

            class_name = AutoencoderOobleck.load_config(src).get("_class_name", "AutoencoderOobleck")
            library = "diffusers_magihuman" if class_name == "AutoencoderOobleckUntied" else "diffusers"
            index["audio_vae"] = [library, class_name]
    if "text_encoder" in plan:
        from transformers import AutoTokenizer, T5GemmaEncoderModel

        _, src = plan["text_encoder"]
        encoder = T5GemmaEncoderModel.from_pretrained(src, is_encoder_decoder=False, dtype=torch.bfloat16)
        encoder.save_pretrained(os.path.join(output_dir, "text_encoder"))
        tokenizer = AutoTokenizer.from_pretrained(src)
        tokenizer.save_pretrained(os.path.join(output_dir, "tokenizer"))
        index["text_encoder"] = _entry(encoder)
        index["tokenizer"] = _entry(tokenizer)
    if "turbo_vae" in plan:
        kind, src = plan["turbo_vae"]
        dst = os.path.join(output_dir, "turbo_vae")
        if kind == "original":
            turbo = _sibling("convert_turbo_vae_to_diffusers").load_turbo_vae_original(src, plan["turbo_vae_config"][1])
            # The original runs it in bf16. nn.Module.to: the model has no fp32 islands, so diffusers' warning about
            # `_keep_in_fp32_modules` on a plain `.to(dtype)` does not apply.
            torch.nn.Module.to(turbo, torch.bfloat16).save_pretrained(dst)
        else:
            _place_folder(src, dst, link)
        index["turbo_vae"] = ["diffusers_magihuman", "AutoencoderTurboVAED"]

    with open(os.path.join(output_dir, "model_index.json"), "w") as handle:
        json.dump(index, handle, indent=2, sort_keys=True)
        handle.write("\n")
    return output_dir


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", "--checkpoint_dir", "--checkpoint-dir", dest="checkpoint", required=True,
                        help="original checkpoint folder (model.safetensors.index.json + shards)")
    parser.add_argument("--variant", choices=VARIANTS, required=True)
    parser.add_argument("--config", default=None, help="JSON with model_config / data_proxy_config overrides")
    parser.add_argument("--dtype", choices=_DTYPES, default="bf16")
    parser.add_argument("--output", required=True, help="output folder; the model goes to OUTPUT/transformer/")
    parser.add_argument("--pad-swiglu-to-multiple-of", "--pad_swiglu_to_multiple_of", dest="pad_swiglu",
                        type=positive_int("--pad-swiglu-to-multiple-of"), default=8,
                        help="zero-pad the swiglu7 width to a multiple of N (exact; 13652 -> 13656 at full size, which "
                             "puts down_proj on fast GEMM kernels, -18%% eager time on H200). 1 keeps the original width")
    parser.add_argument("--max-shard-size", "--max_shard_size", dest="max_shard_size", default="10GB")
    parser.add_argument("--transformer-only", action="store_true", help="write only OUTPUT/transformer/")
    parser.add_argument("--vae", default=None, help="diffusers AutoencoderKLWan folder (Wan2.2-TI2V-5B `vae/`) to bundle")
    parser.add_argument("--audio-vae", dest="audio_vae", default=None,
                        help="Stable-Audio-Open folder (original model_config.json + model.safetensors) or a diffusers "
                             "AutoencoderOobleck folder, to bundle")
    parser.add_argument("--text-encoder", dest="text_encoder", default=None,
                        help="T5-Gemma folder (transformers; e.g. t5gemma-9b-9b-ul2); its encoder and tokenizer are bundled")
    parser.add_argument("--turbo-vae", dest="turbo_vae", default=None,
                        help="original Turbo-VAE .ckpt, or a converted AutoencoderTurboVAED folder")
    parser.add_argument("--turbo-vae-config", dest="turbo_vae_config", default=None, help="the Turbo-VAE JSON (.ckpt only)")
    parser.add_argument("--link", action="store_true", help="symlink diffusers-format component folders instead of copying")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing non-empty --output folder (only once the new one is complete)")
    parser.add_argument("--no-model-card", dest="model_card", action="store_false",
                        help="do not write the README.md model card into the pipeline folder")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    components = {
        "vae": args.vae,
        "audio_vae": args.audio_vae,
        "text_encoder": args.text_encoder,
        "turbo_vae": args.turbo_vae,
    }
    if args.transformer_only and any(components.values()):
        raise ValueError("--transformer-only writes no other component; drop it or the component flags.")
    # Step 0: check every input and the output folder before any long work or any write.
    plan = None if args.transformer_only else plan_pipeline_components(**components, turbo_vae_config=args.turbo_vae_config)
    if args.transformer_only:
        target = os.path.join(args.output, "transformer")
        if os.path.isdir(args.output):
            check_output_folder(target, args.overwrite, what=f"{target} (--output/transformer)")
    else:
        check_output_folder(args.output, args.overwrite)
    # Step 1: the transformer (validated completely before anything is written).
    model = convert_transformer(
        args.checkpoint, args.variant, config=args.config, dtype=args.dtype, pad_swiglu_to_multiple_of=args.pad_swiglu
    )
    if args.transformer_only:
        os.makedirs(args.output, exist_ok=True)
        with atomic_output_folder(os.path.join(args.output, "transformer"), args.overwrite) as staging:
            model.save_pretrained(staging, safe_serialization=True, max_shard_size=args.max_shard_size)
        print(f"[convert] wrote {os.path.join(args.output, 'transformer')}")
        return 0
    # Step 2: everything goes into a temporary folder next to --output, renamed into place at the end, so an
    # interrupted run leaves no half folder and an existing folder is replaced only with --overwrite.
    with atomic_output_folder(args.output, args.overwrite) as staging:
        save_transformer(model, staging, max_shard_size=args.max_shard_size)
        del model
        write_pipeline_folder(staging, args.variant, plan, link=args.link)
        if args.model_card:
            from diffusers_magihuman.conversion.model_card import write_model_card

            write_model_card(staging, args.variant, components=sorted(c for c in plan if c != "turbo_vae_config"))
    print(f"[convert] wrote pipeline folder {args.output} ({PIPELINE_CLASS[args.variant]})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
