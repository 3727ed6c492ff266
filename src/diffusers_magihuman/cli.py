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
"""The `magihuman` command.

    magihuman demo --output demo.mp4
        Builds a tiny RANDOM pipeline in code (no download, seconds on a CPU) and writes a real mp4 with an AAC
        audio track. Random weights produce noise; the demo shows the whole path works.

    magihuman convert --release DIR --vae DIR --audio-vae DIR --text-encoder DIR --output-dir DIR [--dry-run]
        Turns the downloaded original release (base/, distill/, 540p_sr/, 1080p_sr/, turbo_vae/) into pipeline
        folders with model cards.

    magihuman generate --model DIR --prompt "..." [--sr 540p|1080p --sr-model DIR] --output out.mp4
        Runs a converted pipeline folder, optionally through the super-resolution chain, and writes an mp4 with
        audio. `magihuman generate --help` lists every flag with its default and unit.

Every argument, input file and output path is checked before any weights load or any step runs; bad input exits
with status 2 and a one-line message. If something fails after sampling, the sampled latents are kept on disk and
the message says where (resume with `--latents-in`).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
import time
import warnings
from dataclasses import dataclass, field


DEMO_PROMPT = 'A young woman in a red coat smiles at the camera. Dialogue: <Woman, English>: "Hello there!"'
FPS = 25
MAX_SECONDS = 60
LATENTS_FORMAT = "magihuman-latents-v1"
SR_CHOICES = ("540p", "1080p")
# (short side, long side) of the SR output for the original's landscape base size 256x448.
SR_SIZES = {"540p": (512, 896), "1080p": (1088, 1920)}


class UsageError(ValueError):
    """Bad command-line input: reported as one line, exit status 2, before anything heavy runs."""


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (`magihuman generate: error: ... (see --help)`) and exit status 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


# ---------------------------------------------------------------------------------------------------------------------
# demo
# ---------------------------------------------------------------------------------------------------------------------


def run_demo(args) -> int:
    from .utils.video import check_output_path, export_to_video

    check_output_path(args.output, overwrite=args.overwrite, what="--output")
    for name in ("height", "width"):
        if getattr(args, name) < 32 or getattr(args, name) % 32:
            raise UsageError(f"--{name} must be a positive multiple of 32, got {getattr(args, name)}.")
    if not 0 < args.seconds <= MAX_SECONDS:
        raise UsageError(f"--seconds must be in (0, {MAX_SECONDS}], got {args.seconds}.")

    import torch

    from .testing_utils import make_tiny_pipeline

    t0 = time.time()
    with _quiet_third_party():
        pipe = make_tiny_pipeline(seed=args.seed, distilled=True, with_turbo_vae=True)
        pipe.set_progress_bar_config(disable=False, desc="demo (tiny random model)")
        out = pipe(
            args.prompt,
            height=args.height,
            width=args.width,
            seconds=args.seconds,
            generator=torch.Generator().manual_seed(args.seed),
            output_type="np",
        )
    export_to_video(
        out.frames[0], args.output, fps=FPS, audio=out.audio[0], audio_sample_rate=pipe.audio_sample_rate,
        overwrite=args.overwrite,
    )  # fmt: skip
    frames = out.frames.shape[1]
    print(
        f"wrote {args.output}: {frames} frames {args.width}x{args.height} @{FPS} fps + {out.audio.shape[-1]} audio "
        f"samples @{pipe.audio_sample_rate} Hz in {time.time() - t0:.1f}s.\n"
        "NOTE: the demo pipeline has tiny RANDOM weights, so the video and audio are noise. Convert the released "
        "checkpoints with `magihuman convert` and run `magihuman generate --model DIR`."
    )
    return 0


# ---------------------------------------------------------------------------------------------------------------------
# generate: checks (no weights loaded)
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class Job:
    """One prompt to render: its text, per-job overrides and the output paths of its videos."""

    prompt: str
    outputs: list[str]
    latents_out: list[str | None]
    seed: int
    image: str | None = None
    audio: str | None = None
    negative_prompt: str | None = None
    results: dict = field(default_factory=dict)


def _read_folder_index(folder: str, flag: str, pipeline_classes: tuple[str, ...]) -> dict:
    if not folder:
        raise UsageError(f"{flag} is empty; give a converted pipeline folder (see `magihuman convert`).")
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"{flag} {folder!r} is not a folder; give a converted pipeline folder.")
    path = os.path.join(folder, "model_index.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"{flag} {folder!r} has no model_index.json: not a diffusers pipeline folder. Convert the original release "
            "with `magihuman convert`."
        )
    try:
        with open(path, encoding="utf-8") as handle:
            index = json.load(handle)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UsageError(f"{path} is not valid JSON ({e}); convert the folder again.") from None
    if index.get("_class_name") not in pipeline_classes:
        raise UsageError(
            f"{flag} {folder!r} holds a {index.get('_class_name')!r} folder; {flag} needs {' or '.join(pipeline_classes)}."
        )
    return index


def resolve_model(name: str, flag: str) -> str:
    """A local folder as it is; an `org/name` Hub repo id becomes its snapshot folder (downloaded by
    huggingface_hub, or taken from the local cache with HF_HUB_OFFLINE=1)."""
    import re

    if not name or os.path.isdir(name) or not re.fullmatch(r"[\w.-]+/[\w.-]+", name) or os.path.exists(name):
        return name
    try:
        from huggingface_hub import snapshot_download

        return snapshot_download(name)
    except Exception as e:  # not on the Hub, offline without a cached copy, no access
        raise FileNotFoundError(
            f"{flag} {name!r} is not a local folder and could not be fetched from the Hub ({type(e).__name__}: "
            f"{str(e).splitlines()[0] if str(e) else ''})."
        ) from None


def _has(index: dict, name: str) -> bool:
    entry = index.get(name)
    return isinstance(entry, (list, tuple)) and len(entry) == 2 and entry[0] is not None


def _load_json(path: str) -> dict:
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def _scheduler_from_folder(folder: str, flag: str, force_unipc: bool = False):
    from .schedulers.scheduling_magihuman import MagiHumanScheduler

    path = os.path.join(folder, "scheduler", "scheduler_config.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{flag} {folder!r} has no scheduler/scheduler_config.json; convert the folder again.")
    scheduler = MagiHumanScheduler.from_config(_load_json(path))
    if force_unipc and scheduler.is_distilled:
        scheduler = MagiHumanScheduler.from_config(scheduler.config, sampler="unipc")
    return scheduler


def _schedule_runs(scheduler, steps: int) -> bool:
    """Dry run of the sampler on a 4-number tensor: does `steps` steps complete on this schedule?"""
    import copy

    import torch

    s = copy.deepcopy(scheduler)
    try:
        s.set_timesteps(steps)
        x = torch.zeros(1, 4)
        generator = torch.Generator().manual_seed(0)
        for t in s.timesteps:
            x = s.step(torch.zeros_like(x), t, x, generator=generator, return_dict=False)[0]
    except (ValueError, IndexError, RuntimeError):
        return False
    return len(s.timesteps) == steps


def check_steps(scheduler, steps: int, flag: str) -> None:
    """Refuses a step count the schedule cannot run, before any weights load (the timesteps are whole numbers, so
    a too fine grid repeats the first timestep and the sampler runs out of steps at the end)."""
    if steps < 1:
        raise UsageError(f"{flag} must be >= 1, got {steps}.")
    if _schedule_runs(scheduler, steps):
        return
    lo, hi = 1, steps  # the largest count that runs, by bisection (the failure is monotone in practice)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if _schedule_runs(scheduler, mid) else (lo, mid - 1)
    raise UsageError(f"{flag} {steps} is more than this schedule supports: use at most {lo} steps.")


def sr_size(height: int, width: int, sr: str) -> tuple[int, int]:
    """The SR output size for a base size: the original's 512x896 / 1088x1920 for 256x448 (transposed for portrait),
    otherwise the short side scaled to 512 / 1088 and the long side rounded up to a multiple of 32."""
    short, long = SR_SIZES[sr]
    if (height, width) == (256, 448):
        return short, long
    if (height, width) == (448, 256):
        return long, short
    if height <= width:
        return short, -(-round(width * short / height) // 32) * 32
    return -(-round(height * short / width) // 32) * 32, short


def _numbered(path: str | None, p: int, v: int, n_prompts: int, n_videos: int) -> str | None:
    if path is None or (n_prompts == 1 and n_videos == 1):
        return path
    stem, ext = os.path.splitext(path)
    if path.endswith(".latents.safetensors"):
        stem, ext = path[: -len(".latents.safetensors")], ".latents.safetensors"
    parts = [stem]
    if n_prompts > 1:
        parts.append(f"{p:03d}")
    if n_videos > 1:
        parts.append(f"v{v}")
    return "_".join(parts) + ext


def _check_latents_path(path: str, overwrite: bool, flag: str) -> None:
    if not path.endswith(".safetensors"):
        raise UsageError(f"{flag} {path!r} must end in .safetensors.")
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise FileNotFoundError(f"{flag} {path!r}: the folder {parent!r} does not exist; create it first.")
    if os.path.exists(path) and not overwrite:
        raise FileExistsError(f"{flag} {path!r} already exists; choose another name or pass --overwrite.")


def _read_prompts_file(path: str) -> list[dict]:
    """`.jsonl`: one JSON object per line with `prompt` and optional `output`, `seed`, `image`, `audio`,
    `negative_prompt`. Anything else: one prompt per non-empty line; lines starting with `#` are comments."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"--prompts-file {path!r} does not exist.")
    with open(path, encoding="utf-8") as handle:
        text = handle.read()
    entries = []
    if path.endswith(".jsonl"):
        allowed = {"prompt", "output", "seed", "image", "audio", "negative_prompt"}
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
            except json.JSONDecodeError as e:
                raise UsageError(f"--prompts-file {path}:{number} is not valid JSON ({e.msg}).") from None
            if not isinstance(entry, dict) or not isinstance(entry.get("prompt"), str):
                raise UsageError(f'--prompts-file {path}:{number} needs an object with a "prompt" string.')
            unknown = sorted(set(entry) - allowed)
            if unknown:
                raise UsageError(f"--prompts-file {path}:{number}: unknown keys {unknown}; allowed: {sorted(allowed)}.")
            entries.append(entry)
    else:
        entries = [{"prompt": line.strip()} for line in text.splitlines() if line.strip() and not line.startswith("#")]
    if not entries:
        raise UsageError(f"--prompts-file {path!r} holds no prompt.")
    return entries


