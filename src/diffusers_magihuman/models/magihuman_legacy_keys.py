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
"""Converted transformer folders written before the projections were split (the "legacy" key layout).

Up to version 0.1.0 the converter wrote one fused `attn.to_qkv` per layer (rows `q | k | v | gate`), a bare
`attn.to_out` and modality experts as name suffixes (`attn.to_qkv_video`, `norm1_audio`, `ff.up_proj_text`). Today's
layout has `attn.to_q`, `attn.to_k`, `attn.to_v`, `attn.to_gate`, `attn.to_out.0`, and experts under
`video` / `audio` / `text` (`attn.video.to_q`, `audio.norm1`, `ff.text.up_proj`).

`MagiHumanTransformer3DModel.from_pretrained` refuses a legacy folder before loading any weight and names the two
ways out: re-convert the original checkpoint, or [`upgrade_legacy_folder`], which rewrites the folder shard by shard
into a new one (the tensors are only split and renamed, so the upgraded model computes exactly the same).
"""

from __future__ import annotations

import glob
import json
import os
import re
import shutil
import tempfile

import torch


_MODALITIES = ("video", "audio", "text")
# Old per-layer module paths (inside `blocks.{i}.`), with an optional `_<modality>` suffix on the last atom.
_LEGACY_KEY = re.compile(
    r"^blocks\.(\d+)\.(norm1|norm2|attn_post_norm|ff_post_norm|attn\.to_qkv|attn\.to_out|attn\.norm_q|attn\.norm_k"
    r"|ff\.up_proj|ff\.down_proj)(?:_(video|audio|text))?\.weight$"
)


def is_legacy_state_dict_keys(keys) -> bool:
    r"""Whether checkpoint `keys` use the legacy layout: a suffixed expert (`..._video.weight`), a bare `attn.to_out`,
    or a fused `attn.to_qkv` without separate `attn.to_q` (a fused model saved today has both)."""
    keys = list(keys)
    has_split_q = any(".to_q." in key for key in keys)
    for key in keys:
        match = _LEGACY_KEY.match(key)
        if match is None:
            continue
        module, modality = match.group(2), match.group(3)
        if modality is not None or module == "attn.to_out" or (module == "attn.to_qkv" and not has_split_q):
            return True
    return False


def _weight_keys_of_folder(folder: str) -> list[str] | None:
    # Key names from the index or the safetensors headers (no tensor is read); None when nothing is there.
    from safetensors import safe_open

    indexes = sorted(glob.glob(os.path.join(folder, "*.safetensors.index.json")))
    if indexes:
        keys = []
        for index in indexes:
            with open(index) as handle:
                keys += list(json.load(handle).get("weight_map", {}))
        return keys
    files = sorted(glob.glob(os.path.join(folder, "*.safetensors")))
    if not files:
        return None
    keys = []
    for path in files:
        with safe_open(path, framework="pt") as handle:
            keys += list(handle.keys())
    return keys


def legacy_folder_message(folder: str) -> str:
    return (
        f"{folder} is a MagiHuman transformer folder converted before the attention projections were split "
        "(it has fused `attn.to_qkv` / bare `attn.to_out` / `*_video` expert weights). Re-convert the original "
        "checkpoint with `python -m diffusers_magihuman.conversion.convert_magihuman_to_diffusers`, or upgrade this "
        "folder without the original checkpoint: `from diffusers_magihuman.models.magihuman_legacy_keys import "
        f"upgrade_legacy_folder; upgrade_legacy_folder({folder!r}, '<new folder>')`."
    )


def check_not_legacy_folder(folder: str) -> None:
    r"""Raises `ValueError` (see [`legacy_folder_message`]) when the local `folder` holds legacy weights."""
    keys = _weight_keys_of_folder(folder)
    if keys and is_legacy_state_dict_keys(keys):
        raise ValueError(legacy_folder_message(folder))


