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

    magihuman generate --model DIR --prompt "..." [--image IMG] [--audio WAV] [--seconds 4] [--height 256
        --width 448] [--steps N] [--seed 42] [--offload {none,model,sequential,group}]
        [--resident-blocks N] [--no-compile] --output out.mp4
        Runs a converted checkpoint folder (see conversion/convert_magihuman_to_diffusers.py).
"""

from __future__ import annotations

import argparse
import sys
import time


DEMO_PROMPT = 'A young woman in a red coat smiles at the camera. Dialogue: <Woman, English>: "Hello there!"'


def _export(out, path: str, fps: int, sample_rate: int) -> None:
    from .utils.video import export_to_video

    export_to_video(out.frames[0], path, fps=fps, audio=out.audio[0], audio_sample_rate=sample_rate)


def run_demo(args) -> int:
    import torch

    from .testing_utils import make_tiny_pipeline

    t0 = time.time()
    pipe = make_tiny_pipeline(seed=args.seed, distilled=True, with_turbo_vae=True)
    pipe.set_progress_bar_config(disable=False)
    out = pipe(
        args.prompt,
        height=args.height,
        width=args.width,
        seconds=args.seconds,
        generator=torch.Generator().manual_seed(args.seed),
        output_type="np",
    )
    _export(out, args.output, 25, pipe.audio_sample_rate)
    frames = out.frames.shape[1]
    print(
        f"wrote {args.output}: {frames} frames {args.width}x{args.height} @25 fps + {out.audio.shape[-1]} audio samples "
        f"@{pipe.audio_sample_rate} Hz in {time.time() - t0:.1f}s.\n"
        "NOTE: the demo pipeline has tiny RANDOM weights, so the video and audio are noise. Convert the released "
        "checkpoints with conversion/convert_magihuman_to_diffusers.py and run `magihuman generate --model DIR`."
    )
    return 0


def run_generate(args) -> int:
    import torch

    from .pipelines.pipeline_magihuman import MagiHumanPipeline

    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    pipe = MagiHumanPipeline.from_pretrained(args.model, dtype=dtype)
    if args.offload == "model":
        pipe.enable_model_cpu_offload()
    elif args.offload == "sequential":
        pipe.enable_sequential_cpu_offload()
    elif args.offload == "group":
        # `--resident-blocks` DiT layers stay on the GPU (docs/performance.md); the excluded audio VAE moves there.
        pipe.enable_group_offload(
            onload_device=torch.device(device),
            offload_type="block_level",
            num_blocks_per_group=1,
            use_stream=device == "cuda",
            record_stream=device == "cuda",
            exclude_modules=["audio_vae"],
            num_resident_blocks=args.resident_blocks,
        )
    else:
        pipe.to(device)
    if args.attention_backend:
        pipe.transformer.set_attention_backend(args.attention_backend)
    if args.no_compile:
        # On CUDA the pipeline compiles the repeated DiT blocks on its first call (docs/performance.md).
        pipe.enable_auto_compile(False)
    out = pipe(
        args.prompt,
        negative_prompt=args.negative_prompt,
        image=args.image,
        audio=args.audio,
        height=args.height,
        width=args.width,
        seconds=args.seconds,
        num_inference_steps=args.steps,
        generator=torch.Generator().manual_seed(args.seed),
        output_type="np",
    )
    _export(out, args.output, 25, pipe.audio_sample_rate)
    print(f"wrote {args.output}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="magihuman", description="daVinci-MagiHuman audio+video generation (diffusers).")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="tiny random pipeline, offline, writes a real mp4 with audio")
    demo.add_argument("--output", default="demo.mp4")
    demo.add_argument("--prompt", default=DEMO_PROMPT)
    demo.add_argument("--seconds", type=float, default=1.0)
    demo.add_argument("--height", type=int, default=64)
    demo.add_argument("--width", type=int, default=96)
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(func=run_demo)

    gen = sub.add_parser("generate", help="run a converted checkpoint folder")
    gen.add_argument("--model", required=True, help="diffusers-format pipeline folder (see conversion/)")
    gen.add_argument("--prompt", required=True)
    gen.add_argument("--negative-prompt", default=None)
    gen.add_argument("--image", default=None, help="first frame (image+text mode)")
    gen.add_argument("--audio", default=None, help="driving audio file (audio-driven mode)")
    gen.add_argument("--seconds", type=float, default=None)
    gen.add_argument("--height", type=int, default=256)
    gen.add_argument("--width", type=int, default=448)
    gen.add_argument("--steps", type=int, default=None)
    gen.add_argument("--seed", type=int, default=42)
    gen.add_argument("--offload", choices=["none", "model", "sequential", "group"], default="none")
    gen.add_argument(
        "--resident-blocks", type=int, default=0, help="with --offload group: DiT layers kept on the GPU (0.71 GB each)"
    )
    gen.add_argument(
        "--no-compile", action="store_true", help="run the DiT eagerly (on CUDA its blocks are compiled by default)"
    )
    gen.add_argument("--attention-backend", default=None, help="diffusers attention backend, e.g. native, flex, flash")
    gen.add_argument("--output", default="out.mp4")
    gen.set_defaults(func=run_generate)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "generate" and args.seconds is None and args.audio is None:
        args.seconds = 4
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, ImportError) as e:
        print(f"magihuman: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