def _check_image(path: str, flag: str) -> None:
    import PIL.Image

    if not os.path.isfile(path):
        raise FileNotFoundError(f"{flag} {path!r} does not exist.")
    try:
        with PIL.Image.open(path) as image:
            image.verify()
    except Exception as e:  # PIL raises several types for unreadable files
        raise UsageError(f"{flag} {path!r} is not a readable image ({e}).") from None


def _check_audio(path: str, flag: str, seconds: float | None) -> None:
    from .utils.audio import load_audio

    if not os.path.isfile(path):
        raise FileNotFoundError(f"{flag} {path!r} does not exist.")
    try:
        wave = load_audio(path)
    except ImportError:
        raise
    except Exception as e:
        raise UsageError(f"{flag} {path!r} cannot be decoded as audio ({e}).") from None
    length = wave.shape[-1] / 51200.0  # load_audio decodes to 51.2 kHz mono
    if seconds is None and length > MAX_SECONDS:
        raise UsageError(
            f"{flag} {path!r} is {length:.1f} s long; clips are limited to {MAX_SECONDS} s: trim it or pass --seconds."
        )


def read_latents(path: str) -> tuple:
    """Reads a `--latents-out` file: `(video (B, 48, T, h, w), audio (B, Na, 64), metadata dict)`."""
    from safetensors import safe_open

    if not os.path.isfile(path):
        raise FileNotFoundError(f"--latents-in {path!r} does not exist.")
    try:
        with safe_open(path, framework="pt") as handle:
            meta = handle.metadata() or {}
            keys = set(handle.keys())
            if meta.get("format") != LATENTS_FORMAT or not {"video", "audio"} <= keys:
                raise UsageError(
                    f"--latents-in {path!r} is not a latents file written by `magihuman generate --latents-out` "
                    f"(expected format {LATENTS_FORMAT!r} with 'video' and 'audio' tensors)."
                )
            video, audio = handle.get_tensor("video"), handle.get_tensor("audio")
    except UsageError:
        raise
    except Exception as e:
        raise UsageError(f"--latents-in {path!r} cannot be read ({type(e).__name__}: {e}).") from None
    if video.ndim != 5 or audio.ndim != 3 or video.shape[0] != audio.shape[0]:
        raise UsageError(
            f"--latents-in {path!r}: expected video (B, C, T, h, w) and audio (B, Na, C) with the same B, got "
            f"{tuple(video.shape)} and {tuple(audio.shape)}."
        )
    return video, audio, meta


