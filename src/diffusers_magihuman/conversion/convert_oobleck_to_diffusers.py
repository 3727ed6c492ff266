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
"""Convert a Stable-Audio-Open checkpoint folder (the layout daVinci-MagiHuman loads) to a diffusers Oobleck VAE.

Input folder (what the original loads for its audio VAE):
  * `model_config.json`; the VAE config is `["model"]["pretransform"]["config"]`, the rate `["sample_rate"]`;
  * `model.safetensors`; the VAE weights are the `pretransform.model.*` keys (old-style `weight_g`/`weight_v`
    weight norm; `parametrizations.weight.original0/1` and plain `weight` are accepted too). Other keys (the
    diffusion model, conditioners) are ignored, as the original does.

Usage:
    python conversion/convert_oobleck_to_diffusers.py --input /path/to/stable-audio-open-1.0 --output out/audio_vae

The folder is written under a temporary name and renamed into place at the end; an existing non-empty `--output`
is refused unless `--overwrite` is given.

The stable-audio-open-1.0 repository also ships a diffusers `vae/` folder; pass that to
`AutoencoderOobleck.from_pretrained` directly, no conversion needed.
"""

from __future__ import annotations

import argparse
import os
import re

import torch
from diffusers import AutoencoderOobleck
from diffusers.utils import logging
from safetensors.torch import load_file

from diffusers_magihuman.conversion._io import atomic_output_folder, check_output_folder, corrupt_file_error, read_json
from diffusers_magihuman.utils.audio import AutoencoderOobleckUntied


logger = logging.get_logger(__name__)

ORIGINAL_PREFIX = "pretransform.model."

# The original module defaults (stable-audio-tools `OobleckEncoder` / `OobleckDecoder`), used for absent keys.
_ORIGINAL_DEFAULTS = {"channels": 128, "c_mults": [1, 2, 4, 8], "strides": [2, 4, 8, 8], "use_snake": False}
# Residual unit: Sequential(snake, conv k7, snake, conv k1)
_RES_UNIT = ("snake1", "conv1", "snake2", "conv2")


def _read_config(folder: str) -> tuple[dict, int]:
    path = os.path.join(folder, "model_config.json")
    if not os.path.isfile(path):
        raise ValueError(f"{path} not found: expected a Stable-Audio-Open folder with model_config.json.")
    full = read_json(path, "Stable-Audio-Open config")
    try:
        vae = full["model"]["pretransform"]["config"]
    except (KeyError, TypeError) as e:
        raise ValueError(f"{path} has no model.pretransform.config (the Oobleck VAE config).") from e
    return vae, int(full.get("sample_rate", 44100))


def oobleck_config_from_original(vae_config: dict, sample_rate: int = 44100) -> dict:
    """Map the original `pretransform.config` to `AutoencoderOobleck` init arguments; refuse what it cannot hold."""
    enc_block, dec_block = vae_config.get("encoder", {}), vae_config.get("decoder", {})
    for part, block in (("encoder", enc_block), ("decoder", dec_block)):
        if block.get("type") != "oobleck":
            raise ValueError(f"Only Oobleck {part}s convert; got type {block.get('type')!r}.")
    bottleneck = (vae_config.get("bottleneck") or {}).get("type")
    if bottleneck != "vae":
        raise ValueError(
            f"Only the 'vae' bottleneck converts (AutoencoderOobleck samples mean/scale); got {bottleneck!r}."
        )
    enc = {**_ORIGINAL_DEFAULTS, "in_channels": 2, "latent_dim": 32, **enc_block.get("config", {})}
    dec_defaults = {**_ORIGINAL_DEFAULTS, "out_channels": 2, "latent_dim": 32, "final_tanh": True}
    dec = {**dec_defaults, **dec_block.get("config", {})}

    problems = []
    if not (enc["use_snake"] and dec["use_snake"]):
        problems.append("ELU activations (use_snake=false); AutoencoderOobleck uses Snake")
    if dec["final_tanh"] or dec_block.get("soft_clip", False):
        problems.append("a final tanh / soft clip on the decoder")
    if enc.get("antialias_activation") or dec.get("antialias_activation") or dec.get("use_nearest_upsample"):
        problems.append("antialiased activations or nearest-neighbour upsampling")
    if list(enc["c_mults"]) != list(dec["c_mults"]) or list(enc["strides"]) != list(dec["strides"]):
        problems.append(f"different encoder/decoder c_mults or strides ({enc['c_mults']}/{enc['strides']} vs "
                        f"{dec['c_mults']}/{dec['strides']})")  # fmt: skip
    if len(enc["strides"]) != len(enc["c_mults"]):
        problems.append(f"{len(enc['strides'])} strides for {len(enc['c_mults'])} c_mults")
    if enc["in_channels"] != dec["out_channels"]:
        problems.append(f"in_channels {enc['in_channels']} != out_channels {dec['out_channels']}")
    if enc["latent_dim"] != 2 * dec["latent_dim"]:
        problems.append(f"encoder latent_dim {enc['latent_dim']} != 2 x decoder latent_dim {dec['latent_dim']}")
    if "latent_dim" in vae_config and vae_config["latent_dim"] != dec["latent_dim"]:
        problems.append(f"latent_dim {vae_config['latent_dim']} != decoder latent_dim {dec['latent_dim']}")
    if problems:
        raise ValueError(
            "This Oobleck config cannot be expressed by diffusers' AutoencoderOobleck: " + "; ".join(problems)
        )

    hop = 1
    for s in enc["strides"]:
        hop *= int(s)
    if "downsampling_ratio" in vae_config and int(vae_config["downsampling_ratio"]) != hop:
        raise ValueError(f"downsampling_ratio {vae_config['downsampling_ratio']} != prod(strides) = {hop}.")
    return {
        "encoder_hidden_size": int(enc["channels"]),
        "downsampling_ratios": [int(s) for s in enc["strides"]],
        "channel_multiples": [int(c) for c in enc["c_mults"]],
        "decoder_channels": int(dec["channels"]),
        "decoder_input_channels": int(dec["latent_dim"]),
        "audio_channels": int(enc["in_channels"]),
        "sampling_rate": int(sample_rate),
    }


