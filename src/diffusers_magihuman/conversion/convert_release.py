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
"""`magihuman convert`: the downloaded original release -> diffusers pipeline folders with model cards.

    magihuman convert --release daVinci-MagiHuman --vae Wan2.2-TI2V-5B-Diffusers/vae \
        --audio-vae stable-audio-open-1.0 --text-encoder t5gemma-9b-9b-ul2 --output-dir converted [--dry-run]

reads `RELEASE/base/`, `distill/`, `540p_sr/`, `1080p_sr/` (original DiT checkpoints) and `turbo_vae/` (`*.ckpt` +
its JSON) and writes, under `--output-dir`:

=========================  ======================  ======================================================
folder                     pipeline                bundled components
=========================  ======================  ======================================================
``magihuman-base``         MagiHumanPipeline       transformer, scheduler (UniPC), vae, audio_vae, text encoder, Turbo-VAE
``magihuman-distill``      MagiHumanPipeline       same, scheduler with the distilled rule
``magihuman-sr-540p``      MagiHumanSRPipeline     transformer, scheduler (shares the rest through `from_pipe`)
``magihuman-sr-1080p``     MagiHumanSRPipeline     same, with the 1080p local attention
=========================  ======================  ======================================================

Each folder gets a README.md model card. Every input is checked first (`--dry-run` stops there): the DiT indexes
and shard headers (keys and shapes against the architecture, without reading tensor data), the Turbo-VAE, the
component folders, the output folders and the free disk space. Each folder is written under a temporary name and
renamed into place when complete, so an interrupted run leaves no half folder; a non-empty folder is only replaced
with `--overwrite`. The components of the second folder that bundles them are hard links to the first one's files
where the file system allows (no second copy of the 18 GB text encoder).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shutil

from diffusers_magihuman.conversion._io import atomic_output_folder, check_output_folder, positive_int, read_json


# release sub-folder -> (variant, output folder name)
RELEASE_LAYOUT = {
    "base": ("base", "magihuman-base"),
    "distill": ("distill", "magihuman-distill"),
    "540p_sr": ("sr_540p", "magihuman-sr-540p"),
    "1080p_sr": ("sr_1080p", "magihuman-sr-1080p"),
}
VARIANT_TO_FOLDER = {variant: (sub, name) for sub, (variant, name) in RELEASE_LAYOUT.items()}
BUNDLING_VARIANTS = ("base", "distill")
_GB = 1024**3


class ReleaseError(ValueError):
    """The release folder or an input does not have what the conversion needs; nothing was written."""


def _find_checkpoint_dir(folder: str) -> str:
    """The folder itself when it holds the index / model.safetensors, else its one sub-folder that does."""
    def holds(path):
        return any(
            os.path.exists(os.path.join(path, name))
            for name in ("model.safetensors.index.json", "model.safetensors", "model.safetensors.zst")
        )

    if holds(folder):
        return folder
    inner = [os.path.join(folder, d) for d in sorted(os.listdir(folder)) if os.path.isdir(os.path.join(folder, d))]
    found = [d for d in inner if holds(d)]
    if len(found) == 1:
        return found[0]
    raise ReleaseError(
        f"{folder} holds no original DiT checkpoint (model.safetensors.index.json + shards, or model.safetensors)"
        + (f"; several sub-folders do: {found}" if found else "")
        + "."
    )


def _find_turbo_vae(folder: str) -> tuple[str, str]:
    ckpts = sorted(glob.glob(os.path.join(folder, "*.ckpt")))
    configs = sorted(glob.glob(os.path.join(folder, "*.json")))
    if len(ckpts) != 1 or len(configs) != 1:
        raise ReleaseError(
            f"{folder} must hold exactly one Turbo-VAE checkpoint (*.ckpt) and its JSON config; found "
            f"{[os.path.basename(c) for c in ckpts]} and {[os.path.basename(c) for c in configs]}. Pass "
            "--turbo-vae FILE.ckpt --turbo-vae-config FILE.json to choose."
        )
    return ckpts[0], configs[0]


def _parse_configs(values: list[str] | None) -> dict[str | None, str]:
    """`--config FILE` (all variants) or `--config VARIANT=FILE` (repeatable)."""
    out: dict[str | None, str] = {}
    for value in values or []:
        variant, sep, path = value.partition("=")
        if sep and variant in VARIANT_TO_FOLDER:
            out[variant] = path
        elif sep and not os.path.exists(value):
            raise ReleaseError(f"--config {value!r}: {variant!r} is not a variant ({', '.join(VARIANT_TO_FOLDER)}).")
        else:
            out[None] = value
    for path in out.values():
        if not os.path.isfile(path):
            raise FileNotFoundError(f"--config {path!r} does not exist.")
    return out


def _folder_bytes(path: str) -> int:
    if os.path.isfile(path):
        return os.path.getsize(path)
    total = 0
    for root, _, files in os.walk(path):
        total += sum(os.path.getsize(os.path.join(root, f)) for f in files if not os.path.islink(os.path.join(root, f)))
    return total


def plan_release(args) -> dict:
    """Checks every input and output of the conversion (no tensor data read, nothing written); returns the plan."""
    from diffusers_magihuman.conversion.convert_magihuman_to_diffusers import (
        check_original_checkpoint,
        plan_pipeline_components,
    )
    from diffusers_magihuman.conversion.convert_turbo_vae_to_diffusers import load_turbo_vae_original

    release = args.release
    if not os.path.isdir(release):
        raise FileNotFoundError(f"--release {release!r} is not a folder; give the downloaded original release.")
    present = [sub for sub in RELEASE_LAYOUT if os.path.isdir(os.path.join(release, sub))]
    if args.variants:
        variants = [v.strip() for v in args.variants.split(",") if v.strip()]
        unknown = [v for v in variants if v not in VARIANT_TO_FOLDER]
        if unknown:
            raise ReleaseError(f"--variants: unknown {unknown}; choose from {', '.join(VARIANT_TO_FOLDER)}.")
        missing = [v for v in variants if VARIANT_TO_FOLDER[v][0] not in present]
        if missing:
            raise FileNotFoundError(
                f"--variants {', '.join(missing)}: {', '.join(VARIANT_TO_FOLDER[v][0] + '/' for v in missing)} not found in "
                f"{release}."
            )
    else:
        variants = [RELEASE_LAYOUT[sub][0] for sub in present]
        if not variants:
            raise FileNotFoundError(
                f"--release {release!r} has none of {', '.join(s + '/' for s in RELEASE_LAYOUT)}: not the original "
                "release folder."
            )
    configs = _parse_configs(args.config)
    if not os.path.isdir(args.output_dir):
        parent = os.path.dirname(os.path.abspath(args.output_dir))
        if not os.path.isdir(parent):
            raise FileNotFoundError(f"--output-dir {args.output_dir!r}: the folder {parent!r} does not exist.")

    # Turbo-VAE: --turbo-vae/--turbo-vae-config, else RELEASE/turbo_vae/ when present
    turbo = turbo_config = None
    if args.turbo_vae:
        turbo, turbo_config = args.turbo_vae, args.turbo_vae_config
    elif os.path.isdir(os.path.join(release, "turbo_vae")):
        turbo, turbo_config = _find_turbo_vae(os.path.join(release, "turbo_vae"))
    bundles = any(v in BUNDLING_VARIANTS for v in variants)
    components = {}
    if bundles:
        components = plan_pipeline_components(
            vae=args.vae, audio_vae=args.audio_vae, text_encoder=args.text_encoder, turbo_vae=turbo,
            turbo_vae_config=turbo_config,
        )  # fmt: skip
        if components.get("turbo_vae", (None,))[0] == "original":
            load_turbo_vae_original(turbo, turbo_config)  # small: validates keys and shapes now, not after the DiTs
        for name, flag in (("text_encoder", "--text-encoder"), ("audio_vae", "--audio-vae"), ("vae", "--vae")):
            if name not in components:
                print(f"[convert] note: no {flag}: the base/distill folders will not bundle a {name} (pass it when loading).")

    items = []
    need = 0
    for variant in variants:
        sub, name = VARIANT_TO_FOLDER[variant]
        checkpoint = _find_checkpoint_dir(os.path.join(release, sub))
        config = configs.get(variant, configs.get(None))
        info = check_original_checkpoint(checkpoint, variant, config, args.pad_swiglu)
        output = os.path.join(args.output_dir, name)
        if os.path.isdir(args.output_dir):  # otherwise it is created, empty, before writing
            check_output_folder(output, args.overwrite, what="output folder")
        need += info["num_parameters"] * (4 if args.dtype == "fp32" else 2)
        items.append({"variant": variant, "checkpoint": checkpoint, "config": config, "output": output, **info})
    if bundles and not args.link:
        # Written once: the second bundling folder hard-links the first one's files.
        need += sum(_folder_bytes(src) for name, (_, src) in components.items() if name != "turbo_vae_config")
    probe = args.output_dir if os.path.isdir(args.output_dir) else os.path.dirname(os.path.abspath(args.output_dir))
    free = shutil.disk_usage(probe).free
    if need > free:
        raise ReleaseError(
            f"The converted folders need about {need / _GB:.1f} GiB but {probe} has {free / _GB:.1f} GiB free; "
            "free some space, convert fewer --variants at a time, or use --link."
        )
    return {"items": items, "components": components, "need_bytes": need, "free_bytes": free}


def _link_or_copy_tree(src: str, dst: str) -> None:
    def link_or_copy(a, b):
        try:
            os.link(a, b)
        except OSError:
            shutil.copy2(a, b)

    shutil.copytree(src, dst, copy_function=link_or_copy, symlinks=True)


def run_convert(args) -> int:
    """The `magihuman convert` command."""
    from tqdm.auto import tqdm

    from diffusers_magihuman.conversion.convert_magihuman_to_diffusers import (
        PIPELINE_CLASS,
        convert_transformer,
        save_transformer,
        write_pipeline_folder,
    )
    from diffusers_magihuman.conversion.model_card import write_model_card

    plan = plan_release(args)
    items = plan["items"]
    for item in items:
        print(
            f"[convert] {item['variant']:>9}: {item['checkpoint']} ({item['num_parameters'] / 1e9:.2f}B parameters) "
            f"-> {item['output']}"
        )
    print(f"[convert] about {plan['need_bytes'] / _GB:.1f} GiB to write, {plan['free_bytes'] / _GB:.1f} GiB free")
    if args.dry_run:
        print("[convert] dry run: every input checks out; nothing was written.")
        return 0
    os.makedirs(args.output_dir, exist_ok=True)

    from diffusers_magihuman.conversion.convert_magihuman_to_diffusers import _shard_plan

    units = sum(len(_shard_plan(item["checkpoint"])[1]) + 2 for item in items)  # shards read + transformer + rest
    bundled_from = None
    components = sorted(c for c in plan["components"] if c != "turbo_vae_config")
    with tqdm(total=units, unit="step", desc="convert", disable=args.quiet) as bar:
        for item in items:
            variant = item["variant"]
            bar.set_description(f"{variant}: reading")
            model = convert_transformer(
                item["checkpoint"], variant, config=item["config"], dtype=args.dtype,
                pad_swiglu_to_multiple_of=args.pad_swiglu, progress=lambda _shard: bar.update(1),
            )  # fmt: skip
            with atomic_output_folder(item["output"], args.overwrite, what="output folder") as staging:
                bar.set_description(f"{variant}: writing transformer")
                save_transformer(model, staging, max_shard_size=args.max_shard_size)
                del model
                bar.update(1)
                bar.set_description(f"{variant}: components")
                bundle = variant in BUNDLING_VARIANTS
                if bundle and bundled_from is not None:
                    write_pipeline_folder(staging, variant, {}, link=args.link)
                    for name in components:
                        _link_or_copy_tree(os.path.join(bundled_from, name), os.path.join(staging, name))
                        if name == "text_encoder":
                            _link_or_copy_tree(os.path.join(bundled_from, "tokenizer"), os.path.join(staging, "tokenizer"))
                    index = read_json(os.path.join(bundled_from, "model_index.json"), "model_index.json")
                    index["_class_name"] = PIPELINE_CLASS[variant]
                    with open(os.path.join(staging, "model_index.json"), "w") as handle:
                        json.dump(index, handle, indent=2, sort_keys=True)
                        handle.write("\n")
                else:
                    write_pipeline_folder(staging, variant, plan["components"] if bundle else {}, link=args.link)
                write_model_card(
                    staging, variant, components=components if bundle else [],
                    repo_id=f"{args.hub_org}/{os.path.basename(item['output'])}",
                    base_repo_id=f"{args.hub_org}/magihuman-distill",
                )  # fmt: skip
                bar.update(1)
            if bundle and bundled_from is None and components:
                bundled_from = item["output"]
            tqdm.write(f"[convert] wrote {item['output']} ({PIPELINE_CLASS[variant]})")
    print("[convert] done. Next: magihuman generate --model " + items[0]["output"] + ' --prompt "..." --output out.mp4')
    return 0


def add_convert_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--release", required=True, metavar="DIR",
                        help="the downloaded original release: holds base/, distill/, 540p_sr/, 1080p_sr/, turbo_vae/")
    parser.add_argument("--output-dir", required=True, metavar="DIR",
                        help="where the pipeline folders go (magihuman-base, magihuman-distill, magihuman-sr-540p, "
                             "magihuman-sr-1080p)")
    parser.add_argument("--variants", default=None,
                        help="comma-separated subset of base,distill,sr_540p,sr_1080p (default: all found in --release)")
    parser.add_argument("--vae", default=None, metavar="DIR",
                        help="Wan2.2 VAE: the vae/ folder of Wan-AI/Wan2.2-TI2V-5B-Diffusers (bundled into base/distill)")
    parser.add_argument("--audio-vae", default=None, metavar="DIR",
                        help="stable-audio-open-1.0 folder (original model_config.json + model.safetensors) or its "
                             "diffusers vae/ folder (bundled into base/distill)")
    parser.add_argument("--text-encoder", default=None, metavar="DIR",
                        help="google/t5gemma-9b-9b-ul2 folder; its encoder and tokenizer are bundled into base/distill")
    parser.add_argument("--turbo-vae", default=None, metavar="FILE",
                        help="Turbo-VAE .ckpt (default: the one in RELEASE/turbo_vae/)")
    parser.add_argument("--turbo-vae-config", default=None, metavar="FILE",
                        help="its JSON config (default: the one in RELEASE/turbo_vae/)")
    parser.add_argument("--config", action="append", default=None, metavar="[VARIANT=]FILE",
                        help="architecture overrides in the original's field names, for all variants or one "
                             "(repeatable; only for non-released, e.g. tiny test, checkpoints)")
    parser.add_argument("--dtype", choices=("bf16", "fp32", "keep"), default="bf16",
                        help="DiT storage: bf16 block linears with fp32 norms/embedders, as the original runs (default: bf16)")
    parser.add_argument("--pad-swiglu-to-multiple-of", dest="pad_swiglu", type=positive_int("--pad-swiglu-to-multiple-of"),
                        default=8, help="zero-pad the SwiGLU width to a multiple of N: exact, faster GEMMs (default: 8; 1 = off)")
    parser.add_argument("--max-shard-size", default="10GB", help="largest safetensors shard written (default: 10GB)")
    parser.add_argument("--link", action="store_true",
                        help="symlink diffusers-format component folders instead of copying (default: copy)")
    parser.add_argument("--hub-org", default="your-org",
                        help="Hub organisation used in the model cards' usage code (default: your-org)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace existing non-empty output folders, each once its new version is complete")
    parser.add_argument("--dry-run", action="store_true", help="check every input and output, write nothing")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