def save_latents(path: str, video, audio, meta: dict, overwrite: bool = True) -> str:
    """Writes latents (and what produced them) to a safetensors file: a temporary file renamed into place."""
    import tempfile

    from safetensors.torch import save_file

    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".latents-", suffix=".safetensors.partial", dir=folder)
    os.close(fd)
    try:
        metadata = {k: str(v) for k, v in meta.items()}
        metadata["format"] = LATENTS_FORMAT
        save_file(
            {"video": video.detach().float().cpu().contiguous(), "audio": audio.detach().float().cpu().contiguous()},
            tmp,
            metadata=metadata,
        )
        if os.path.exists(path) and not overwrite:
            raise FileExistsError(f"{path!r} exists; not replaced.")
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def _rescue_path(output: str) -> str:
    stem = os.path.splitext(output)[0]
    candidate, i = f"{stem}.latents.safetensors", 1
    while os.path.exists(candidate):
        candidate, i = f"{stem}.latents-{i}.safetensors", i + 1
    return candidate


def torchrun_world_size() -> int:
    """The number of processes `torchrun` started for this command (1 when not under torchrun)."""
    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        return 1


def _check_parallel_degree(degree: int, args, world: int) -> None:
    """Context parallelism splits the attention heads over the ranks (Ulysses): the degree must divide the query and
    key/value heads of every DiT, and each rank needs its own GPU."""
    folders = [("--model", args.model)] + ([("--sr-model", args.sr_model)] if args.sr_model else [])
    for flag, folder in folders:
        path = os.path.join(folder, "transformer", "config.json")
        if not os.path.isfile(path):
            continue
        config = _load_json(path)
        heads, kv_heads = config.get("num_attention_heads", 1), config.get("num_key_value_heads", 1)
        if heads % degree or kv_heads % degree:
            valid = [n for n in range(1, kv_heads + 1) if heads % n == 0 and kv_heads % n == 0]
            raise UsageError(
                f"{degree} GPUs cannot split the DiT of {flag} {folder!r} ({heads} heads, {kv_heads} key/value heads); "
                f"use --gpus in {valid}."
            )
    if args.device == "cpu":
        if world == 1:
            raise UsageError("--gpus N runs one process per GPU; with --device cpu run one process (drop --gpus).")
        return
    import torch

    available = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if available < degree:
        raise UsageError(f"{degree} GPUs requested but {available} CUDA device(s) are visible; use --gpus {max(available, 1)}.")


def _check_speed_options(args, parallel: int) -> None:
    """`--fp8` and `--first-block-cache`: checked before anything is loaded."""
    threshold = args.first_block_cache
    if threshold is not None:
        if not math.isfinite(threshold) or threshold <= 0:
            raise UsageError(f"--first-block-cache must be a positive number (e.g. 0.05), got {threshold:g}.")
        if parallel > 1:
            raise UsageError(
                "--first-block-cache cannot be combined with several GPUs (each process would decide on its own "
                "shard which steps to skip); drop one of them."
            )
    if not args.fp8:
        return
    if args.device == "cpu":
        raise UsageError("--fp8 needs a CUDA GPU (compute capability 8.9+); drop it with --device cpu.")
    if args.dtype == "fp32":
        raise UsageError("--fp8 starts from bf16 weights; drop --dtype fp32.")
    if args.offload not in ("auto", "none"):
        raise UsageError(f"--fp8 keeps the quantized DiTs on the GPU; use --offload auto or none, not {args.offload}.")
    if parallel > 1:
        raise UsageError("--fp8 cannot be combined with several GPUs yet; drop one of them.")
    import importlib.util

    if importlib.util.find_spec("torchao") is None:
        raise UsageError("--fp8 needs torchao: pip install 'diffusers-magihuman[fp8]' (or pip install torchao).")
    from .utils.fp8 import fp8_device_problem

    problem = fp8_device_problem()
    if problem:
        raise UsageError(f"--fp8: {problem} Drop --fp8.")