def _module_prefix_map(num_blocks: int) -> dict[str, str]:
    """Original `encoder.layers.*` / `decoder.layers.*` module paths -> diffusers module paths."""
    table = {"encoder.layers.0": "encoder.conv1", "decoder.layers.0": "decoder.conv1"}
    for i in range(num_blocks):
        enc, dec = f"encoder.layers.{i + 1}.layers", f"decoder.layers.{i + 1}.layers"
        # EncoderBlock: Sequential(res 1, res 3, res 9, snake, strided conv)
        for j in range(3):
            for k, name in enumerate(_RES_UNIT):
                table[f"{enc}.{j}.layers.{k}"] = f"encoder.block.{i}.res_unit{j + 1}.{name}"
        table[f"{enc}.3"] = f"encoder.block.{i}.snake1"
        table[f"{enc}.4"] = f"encoder.block.{i}.conv1"
        # DecoderBlock: Sequential(snake, transposed conv, res 1, res 3, res 9)
        table[f"{dec}.0"] = f"decoder.block.{i}.snake1"
        table[f"{dec}.1"] = f"decoder.block.{i}.conv_t1"
        for j in range(3):
            for k, name in enumerate(_RES_UNIT):
                table[f"{dec}.{j + 2}.layers.{k}"] = f"decoder.block.{i}.res_unit{j + 1}.{name}"
    for part in ("encoder", "decoder"):
        table[f"{part}.layers.{num_blocks + 1}"] = f"{part}.snake1"
        table[f"{part}.layers.{num_blocks + 2}"] = f"{part}.conv2"
    return table


_PARAM = re.compile(r"^(.*)\.(alpha|beta|bias|weight_g|weight_v|weight|parametrizations\.weight\.original[01])$")


def convert_oobleck_state_dict(original: dict[str, torch.Tensor], num_blocks: int) -> dict[str, torch.Tensor]:
    """Rename original VAE keys (prefix already stripped) to diffusers' `AutoencoderOobleck` names.

    Snake `alpha`/`beta` go from `[C]` to `[1, C, 1]`; weight-norm parameters keep diffusers' old-style
    `weight_g`/`weight_v`. Unknown keys are kept under their own name so the strict check reports them.
    """
    table = _module_prefix_map(num_blocks)
    out = {}
    for key, value in original.items():
        match = _PARAM.match(key)
        if match is None or match.group(1) not in table:
            out[key] = value
            continue
        module, param = table[match.group(1)], match.group(2)
        if param in ("alpha", "beta"):
            value = value.reshape(1, -1, 1)
        elif param == "parametrizations.weight.original0":
            param = "weight_g"
        elif param == "parametrizations.weight.original1":
            param = "weight_v"
        elif param == "weight":  # weight norm already folded: g = ||w|| over all dims but 0, v = w
            out[f"{module}.weight_g"] = torch.linalg.vector_norm(value, dim=tuple(range(1, value.ndim)), keepdim=True)
            param = "weight_v"
        new_key = f"{module}.{param}"
        if new_key in out:
            raise ValueError(f"Two original keys map to {new_key!r} (e.g. {key!r}); the checkpoint is inconsistent.")
        out[new_key] = value
    return out


