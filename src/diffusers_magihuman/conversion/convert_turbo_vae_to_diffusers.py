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
"""Converts an original daVinci-MagiHuman Turbo-VAE (`TurboV3-Wan22-TinyShallow_7_7.json` + `checkpoint-*.ckpt`) into
a diffusers model folder loadable with `AutoencoderTurboVAED.from_pretrained(DIR)`.

Usage:
    python -m conversion.convert_turbo_vae_to_diffusers --checkpoint checkpoint-340000.ckpt \
        --config TurboV3-Wan22-TinyShallow_7_7.json --output out/turbo_vae [--dtype bf16|fp32] [--overwrite]

The folder is written under a temporary name and renamed into place at the end; an existing non-empty `--output`
is refused unless `--overwrite` is given.
"""

import argparse
import inspect
import os
from collections.abc import Mapping

import torch
from diffusers.utils import logging

from diffusers_magihuman.conversion._io import atomic_output_folder, check_output_folder, corrupt_file_error, read_json
from diffusers_magihuman.models.autoencoder_turbo_vaed import AutoencoderTurboVAED


logger = logging.get_logger(__name__)

# Original config keys that only matter for training (the aligned-feature heads) or that the decoder does not use.
IGNORED_CONFIG_PREFIXES = ("aligned_feature_projection_", "aligned_blks_")
IGNORED_CONFIG_KEYS = ("in_channels", "scaling_factor")
# Training-only projection heads stored next to the decoder in the EMA state dict.
IGNORED_STATE_DICT_PREFIXES = ("aligned_feature_projection",)

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def convert_turbo_vae_config(original_config: Mapping) -> dict:
    """Maps an original TurboVAED JSON config to `AutoencoderTurboVAED` init kwargs.

    Field names are kept. `_class_name`/`_diffusers_version`, training-only `aligned_*` fields, `in_channels` and
    `scaling_factor` are dropped; any other unknown key is dropped with a warning.
    """
    accepted = set(inspect.signature(AutoencoderTurboVAED.__init__).parameters) - {"self"}
    config, unknown = {}, []
    for key, value in original_config.items():
        if key.startswith("_") or key in IGNORED_CONFIG_KEYS or key.startswith(IGNORED_CONFIG_PREFIXES):
            continue
        if key in accepted:
            config[key] = value
        else:
            unknown.append(key)
    if unknown:
        logger.warning(f"Ignoring unknown Turbo-VAE config keys: {sorted(unknown)}")
    return config


def _extract_state_dict(checkpoint: object, ckpt_path: str) -> dict[str, torch.Tensor]:
    if isinstance(checkpoint, Mapping) and "ema_state_dict" in checkpoint:
        state_dict = checkpoint["ema_state_dict"]
        if not isinstance(state_dict, Mapping):
            raise ValueError(f"{ckpt_path}: 'ema_state_dict' is a {type(state_dict).__name__}, expected a dict.")
    elif isinstance(checkpoint, Mapping) and checkpoint and all(torch.is_tensor(v) for v in checkpoint.values()):
        state_dict = checkpoint  # a plain state dict
    else:
        keys = list(checkpoint.keys())[:10] if isinstance(checkpoint, Mapping) else type(checkpoint).__name__
        raise ValueError(
            f"{ckpt_path}: expected a dict with an 'ema_state_dict' entry (the original Turbo-VAE format) or a plain "
            f"state dict of tensors; got {keys}."
        )
    return dict(state_dict)