def plan_generate(args) -> dict:
    """Checks every argument, input file and output path of `generate`; loads no weights. Returns the plan."""
    from .utils.prompt import check_prompt
    from .utils.video import check_output_path

    # Prompts
    given = [x for x in (args.prompt, args.prompt_file, args.prompts_file) if x is not None]
    if len(given) != 1:
        raise UsageError("give exactly one of --prompt, --prompt-file (one long prompt) or --prompts-file (several).")
    if args.prompts_file is not None:
        entries = _read_prompts_file(args.prompts_file)
    elif args.prompt_file is not None:
        if not os.path.isfile(args.prompt_file):
            raise FileNotFoundError(f"--prompt-file {args.prompt_file!r} does not exist.")
        with open(args.prompt_file, encoding="utf-8") as handle:
            entries = [{"prompt": handle.read().strip()}]
    else:
        entries = [{"prompt": args.prompt}]
    for i, entry in enumerate(entries):
        if not entry["prompt"].strip():
            raise UsageError("the prompt is empty; describe the video and the speech (see docs/usage.md, Prompts).")
    if args.latents_in is not None and len(entries) > 1:
        raise UsageError("--latents-in resumes one video; use it with --prompt or --prompt-file, not --prompts-file.")

    # Numbers
    if args.seconds is not None and not 0 < args.seconds <= MAX_SECONDS:
        raise UsageError(f"--seconds must be in (0, {MAX_SECONDS}], got {args.seconds:g}.")
    for name in ("height", "width"):
        value = getattr(args, name)
        if value < 32 or value % 32:
            lower, upper = max(32, value // 32 * 32), -(-value // 32) * 32
            raise UsageError(f"--{name} must be a positive multiple of 32 (e.g. {lower} or {upper}), got {value}.")
    if args.num_videos < 1:
        raise UsageError(f"--num-videos must be >= 1, got {args.num_videos}.")
    if args.resident_blocks < 0:
        raise UsageError(f"--resident-blocks must be >= 0, got {args.resident_blocks}.")
    if args.resident_blocks and args.offload != "group":
        raise UsageError("--resident-blocks applies to --offload group only.")
    world = torchrun_world_size()
    if args.gpus < 1:
        raise UsageError(f"--gpus must be >= 1, got {args.gpus}.")
    if world > 1 and args.gpus not in (1, world):
        raise UsageError(f"--gpus {args.gpus} but torchrun started {world} processes; drop --gpus under torchrun.")
    parallel = max(world, args.gpus)
    if parallel > 1 and args.offload not in ("auto", "none", "stage"):
        raise UsageError(f"--offload {args.offload} cannot be combined with several GPUs; use auto, none or stage.")
    _check_speed_options(args, parallel)
    for name in ("guidance_scale", "audio_guidance_scale", "sr_guidance_scale"):
        value = getattr(args, name)
        if value is not None and value < 1.0:
            raise UsageError(f"--{name.replace('_', '-')} must be >= 1 (1 turns guidance off), got {value:g}.")

    # Folders and what they hold (a Hub repo id is fetched, or read from the local Hub cache, first)
    args.model = resolve_model(args.model, "--model")
    if args.sr_model is not None:
        args.sr_model = resolve_model(args.sr_model, "--sr-model")
    index = _read_folder_index(args.model, "--model", ("MagiHumanPipeline",))
    scheduler = _scheduler_from_folder(args.model, "--model")
    distilled = scheduler.is_distilled
    notes = []
    if distilled and args.guidance_scale is not None and args.guidance_scale > 1.0:
        raise UsageError(
            f"--guidance-scale {args.guidance_scale:g}: the distilled model samples without guidance; drop the flag "
            "or use a base folder."
        )
    if distilled and (args.negative_prompt is not None or any("negative_prompt" in e for e in entries)):
        notes.append("the distilled model uses no guidance, so the negative prompt is not used")
    if distilled and args.audio_guidance_scale is not None and args.audio_guidance_scale != 1.0:
        notes.append("the distilled model uses no guidance, so --audio-guidance-scale is not used")
    steps = args.steps
    if steps is not None:
        check_steps(scheduler, steps, "--steps")
    for name, why in (("text_encoder", "encode the prompt"), ("tokenizer", "encode the prompt"), ("audio_vae", "decode the audio track")):
        if not _has(index, name):
            raise UsageError(
                f"--model {args.model!r} has no {name} (needed to {why}); convert it with the component bundled "
                "(`magihuman convert --text-encoder ... --audio-vae ...`)."
            )
    if parallel > 1:
        _check_parallel_degree(parallel, args, world)
    sr_index = None
    if args.sr is not None:
        if args.sr_model is None:
            raise UsageError(f"--sr {args.sr} needs --sr-model (the converted {args.sr} super-resolution folder).")
        sr_index = _read_folder_index(args.sr_model, "--sr-model", ("MagiHumanSRPipeline",))
        config_path = os.path.join(args.sr_model, "transformer", "config.json")
        if not os.path.isfile(config_path):
            raise FileNotFoundError(f"--sr-model {args.sr_model!r} has no transformer/config.json.")
        local = bool(_load_json(config_path).get("local_attn_layers"))
        if local != (args.sr == "1080p"):
            found = "1080p (local attention)" if local else "540p"
            raise UsageError(f"--sr {args.sr} but --sr-model {args.sr_model!r} holds the {found} super-resolution model.")
        check_steps(_scheduler_from_folder(args.sr_model, "--sr-model", force_unipc=True), args.sr_steps, "--sr-steps")
        if args.offload in ("sequential", "group"):
            raise UsageError(f"--offload {args.offload} is not supported with --sr; use auto, stage or model.")
        for name in ("sr_height", "sr_width"):
            value = getattr(args, name)
            if value is not None and (value < 32 or value % 32):
                raise UsageError(f"--{name.replace('_', '-')} must be a positive multiple of 32, got {value}.")
    elif args.sr_model is not None:
        raise UsageError("--sr-model needs --sr 540p or --sr 1080p.")
    decoders = {"turbo": _has(index, "turbo_vae"), "vae": _has(index, "vae")}
    if args.decoder == "auto" and not any(decoders.values()):
        raise UsageError(f"--model {args.model!r} has neither turbo_vae nor vae to decode the video.")
    if args.decoder != "auto" and not decoders[args.decoder]:
        raise UsageError(f"--decoder {args.decoder}: --model {args.model!r} has no {'turbo_vae' if args.decoder == 'turbo' else 'vae'}.")
    if (args.image or any(e.get("image") for e in entries)) and not decoders["vae"]:
        raise UsageError("--image needs the Wan2.2 vae in --model to encode the first frame.")

    # Input files
    if args.image:
        _check_image(args.image, "--image")
    if args.audio:
        _check_audio(args.audio, "--audio", args.seconds)
    for entry in entries:
        if entry.get("image"):
            _check_image(entry["image"], "--prompts-file image")
        if entry.get("audio"):
            _check_audio(entry["audio"], "--prompts-file audio", args.seconds)
    resume = None
    if args.latents_in is not None:
        video, audio, meta = read_latents(args.latents_in)
        stage = meta.get("stage", "base")
        if stage != "base" and args.sr is not None and stage != args.sr:
            raise UsageError(f"--latents-in holds {stage} latents; --sr {args.sr} cannot refine them.")
        if args.num_videos != video.shape[0]:
            raise UsageError(
                f"--latents-in {args.latents_in!r} holds {video.shape[0]} video(s); drop --num-videos (it applies when "
                "sampling)."
            )
        resume = (video, audio, meta)

    # Outputs
    n_prompts, n_videos = len(entries), args.num_videos
    jobs, seen = [], set()
    for p, entry in enumerate(entries):
        base_output = entry.get("output") or args.output
        outputs = [_numbered(base_output, p, v, 1 if entry.get("output") else n_prompts, n_videos) for v in range(n_videos)]
        latents_out = [
            _numbered(args.latents_out, p, v, n_prompts, n_videos) if args.latents_out else None for v in range(n_videos)
        ]
        for path in outputs:
            check_output_path(path, overwrite=args.overwrite, what="--output")
        for path in latents_out:
            if path is not None:
                _check_latents_path(path, args.overwrite, "--latents-out")
        for path in outputs + [x for x in latents_out if x]:
            if os.path.abspath(path) in seen:
                raise UsageError(f"two videos would be written to {path!r}; give each prompt its own output.")
            seen.add(os.path.abspath(path))
        seed = int(entry.get("seed", args.seed + p))
        jobs.append(
            Job(
                prompt=entry["prompt"],
                outputs=outputs,
                latents_out=latents_out,
                seed=seed,
                image=entry.get("image", args.image),
                audio=entry.get("audio", args.audio),
                negative_prompt=entry.get("negative_prompt", args.negative_prompt),
            )
        )
    for job in jobs:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            check_prompt(job.prompt)
        if caught:
            notes.append(f"prompt {job.prompt[:40]!r}...: {caught[0].message}")
    return {
        "jobs": jobs,
        "distilled": distilled,
        "index": index,
        "sr_index": sr_index,
        "resume": resume,
        "notes": notes,
        "steps": steps,
    }


# ---------------------------------------------------------------------------------------------------------------------
# generate: running
# ---------------------------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _quiet_third_party():
    """Silences diffusers' and transformers' load-time messages a user cannot act on (progress of shard loading,
    "some weights were not used" notes about the dropped T5-Gemma decoder, ...) for the duration of the command;
    our own warnings (size rounding, memory) stay visible. Restores the previous levels afterwards."""
    import logging as std_logging

    names = ("diffusers", "transformers", "torch._dynamo", "torch._inductor")
    levels = {name: std_logging.getLogger(name).level for name in names}
    try:
        for name in names:
            std_logging.getLogger(name).setLevel(std_logging.ERROR)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*torch\.nn\.utils\.weight_norm.*")  # inside diffusers' Oobleck
            warnings.filterwarnings("ignore", category=FutureWarning)
            yield
    finally:
        for name, level in levels.items():
            std_logging.getLogger(name).setLevel(level)


# This process's rank under torchrun (set by `_init_distributed`); only rank 0 prints stage lines and writes files.
_RANK = 0


def _stage(message: str) -> None:
    if _RANK == 0:
        print(f"[magihuman] {message}", flush=True)


def _resolve_device_dtype(args):
    import torch

    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda but no CUDA device is available; use --device cpu.")
    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}.get(args.dtype)
    if dtype is None:
        dtype = torch.bfloat16 if device == "cuda" else torch.float32
    return device, dtype


