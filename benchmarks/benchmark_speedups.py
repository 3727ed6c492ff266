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
"""Memory of the documented chains on an 80 GB card, the compile tax of a one-shot run, step caches and FP8.

    python benchmarks/benchmark_speedups.py --sections memory,compile_tax,caches,fp8 --output speedups.json
    python benchmarks/benchmark_speedups.py --tiny --sections all --output /tmp/s.json     # CPU dry run

Full-size random weights on one GPU (what a user's card sees: the speed and memory of the real model, not its
quality). A card with more than `--cap-gib` GiB (an H200) is capped with `torch.cuda.set_per_process_memory_fraction`
so that memory numbers are those of an 80 GB H100. The default CUDA allocator is used (no `PYTORCH_CUDA_ALLOC_CONF`).

Sections:

* ``memory``: the 256p -> 540p and 256p -> 1080p chains as docs/usage.md writes them (distilled base stage to latents,
  the base DiT off the GPU, the SR DiT, Turbo-VAE + audio decode to numpy): peak allocated and reserved per call.
* ``compile_tax``: a single 256p distilled stage from a cold process (a new Python process per row), with the
  pipeline's default compile policy, forced eager, and forced compile (cold and warm on-disk compile cache).
* ``caches``: the base checkpoint's 32-step CFG stage at 256p, uncached and with diffusers' FirstBlockCache,
  TaylorSeerCache and MagCache: wall time and the relative L2 of the final latents against the uncached run.
* ``fp8``: torchao's dynamic float8 (per-row scales) on the DiT's block linears: forward time, the relative L2 of one
  forward's outputs, of the 8-step distilled latents and of the 5-step 540p SR latents, against bf16.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import torch


sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchmark_magihuman as bm  # noqa: E402

from diffusers_magihuman import MagiHumanPipeline, MagiHumanScheduler, MagiHumanSRPipeline  # noqa: E402


GIB = 1024**3
SECTIONS = ("memory", "compile_tax", "caches", "fp8")


def build_audio_vae(device, tiny: bool):
    if tiny:
        from diffusers_magihuman.testing_utils import make_tiny_audio_vae

        return make_tiny_audio_vae().to(device).requires_grad_(False)
    from diffusers import AutoencoderOobleck

    torch.manual_seed(0)
    with torch.device(device):
        return AutoencoderOobleck().eval().requires_grad_(False)


class Peak:
    """Peak allocated and reserved GPU memory (GiB) over a block."""

    def __init__(self, device):
        self.device = device
        self.row: dict = {}

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        self.t = time.perf_counter()
        return self.row

    def __exit__(self, *exc):
        bm.sync(self.device)
        self.row["wall_s"] = round(time.perf_counter() - self.t, 3)
        if self.device.type == "cuda":
            self.row["peak_allocated_gib"] = round(torch.cuda.max_memory_allocated(self.device) / GIB, 2)
            self.row["peak_reserved_gib"] = round(torch.cuda.max_memory_reserved(self.device) / GIB, 2)
        return False


class Runner:
    def __init__(self, args):
        self.args = args
        self.tiny = args.tiny
        self.device = torch.device("cuda" if torch.cuda.is_available() and not args.tiny else "cpu")
        self.dtype = torch.bfloat16 if self.device.type == "cuda" else torch.float32
        self.meta = {"command": " ".join(sys.argv), "torch": torch.__version__, "seconds": args.seconds}
        self.meta.update(bm.cap_memory(self.device, args.cap_gib))
        self.meta["PYTORCH_CUDA_ALLOC_CONF"] = os.environ.get("PYTORCH_CUDA_ALLOC_CONF", "")
        self.results: list[dict] = []
        self.t0 = time.time()

    # ---------------------------------------------------------------- helpers
    def record(self, **row) -> dict:
        row = {k: v for k, v in row.items() if v is not None}
        self.results.append(row)
        print(f"[{time.time() - self.t0:7.1f}s] " + json.dumps(row, default=str), flush=True)
        if self.args.output:
            tmp = self.args.output + ".tmp"
            with open(tmp, "w") as handle:
                json.dump({"meta": self.meta, "results": self.results}, handle, indent=1, default=str)
            os.replace(tmp, self.args.output)
        return row

    def guarded(self, name: str, fn, **extra):
        try:
            return fn()
        except Exception as error:  # record and go on: a short lease must not lose the other rows
            import traceback

            self.record(name=name, error=bm.short_error(error), trace=traceback.format_exc()[-1200:], **extra)
            return None

    def embeds(self, model, tokens=None):
        g = torch.Generator().manual_seed(0)
        n = tokens or (5 if self.tiny else self.args.text_tokens)
        return torch.randn(1, n, model.config.text_in_channels, generator=g).to(self.device)

    def dit(self, variant: str, seed: int):
        model = bm.build_dit(variant, self.device, self.tiny, pad=8, seed=seed)
        return model

    def base_pipe(self, dit, sampler="dmd", turbo=None, audio_vae=None):
        pipe = MagiHumanPipeline(
            transformer=dit,
            scheduler=MagiHumanScheduler(sampler=sampler),
            vae=None,
            audio_vae=audio_vae,
            text_encoder=None,
            tokenizer=None,
            turbo_vae=turbo,
        )
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def shapes(self, resolution):
        return bm.clip_shapes(resolution, 1 if self.tiny else self.args.seconds, self.tiny)

    # ---------------------------------------------------------------- memory
    def memory(self):
        device, tiny = self.device, self.tiny
        base = self.dit("distill", 0)
        turbo = bm.build_turbo_vae(device, tiny, self.dtype)
        audio_vae = build_audio_vae(device, tiny)
        pipe = self.base_pipe(base, "dmd", turbo, audio_vae)
        embeds = self.embeds(base)
        s = self.shapes("256p")
        call = dict(prompt_embeds=embeds, height=s["height"], width=s["width"], seconds=1 if tiny else self.args.seconds)
        gen = lambda: torch.Generator().manual_seed(0)  # noqa: E731
        with Peak(device) as row:
            low = pipe(**call, generator=gen(), output_type="latent")
        self.record(name="256p distilled stage -> latents (first call)", **row)
        if not self.args.first_calls_only:
            with Peak(device) as row:
                pipe(**call, generator=gen(), output_type="np")
            self.record(name="256p end to end (np)", **row)
        base.to("cpu")  # as docs/usage.md: only the running DiT on the GPU
        bm.free_memory()
        for resolution in self.args.sr:
            variant = "sr_540p" if resolution == "540p" else "sr_1080p"
            sr_dit = self.dit(variant, 1)
            sr = MagiHumanSRPipeline(**{**pipe.components, "transformer": sr_dit, "scheduler": MagiHumanScheduler(sampler="unipc")})
            sr.set_progress_bar_config(disable=True)
            ss = self.shapes(resolution)
            sr_call = dict(
                prompt_embeds=embeds, latents=low.frames, audio_latents=low.audio, height=ss["height"], width=ss["width"]
            )

            def run(sr=sr, sr_call=sr_call):
                steps = []  # (allocated, reserved) peaks of each sampling step, to tell the DiT stage from the decode

                def per_step(pipe, i, t, kwargs):
                    if device.type == "cuda":
                        torch.cuda.synchronize(device)
                        steps.append(
                            (round(torch.cuda.max_memory_allocated(device) / GIB, 2), round(torch.cuda.max_memory_reserved(device) / GIB, 2))
                        )
                        torch.cuda.reset_peak_memory_stats(device)
                    return {}

                with Peak(device) as row:
                    out = sr(**sr_call, generator=gen(), output_type="np", callback_on_step_end=per_step)
                if steps:
                    # Peak's own reset happened before the call; the last reset was after the last step, so the
                    # row's peak is the decode's (and the final step's memory still held) from here on
                    row["step_peaks_alloc_reserved_gib"] = steps
                    row["after_sampling_peak_allocated_gib"] = row.pop("peak_allocated_gib")
                    row["after_sampling_peak_reserved_gib"] = row.pop("peak_reserved_gib")
                    row["peak_allocated_gib"] = max([a for a, _ in steps] + [row["after_sampling_peak_allocated_gib"]])
                    row["peak_reserved_gib"] = max([r for _, r in steps] + [row["after_sampling_peak_reserved_gib"]])
                frames = out.frames.shape
                return row, frames

            got = self.guarded(f"{resolution} chain", run)
            if got:
                row, frames = got
                self.record(name=f"{resolution} SR stage + Turbo-VAE + audio decode (np), first call", frames=frames, **row)
                got = None if self.args.first_calls_only else self.guarded(f"{resolution} chain (2nd)", run)
                if got:
                    self.record(name=f"{resolution} SR stage + Turbo-VAE + audio decode (np), second call", **got[0])
            del sr, sr_dit, run  # `run` holds the pipeline through its defaults: drop it before the next DiT is built
            torch._dynamo.reset()
            bm.free_memory()

    # ---------------------------------------------------------------- compile tax
    def compile_tax(self):
        here = os.path.abspath(__file__)
        cache = os.path.join(self.args.workdir, "inductor_cache")
        rows = [
            ("default policy", {}),
            ("forced eager", {"MAGIHUMAN_AUTO_COMPILE": "0"}),
            ("forced compile, cold compile cache", {"MAGIHUMAN_AUTO_COMPILE": "always", "_FRESH_CACHE": "1"}),
            ("forced compile, warm compile cache", {"MAGIHUMAN_AUTO_COMPILE": "always"}),
        ]
        for name, env_extra in rows:
            env = dict(os.environ)
            env["TORCHINDUCTOR_CACHE_DIR"] = cache
            if env_extra.pop("_FRESH_CACHE", None):
                import shutil

                shutil.rmtree(cache, ignore_errors=True)
            env.update(env_extra)
            cmd = [sys.executable, here, "--child-one-shot", "--seconds", str(self.args.seconds)]
            if self.tiny:
                cmd.append("--tiny")
            t = time.perf_counter()
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
            total = time.perf_counter() - t
            child = None
            for line in proc.stdout.splitlines():
                if line.startswith("ONE_SHOT "):
                    child = json.loads(line[len("ONE_SHOT ") :])
            if child is None:
                self.record(name=f"one-shot 256p: {name}", error=(proc.stderr or proc.stdout)[-1500:])
                continue
            self.record(name=f"one-shot 256p: {name}", process_s=round(total, 2), **child)

    @staticmethod
    def child_one_shot(args):
        """One cold process: build the distilled DiT, time the first and second 256p stage calls."""
        runner = Runner(args)
        dit = runner.dit("distill", 0)
        pipe = runner.base_pipe(dit)
        s = runner.shapes("256p")
        call = dict(prompt_embeds=runner.embeds(dit), height=s["height"], width=s["width"], seconds=1 if args.tiny else args.seconds)
        out = {}
        for key in ("first_call_s", "second_call_s"):
            t = time.perf_counter()
            pipe(**call, generator=torch.Generator().manual_seed(0), output_type="latent")
            bm.sync(runner.device)
            out[key] = round(time.perf_counter() - t, 3)
        blocks = list(dit.blocks)
        out["compiled"] = any(getattr(b, "_compiled_call_impl", None) is not None for b in blocks)
        print("ONE_SHOT " + json.dumps(out), flush=True)

    # ---------------------------------------------------------------- caches
    def caches(self):
        from diffusers.hooks import FirstBlockCacheConfig, MagCacheConfig, TaylorSeerCacheConfig

        device, tiny = self.device, self.tiny
        dit = self.dit("base", 0)
        pipe = self.base_pipe(dit, "unipc")
        pipe.enable_auto_compile(False)  # the cache hooks wrap the blocks: compare eager with eager
        embeds = self.embeds(dit)
        s = self.shapes("256p")
        steps = 32
        call = dict(
            prompt_embeds=embeds,
            negative_prompt_embeds=self.embeds(dit, tokens=embeds.shape[1]) * 0.5,
            height=s["height"],
            width=s["width"],
            seconds=1 if tiny else self.args.seconds,
            num_inference_steps=steps,
            output_type="latent",
        )
        gen = lambda: torch.Generator().manual_seed(0)  # noqa: E731

        def run():
            with Peak(device) as row:
                out = pipe(**call, generator=gen())
            return row, out

        row, ref = run()
        base_s = row["wall_s"]
        self.record(name="base 32 steps CFG 256p, uncached (eager)", **row)
        configs = [
            ("FirstBlockCache(threshold=0.05)", lambda: FirstBlockCacheConfig(threshold=0.05)),
            ("FirstBlockCache(threshold=0.1)", lambda: FirstBlockCacheConfig(threshold=0.1)),
            ("TaylorSeerCache(interval=3, before=6)", lambda: TaylorSeerCacheConfig(cache_interval=3, disable_cache_before_step=6)),
            ("TaylorSeerCache(interval=5, before=3)", lambda: TaylorSeerCacheConfig(cache_interval=5, disable_cache_before_step=3)),
        ]
        for name, make in configs:

            def one(make=make):
                dit.enable_cache(make())
                try:
                    return run()
                finally:
                    dit.disable_cache()

            got = self.guarded(name, one)
            if got:
                row, out = got
                self.record(
                    name=f"base 32 steps CFG 256p, {name}",
                    speedup=round(base_s / row["wall_s"], 3),
                    video_rel_l2=bm.rel_l2(out.frames.float().cpu(), ref.frames.float().cpu()),
                    audio_rel_l2=bm.rel_l2(out.audio.float().cpu(), ref.audio.float().cpu()),
                    **row,
                )

        # MagCache needs the per-step magnitude ratios of this model: calibrate once, then use them.
        def magcache():
            import contextlib
            import io

            dit.enable_cache(MagCacheConfig(calibrate=True, num_inference_steps=steps))
            log = io.StringIO()
            try:
                with contextlib.redirect_stdout(log):  # diffusers prints the calibrated ratios (one list per CFG pass)
                    run()
            finally:
                dit.disable_cache()
            lists = [json.loads(line) for line in log.getvalue().splitlines() if line.startswith("[") and not line.startswith("[MagCache")]
            if not lists:
                raise RuntimeError("MagCache calibration printed no ratios")
            ratios = lists[0]
            dit.enable_cache(MagCacheConfig(mag_ratios=ratios, num_inference_steps=steps))
            try:
                return run()
            finally:
                dit.disable_cache()

        got = self.guarded("MagCache", magcache)
        if got:
            row, out = got
            self.record(
                name="base 32 steps CFG 256p, MagCache(calibrated)",
                speedup=round(base_s / row["wall_s"], 3),
                video_rel_l2=bm.rel_l2(out.frames.float().cpu(), ref.frames.float().cpu()),
                **row,
            )

    # ---------------------------------------------------------------- fp8
    def fp8(self):
        """torchao dynamic float8 (per-row) on the block linears, through `diffusers_magihuman.utils.fp8`.

        Besides the end-to-end error, two rows put it in scale (random weights amplify any perturbation over 40
        layers): the error of single linears on the same real activations, and the end-to-end error that Gaussian noise
        of that same relative size, added to every block linear's bf16 output, produces on the bf16 model.
        """
        from diffusers_magihuman.utils.fp8 import enable_fp8_compute, fp8_block_linear_filter

        device, tiny = self.device, self.tiny
        probe_layer = 1 if tiny else 20
        probes = [f"blocks.{probe_layer}.attn.to_q", f"blocks.{probe_layer}.ff.up_proj", f"blocks.{probe_layer}.ff.down_proj"]

        def bf16_dit(variant):
            model = self.dit(variant, 0)
            model.pad_swiglu_(16)  # exact; as `enable_fp8_compute` pads, so both models have the same linear shapes
            if tiny:  # the CPU dry run builds fp32 models; FP8 starts from bf16 block linears
                for name, module in model.named_modules():
                    if isinstance(module, torch.nn.Linear) and name.startswith("blocks."):
                        module.to(torch.bfloat16)
            return model

        def quantized(variant, skip=()):
            model = bf16_dit(variant)
            if tiny:  # torchao's float8 needs an SM 8.9+ GPU: the dry run rounds the weights through e4m3 instead
                select = fp8_block_linear_filter(skip)
                with torch.no_grad():
                    for name, module in model.named_modules():
                        if select(module, name):
                            w = module.weight.float()
                            scale = w.abs().amax(dim=1, keepdim=True).clamp_min(1e-12) / 448.0
                            module.weight.copy_(((w / scale).to(torch.float8_e4m3fn).float() * scale).to(w.dtype))
                return model
            enable_fp8_compute(model, skip_layers=skip)
            return model

        def capture(model, names):
            seen, handles = {}, []
            modules = dict(model.named_modules())
            def keep(module, args, output, name):
                seen.setdefault(name, (args[0].detach().clone(), output.detach().clone()))  # returns None: output kept

            for name in names:
                if name in modules:
                    handles.append(modules[name].register_forward_hook(lambda m, a, o, n=name: keep(m, a, o, n)))
            return seen, handles

        variants = {"256p": "distill", "540p": "sr_540p"}
        for resolution in self.args.fp8_resolutions:
            variant = variants[resolution]
            ref_dit = bf16_dit(variant)
            s = self.shapes(resolution)
            inputs = bm.make_dit_inputs(ref_dit, s, 5 if tiny else self.args.text_tokens, device, seed=0)
            seen, handles = capture(ref_dit, probes)
            with torch.no_grad():
                ref = ref_dit(**inputs)
            for h in handles:
                h.remove()
            print(f"fp8 {resolution}: quantized forward", flush=True)
            q_dit = quantized(variant)
            with torch.no_grad():
                out = q_dit(**inputs)
            row = dict(name=f"fp8 one forward {resolution}, every block linear")
            for key in ("sample", "audio_sample"):
                a, b = getattr(out, key, None), getattr(ref, key, None)
                if a is not None:
                    row[f"{key}_rel_l2"] = bm.rel_l2(a.float(), b.float())
            # single linears on the bf16 model's own activations: FP8's per-GEMM error, no compounding
            q_modules = dict(q_dit.named_modules())
            per_linear = {}
            with torch.no_grad():
                for name, (x, y) in seen.items():
                    per_linear[name] = round(bm.rel_l2(q_modules[name](x).float(), y.float()), 5)
            row["per_linear_rel_l2"] = per_linear
            self.record(**row)

            # bf16 plus noise of FP8's per-linear size on every block linear the filter selects
            eps = sum(per_linear.values()) / max(len(per_linear), 1)
            select = fp8_block_linear_filter()
            g = torch.Generator(device=device).manual_seed(0)

            def noisy(module, args, output):
                rms = output.float().pow(2).mean().sqrt()
                noise = torch.randn(output.shape, generator=g, device=output.device, dtype=torch.float32)
                return (output.float() + eps * rms * noise).to(output.dtype)

            handles = [m.register_forward_hook(noisy) for n, m in ref_dit.named_modules() if select(m, n)]
            torch._dynamo.reset()
            with torch.no_grad():
                noised = ref_dit(**inputs)
            for h in handles:
                h.remove()
            self.record(
                name=f"bf16 + Gaussian noise of FP8's per-linear size ({eps:.4f}) on every block linear, {resolution}",
                sample_rel_l2=bm.rel_l2(noised.sample.float(), ref.sample.float()),
                audio_sample_rel_l2=bm.rel_l2(noised.audio_sample.float(), ref.audio_sample.float()),
            )

            # trajectories: 8-step distilled (256p), 5-step SR (540p, from random base latents)
            print(f"fp8 {resolution}: trajectories", flush=True)
            embeds = self.embeds(ref_dit)
            gen = lambda: torch.Generator().manual_seed(0)  # noqa: E731
            if variant == "distill":
                outs = []
                for model in (ref_dit, q_dit):
                    pipe = self.base_pipe(model)
                    pipe.enable_auto_compile(False)
                    outs.append(pipe(prompt_embeds=embeds, height=s["height"], width=s["width"], seconds=1 if tiny else self.args.seconds, generator=gen(), output_type="latent"))
                self.record(
                    name="fp8 8-step distilled trajectory 256p (final latents)",
                    video_rel_l2=bm.rel_l2(outs[1].frames.float().cpu(), outs[0].frames.float().cpu()),
                    audio_rel_l2=bm.rel_l2(outs[1].audio.float().cpu(), outs[0].audio.float().cpu()),
                )
            else:
                b = self.shapes("256p")
                g2 = torch.Generator().manual_seed(1)
                low = torch.randn(1, 48, b["latent_frames"], b["latent_height"], b["latent_width"], generator=g2).to(device)
                low_audio = torch.randn(1, b["audio_frames"], 64, generator=g2).to(device)
                outs = []
                for model in (ref_dit, q_dit):
                    sr = MagiHumanSRPipeline(transformer=model, scheduler=MagiHumanScheduler(sampler="unipc"), vae=None, audio_vae=None, text_encoder=None, tokenizer=None)
                    sr.set_progress_bar_config(disable=True)
                    sr.enable_auto_compile(False)
                    outs.append(sr(prompt_embeds=embeds, latents=low, audio_latents=low_audio, height=s["height"], width=s["width"], generator=gen(), output_type="latent"))
                self.record(
                    name="fp8 5-step SR 540p (final latents)",
                    video_rel_l2=bm.rel_l2(outs[1].frames.float().cpu(), outs[0].frames.float().cpu()),
                )
            # does keeping the first and last two layers in bf16 close the gap?
            del q_dit
            bm.free_memory()
            last = len(ref_dit.blocks) - 1
            skip = sorted({0, 1, last - 1, last})
            q_skip = quantized(variant, skip)
            torch._dynamo.reset()
            with torch.no_grad():
                out = q_skip(**inputs)
            self.record(
                name=f"fp8 one forward {resolution}, layers {skip} kept in bf16",
                sample_rel_l2=bm.rel_l2(out.sample.float(), ref.sample.float()),
                audio_sample_rel_l2=bm.rel_l2(out.audio_sample.float(), ref.audio_sample.float()),
            )
            del q_skip
            bm.free_memory()
            if device.type == "cuda" and self.args.fp8_timing != "none":  # forward time last: a crash while compiling the quantized model loses no error row
                print(f"fp8 {resolution}: timing both models, eager then compiled", flush=True)
                q_dit = quantized(variant)
                torch._dynamo.reset()
                # eager first (recorded on its own), so a slow or failing compile of the torchao model loses no row
                eager = dict(name=f"fp8 vs bf16 eager forward {resolution}")
                for tag, model in (("bf16", ref_dit), ("fp8", q_dit)):
                    with torch.no_grad():
                        eager[f"{tag}_eager_ms"] = round(bm.time_fn(lambda m=model: m(**inputs), device, 1, 3)["median_ms"], 1)
                eager["fp8_over_bf16"] = round(eager["fp8_eager_ms"] / eager["bf16_eager_ms"], 3)
                self.record(**eager)
                if self.args.fp8_timing == "compiled":
                    timing = dict(name=f"fp8 vs bf16 compiled forward {resolution}")
                    for tag, model in (("bf16", ref_dit), ("fp8", q_dit)):
                        model.compile_repeated_blocks(fullgraph=True)
                        with torch.no_grad():
                            timing[f"{tag}_compiled_ms"] = round(bm.time_fn(lambda m=model: m(**inputs), device, 2, 5)["median_ms"], 1)
                    timing["fp8_over_bf16"] = round(timing["fp8_compiled_ms"] / timing["bf16_compiled_ms"], 3)
                    self.record(**timing)
                del q_dit

            del ref_dit
            torch._dynamo.reset()
            bm.free_memory()

    def run(self):
        for section in self.args.sections:
            self.guarded(section, getattr(self, section))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="tiny random models on the CPU (a code-path check)")
    parser.add_argument("--sections", default="all", help=f"comma separated from {','.join(SECTIONS)}, or all")
    parser.add_argument("--sr", default="540p,1080p", help="SR stages of the memory section")
    parser.add_argument("--seconds", type=int, default=5, help="clip length in seconds (default 5)")
    parser.add_argument("--text-tokens", type=int, default=300)
    parser.add_argument("--cap-gib", type=float, default=79.0, help="cap a larger card to this many GiB (default 79)")
    parser.add_argument("--workdir", default="/tmp/magihuman_bench", help="scratch folder (compile cache)")
    parser.add_argument("--output", default=None, help="JSON file, rewritten after each row")
    parser.add_argument("--fp8-resolutions", default="256p,540p", help="fp8: from 256p,540p")
    parser.add_argument("--fp8-timing", default="compiled", choices=["none", "eager", "compiled"], help="fp8: forward timing rows (CUDA)")
    parser.add_argument("--first-calls-only", action="store_true", help="memory: only each pipeline's first call")
    parser.add_argument("--child-one-shot", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.sections = list(SECTIONS) if args.sections == "all" else [x for x in args.sections.split(",") if x]
    args.fp8_resolutions = [x for x in args.fp8_resolutions.split(",") if x]
    bad = [x for x in args.fp8_resolutions if x not in ("256p", "540p")]
    if bad:
        parser.error(f"--fp8-resolutions takes 256p and/or 540p, got {bad}")
    args.sr = [x for x in args.sr.split(",") if x]
    os.makedirs(args.workdir, exist_ok=True)
    if args.child_one_shot:
        Runner.child_one_shot(args)
        return
    Runner(args).run()


if __name__ == "__main__":
    main()
