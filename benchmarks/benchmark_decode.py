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
"""Turbo-VAE decode speed and memory of each decode option, full-size random weights, one GPU.

    python benchmarks/benchmark_decode.py --output decode.json                       # ~3-4 min on an H100
    python benchmarks/benchmark_decode.py --compile --resident-gib 0 --output c.json  # + the compiled decoder
    python benchmarks/benchmark_decode.py --tiny --output /tmp/decode_tiny.json      # CPU code-path check, seconds

The latents of a 5 s clip (32 latent frames) at 540p (512x896) and 1080p (1088x1920), bf16, are decoded with each
variant of `AutoencoderTurboVAED.set_decode_options` (one warm-up call, whose time is reported as `first_call_s`, then
`--repeats` timed calls, CUDA-synchronised, median). Each row has peak allocated / reserved memory over the calls, and
the max |difference| of the video against the `reference` variant (the decode path of the original: NCDHW, float32
norm temporaries) plus the uint8-frame differences (the truncating conversion the pipeline uses): mean levels and the
fraction of pixels more than 4 levels off. `--resident-gib` repeats some 1080p variants with that many GiB of other
allocations held on the GPU (the SR DiT is ~30 GiB), to show the decode budget adapting (exact spatial tiles or none).

After the variants of the last resolution, one row profiles a middle window of the default (`fast`) variant: kernel
time, the share in convolutions and the top kernels (`--no-profile` skips it).

A card with more than `--cap-gib` GiB (an H200) is capped with `torch.cuda.set_per_process_memory_fraction`, so the
memory numbers are those of an 80 GB H100. The default CUDA allocator is used. Results go to `--output` after every
row; rows past `--time-budget-s` are recorded as skipped.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import time
import traceback

import torch


sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchmark_magihuman as bm  # noqa: E402  (also puts the source checkout on sys.path)


GIB = 1024**3

# name -> (set_decode_options kwargs, whether the frames are the reference's up to rounding noise)
VARIANTS = {
    "reference": (dict(channels_last=False, fused=False), True),
    "channels_last": (dict(channels_last=True, fused=False), True),
    "fused": (dict(channels_last=False, fused=True), True),
    "fast": (dict(channels_last=True, fused=True), True),  # the default on CUDA
    "fast+cudnn_benchmark": (dict(channels_last=True, fused=True, cudnn_benchmark=True), True),
    "fast+window_auto": (dict(channels_last=True, fused=True, window_frames="auto"), False),
    "compiled": (dict(channels_last=True, fused=False, compile_decoder=True), True),
    "compiled+cudnn_benchmark": (dict(channels_last=True, compile_decoder=True, cudnn_benchmark=True), True),
}
DEFAULT_VARIANTS = {
    "540p": "reference,channels_last,fused,fast,fast+cudnn_benchmark,fast+window_auto",
    "1080p": "reference,fast,fast+cudnn_benchmark,fast+window_auto",
}
# --tiny (a code-path check, not a measurement): the tiny config with 2-frame windows, latents of three windows, and
# for the resident rows a latent wide enough (68 > 4 halos of 16) for two exact spatial tiles.
TINY_WINDOW = 2
TINY_LATENTS = {"540p": (5, 2, 4), "1080p": (5, 2, 6)}
TINY_RESIDENT_LATENT = (3, 1, 68)


def cap_memory(device: torch.device, cap_gib: float) -> dict:
    """As benchmarks/benchmark_speedups.py: cap a larger card to `cap_gib` GiB for this process."""
    if device.type != "cuda":
        return {}
    total = torch.cuda.get_device_properties(device).total_memory
    info = {"gpu": torch.cuda.get_device_name(device), "gpu_total_gib": round(total / GIB, 1)}
    if total > cap_gib * GIB * 1.02:
        torch.cuda.set_per_process_memory_fraction(cap_gib * GIB / total, torch.cuda.current_device())
        info["capped_to_gib"] = cap_gib
    return info


def frame_diff(video: torch.Tensor, ref: torch.Tensor, device: torch.device, frames_per_chunk: int = 8) -> dict:
    """Max |video - ref| and the uint8-frame differences, chunked over frames (a 1080p clip is 0.8e9 values)."""
    if tuple(video.shape) != tuple(ref.shape):
        return {"diff_error": f"shape {tuple(video.shape)} != reference {tuple(ref.shape)}"}
    max_abs, level_sum, over4, count = 0.0, 0.0, 0, 0
    for start in range(0, video.shape[2], frames_per_chunk):
        a = video[:, :, start : start + frames_per_chunk].to(device).float()
        b = ref[:, :, start : start + frames_per_chunk].to(device).float()
        max_abs = max(max_abs, (a - b).abs().max().item())
        # the pipeline's conversion: x * 0.5 + 0.5, clamp to [0, 1], * 255, truncating cast
        ua = (a.mul(0.5).add(0.5).clamp(0, 1) * 255).to(torch.uint8).to(torch.int16)
        ub = (b.mul(0.5).add(0.5).clamp(0, 1) * 255).to(torch.uint8).to(torch.int16)
        levels = (ua - ub).abs()
        level_sum += levels.sum(dtype=torch.float64).item()
        over4 += (levels > 4).sum().item()
        count += levels.numel()
        del a, b, ua, ub, levels
    return {
        "max_abs_diff_vs_reference": max_abs,
        "uint8_mean_levels_vs_reference": level_sum / count,
        "uint8_fraction_over_4_levels": over4 / count,
    }


class Runner:
    def __init__(self, args):
        self.args = args
        self.device = torch.device("cuda" if torch.cuda.is_available() and not args.tiny else "cpu")
        self.dtype = torch.bfloat16 if self.device.type == "cuda" else torch.float32
        self.meta = {
            "command": " ".join(sys.argv),
            "torch": torch.__version__,
            "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version() if self.device.type == "cuda" else None,
            "seconds": args.seconds,
            "dtype": str(self.dtype),
            "PYTORCH_CUDA_ALLOC_CONF": os.environ.get("PYTORCH_CUDA_ALLOC_CONF", ""),
            "original_h100_s": {r: bm.UPSTREAM_H100[f"turbo_vae_{r}"] for r in ("540p", "1080p")},
            "targets_s": {"540p": 1.3, "1080p": 4.5},
        }
        self.meta.update(cap_memory(self.device, args.cap_gib))
        self.results: list[dict] = []
        self.t0 = time.time()
        if args.tiny:
            from diffusers_magihuman.models.autoencoder_turbo_vaed import AutoencoderTurboVAED
            from diffusers_magihuman.testing_utils import tiny_turbo_vae_config

            torch.manual_seed(0)
            config = dict(tiny_turbo_vae_config(), first_chunk_size=TINY_WINDOW, step_size=TINY_WINDOW)
            self.vae = AutoencoderTurboVAED(**config).eval().requires_grad_(False)
        else:
            self.vae = bm.build_turbo_vae(self.device, False, self.dtype)
        self.meta["weights_gib"] = round(bm.param_bytes(self.vae) / GIB, 3)

    def left(self) -> float:
        return self.args.time_budget_s - (time.time() - self.t0)

    def record(self, **row) -> dict:
        row = {k: v for k, v in row.items() if v is not None}
        self.results.append(row)
        shown = {k: v for k, v in row.items() if k not in ("trace", "times_s")}
        print(f"[{time.time() - self.t0:7.1f}s] " + json.dumps(shown, default=str), flush=True)
        if self.args.output:
            tmp = self.args.output + ".tmp"
            with open(tmp, "w") as handle:
                json.dump({"meta": self.meta, "results": self.results}, handle, indent=1, default=str)
            os.replace(tmp, self.args.output)
        return row

    def latents(self, resolution: str, resident: bool = False) -> torch.Tensor:
        if self.args.tiny:
            frames, height, width = TINY_RESIDENT_LATENT if resident else TINY_LATENTS[resolution]
        else:
            s = bm.clip_shapes(resolution, self.args.seconds, False)
            frames, height, width = s["latent_frames"], s["latent_height"], s["latent_width"]
        g = torch.Generator().manual_seed(0)
        return torch.randn(1, 48, frames, height, width, generator=g).to(self.device, self.dtype)

    def sync(self):
        bm.sync(self.device)

    def plan(self, z: torch.Tensor) -> dict:
        """What the decode budget logic will do for the largest window of `z` (after options are set)."""
        vae = self.vae
        vae._resolve_decode_options(z.device)
        first, step = vae._window_sizes(z)
        frames = z.shape[2] if first >= z.shape[2] else max(first + 1, step + 2)
        frames = min(frames, z.shape[2])
        height, width = z.shape[3], z.shape[4]
        need = vae._estimate_window_bytes(frames, height, width)
        budget = vae._memory_budget(z.device)
        info = {
            "window_frames": [first, step],
            "largest_window_frames": frames,
            "largest_activation_elements": vae._largest_activation(frames, height, width),
            "estimate_gib": round(need / GIB, 2),
        }
        if budget is not None:
            info["budget_gib"] = round(budget / GIB, 2)
            info["tiles"] = list(vae._plan_tiles(frames, height, width, budget)) if need > budget else [1, 1]
        return info

    def run_variant(self, resolution: str, name: str, reference: torch.Tensor | None, resident_gib: float = 0.0):
        options, exact = VARIANTS[name]
        row = dict(resolution=resolution, variant=name, options=options, resident_gib=resident_gib or None)
        z = self.latents(resolution, resident=bool(resident_gib))
        if self.args.tiny and resident_gib:
            reference = None  # another latent
        resident = None
        try:
            if resident_gib and self.device.type == "cuda":
                resident = torch.empty(int(resident_gib * GIB), dtype=torch.uint8, device=self.device)
            elif resident_gib:  # CPU code-path check: force the exact spatial tiles with a small budget
                self.vae.set_decode_options(**options)
                self.vae._resolve_decode_options(z.device)  # the estimate follows the options
                need = self.vae._estimate_window_bytes(z.shape[2], *z.shape[3:])  # the largest window here
                self.vae.set_decode_memory_budget(max(1, need * 3 // 4))
            self.vae.set_decode_options(**options)
            row.update(self.plan(z))
            if self.device.type == "cuda":
                self.sync()
                torch.cuda.reset_peak_memory_stats(self.device)
                before_bytes = torch.cuda.memory_allocated(self.device)
                row["allocated_before_gib"] = round(before_bytes / GIB, 2)
            with torch.inference_mode():
                t = time.perf_counter()
                video = self.vae.decode(z, return_dict=False)[0]
                self.sync()
                row["first_call_s"] = round(time.perf_counter() - t, 3)
                row["output_shape"] = list(video.shape)
                repeats = 1 if self.args.tiny else self.args.repeats
                times = []
                for _ in range(repeats):
                    del video
                    t = time.perf_counter()
                    video = self.vae.decode(z, return_dict=False)[0]
                    self.sync()
                    times.append(time.perf_counter() - t)
            row["median_s"] = round(statistics.median(times), 3)
            row["min_s"] = round(min(times), 3)
            row["times_s"] = [round(x, 3) for x in times]
            if self.device.type == "cuda":
                row["peak_allocated_gib"] = round(torch.cuda.max_memory_allocated(self.device) / GIB, 2)
                row["peak_reserved_gib"] = round(torch.cuda.max_memory_reserved(self.device) / GIB, 2)
                row["decode_working_set_gib"] = round(row["peak_allocated_gib"] - row["allocated_before_gib"], 2)
                # the estimate's calibration: working set (less the decoded video) per element of the largest
                # activation; the budget logic assumes 28 (reference) or 10 (fused) bytes for bf16
                video_bytes = video.numel() * video.element_size()
                working = torch.cuda.max_memory_allocated(self.device) - before_bytes
                row["working_set_bytes_per_element"] = round(
                    (working - video_bytes) / row["largest_activation_elements"], 2
                )
            row["same_frames_as_reference_expected"] = exact
            del resident  # free before comparing
            resident = None
            if reference is not None:
                row.update(frame_diff(video, reference, self.device))
            original = self.meta["original_h100_s"].get(resolution)
            if original and not self.args.tiny:
                row["speedup_vs_original_h100"] = round(original / row["median_s"], 3)
            return video if name == "reference" and not resident_gib else None
        except Exception as error:  # record and go on: a short lease must not lose the other rows
            row.update(error=bm.short_error(error), trace=traceback.format_exc()[-1500:])
            return None
        finally:
            resident = None
            self.vae.set_decode_memory_budget(None)
            self.vae.set_decode_options()
            self.record(**row)
            gc.collect()
            if self.device.type == "cuda":
                torch.cuda.empty_cache()

    def estimate_s(self, resolution: str, name: str) -> float:
        """Rough cost of a variant row (for the time budget), from the rows measured so far."""
        done = [r for r in self.results if r.get("resolution") == resolution and "median_s" in r]
        per_call = max((r["median_s"] for r in done), default=10.0 if resolution == "1080p" else 2.5)
        calls = 1 + (1 if self.args.tiny else self.args.repeats)
        extra = 120.0 if name.startswith("compiled") else 0.0
        return per_call * calls + extra

    def run(self):
        for resolution in self.args.resolutions:
            names = [n for n in self.args.variants[resolution] if n]
            if "reference" in names:  # first: the others are compared with it
                names.remove("reference")
                names.insert(0, "reference")
            reference = None
            for name in names:
                if not self.args.tiny and self.left() < self.estimate_s(resolution, name):
                    self.record(resolution=resolution, variant=name, skipped="time budget")
                    continue
                out = self.run_variant(resolution, name, reference)
                if name == "reference" and out is not None:
                    # keep it off the GPU: the next variants' peak memory must not include it
                    reference = out.to("cpu") if self.device.type == "cuda" else out
                    del out
            if self.args.profile and resolution == self.args.resolutions[-1]:
                self.profile_window()  # before the resident rows: the profile matters more if a target is missed
            resident = self.args.resident_gib
            if resolution == "1080p" and resident:
                for name in self.args.resident_variants:
                    if not self.args.tiny and self.left() < self.estimate_s(resolution, name) * 1.5:
                        self.record(resolution=resolution, variant=name, resident_gib=resident, skipped="time budget")
                        continue
                    self.run_variant(resolution, name, reference, resident_gib=resident)
            reference = None
        self.summary()

    def profile_window(self, name: str = "fast", top: int = 15):
        """Kernel times of one decoded window (the largest resolution run, `name` variant): where the time goes."""
        resolution = self.args.resolutions[-1]
        row = dict(resolution=resolution, variant=name, profile="one middle window, kernels by self device time")
        if not self.args.tiny and self.left() < 30:
            self.record(**row, skipped="time budget")
            return
        try:
            from torch.profiler import ProfilerActivity, profile

            z = self.latents(resolution)
            z = self.vae._denormalize(z)[:, :, : self.vae.config.step_size + 2]  # a middle window with its context
            self.vae.set_decode_options(**VARIANTS[name][0])
            self.vae._resolve_decode_options(z.device)
            on_cuda = self.device.type == "cuda"
            activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if on_cuda else [])
            with torch.inference_mode():
                self.vae._decode_window(z, is_first_chunk=False)  # warm-up (allocator, cuDNN heuristics)
                self.sync()
                with profile(activities=activities) as prof:
                    self.vae._decode_window(z, is_first_chunk=False)
                    self.sync()
            kernels = []
            for event in prof.key_averages():
                if on_cuda:
                    if "CUDA" not in str(getattr(event, "device_type", "")):
                        continue
                    us = getattr(event, "self_device_time_total", None)
                    us = getattr(event, "self_cuda_time_total", 0) if us is None else us
                else:
                    us = event.self_cpu_time_total
                if us > 0:
                    kernels.append((event.key, us / 1e3, event.count))
            kernels.sort(key=lambda k: -k[1])
            total = sum(k[1] for k in kernels)

            def share(*words):
                picked = sum(k[1] for k in kernels if any(w in k[0].lower() for w in words))
                return round(picked / total, 3) if total else None

            row.update(
                window_latent_frames=z.shape[2],
                total_kernel_ms=round(total, 2),
                conv_share=share("conv", "xmma", "implicit", "fprop", "cudnn", "gemm", "sm90", "sm80", "cutlass"),
                top_kernels=[[k[0][:120], round(k[1], 2), k[2]] for k in kernels[:top]],
            )
        except Exception as error:
            row.update(error=bm.short_error(error), trace=traceback.format_exc()[-1500:])
        finally:
            self.vae.set_decode_options()
            self.record(**row)

    def summary(self):
        print("\nresolution  variant                      resident  first_s  median_s  peak_alloc  max|d|   >4lv")
        nan = float("nan")
        for r in self.results:
            if "median_s" not in r:
                continue
            print(
                f"{r['resolution']:<11} {r['variant']:<28} {r.get('resident_gib', 0) or 0:>8} "
                f"{r['first_call_s']:>8.2f} {r['median_s']:>9.3f} {r.get('peak_allocated_gib', nan):>11.2f} "
                f"{r.get('max_abs_diff_vs_reference', nan):>7.4f} {r.get('uint8_fraction_over_4_levels', nan):>6.4f}"
            )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="tiny random Turbo-VAE on the CPU (a code-path check)")
    parser.add_argument("--resolutions", default="540p,1080p")
    parser.add_argument("--variants-540p", default=DEFAULT_VARIANTS["540p"], help=f"from {','.join(VARIANTS)}")
    parser.add_argument("--variants-1080p", default=DEFAULT_VARIANTS["1080p"])
    parser.add_argument("--compile", action="store_true", help="add the 'compiled' variant at each resolution")
    parser.add_argument("--resident-gib", type=float, default=30.0, help="GiB held during the resident rows (0: none)")
    parser.add_argument("--resident-variants", default="fast,reference", help="1080p variants repeated with it")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=5, help="clip length in seconds (default 5)")
    parser.add_argument("--cap-gib", type=float, default=79.0, help="cap a larger card to this many GiB (default 79)")
    parser.add_argument("--time-budget-s", type=float, default=200.0, help="skip rows that would run past this")
    parser.add_argument("--no-profile", dest="profile", action="store_false", help="skip the kernel profile row")
    parser.add_argument("--output", default=None, help="JSON file, rewritten after each row")
    args = parser.parse_args(argv)
    args.resolutions = [x for x in args.resolutions.split(",") if x]
    args.variants = {"540p": args.variants_540p.split(","), "1080p": args.variants_1080p.split(",")}
    if args.compile:
        for names in args.variants.values():
            names.append("compiled")
    args.resident_variants = [x for x in args.resident_variants.split(",") if x]
    for name in [n for names in args.variants.values() for n in names if n] + args.resident_variants:
        if name not in VARIANTS:
            parser.error(f"unknown variant {name!r}; choose from {', '.join(VARIANTS)}")
    for resolution in args.resolutions:
        if resolution not in DEFAULT_VARIANTS:
            parser.error(f"unknown resolution {resolution!r}; choose from 540p, 1080p")
    if args.tiny:
        # compiling the decoder on the CPU takes minutes; the code path is the same as `channels_last`
        for names in args.variants.values():
            names[:] = [n for n in names if not n.startswith("compiled")]
    Runner(args).run()


if __name__ == "__main__":
    main()