def _place(pipe, args, device: str, plan: dict) -> str:
    """Applies the memory policy and returns the one used. `auto`: on CUDA with --sr, `stage` (the text encoder and
    the VAEs stay on the GPU, the DiT of the running stage only: one 15B DiT resident at a time); on CUDA without
    --sr, `none` (all on the GPU, ~60 GB); on CPU, `none`."""
    import torch

    offload = args.offload
    if offload == "auto" and args.fp8:
        offload = "none"  # FP8 DiTs (~16 GB each) stay on the GPU with the rest
    if offload == "auto":
        offload = "stage" if (device == "cuda" and args.sr is not None) else "none"
    if offload == "model":
        pipe.enable_model_cpu_offload(device=device)
    elif offload == "sequential":
        pipe.enable_sequential_cpu_offload(device=device)
    elif offload == "group":
        # `--resident-blocks` DiT layers stay on the GPU; the audio VAE does not support group offload: it moves whole.
        pipe.enable_group_offload(
            onload_device=torch.device(device),
            offload_type="block_level",
            num_blocks_per_group=1,
            use_stream=device == "cuda",
            record_stream=device == "cuda",
            exclude_modules=["audio_vae"],
            num_resident_blocks=args.resident_blocks,
        )
    elif offload == "stage":
        for name, component in pipe.components.items():
            if isinstance(component, torch.nn.Module) and name != "transformer":
                component.to(device)
    else:
        pipe.to(device)
    return offload


def _apply_speed_options(transformer, args, base_stage: bool) -> None:
    """`--fp8` on each DiT (already on its GPU); `--first-block-cache` on the base stage's DiT only (the SR stage's
    5 steps change the latents too much per step for a cache to pay)."""
    if args.fp8:
        from .utils.fp8 import enable_fp8_compute

        _stage(f"FP8 compute: {enable_fp8_compute(transformer)} block linears quantized")
    if base_stage and args.first_block_cache is not None:
        from diffusers.hooks import FirstBlockCacheConfig

        transformer.enable_cache(FirstBlockCacheConfig(threshold=args.first_block_cache))


def _move_dit(module, device: str, offload: str) -> None:
    if offload == "stage":
        module.to(device)


def _maybe_free_cuda() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def run_generate(args) -> int:
    plan = plan_generate(args)  # every check; nothing loaded yet
    for note in plan["notes"]:
        print(f"magihuman: note: {note}", file=sys.stderr)
    if args.dry_run:
        n = sum(len(job.outputs) for job in plan["jobs"])
        _stage(f"dry run: all inputs and outputs check out ({n} video(s)); nothing was loaded or written.")
        return 0

    if args.gpus > 1 and torchrun_world_size() == 1:
        return _launch_torchrun(args)

    import torch

    device, dtype = _resolve_device_dtype(args)
    if device == "cuda":
        # Like the original's launch scripts: fewer fragmentation failures on an 80 GB card. Only this process, and
        # only when the user has not chosen a setting; read when CUDA allocates first.
        os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
    world = torchrun_world_size()
    if world > 1:
        device = _init_distributed(device)
    try:
        return _run_generate(args, plan, device, dtype, world)
    finally:
        if world > 1:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()