def _new_path(module: str, modality: str | None) -> str:
    atoms = module.split(".")
    if modality is not None:
        atoms = [atoms[0], modality] + atoms[1:] if atoms[0] in ("attn", "ff") and len(atoms) > 1 else [modality] + atoms
    return ".".join(atoms)


def upgrade_legacy_state_dict(state_dict: dict[str, torch.Tensor], config: dict) -> dict[str, torch.Tensor]:
    r"""
    Legacy keys to today's: `to_qkv` rows split into `to_q`, `to_k`, `to_v`, `to_gate`; `to_out` -> `to_out.0`;
    `<name>_<modality>` -> `<modality>.<name>` (after `attn.` / `ff.`). Other keys pass unchanged. Exact.

    Args:
        state_dict (`dict[str, torch.Tensor]`): legacy keys (one shard is enough).
        config (`dict`): the transformer config (head sizes and gating).
    """
    head_dim = config.get("head_dim", 128)
    heads, kv_heads = config.get("num_attention_heads", 40), config.get("num_key_value_heads", 8)
    gate = heads if config.get("enable_attn_gating", True) else 0
    sizes = [heads * head_dim, kv_heads * head_dim, kv_heads * head_dim, gate]
    upgraded = {}
    for key, tensor in state_dict.items():
        match = _LEGACY_KEY.match(key)
        if match is None:
            upgraded[key] = tensor
            continue
        layer, module, modality = match.groups()
        prefix = f"blocks.{layer}."
        if module == "attn.to_qkv":
            if tensor.shape[0] != sum(sizes):
                raise ValueError(f"{key} has {tensor.shape[0]} rows; the config gives q|k|v|gate = {sizes}.")
            for name, piece, size in zip(("to_q", "to_k", "to_v", "to_gate"), tensor.split(sizes), sizes):
                if size:
                    upgraded[prefix + _new_path(f"attn.{name}", modality) + ".weight"] = piece.clone()
        elif module == "attn.to_out":
            upgraded[prefix + _new_path("attn.to_out.0", modality) + ".weight"] = tensor
        else:
            upgraded[prefix + _new_path(module, modality) + ".weight"] = tensor
    return upgraded


def upgrade_legacy_folder(folder: str | os.PathLike, output: str | os.PathLike) -> str:
    r"""
    Writes an upgraded copy of the legacy transformer `folder` (config + safetensors shards + index) to `output`,
    shard by shard. `output` must not exist; it is written under a temporary name and renamed at the end.

    Returns:
        `str`: `output`.
    """
    from safetensors.torch import load_file, save_file

    folder, output = os.fspath(folder), os.fspath(output)
    if os.path.exists(output):
        raise FileExistsError(f"{output} exists; choose a new folder (nothing is overwritten).")
    config_path = os.path.join(folder, "config.json")
    if not os.path.exists(config_path):
        raise FileNotFoundError(f"{folder} has no config.json: not a transformer folder.")
    with open(config_path) as handle:
        config = json.load(handle)
    parent = os.path.dirname(os.path.abspath(output))
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".upgrade-", dir=parent)
    try:
        shutil.copy(config_path, os.path.join(staging, "config.json"))
        weight_map = {}
        for path in sorted(glob.glob(os.path.join(folder, "*.safetensors"))):
            name = os.path.basename(path)
            tensors = upgrade_legacy_state_dict(load_file(path), config)
            save_file({k: v.contiguous() for k, v in tensors.items()}, os.path.join(staging, name), {"format": "pt"})
            weight_map.update({key: name for key in tensors})
        for index in glob.glob(os.path.join(folder, "*.safetensors.index.json")):
            with open(index) as handle:
                data = json.load(handle)
            data["weight_map"] = dict(sorted(weight_map.items()))
            with open(os.path.join(staging, os.path.basename(index)), "w") as handle:
                json.dump(data, handle, indent=2)
        os.replace(staging, output)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return output