def convert_turbo_vae_state_dict(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Strips the DDP `module.` prefix and drops the training-only `aligned_feature_projection*` heads.

    A state dict of the bare decoder (no `decoder.` prefix on any key) gets `decoder.` prepended, as upstream's
    fallback load into `.decoder` does.
    """
    converted = {}
    for key, value in state_dict.items():
        key = key[len("module.") :] if key.startswith("module.") else key
        if key.startswith(IGNORED_STATE_DICT_PREFIXES):
            continue
        converted[key] = value
    if converted and not any(k.startswith(("decoder.", "encoder.")) for k in converted):
        converted = {f"decoder.{k}": v for k, v in converted.items()}
    return converted


def _check_state_dict(model: AutoencoderTurboVAED, state_dict: dict[str, torch.Tensor], source: str) -> None:
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(k for k in state_dict if k not in expected and k.startswith("decoder."))
    mismatched = sorted(
        f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(expected[k].shape)}"
        for k, v in state_dict.items()
        if k in expected and tuple(v.shape) != tuple(expected[k].shape)
    )
    others = sorted(k for k in state_dict if k not in expected and not k.startswith("decoder."))
    if others:
        logger.warning(f"{source}: ignoring {len(others)} non-decoder keys, e.g. {others[:5]}")
    if missing or unexpected or mismatched:
        lines = [f"{source} does not match the Turbo-VAE config (is the JSON the one trained with this checkpoint?)"]
        problems = (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", mismatched))
        for title, items in problems:
            if items:
                lines.append(f"  {len(items)} {title}:")
                lines.extend(f"    {item}" for item in items)
        raise ValueError("\n".join(lines))
    for key in others:
        state_dict.pop(key)


def load_turbo_vae_original(ckpt_path: str | os.PathLike, config_json_path: str | os.PathLike) -> AutoencoderTurboVAED:
    """Builds an `AutoencoderTurboVAED` (float32, eval mode) from an original config JSON and checkpoint.

    Args:
        ckpt_path: The original `.ckpt`: `torch.save({"ema_state_dict": {"module.decoder.<param>": ...}, ...})`,
            or a plain state dict. Loaded with `weights_only=True` on CPU.
        config_json_path: The original TurboVAED JSON (e.g. `TurboV3-Wan22-TinyShallow_7_7.json`).

    Raises:
        ValueError: On a malformed checkpoint, or when decoder keys are missing / unexpected / of the wrong shape.
    """
    original_config = read_json(config_json_path, "Turbo-VAE config")
    model = AutoencoderTurboVAED(**convert_turbo_vae_config(original_config))

    if not os.path.isfile(ckpt_path):
        raise FileNotFoundError(f"The Turbo-VAE checkpoint {os.fspath(ckpt_path)!r} does not exist.")
    try:
        checkpoint = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated zip / pickle, or not a torch checkpoint
        raise corrupt_file_error(ckpt_path, e, "Turbo-VAE checkpoint") from None
    state_dict = convert_turbo_vae_state_dict(_extract_state_dict(checkpoint, str(ckpt_path)))
    _check_state_dict(model, state_dict, str(ckpt_path))
    model.load_state_dict(state_dict, strict=True)
    return model.eval().requires_grad_(False)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description="Convert an original daVinci-MagiHuman Turbo-VAE to a diffusers model folder."
    )
    parser.add_argument("--checkpoint", required=True, help="original .ckpt (with 'ema_state_dict')")
    parser.add_argument("--config", required=True, help="original TurboVAED JSON config")
    parser.add_argument("--output", required=True, help="output folder (config.json + safetensors)")
    parser.add_argument("--dtype", default="bf16", choices=sorted(DTYPES), help="weight dtype to save (default bf16)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing non-empty --output folder")
    parser.add_argument("--no-model-card", dest="model_card", action="store_false", help="do not write README.md")
    args = parser.parse_args(argv)

    check_output_folder(args.output, args.overwrite)  # before the (slow) load
    model = load_turbo_vae_original(args.checkpoint, args.config)
    model = torch.nn.Module.to(model, DTYPES[args.dtype])  # no fp32 islands: skip diffusers' `.to(dtype)` warning
    with atomic_output_folder(args.output, args.overwrite) as staging:
        model.save_pretrained(staging, safe_serialization=True)
        if args.model_card:
            from diffusers_magihuman.conversion.model_card import write_model_card

            write_model_card(staging, "turbo_vae")
    print(f"wrote AutoencoderTurboVAED ({args.dtype}) to {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