def _launch_torchrun(args) -> int:
    """`--gpus N`: run this same command under `torchrun --standalone --nproc-per-node N` (one process per GPU; the
    inputs were checked here first). Rank 0 prints the stage lines and writes the outputs."""
    import subprocess

    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={args.gpus}",
               "-m", "diffusers_magihuman.cli", *args.argv]  # fmt: skip
    _stage(f"launching {args.gpus} processes: {' '.join(command[1:6])} ...")
    return subprocess.run(command).returncode


def _init_distributed(device: str) -> str:
    """Joins the process group torchrun set up (NCCL on CUDA, one GPU per local rank; gloo on the CPU) and returns
    this rank's device."""
    import torch
    import torch.distributed as dist

    global _RANK
    _RANK = int(os.environ.get("RANK", "0"))
    if device.startswith("cuda"):
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local_rank)
        device = f"cuda:{local_rank}"
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    return device


def _enable_context_parallel(module, world: int) -> None:
    """Splits the DiT's packed sequence over the `world` ranks with diffusers' context parallelism (Ulysses)."""
    if world <= 1 or module is None:
        return
    from .utils.distributed import enable_context_parallel

    enable_context_parallel(module, degree=world)


def _run_generate(args, plan, device, dtype, world: int) -> int:
    import torch

    rank0 = _RANK == 0
    from .pipelines.pipeline_magihuman import MagiHumanPipeline

    jobs: list[Job] = plan["jobs"]
    t0 = time.time()
    with _quiet_third_party():
        _stage(f"loading {args.model} ({str(dtype).replace('torch.', '')}, {device})")
        pipe = MagiHumanPipeline.from_pretrained(args.model, dtype=dtype)
        offload = _place(pipe, args, device, plan)
        _apply_speed_options(pipe.transformer, args, base_stage=True)
        if args.attention_backend:
            pipe.transformer.set_attention_backend(args.attention_backend)
        _enable_context_parallel(pipe.transformer, world)
        if args.no_compile:
            pipe.enable_auto_compile(False)
        sr = sr_dit = None
        if args.sr is not None:
            from .models.transformer_magihuman import MagiHumanTransformer3DModel
            from .pipelines.pipeline_magihuman_sr import MagiHumanSRPipeline

            _stage(f"loading {args.sr_model} ({args.sr} super-resolution DiT)")
            sr_dit = MagiHumanTransformer3DModel.from_pretrained(args.sr_model, subfolder="transformer", dtype=dtype)
            # Built from the base pipeline's components: shared as loaded (`from_pipe` would cast them all to float32).
            sr = MagiHumanSRPipeline(**{**pipe.components, "transformer": sr_dit})
            if offload == "model":
                sr.enable_model_cpu_offload(device=device)
            elif offload == "none":
                sr_dit.to(device)
            _apply_speed_options(sr_dit, args, base_stage=False)
            if args.attention_backend:
                sr_dit.set_attention_backend(args.attention_backend)
            _enable_context_parallel(sr_dit, world)
            if args.no_compile:
                sr.enable_auto_compile(False)

        # Stage 1: the base stage for every prompt (one DiT resident), unless resuming from latents.
        n_total = sum(len(j.outputs) for j in jobs)
        resume = plan["resume"]
        if resume is not None:
            video, audio, meta = resume
            jobs[0].results = {"video": video, "audio": audio, "stage": meta.get("stage", "base")}
            _stage(f"resuming from {args.latents_in} ({meta.get('stage', 'base')} latents {tuple(video.shape)})")
        else:
            _move_dit(pipe.transformer, device, offload)
            for k, job in enumerate(jobs, 1):
                _stage(
                    f"base stage {k}/{len(jobs)}: {args.width}x{args.height}, "
                    f"{'audio-driven' if job.audio else (f'{args.seconds:g} s' if args.seconds else '4 s')}, "
                    f"{len(job.outputs)} video(s)"
                )
                pipe.set_progress_bar_config(desc=f"base {k}/{len(jobs)}", disable=args.quiet or not rank0)
                out = pipe(
                    job.prompt,
                    negative_prompt=None if plan["distilled"] else job.negative_prompt,
                    image=job.image,
                    audio=job.audio,
                    height=args.height,
                    width=args.width,
                    seconds=args.seconds if (args.seconds is not None or job.audio) else 4.0,
                    num_inference_steps=plan["steps"],
                    guidance_scale=args.guidance_scale,
                    audio_guidance_scale=args.audio_guidance_scale if args.audio_guidance_scale is not None else 5.0,
                    num_videos_per_prompt=args.num_videos,
                    generator=torch.Generator().manual_seed(job.seed),
                    output_type="latent",
                )
                job.results = {"video": out.frames.cpu(), "audio": out.audio.cpu(), "stage": "base"}
            _move_dit(pipe.transformer, "cpu", offload)
            _maybe_free_cuda()

        # Stage 2: super-resolution for every prompt (the SR DiT alone on the GPU).
        if sr is not None:
            height, width = sr_size(args.height, args.width, args.sr)
            if args.sr_height or args.sr_width:
                height, width = args.sr_height or height, args.sr_width or width
            _move_dit(sr_dit, device, offload)
            for k, job in enumerate(jobs, 1):
                if job.results["stage"] == args.sr:
                    continue
                _stage(f"{args.sr} super-resolution {k}/{len(jobs)}: {width}x{height}, {args.sr_steps} steps")
                sr.set_progress_bar_config(desc=f"{args.sr} {k}/{len(jobs)}", disable=args.quiet or not rank0)
                try:
                    out = sr(
                        job.prompt,
                        negative_prompt=job.negative_prompt,
                        latents=job.results["video"],
                        audio_latents=job.results["audio"],
                        image=job.image,
                        height=height,
                        width=width,
                        num_inference_steps=args.sr_steps,
                        guidance_scale=args.sr_guidance_scale,
                        generator=torch.Generator().manual_seed(job.seed),
                        output_type="latent",
                    )
                except Exception as e:
                    if rank0:
                        _rescue(job, args, f"the {args.sr} stage failed ({type(e).__name__}: {e})")
                    raise _AfterSampling(str(e)) from e
                job.results = {"video": out.frames.cpu(), "audio": job.results["audio"], "stage": args.sr}
            _move_dit(sr_dit, "cpu", offload)
            _maybe_free_cuda()
        decoder_pipe = sr if sr is not None else pipe

        # Stage 3: decode (Turbo-VAE or Wan2.2 VAE, then audio) and write, with no DiT resident. With several
        # processes only rank 0 decodes and writes; every rank holds the same latents.
        for k, job in enumerate(jobs if rank0 else [], 1):
            for v, path in enumerate(job.latents_out):
                if path is not None:
                    save_latents(path, job.results["video"][v : v + 1], job.results["audio"][v : v + 1],
                                 {"stage": job.results["stage"], "prompt": job.prompt, "fps": FPS})  # fmt: skip
            _stage(f"decoding {k}/{len(jobs)} ({args.decoder} decoder) and writing {', '.join(job.outputs)}")
            try:
                _decode_and_write(decoder_pipe, job, args)
            except Exception as e:
                where = _rescue(job, args, f"decoding or writing failed ({type(e).__name__}: {e})")
                raise _AfterSampling(f"decoding or writing failed ({type(e).__name__}: {e}); {where}") from e
    _stage(f"done: {n_total} video(s) in {time.time() - t0:.1f} s")
    return 0


