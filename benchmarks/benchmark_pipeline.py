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
"""End-to-end wall time of the real pipelines on one GPU, full-size random weights, default settings.

    python benchmarks/benchmark_pipeline.py --output e2e.json                       # CUDA, >= 80 GB per stage
    python benchmarks/benchmark_pipeline.py --tiny --output /tmp/e2e_tiny.json      # code path check on a CPU

What a user gets from `MagiHumanPipeline(...)(...)` and `MagiHumanSRPipeline(**pipe.components, ...)(...)` with nothing
tuned: on CUDA that is regional compilation on the first call and FlashAttention-4 when installed (else SDPA). A 5 s
clip (126 frames at 25 fps), prompt embeddings given (300 tokens; T5-Gemma is not part of the original's table
either), Turbo-VAE decode, Oobleck audio decode, `output_type="np"`:

* 256p: the distilled base stage (8 steps) + decode;
* 540p / 1080p: the 256p base stage to latents, then the SR stage (5 steps; 1080p with local attention) + decode,
  timed per stage and (unless `--offload-base-for-sr`) as one chained call, as in the original's table (base 1.6 s
  + SR 5.1 / 31.0 s + Turbo-VAE 1.3 / 5.8 s on an H100).

Each is timed on its second call (the first compiles) and split into stages with `output_type="latent"` calls. Peak
GPU memory is reported per call; a card larger than `--cap-gib` (an H200) is capped to it, so memory numbers are an
80 GB H100's. `--fp8` runs the DiTs with FP8 block linears (`diffusers_magihuman.utils.fp8`). `--group-offload-resident N,M` also runs the 256p pipeline with the DiT under group
offload (CUDA streams) keeping N layers resident, with the resident layers compiled.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch


sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchmark_magihuman as bm  # noqa: E402

from diffusers_magihuman import MagiHumanPipeline, MagiHumanScheduler, MagiHumanSRPipeline  # noqa: E402


GIB = 1024**3


def build_audio_vae(device, tiny: bool):
    if tiny:
        from diffusers_magihuman.testing_utils import make_tiny_audio_vae

        return make_tiny_audio_vae().to(device).requires_grad_(False)
    from diffusers import AutoencoderOobleck

    torch.manual_seed(0)
    with torch.device(device):
        return AutoencoderOobleck().eval().requires_grad_(False)  # the Stable Audio Open 1.0 shape (fp32)


class Runner:
    def __init__(self, args):
        self.args = args
        self.device = torch.device("cuda" if torch.cuda.is_available() and not args.tiny else "cpu")
        self.results = []
        self.meta = {
            "command": " ".join(sys.argv),
            "torch": torch.__version__,
            "device": torch.cuda.get_device_name(0) if self.device.type == "cuda" else "cpu",
            "fa4": bm.install_fa4() or "available",
            "seconds": args.seconds,
            "text_tokens": args.text_tokens,
            "fp8": args.fp8,
        }
        self.meta.update(bm.cap_memory(self.device, args.cap_gib))
        self.t0 = time.time()

    def record(self, **row):
        row = {k: v for k, v in row.items() if v is not None}
        self.results.append(row)
        print(f"[{time.time() - self.t0:7.1f}s] " + json.dumps(row, default=str), flush=True)
        if self.args.output:
            with open(self.args.output, "w") as handle:
                json.dump({"meta": self.meta, "results": self.results}, handle, indent=1, default=str)

    def timed(self, fn, name: str, repeats: int = 1, warm: bool = True, **extra):
        """A first call (it compiles; skipped with `warm=False`), then `repeats` timed calls: wall time incl. host
        sync, peak GPU memory."""
        row = dict(name=name, **extra)
        try:
            if warm:
                t = time.perf_counter()
                out = fn()
                bm.sync(self.device)
                row["first_call_s"] = time.perf_counter() - t
            times = []
            mem: dict = {}
            with bm.peak_memory(self.device, mem):
                for _ in range(repeats):
                    t = time.perf_counter()
                    out = fn()
                    bm.sync(self.device)
                    times.append(time.perf_counter() - t)
            row.update(wall_s=sorted(times)[len(times) // 2], times_s=[round(x, 3) for x in times], **mem)
        except Exception as error:  # record and go on
            import traceback

            row.update(error=bm.short_error(error), error_trace=traceback.format_exc()[-1500:])
            out = None
        self.record(**row)
        return out, row

    def dit(self, variant: str, seed: int):
        model = bm.build_dit(variant, self.device, self.args.tiny, pad=8, seed=seed)
        if self.args.fp8:  # opt-in FP8 compute of the block linears (torchao, SM 8.9+)
            from diffusers_magihuman.utils.fp8 import enable_fp8_compute

            enable_fp8_compute(model)
        return model

    def run(self):
        args, device, tiny = self.args, self.device, self.args.tiny
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
        shapes = bm.clip_shapes("256p", args.seconds, tiny)
        base_dit = self.dit("distill", seed=0)
        turbo = bm.build_turbo_vae(device, tiny, dtype)
        audio_vae = build_audio_vae(device, tiny)
        pipe = MagiHumanPipeline(
            transformer=base_dit,
            scheduler=MagiHumanScheduler(sampler="dmd"),
            vae=None,
            audio_vae=audio_vae,
            text_encoder=None,
            tokenizer=None,
            turbo_vae=turbo,
        )
        pipe.set_progress_bar_config(disable=True)
        if args.no_compile:
            pipe.enable_auto_compile(False)
        elif args.compile_backend:
            pipe.enable_auto_compile("always", backend=args.compile_backend, fullgraph=True)
        else:
            pipe.enable_auto_compile("always")  # rows time the second call: compile on the first (not the default)
        g = torch.Generator().manual_seed(0)
        embeds = torch.randn(1, args.text_tokens, base_dit.config.text_in_channels, generator=g).to(device)
        call = dict(
            prompt_embeds=embeds, height=shapes["height"], width=shapes["width"], seconds=args.seconds
        )
        gen = lambda: torch.Generator().manual_seed(0)  # noqa: E731
        weights_gb = lambda *ms: sum(bm.param_bytes(m) for m in ms) / GIB  # noqa: E731
        on_gpu = weights_gb(base_dit, turbo, audio_vae)

        base_latents, base_row = self.timed(
            lambda: pipe(**call, generator=gen(), output_type="latent"),
            "256p distill base stage (8 steps, latents)",
            repeats=2,
            weights_on_gpu_gb=on_gpu,
        )
        self.timed(
            lambda: pipe(**call, generator=gen(), output_type="np", decode_with="turbo"),
            "256p end-to-end (base stage + Turbo-VAE + audio decode, np)",
            repeats=2,
            weights_on_gpu_gb=on_gpu,
        )

        for resolution in args.sr:
            if base_latents is None:
                break
            variant = "sr_540p" if resolution == "540p" else "sr_1080p"
            sr_shapes = bm.clip_shapes(resolution, args.seconds, tiny)
            if args.offload_base_for_sr:
                pipe.transformer.to("cpu")  # not timed: the base DiT off the GPU while SR runs (80 GB cards)
                bm.free_memory()
            sr_dit = self.dit(variant, seed=1)
            sr = MagiHumanSRPipeline(**{**pipe.components, "transformer": sr_dit, "scheduler": MagiHumanScheduler(sampler="unipc")})
            sr.set_progress_bar_config(disable=True)
            sr.enable_auto_compile(pipe._auto_compile, **(pipe._auto_compile_kwargs or {}))
            sr_call = dict(
                prompt_embeds=embeds,
                latents=base_latents.frames,
                audio_latents=base_latents.audio,
                height=sr_shapes["height"],
                width=sr_shapes["width"],
            )
            resident = [sr_dit, turbo, audio_vae] + ([] if args.offload_base_for_sr else [base_dit])
            _, stage = self.timed(
                lambda: sr(**sr_call, generator=gen(), output_type="latent"),
                f"{resolution} SR stage (5 steps, latents)",
                weights_on_gpu_gb=weights_gb(*resident),
            )
            _, full = self.timed(
                lambda: sr(**sr_call, generator=gen(), output_type="np", decode_with="turbo"),
                f"{resolution} SR stage + Turbo-VAE + audio decode (np)",
                warm=False,  # compiled by the call before
                weights_on_gpu_gb=weights_gb(*resident),
            )
            if not args.offload_base_for_sr:
                # the whole chain as one timed call: base stage to latents, SR, decode (both DiTs resident)
                def chained():
                    low = pipe(**call, generator=gen(), output_type="latent")
                    return sr(**{**sr_call, "latents": low.frames, "audio_latents": low.audio}, generator=gen(), output_type="np", decode_with="turbo")

                self.timed(
                    chained,
                    f"{resolution} end-to-end, one timed run (256p base stage + SR + decode, np)",
                    warm=False,  # both stages compiled by the calls before
                    weights_on_gpu_gb=weights_gb(*resident),
                )
            base_s = base_row.get("wall_s")
            if base_s and full.get("wall_s"):
                self.record(
                    name=f"{resolution} end-to-end (256p base stage + SR + decode)",
                    wall_s=base_s + full["wall_s"],
                    base_stage_s=base_s,
                    sr_stage_s=stage.get("wall_s"),
                    decode_s=full["wall_s"] - stage.get("wall_s", 0.0),
                )
            del sr, sr_dit
            torch._dynamo.reset()  # compiled graphs keep the SR model's blocks alive otherwise
            bm.free_memory()
            if args.offload_base_for_sr:
                pipe.transformer.to(device)

        for resident in args.group_offload_resident:
            if device.type != "cuda":
                break
            torch._dynamo.reset()
            del pipe
            base_dit = None
            bm.free_memory()
            dit = bm.build_dit("distill", device, tiny, pad=8, seed=0)
            t = time.perf_counter()
            dit.enable_group_offload(
                onload_device=device,
                offload_type="block_level",
                num_blocks_per_group=1,
                use_stream=True,
                record_stream=True,
                num_resident_blocks=resident,
            )
            enable_s = time.perf_counter() - t
            bm.free_memory()
            pipe = MagiHumanPipeline(
                transformer=dit, scheduler=MagiHumanScheduler(sampler="dmd"), vae=None, audio_vae=audio_vae,
                text_encoder=None, tokenizer=None, turbo_vae=turbo,
            )  # fmt: skip
            pipe.set_progress_bar_config(disable=True)
            self.timed(
                lambda: pipe(**call, generator=gen(), output_type="latent"),
                f"256p base stage, DiT group offload (streams), {resident} resident layers",
                repeats=2,
                resident_layers=resident,
                enable_s=enable_s,
            )
            del dit


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true")
    parser.add_argument("--sr", default="540p,1080p", help="SR stages to chain after the 256p base stage")
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--text-tokens", type=int, default=300)
    parser.add_argument("--no-compile", action="store_true", help="turn off the automatic regional compile")
    parser.add_argument("--compile-backend", default=None, help="e.g. aot_eager for a CPU dry run")
    parser.add_argument("--offload-base-for-sr", action="store_true", help="base DiT to the CPU while SR runs")
    parser.add_argument("--group-offload-resident", default="", help="e.g. 20,24: group-offload tiers at 256p")
    parser.add_argument("--fp8", action="store_true", help="FP8 compute for the DiTs' block linears (torchao, SM 8.9+)")
    parser.add_argument("--cap-gib", type=float, default=79.0, help="cap a larger card to this many GiB (default 79)")
    parser.add_argument("--output", default=None)
    args = parser.parse_args(argv)
    args.sr = [x for x in args.sr.split(",") if x]
    args.group_offload_resident = [int(x) for x in args.group_offload_resident.split(",") if x]
    if args.tiny:
        args.seconds, args.text_tokens = 1, 5
    Runner(args).run()


if __name__ == "__main__":
    main()