def load_oobleck_original(folder: str, torch_dtype: torch.dtype = torch.float32) -> AutoencoderOobleck:
    r"""
    Build a diffusers Oobleck VAE from a Stable-Audio-Open folder (`model_config.json` + `model.safetensors`).

    Returns a plain [`AutoencoderOobleck`] when its config can hold the checkpoint (Stable-Audio-Open 1.0), else
    `AutoencoderOobleckUntied` (a subclass, for encoders whose width differs from their latent size, e.g. tiny test
    models). Keys are checked strictly: missing, unexpected or mis-shaped weights raise `ValueError`.

    Args:
        folder (`str`): the checkpoint folder.
        torch_dtype (`torch.dtype`, defaults to `torch.float32`): parameter dtype (the original runs fp32).

    Returns:
        [`AutoencoderOobleck`] in eval mode.
    """
    vae_config, sample_rate = _read_config(folder)
    config = oobleck_config_from_original(vae_config, sample_rate)
    weights = os.path.join(folder, "model.safetensors")
    if not os.path.isfile(weights):
        raise ValueError(f"{weights} not found: the Oobleck weights must be in model.safetensors.")
    try:
        full = load_file(weights)
    except Exception as e:  # safetensors' SafetensorError on a truncated or corrupt file
        raise corrupt_file_error(weights, e, "Stable-Audio-Open weights") from None
    original = {k[len(ORIGINAL_PREFIX) :]: v for k, v in full.items() if k.startswith(ORIGINAL_PREFIX)}
    if not original:
        raise ValueError(f"{weights} has no `{ORIGINAL_PREFIX}*` keys: it does not contain the Oobleck VAE.")
    state_dict = convert_oobleck_state_dict(original, num_blocks=len(config["downsampling_ratios"]))

    tied = config["encoder_hidden_size"] == 2 * config["decoder_input_channels"]
    model_cls = AutoencoderOobleck if tied else AutoencoderOobleckUntied
    model = model_cls(**config)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    shapes = [
        f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in sorted(set(expected) & set(state_dict))
        if state_dict[k].shape != expected[k].shape
    ]
    if missing or unexpected or shapes:
        lines = [f"{weights} does not match the Oobleck config in model_config.json:"]
        if missing:
            lines.append(f"  missing ({len(missing)}): {', '.join(missing[:8])}{' ...' if len(missing) > 8 else ''}")
        if unexpected:
            pre = [ORIGINAL_PREFIX + k for k in unexpected[:8]]
            lines.append(f"  unexpected ({len(unexpected)}): {', '.join(pre)}{' ...' if len(unexpected) > 8 else ''}")
        if shapes:
            lines.append(f"  wrong shapes ({len(shapes)}): {'; '.join(shapes[:4])}")
        raise ValueError("\n".join(lines))
    model.load_state_dict(state_dict, strict=True)
    if torch_dtype != torch.float32:
        model = model.to(torch_dtype)
    return model.eval()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--input", required=True, help="Stable-Audio-Open folder: model_config.json + model.safetensors"
    )
    parser.add_argument("--output", required=True, help="output diffusers model folder")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--overwrite", action="store_true", help="replace an existing non-empty --output folder")
    args = parser.parse_args(argv)
    check_output_folder(args.output, args.overwrite)  # before the load
    model = load_oobleck_original(args.input, torch_dtype=getattr(torch, args.dtype))
    with atomic_output_folder(args.output, args.overwrite) as staging:
        model.save_pretrained(staging)
    if isinstance(model, AutoencoderOobleckUntied):
        logger.warning(
            f"Saved {args.output} as AutoencoderOobleckUntied (the encoder width differs from its latent size); load "
            "it with `diffusers_magihuman.utils.audio.AutoencoderOobleckUntied.from_pretrained`."
        )
    print(f"wrote {type(model).__name__} to {args.output}")


if __name__ == "__main__":
    main()