def _decode_and_write(pipe, job: Job, args) -> None:
    import torch

    from .utils.video import export_to_video

    with torch.no_grad():
        for v, path in enumerate(job.outputs):
            video = job.results["video"][v : v + 1]
            audio = job.results["audio"][v : v + 1]
            frames = pipe.postprocess_video(pipe._decode_latents_raw(video, args.decoder), "np")[0]
            wave = pipe.postprocess_audio(pipe.decode_audio_latents(audio), "np")[0]
            export_to_video(frames, path, fps=FPS, audio=wave, audio_sample_rate=pipe.audio_sample_rate,
                            overwrite=args.overwrite)  # fmt: skip
            job.results.setdefault("written", []).append(path)
    pipe._free_model_hooks()


class _AfterSampling(RuntimeError):
    """A failure after sampling; the latents were saved and the message says where."""


def _rescue(job: Job, args, reason: str) -> str:
    """Saves the sampled latents of `job` that were not written as videos; returns a sentence saying where."""
    saved = []
    written = set(job.results.get("written", []))
    for v, output in enumerate(job.outputs):
        if output in written:
            continue
        path = job.latents_out[v] if job.latents_out[v] and os.path.exists(job.latents_out[v]) else None
        if path is None:
            path = _rescue_path(output)
            save_latents(path, job.results["video"][v : v + 1], job.results["audio"][v : v + 1],
                         {"stage": job.results["stage"], "prompt": job.prompt, "fps": FPS})  # fmt: skip
        saved.append(path)
    where = (
        f"the {job.results['stage']} latents are kept in {', '.join(saved)}; resume with `magihuman generate "
        f"--latents-in {saved[0]} ...` (same --model and flags)"
        if saved
        else "nothing was lost"
    )
    print(f"magihuman: error: {reason}; {where}", file=sys.stderr)
    return where


# ---------------------------------------------------------------------------------------------------------------------
# parser
# ---------------------------------------------------------------------------------------------------------------------


def _add_generate_arguments(gen: argparse.ArgumentParser) -> None:
    what = gen.add_argument_group("what to generate")
    what.add_argument("--model", required=True, metavar="DIR",
                      help="converted base or distilled pipeline folder (see `magihuman convert`), or its Hub repo id")
    what.add_argument("--prompt", default=None, help="the prompt text (see docs/usage.md, Prompts)")
    what.add_argument("--prompt-file", default=None, metavar="FILE", help="read one (long) prompt from a text file")
    what.add_argument("--prompts-file", default=None, metavar="FILE",
                      help="several prompts rendered in one process: a text file with one prompt per line, or a "
                           ".jsonl file of objects with \"prompt\" and optional \"output\", \"seed\", \"image\", "
                           "\"audio\", \"negative_prompt\"; outputs are numbered OUTPUT_000.mp4, OUTPUT_001.mp4, ...")
    what.add_argument("--negative-prompt", default=None,
                      help="negative prompt for guidance (base model only; default: the original's three-part one)")
    what.add_argument("--image", default=None, metavar="FILE", help="first frame (image+text mode); default: none")
    what.add_argument("--audio", default=None, metavar="FILE",
                      help="driving speech (audio-driven mode, any format PyAV reads); the clip length follows it")
    what.add_argument("--seconds", type=float, default=None,
                      help="clip length in seconds (default: 4, or the driving audio's length; at most 60)")
    what.add_argument("--height", type=int, default=256, help="base-stage height in pixels, multiple of 32 (default: 256)")
    what.add_argument("--width", type=int, default=448, help="base-stage width in pixels, multiple of 32 (default: 448)")
    what.add_argument("--num-videos", type=int, default=1, help="videos per prompt, each with its own noise (default: 1)")
    what.add_argument("--seed", type=int, default=42, help="random seed; prompt k of a prompts file uses SEED+k (default: 42)")

    sampling = gen.add_argument_group("sampling")
    sampling.add_argument("--steps", type=int, default=None,
                          help="denoising steps of the base stage (default: 8 distilled, 32 base)")
    sampling.add_argument("--guidance-scale", type=float, default=None,
                          help="video classifier-free guidance, base model only (default: 5.0, then 2.0 once t <= 500; "
                               "1 turns it off)")
    sampling.add_argument("--audio-guidance-scale", type=float, default=None,
                          help="audio classifier-free guidance, base model only (default: 5.0)")

    sr = gen.add_argument_group("super-resolution chain (base -> SR -> decode -> mp4)")
    sr.add_argument("--sr", choices=SR_CHOICES, default=None,
                    help="refine the base stage to 540p (512x896) or 1080p (1088x1920); default: off")
    sr.add_argument("--sr-model", default=None, metavar="DIR", help="the converted sr_540p / sr_1080p folder")
    sr.add_argument("--sr-steps", type=int, default=5, help="SR denoising steps (default: 5, as the original)")
    sr.add_argument("--sr-guidance-scale", type=float, default=1.0,
                    help="SR video guidance (default: 1.0 = off, as the shipped SR configs; the original's CFG value is 3.5)")
    sr.add_argument("--sr-height", type=int, default=None, help="SR height in pixels (default: from --sr)")
    sr.add_argument("--sr-width", type=int, default=None, help="SR width in pixels (default: from --sr)")

    run = gen.add_argument_group("how to run")
    run.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto", help="default: cuda when available")
    run.add_argument("--dtype", choices=("auto", "bf16", "fp32"), default="auto",
                     help="weight dtype (default: bf16 on CUDA, fp32 on CPU; the DiT computes as the original either way)")
    run.add_argument("--decoder", choices=("auto", "turbo", "vae"), default="auto",
                     help="video decoder: the distilled Turbo-VAE (fast) or the full Wan2.2 VAE (default: turbo when present)")
    run.add_argument("--offload", choices=("auto", "none", "stage", "model", "sequential", "group"), default="auto",
                     help="GPU memory policy (default auto: with --sr `stage` = one 15B DiT on the GPU at a time, "
                          "fits an 80 GB card; without --sr `none` = all on the GPU, ~60 GB). `model`: diffusers' model "
                          "CPU offload; `group`: DiT layers streamed, for 24-48 GB cards")
    run.add_argument("--resident-blocks", type=int, default=0,
                     help="with --offload group: DiT layers kept on the GPU, 0.71 GB each (default: 0; 22 fit 24 GB)")
    run.add_argument("--fp8", action="store_true",
                     help="FP8 compute for the DiTs' block linears (torchao; Ada/Hopper/Blackwell GPU): half the DiT "
                          "memory, ~2%% latent error on random weights, and faster stages once compiled (the 1080p SR "
                          "stage, and every clip after the first of a --prompts-file; a single 256p/540p clip runs "
                          "eagerly, where FP8 is not faster) (docs/performance.md); keeps every component on the GPU")
    run.add_argument("--first-block-cache", type=float, default=None, metavar="THRESHOLD",
                     help="base-stage step cache (diffusers' FirstBlockCache): later DiT blocks are reused while the "
                          "first block's output changes less than THRESHOLD; 0.05 is the recommended start for the "
                          "base model's 32 steps (docs/performance.md); the DiT then runs uncompiled")
    run.add_argument("--no-compile", action="store_true",
                     help="run the DiT eagerly (default: on CUDA its blocks compile on the first call, ~20 s once)")
    run.add_argument("--attention-backend", default=None,
                     help="diffusers attention backend, e.g. native, flex, flash (default: automatic)")
    run.add_argument("--gpus", type=int, default=1,
                     help="split each DiT step over N GPUs of this machine (context parallelism; N divides the 8 "
                          "key/value heads: 2, 4 or 8). Launches torchrun itself; under `torchrun --nproc-per-node N` "
                          "leave it out. Pays at 1080p SR, not at 256p (default: 1)")
    run.add_argument("--quiet", action="store_true", help="no per-step progress bars (stage lines stay)")
    run.add_argument("--dry-run", action="store_true", help="check every input and output, load nothing, write nothing")

    out = gen.add_argument_group("outputs")
    out.add_argument("--output", default="out.mp4", metavar="FILE",
                     help="the mp4 (H.264 + AAC, 25 fps) to write; .mp4, .mov or .mkv (default: out.mp4)")
    out.add_argument("--overwrite", action="store_true", help="replace existing output files (default: refuse)")
    out.add_argument("--latents-out", default=None, metavar="FILE",
                     help="also save the final latents (.safetensors: video (B, 48, T, h, w), audio (B, Na, 64)) for "
                          "--latents-in or other pipelines; default: only kept if decoding fails")
    out.add_argument("--latents-in", default=None, metavar="FILE",
                     help="skip the base stage: start from a --latents-out file (then SR if --sr, then decode)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="magihuman", description="daVinci-MagiHuman audio+video generation (diffusers).")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    demo = sub.add_parser("demo", help="tiny random pipeline, offline, writes a real mp4 with audio",
                          description="Tiny random pipeline built in code (no download): writes a real mp4 with "
                                      "an AAC track. Random weights: the video is noise.")  # fmt: skip
    demo.add_argument("--output", default="demo.mp4", help="mp4 to write (default: demo.mp4)")
    demo.add_argument("--overwrite", action="store_true", help="replace an existing --output (default: refuse)")
    demo.add_argument("--prompt", default=DEMO_PROMPT, help="prompt (default: a short greeting)")
    demo.add_argument("--seconds", type=float, default=1.0, help="clip length in seconds (default: 1)")
    demo.add_argument("--height", type=int, default=64, help="height in pixels, multiple of 32 (default: 64)")
    demo.add_argument("--width", type=int, default=96, help="width in pixels, multiple of 32 (default: 96)")
    demo.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    demo.set_defaults(func=run_demo)

    gen = sub.add_parser("generate", help="run a converted pipeline folder (optionally through 540p/1080p SR)",
                         description="Generate talking-human videos with speech from a converted folder. Every "
                                     "input and output is checked before any weights load.")  # fmt: skip
    _add_generate_arguments(gen)
    gen.set_defaults(func=run_generate)

    from .conversion.convert_release import add_convert_arguments, run_convert

    conv = sub.add_parser("convert", help="turn the original release into pipeline folders with model cards",
                          description="Convert a downloaded original release (base/, distill/, 540p_sr/, 1080p_sr/, "
                                      "turbo_vae/) plus the external VAE, audio VAE and T5-Gemma folders into "
                                      "diffusers pipeline folders, each with a README.md model card.")  # fmt: skip
    add_convert_arguments(conv)
    conv.set_defaults(func=run_convert)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # `--gpus N` relaunches the same command under torchrun
    try:
        return args.func(args)
    except _AfterSampling:
        return 1  # the message (with where the latents are) was printed already
    except (ValueError, FileNotFoundError, FileExistsError, PermissionError, ImportError) as e:
        message = " ".join(str(e).split()) if isinstance(e, UsageError) else str(e).splitlines()[0] if str(e) else repr(e)
        detail = str(e).splitlines()[1:]
        print(f"magihuman {args.command}: error: {message}", file=sys.stderr)
        if detail and not isinstance(e, UsageError):
            print("\n".join(detail), file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
