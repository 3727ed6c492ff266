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
"""Speed and memory of the full-size MagiHuman components on one GPU, with random weights.

One command builds the full-size DiT (15B, bf16, directly on the GPU), the 1080p super-resolution DiT (local
attention on 32 of 40 layers), the Turbo-VAE decoder and optionally the Wan2.2 VAE, and measures:

* DiT forward time per resolution (256p = 448x256, 540p = 896x512, 1080p = 1920x1088 with local attention; a 5 s
  clip = 32 latent frames, 126 audio frames, 300 text tokens), for several attention backends, eager and with regional
  compilation (`compile_repeated_blocks(fullgraph=True)`), with TFLOP/s, % of peak and peak memory;
* the stage times of the original's table derived from them (distill 256p = 8 forwards, SR = 5 forwards);
* Turbo-VAE (and Wan2.2 VAE) decode time and memory;
* memory tiers at 256p: model CPU offload, group offload with CUDA streams, FP8 layerwise casting (with the DiT output
  error against bf16 on the same inputs);
* attention kernels alone (SDPA variants, FlashAttention-4 where importable).

Results go to a JSON file (`--output`) after every measurement, and a table is printed at the end. `--tiny` runs every
code path on tiny random models (CPU is fine) in seconds: use it to check the script before spending GPU time.

Example (see benchmarks/README.md and docs/performance.md):

    python benchmarks/benchmark_magihuman.py --sections dit,profile --output dit.json
    python benchmarks/benchmark_magihuman.py --tiny --sections all --output /tmp/tiny.json
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import gc
import json
import math
import os
import platform
import statistics
import sys
import time
import traceback
from typing import Any, Callable

import torch

# The benchmark runs from a source checkout without installation too.
_SRC = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "src")
if os.path.isdir(_SRC) and _SRC not in sys.path:
    sys.path.insert(0, os.path.abspath(_SRC))

import diffusers_magihuman.models.transformer_magihuman as _tm  # noqa: E402
from diffusers_magihuman.models.transformer_magihuman import (  # noqa: E402
    MagiHumanAttention,
    MagiHumanTransformer3DModel,
    experts_of,
)
from diffusers_magihuman.testing_utils import (  # noqa: E402
    full_transformer_config,
    tiny_transformer_config,
    tiny_turbo_vae_config,
)

GIB = 1024**3
# Output sizes of the original's table (height, width); 1080p runs at 1088 (a multiple of 32).
RESOLUTIONS = {"256p": (256, 448), "540p": (512, 896), "1080p": (1088, 1920)}
TINY_RESOLUTIONS = {"256p": (64, 96), "540p": (96, 128), "1080p": (128, 192)}
# Stage recipes of the original's table (spec landscape.md §4.1): distilled base stage 8 steps, SR stages 5 steps.
STAGES = {"256p": ("distill 256p base stage", 8), "540p": ("540p SR stage", 5), "1080p": ("1080p SR stage", 5)}
# The original's numbers (H100, 5 s clip) and the targets, in seconds.
UPSTREAM_H100 = {
    "dit_forward_256p_eager": 0.356,
    "dit_forward_256p_compiled": 0.185,
    "stage_256p": 1.6,
    "stage_540p": 5.1,
    "stage_1080p": 31.0,
    "turbo_vae_256p": 0.4,
    "turbo_vae_540p": 1.3,
    "turbo_vae_1080p": 5.8,
}
TARGETS = {
    "dit_forward_256p": 0.150,
    "stage_256p": 1.25,
    "stage_540p": 3.8,
    "stage_1080p": 24.0,
    "e2e_256p_turbo": 1.6,
}
# Dense bf16 tensor-core peak from the vendor datasheets (TFLOP/s); the measured GEMM ceiling is reported too.
DATASHEET_BF16_TFLOPS = {"H100": 989.4, "H200": 989.4, "H20": 148.0, "A100": 312.0, "L40S": 362.1, "B200": 2250.0}


# ---------------------------------------------------------------------------------------------------------------------
# Small utilities
# ---------------------------------------------------------------------------------------------------------------------


class Recorder:
    """Collects result rows and rewrites the JSON file after each one, so a run cut short keeps what it measured."""

    def __init__(self, path: str | None, meta: dict):
        self.path = path
        self.data = {"meta": meta, "results": []}
        self.t0 = time.time()

    def add(self, **row) -> dict:
        row = {k: v for k, v in row.items() if v is not None}
        self.data["results"].append(row)
        self.flush()
        shown = {k: row[k] for k in row if k not in ("times_ms", "error_trace")}
        print(f"[{time.time() - self.t0:7.1f}s] " + json.dumps(shown, default=str), flush=True)
        return row

    def flush(self) -> None:
        if self.path:
            tmp = self.path + ".tmp"
            with open(tmp, "w") as f:
                json.dump(self.data, f, indent=1, default=str)
            os.replace(tmp, self.path)


class Deadline:
    """Skips remaining work once the time budget is spent (the device lease is short)."""

    def __init__(self, seconds: float | None):
        self.end = None if not seconds else time.time() + seconds

    def left(self) -> float:
        return math.inf if self.end is None else self.end - time.time()

    def allows(self, estimate_s: float = 0.0) -> bool:
        return self.left() > estimate_s


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def time_fn(fn: Callable[[], Any], device: torch.device, warmup: int, repeats: int) -> dict:
    """Median wall time of `fn` in ms (CUDA events on GPU), after `warmup` calls; first call time is reported too."""
    first_ms = None
    for i in range(warmup):
        t = time.perf_counter()
        fn()
        sync(device)
        if i == 0:
            first_ms = (time.perf_counter() - t) * 1e3
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t) * 1e3)
    return {
        "median_ms": statistics.median(times),
        "min_ms": min(times),
        "max_ms": max(times),
        "times_ms": [round(x, 3) for x in times],
        "first_call_ms": first_ms,
    }


@contextlib.contextmanager
def peak_memory(device: torch.device, out: dict):
    """Writes `peak_gb` (max allocated during the block) and `before_gb` (allocated at its start) into `out`."""
    if device.type != "cuda":
        yield
        return
    sync(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    try:
        yield
    finally:
        sync(device)
        out["before_gb"] = before / GIB
        out["peak_gb"] = torch.cuda.max_memory_allocated(device) / GIB
        out["activations_gb"] = (torch.cuda.max_memory_allocated(device) - before) / GIB


def tensor_bytes(tensor: torch.Tensor) -> int:
    """Bytes a tensor holds; a tensor subclass (torchao's float8 weights) counts its inner tensors (data + scales),
    not its outer (bf16) dtype."""
    flatten = getattr(tensor, "__tensor_flatten__", None)
    if flatten is not None:
        names, _ = flatten()
        return sum(tensor_bytes(getattr(tensor, name)) for name in names)
    return tensor.numel() * tensor.element_size()


def param_bytes(module: torch.nn.Module) -> int:
    return sum(tensor_bytes(p) for p in module.parameters()) + sum(tensor_bytes(b) for b in module.buffers())


def cap_memory(device, cap_gib: float) -> dict:
    """Cap a card larger than `cap_gib` (an H200) with `set_per_process_memory_fraction`, so peaks are an 80 GB H100's."""
    if device.type != "cuda":
        return {}
    total = torch.cuda.get_device_properties(device).total_memory
    info = {"gpu": torch.cuda.get_device_name(device), "gpu_total_gib": round(total / (1024**3), 1)}
    if total > cap_gib * (1024**3) * 1.02:
        torch.cuda.set_per_process_memory_fraction(cap_gib * (1024**3) / total, torch.cuda.current_device())
        info["capped_to_gib"] = cap_gib
    return info


def rel_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def short_error(error: BaseException) -> str:
    return f"{type(error).__name__}: {str(error).splitlines()[0][:300] if str(error) else ''}"


# ---------------------------------------------------------------------------------------------------------------------
# Sizes and FLOPs
# ---------------------------------------------------------------------------------------------------------------------


def clip_shapes(resolution: str, seconds: int, tiny: bool) -> dict:
    """Latent shapes of a `seconds` clip at `resolution`: frames `25 s + 1`, latent frames `(frames - 1) // 4 + 1`."""
    height, width = (TINY_RESOLUTIONS if tiny else RESOLUTIONS)[resolution]
    num_frames = seconds * 25 + 1
    return {
        "height": height,
        "width": width,
        "latent_frames": (num_frames - 1) // 4 + 1,
        "latent_height": height // 16,
        "latent_width": width // 16,
        "audio_frames": num_frames,
    }


def make_dit_inputs(model, shapes: dict, text_tokens: int, device, seed: int) -> dict:
    generator = torch.Generator(device="cpu").manual_seed(seed)
    config = model.config

    def randn(*shape):
        return torch.randn(*shape, generator=generator).to(device)

    return {
        "hidden_states": randn(
            1, config.in_channels, shapes["latent_frames"], shapes["latent_height"], shapes["latent_width"]
        ),
        "audio_hidden_states": randn(1, shapes["audio_frames"], config.audio_in_channels),
        "encoder_hidden_states": randn(1, text_tokens, config.text_in_channels),
    }


def dit_flops(model, shapes: dict, text_tokens: int) -> dict:
    """Matmul FLOPs of one DiT forward (2 per multiply-add): linears (the expert a token uses) and attention."""
    config = model.config
    p_t, p_h, p_w = config.patch_size
    frames = shapes["latent_frames"] // p_t
    per_frame = (shapes["latent_height"] // p_h) * (shapes["latent_width"] // p_w)
    num_video = frames * per_frame
    seq = num_video + shapes["audio_frames"] + text_tokens
    window = config.frame_receptive_field
    heads, head_dim = config.num_attention_heads, config.head_dim

    linear = 2 * (
        num_video * model.video_embedder.in_features * model.video_embedder.out_features
        + shapes["audio_frames"] * model.audio_embedder.in_features * model.audio_embedder.out_features
        + text_tokens * model.text_embedder.in_features * model.text_embedder.out_features
        + num_video * model.proj_out_video.in_features * model.proj_out_video.out_features
        + shapes["audio_frames"] * model.proj_out_audio.in_features * model.proj_out_audio.out_features
    )
    attention = 0
    for block in model.blocks:
        projections = [(block.attn, name) for name in ("to_q", "to_k", "to_v", "to_gate", "to_out")]
        for owner, name in projections + [(block.ff, "up_proj"), (block.ff, "down_proj")]:
            if name == "to_gate" and not block.attn.gate_size:
                continue
            module = experts_of(owner, name)
            module = module if isinstance(module, torch.nn.Module) else module[0]
            module = module[0] if isinstance(module, torch.nn.ModuleList) else module  # to_out = [Linear, Dropout]
            weight = module.weight
            linear += 2 * seq * weight.shape[0] * weight.shape[1]
        if block.attn.is_local and 0 <= window < frames - 1:
            keys = 0
            for frame in range(frames):
                lo, hi = max(frame - window, 0), min(frame + window + 1, frames)
                keys += per_frame * ((hi - lo) * per_frame + (seq - num_video))
            keys += (seq - num_video) * seq
            attention += 4 * keys * heads * head_dim
        else:
            attention += 4 * seq * seq * heads * head_dim
    return {
        "seq_len": seq,
        "video_tokens": num_video,
        "linear_tflop": linear / 1e12,
        "attention_tflop": attention / 1e12,
    }


# ---------------------------------------------------------------------------------------------------------------------
# Builders
# ---------------------------------------------------------------------------------------------------------------------


def build_dit(variant: str, device, tiny: bool, pad: int | None, seed: int) -> MagiHumanTransformer3DModel:
    """Full-size (or tiny) DiT with random weights, built directly on `device` (bf16 block linears, fp32 islands)."""
    if tiny:
        overrides = {"coords_style": "v1"} if variant.startswith("sr") else {}
        if variant == "sr_1080p":
            overrides = {"local_attn_layers": [1], "frame_receptive_field": 1, "coords_style": "v1"}
        config = tiny_transformer_config(**overrides)
    else:
        config = full_transformer_config(variant)
    config["pad_swiglu_to_multiple_of"] = pad
    torch.manual_seed(seed)
    # The released layout: block linears bf16, `_keep_in_fp32_modules` fp32 (as `from_pretrained(dtype=bf16)` gives).
    # Built in bf16 on the device directly, so a 15B model never exists in fp32 (60 GB).
    dtype = torch.float32 if torch.device(device).type == "cpu" else torch.bfloat16
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = MagiHumanTransformer3DModel(**config)
    finally:
        torch.set_default_dtype(previous)
    keep = set(MagiHumanTransformer3DModel._keep_in_fp32_modules)
    for name, module in model.named_modules():
        if keep & set(name.split(".")):
            module.float()
    with torch.no_grad():
        # Fresh RMSNorms are identities; give them small random offsets (the default Linear init is kept).
        for name, p in model.named_parameters():
            if name.endswith(".weight") and p.ndim == 1:
                p.normal_(0.0, 0.02)
    return model.eval().requires_grad_(False)


def swiglu_width(model) -> int | None:
    """The (padded) swiglu7 MLP width of the first swiglu7 layer."""
    return next((b.ff.intermediate_size for b in model.blocks if b.ff.activation == "swiglu7"), None)


_GQA_FLAG_BACKENDS = frozenset(_tm._GQA_FLAG_BACKENDS)


def set_attention_backend(model, backend: str) -> None:
    """
    Sets the diffusers attention backend on every attention module (module-level: no hub download check), or `fa4`
    / `auto` (see below).

    `NAME+repeat` uses backend NAME with K/V heads repeated to 40 instead of `enable_gqa=True` (for kernels without
    native GQA support).
    """
    name, _, option = backend.partition("+")
    _tm._GQA_FLAG_BACKENDS = set(_GQA_FLAG_BACKENDS) - ({name} if option == "repeat" else set())
    for module in model.modules():
        if isinstance(module, MagiHumanAttention):
            if name in ("fa4", "auto"):
                # "fa4": our FlashAttention-4 custom ops (compile-traceable; varlen local layers); "auto": the
                # processor's default choice (FA4 when installed on this GPU, else native SDPA).
                module.processor._attention_backend = None
                module.processor.use_flash_attention_4 = True if name == "fa4" else None
            else:
                module.set_attention_backend(name)


def install_fa4() -> str | None:
    """Points diffusers' `flash_4_hub` backend at a locally installed FlashAttention-4 (flash_attn.cute)."""
    from diffusers_magihuman._diffusers_compat import register_local_flash_attention_4

    try:
        from flash_attn.cute import flash_attn_func  # noqa: F401
    except Exception as error:  # not installed: FA4 rows are skipped
        return short_error(error)
    return None if register_local_flash_attention_4() else "diffusers has no flash_4_hub registry entry"


def build_turbo_vae(device, tiny: bool, dtype: torch.dtype):
    from diffusers_magihuman.models.autoencoder_turbo_vaed import AutoencoderTurboVAED

    torch.manual_seed(0)
    with torch.device(device):
        vae = AutoencoderTurboVAED(**tiny_turbo_vae_config()) if tiny else AutoencoderTurboVAED()
    return vae.to(dtype).eval().requires_grad_(False)


def build_wan_vae(device, tiny: bool, dtype: torch.dtype):
    from diffusers import AutoencoderKLWan

    from diffusers_magihuman.constants import WAN22_LATENTS_MEAN, WAN22_LATENTS_STD

    if tiny:
        from diffusers_magihuman.testing_utils import make_tiny_vae

        return make_tiny_vae().to(device=device, dtype=dtype).requires_grad_(False)
    torch.manual_seed(0)
    with torch.device(device):
        # Wan2.2-TI2V-5B VAE (diffusers' convert_wan_to_diffusers vae22 config).
        vae = AutoencoderKLWan(
            base_dim=160,
            decoder_base_dim=256,
            z_dim=48,
            dim_mult=[1, 2, 4, 4],
            num_res_blocks=2,
            temperal_downsample=[False, True, True],
            is_residual=True,
            in_channels=12,
            out_channels=12,
            patch_size=2,
            scale_factor_temporal=4,
            scale_factor_spatial=16,
            latents_mean=list(WAN22_LATENTS_MEAN),
            latents_std=list(WAN22_LATENTS_STD),
        )
    return vae.to(dtype).eval().requires_grad_(False)


# ---------------------------------------------------------------------------------------------------------------------
# Benchmark context
# ---------------------------------------------------------------------------------------------------------------------


class Bench:
    def __init__(self, args):
        self.args = args
        self.device = torch.device(args.device)
        self.tiny = args.tiny
        self.deadline = Deadline(args.deadline)
        self.peak_tflops = None
        self.datasheet_tflops = None
        self.rec = Recorder(args.output, self.environment())
        self.fa4_error = install_fa4()
        self.rec.data["meta"]["fa4"] = self.fa4_error or "available"
        self.rec.flush()

    # -- environment --------------------------------------------------------------------------------------------------

    def environment(self) -> dict:
        import diffusers

        meta = {
            "command": " ".join(sys.argv),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "diffusers": diffusers.__version__,
            "device": str(self.device),
            "tiny": self.tiny,
            "seconds": self.args.seconds,
            "text_tokens": self.args.text_tokens,
            "pad_swiglu": self.args.pad_swiglu,
        }
        if self.device.type == "cuda":
            props = torch.cuda.get_device_properties(self.device)
            meta.update(
                gpu=props.name,
                gpu_memory_gb=props.total_memory / GIB,
                sm_count=props.multi_processor_count,
                cuda=torch.version.cuda,
                cudnn=torch.backends.cudnn.version(),
            )
            for key, value in DATASHEET_BF16_TFLOPS.items():
                if key in props.name:
                    meta["datasheet_bf16_tflops"] = value
                    self.datasheet_tflops = value
                    break
        return meta

    def measure_ceilings(self) -> None:
        """Measured bf16 GEMM rate (8192^3, random data) and device-to-device copy bandwidth."""
        if self.device.type != "cuda":
            return
        n = 8192
        a = torch.randn(n, n, device=self.device, dtype=torch.bfloat16)
        b = torch.randn(n, n, device=self.device, dtype=torch.bfloat16)
        stats = time_fn(lambda: a @ b, self.device, warmup=3, repeats=10)
        self.peak_tflops = 2 * n**3 / (stats["median_ms"] * 1e-3) / 1e12
        x = torch.empty(2 * GIB // 2, dtype=torch.bfloat16, device=self.device)
        y = torch.empty_like(x)
        copy_stats = time_fn(lambda: y.copy_(x), self.device, warmup=2, repeats=5)
        bandwidth = 2 * x.numel() * 2 / (copy_stats["median_ms"] * 1e-3) / 1e12
        a = b = x = y = None
        free_memory()
        self.rec.data["meta"].update(measured_bf16_gemm_tflops=self.peak_tflops, measured_copy_tb_s=bandwidth)
        self.rec.add(section="ceilings", name="bf16 GEMM 8192^3", tflops=self.peak_tflops, copy_tb_s=bandwidth)

    def rate(self, tflop: float, ms: float) -> dict:
        tflops = tflop / (ms * 1e-3)
        out = {"tflops": tflops}
        if self.peak_tflops:
            out["pct_of_measured_peak"] = 100 * tflops / self.peak_tflops
        if self.datasheet_tflops:
            out["pct_of_datasheet_peak"] = 100 * tflops / self.datasheet_tflops
        return out

    def repeats_for(self, resolution: str) -> tuple[int, int]:
        if self.tiny:
            return 1, 2
        return {"256p": (2, 6), "540p": (1, 3), "1080p": (1, 2)}[resolution]

    # -- DiT forward --------------------------------------------------------------------------------------------------

    def dit_forward(
        self, model, resolution: str, backend: str, mode: str, label: str | None = None, **extra
    ) -> dict | None:
        shapes = clip_shapes(resolution, self.args.seconds, self.tiny)
        flops = dit_flops(model, shapes, self.args.text_tokens)
        estimate = {"256p": 5, "540p": 15, "1080p": 60}[resolution] * (3 if mode == "compiled" else 1)
        row = dict(
            section="dit",
            name=label or f"DiT forward {resolution}",
            resolution=resolution,
            backend=backend,
            mode=mode,
            seq_len=flops["seq_len"],
            tflop=flops["linear_tflop"] + flops["attention_tflop"],
            attention_share=flops["attention_tflop"] / (flops["linear_tflop"] + flops["attention_tflop"]),
            **extra,
        )
        if not self.deadline.allows(estimate):
            return self.rec.add(**row, skipped="time budget")
        try:
            set_attention_backend(model, backend)
            inputs = make_dit_inputs(model, shapes, self.args.text_tokens, self.device, seed=1)
            warmup, repeats = self.repeats_for(resolution)
            mem: dict = {}
            with torch.inference_mode(), peak_memory(self.device, mem):
                if mode == "compiled":
                    t = time.perf_counter()
                    model(**inputs)
                    sync(self.device)
                    row["compile_and_first_call_s"] = time.perf_counter() - t
                    row["recompiles_across_steps"] = self.check_recompiles(
                        model, shapes, seeds=(2,) if resolution == "1080p" else (2, 3)
                    )
                    warmup = 0  # the compiling call and the recompile check were the warm-up
                stats = time_fn(lambda: model(**inputs), self.device, warmup, repeats)
            row.update(stats, **self.rate(row["tflop"], stats["median_ms"]), **mem)
            row["weights_gb"] = param_bytes(model) / GIB
            if "activations_gb" in mem:
                row["peak_one_model_gb"] = row["weights_gb"] + mem["activations_gb"]
            name, steps = STAGES[resolution]
            row["stage"] = name
            row["stage_s_derived"] = steps * stats["median_ms"] / 1e3
        except Exception as error:  # record and go on: one failing backend must not end the run
            row.update(error=short_error(error), error_trace=traceback.format_exc()[-2000:])
        finally:
            free_memory()
        return self.rec.add(**row)

    def check_recompiles(self, model, shapes: dict, seeds=(2, 3)) -> str:
        """More steps on fresh random inputs with `error_on_recompile`: 'none' or the error."""
        import torch._dynamo

        previous = torch._dynamo.config.error_on_recompile
        torch._dynamo.config.error_on_recompile = True
        try:
            for seed in seeds:
                model(**make_dit_inputs(model, shapes, self.args.text_tokens, self.device, seed=seed))
            sync(self.device)
            return "none"
        except Exception as error:
            return short_error(error)
        finally:
            torch._dynamo.config.error_on_recompile = previous

    def profile(self, model, resolution: str, backend: str, mode: str) -> None:
        """One forward under torch.profiler: CUDA time per kernel class (GEMM / attention / other), top kernels."""
        if self.device.type != "cuda" or not self.deadline.allows(10):
            return
        from torch.profiler import ProfilerActivity, profile

        shapes = clip_shapes(resolution, self.args.seconds, self.tiny)
        set_attention_backend(model, backend)
        inputs = make_dit_inputs(model, shapes, self.args.text_tokens, self.device, seed=1)
        try:
            with torch.inference_mode():
                model(**inputs)
                sync(self.device)
                with profile(activities=[ProfilerActivity.CUDA]) as prof:
                    model(**inputs)
                    sync(self.device)
            classes = {"gemm": 0.0, "attention": 0.0, "other": 0.0}
            kernels = []
            for event in prof.key_averages():
                cuda_us = getattr(event, "self_device_time_total", None) or getattr(event, "self_cuda_time_total", 0)
                if not cuda_us:
                    continue
                key = event.key.lower()
                if key.startswith("triton_") and "flex" not in key:
                    kind = "other"  # inductor's fused element-wise kernels (their names list the ops they absorb)
                elif any(s in key for s in ("flash", "fmha", "attention", "cudnn", "sdpa", "flex")):
                    kind = "attention"
                elif any(s in key for s in ("gemm", "xmma", "cutlass", "nvjet", "matmul", "sm90_", "cublas")):
                    kind = "gemm"
                else:
                    kind = "other"
                classes[kind] += cuda_us / 1e3
                kernels.append((cuda_us / 1e3, kind, event.count, event.key[:140]))
            kernels.sort(reverse=True)
            total = sum(classes.values())
            text = [f"# {resolution} {mode} {backend}: CUDA kernel time {total:.1f} ms"]
            text += [f"{ms:9.2f} ms  {kind:9s} x{count:<5d} {name}" for ms, kind, count, name in kernels[:40]]
            if self.args.profile_dir:
                path = os.path.join(self.args.profile_dir, f"profile_{resolution}_{mode}.txt")
                with open(path, "w") as f:
                    f.write("\n".join(text) + "\n")
            self.rec.add(
                section="profile",
                name=f"DiT forward {resolution} kernel time",
                resolution=resolution,
                mode=mode,
                backend=backend,
                kernel_total_ms=total,
                **{f"{k}_ms": v for k, v in classes.items()},
                top_kernels=[f"{ms:.2f} ms {kind} x{count} {name}" for ms, kind, count, name in kernels[:8]],
            )
        except Exception as error:
            self.rec.add(section="profile", name=f"profile {resolution} {mode}", error=short_error(error))
        finally:
            free_memory()

    def compile_model(self, model) -> None:
        import torch._dynamo

        # One graph per block kind (expert/shared x gelu7/swiglu7 x local/global) and resolution, all on the one
        # code object of the block's forward: raise the per-code cache so none falls back to eager.
        torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)
        if hasattr(torch._dynamo.config, "accumulated_cache_size_limit"):
            torch._dynamo.config.accumulated_cache_size_limit = max(
                torch._dynamo.config.accumulated_cache_size_limit, 512
            )
        # A pipeline runs one resolution per model: specialise per shape instead of compiling dynamic-shape graphs.
        torch._dynamo.config.automatic_dynamic_shapes = False
        kwargs = {"fullgraph": True}
        if self.args.compile_backend:
            kwargs["backend"] = self.args.compile_backend
        if self.args.compile_mode:
            kwargs["mode"] = self.args.compile_mode
        model.compile_repeated_blocks(**kwargs)

    def section_dit(self) -> None:
        args = self.args
        resolutions = [r for r in args.resolutions if r in RESOLUTIONS]
        base_res = [r for r in resolutions if r != "1080p"]
        backends = args.backends
        base = build_dit("distill", self.device, self.tiny, None if args.compare_unpadded else args.pad_swiglu, 0)
        self.rec.add(
            section="build",
            name="DiT (distill config)",
            weights_gb=param_bytes(base) / GIB,
            params_b=sum(p.numel() for p in base.parameters()) / 1e9,
        )
        if args.compare_unpadded and "256p" in base_res:
            self.dit_forward(
                base,
                "256p",
                backends[0],
                "eager",
                label="DiT forward 256p (unpadded swiglu 13652)",
                swiglu_width=swiglu_width(base),
            )
            base.pad_swiglu_(args.pad_swiglu)
        width = swiglu_width(base)

        ranking = {}
        for resolution in base_res:
            for backend in backends if resolution == "256p" else (args.backends_540p or backends):
                row = self.dit_forward(base, resolution, backend, "eager", swiglu_width=width)
                if row and "median_ms" in row:
                    ranking.setdefault(resolution, []).append((row["median_ms"], backend))
        best = {r: min(v)[1] for r, v in ranking.items() if v}
        best_base = best.get("256p", backends[0])
        if "profile" in args.sections and "256p" in base_res:
            self.profile(base, "256p", best_base, "eager")

        sr = None
        if "1080p" in resolutions:
            if not args.keep_both_models:
                base = None  # one 15B model on the GPU at a time (fits 80 GB cards); rebuilt for the compiled rows
                free_memory()
            sr = build_dit("sr_1080p", self.device, self.tiny, args.pad_swiglu, 0)
            self.rec.add(
                section="build",
                name="SR-1080p DiT (local attention)",
                weights_gb=param_bytes(sr) / GIB,
                local_layers=sum(b.attn.is_local for b in sr.blocks),
            )
            for backend in args.backends_1080p or [best.get("540p", best_base)]:
                self.dit_forward(sr, "1080p", backend, "eager", swiglu_width=width)

        if "compiled" in args.modes:
            compiled_backend = args.compiled_backend or best_base
            if base_res:
                if base is None:
                    if not args.keep_both_models:
                        sr = None
                        free_memory()
                    base = build_dit("distill", self.device, self.tiny, args.pad_swiglu, 0)
                self.compile_model(base)
                for resolution in base_res:
                    row = self.dit_forward(base, resolution, compiled_backend, "compiled", swiglu_width=width)
                    if row.get("error") and compiled_backend != "native":
                        compiled_backend = "native"  # fall back to plain SDPA for the rest of the compiled rows
                        self.dit_forward(base, resolution, compiled_backend, "compiled", swiglu_width=width)
                if "profile" in args.sections and "256p" in base_res:
                    self.profile(base, "256p", compiled_backend, "compiled")
            if "1080p" in resolutions:
                base = None
                free_memory()
                if sr is None:
                    sr = build_dit("sr_1080p", self.device, self.tiny, args.pad_swiglu, 0)
                self.compile_model(sr)
                self.dit_forward(
                    sr,
                    "1080p",
                    args.compiled_backend or best.get("540p", compiled_backend),
                    "compiled",
                    swiglu_width=width,
                )

    # -- attention kernels alone --------------------------------------------------------------------------------------

    def section_attention(self) -> None:
        """One attention call at each resolution's global sequence length (40 q heads, 8 kv heads, D = 128)."""
        from diffusers.models.attention_dispatch import dispatch_attention_fn

        heads, kv_heads, head_dim = (4, 2, 8) if self.tiny else (40, 8, 128)
        dtype = torch.bfloat16 if self.device.type == "cuda" else torch.float32
        backends = list(self.args.backends) + (["flash_4_hub"] if self.fa4_error is None else [])
        for resolution in self.args.resolutions:
            shapes = clip_shapes(resolution, self.args.seconds, self.tiny)
            seq = (
                shapes["latent_frames"] * (shapes["latent_height"] // 2) * (shapes["latent_width"] // 2)
                + shapes["audio_frames"]
                + self.args.text_tokens
            )
            if resolution == "1080p":
                # a local layer's per-frame call: one frame of queries against 23 frames + audio/text keys
                per_frame = (shapes["latent_height"] // 2) * (shapes["latent_width"] // 2)
                q_len, k_len = per_frame, 23 * per_frame + shapes["audio_frames"] + self.args.text_tokens
            else:
                q_len = k_len = seq
            g = torch.Generator(device="cpu").manual_seed(0)
            q = torch.randn(1, q_len, heads, head_dim, generator=g).to(self.device, dtype)
            k = torch.randn(1, k_len, kv_heads, head_dim, generator=g).to(self.device, dtype)
            v = torch.randn(1, k_len, kv_heads, head_dim, generator=g).to(self.device, dtype)
            reference = None
            for backend in backends:
                if not self.deadline.allows(3):
                    break
                row = dict(
                    section="attention",
                    name=f"attention {resolution}",
                    resolution=resolution,
                    backend=backend,
                    q_len=q_len,
                    k_len=k_len,
                )
                try:
                    name, _, option = backend.partition("+")
                    gqa_native = name in _tm._GQA_NATIVE_BACKENDS
                    repeat = option == "repeat" or not (gqa_native or name in _GQA_FLAG_BACKENDS)
                    kk, vv = (
                        (k.repeat_interleave(heads // kv_heads, 2), v.repeat_interleave(heads // kv_heads, 2))
                        if (repeat)
                        else (k, v)
                    )
                    enable_gqa = kk.shape[2] != heads and not gqa_native

                    def call():
                        return dispatch_attention_fn(
                            q, kk, vv, scale=head_dim**-0.5, enable_gqa=enable_gqa, backend=name
                        )

                    with torch.inference_mode():
                        out = call()
                        stats = time_fn(call, self.device, 2, 10 if not self.tiny else 2)
                    if reference is None:
                        reference = out.float()
                    row["rel_err_vs_first"] = rel_l2(out.float(), reference)
                    tflop = 4 * q_len * k_len * heads * head_dim / 1e12
                    row.update(stats, tflop=tflop, **self.rate(tflop, stats["median_ms"]))
                except Exception as error:
                    row.update(error=short_error(error))
                self.rec.add(**row)
            q = k = v = None  # free before the next size
            free_memory()
            if resolution == "1080p":
                self.local_layer_attention(shapes, heads, kv_heads, head_dim, dtype)

    def local_layer_attention(self, shapes: dict, heads: int, kv_heads: int, head_dim: int, dtype) -> None:
        """All the local attention of one SR-1080p layer (65,706 tokens): per-frame calls vs one FA4 varlen call."""
        from diffusers_magihuman.models.transformer_magihuman import MagiHumanAttnProcessor, MagiHumanTokenLayout

        window = 1 if self.tiny else full_transformer_config("sr_1080p")["frame_receptive_field"]
        grid = (shapes["latent_frames"], shapes["latent_height"] // 2, shapes["latent_width"] // 2)
        layout = MagiHumanTokenLayout.build([shapes["audio_frames"]], [self.args.text_tokens], grid, window, self.device)
        seq = layout.seq_len
        g = torch.Generator(device="cpu").manual_seed(0)
        q = torch.randn(1, seq, heads, head_dim, generator=g).to(self.device, dtype)
        k = torch.randn(1, seq, kv_heads, head_dim, generator=g).to(self.device, dtype)
        v = torch.randn(1, seq, kv_heads, head_dim, generator=g).to(self.device, dtype)
        allowed_pairs = 0
        for frame in range(layout.num_frames):
            lo, hi = max(frame - window, 0), min(frame + window + 1, layout.num_frames)
            allowed_pairs += layout.tokens_per_frame * ((hi - lo) * layout.tokens_per_frame + seq - layout.num_video_tokens)
        allowed_pairs += (seq - layout.num_video_tokens) * seq
        tflop = 4 * allowed_pairs * heads * head_dim / 1e12
        kernels = [("per_frame", False), ("per_frame", True), ("varlen", True)]
        reference = None
        for kernel, fa4 in kernels:
            row = dict(
                section="attention",
                name=f"1080p local layer, {'one varlen call' if kernel == 'varlen' else 'per-frame calls'}",
                resolution="1080p",
                backend="fa4" if fa4 else "native",
                kernel=kernel,
                seq_len=seq,
                tflop=tflop,
            )
            if fa4 and self.fa4_error is not None and not self.tiny:
                self.rec.add(**row, skipped="FA4 not installed")
                continue
            try:
                processor = MagiHumanAttnProcessor(local_attn_kernel=kernel, use_flash_attention_4=fa4)
                if self.tiny and fa4:
                    raise RuntimeError("FA4 rows need a GPU")

                def call():
                    return processor._attention_sample(q, k, v, layout, is_local=True)

                with torch.inference_mode():
                    out = call()
                    stats = time_fn(call, self.device, 1, 5 if not self.tiny else 1)
                if reference is None:
                    reference = out.float()
                row["rel_err_vs_first"] = rel_l2(out.float(), reference)
                row.update(stats, **self.rate(tflop, stats["median_ms"]))
            except Exception as error:
                row.update(error=short_error(error))
            self.rec.add(**row)
        q = k = v = None
        free_memory()

    # -- decoders -----------------------------------------------------------------------------------------------------

    def section_vae(self, which: str) -> None:
        dtype = torch.bfloat16 if self.device.type == "cuda" else torch.float32
        vae = (
            build_turbo_vae(self.device, self.tiny, dtype)
            if which == "turbo"
            else build_wan_vae(self.device, self.tiny, dtype)
        )
        name = "Turbo-VAE decode" if which == "turbo" else "Wan2.2 VAE decode"
        resolutions = self.args.resolutions if which == "turbo" else self.args.wan_resolutions
        for resolution in resolutions:
            estimate = {"256p": 5, "540p": 10, "1080p": 30}[resolution] * (1 if which == "turbo" else 6)
            row = dict(section="vae", name=f"{name} {resolution}", resolution=resolution, decoder=which)
            if not self.deadline.allows(estimate):
                self.rec.add(**row, skipped="time budget")
                continue
            shapes = clip_shapes(resolution, self.args.seconds, self.tiny)
            g = torch.Generator(device="cpu").manual_seed(0)
            z = torch.randn(
                1, 48, shapes["latent_frames"], shapes["latent_height"], shapes["latent_width"], generator=g
            ).to(self.device, dtype)
            try:
                mem: dict = {}
                with torch.inference_mode(), peak_memory(self.device, mem):
                    if which == "turbo":
                        fn = lambda: vae.decode(z, return_dict=False)[0]  # noqa: E731
                    else:
                        mean = torch.tensor(vae.config.latents_mean, device=self.device, dtype=dtype).view(
                            1, -1, 1, 1, 1
                        )
                        std = torch.tensor(vae.config.latents_std, device=self.device, dtype=dtype).view(
                            1, -1, 1, 1, 1
                        )
                        fn = lambda: vae.decode(z * std + mean, return_dict=False)[0]  # noqa: E731
                    out = fn()
                    row["output_shape"] = list(out.shape)
                    del out
                    warmup, repeats = (0, 2) if resolution == "1080p" or which == "wan" else (1, 3)
                    stats = time_fn(fn, self.device, warmup, repeats if not self.tiny else 1)
                row.update(stats, **mem, weights_gb=param_bytes(vae) / GIB, decode_s=stats["median_ms"] / 1e3)
            except Exception as error:
                row.update(error=short_error(error), error_trace=traceback.format_exc()[-2000:])
            z = None
            free_memory()
            self.rec.add(**row)
        vae = None
        free_memory()

    # -- memory tiers at 256p -----------------------------------------------------------------------------------------

    def section_tiers(self) -> None:
        """Full GPU (reference), FP8 layerwise casting, model CPU offload, group offload with streams; one model."""
        args = self.args
        resolution = args.tier_resolution
        shapes = clip_shapes(resolution, args.seconds, self.tiny)
        steps = STAGES[resolution][1]
        model = build_dit("distill", self.device, self.tiny, args.pad_swiglu, 0)
        backend = args.compiled_backend or args.backends[0]
        set_attention_backend(model, backend)
        inputs = make_dit_inputs(model, shapes, args.text_tokens, self.device, seed=1)

        def stage():
            for _ in range(steps):
                model(**inputs)

        with torch.inference_mode():
            reference = model(**inputs)
            ref_video, ref_audio = reference.sample.float(), reference.audio_sample.float()
        del reference

        # 1. full GPU, bf16
        self.dit_forward(model, resolution, backend, "eager", label=f"tier full-GPU bf16 DiT forward {resolution}")

        # 2. FlashAttention-4 (eager), same model
        if self.fa4_error is None:
            self.dit_forward(model, resolution, "flash_4_hub", "eager", label=f"DiT forward {resolution} FA4")
            if "540p" in args.fa4_resolutions:
                self.dit_forward(model, "540p", "flash_4_hub", "eager", label="DiT forward 540p FA4")
            set_attention_backend(model, backend)

        # 3. FP8 weight storage (layerwise casting) on a copy
        if self.deadline.allows(20):
            row = dict(
                section="tiers",
                name=f"FP8 e4m3 layerwise casting, DiT forward {resolution}",
                resolution=resolution,
                backend=backend,
            )
            try:
                fp8 = copy.deepcopy(model)
                fp8.enable_layerwise_casting(storage_dtype=torch.float8_e4m3fn, compute_dtype=torch.bfloat16)
                mem: dict = {}
                with torch.inference_mode(), peak_memory(self.device, mem):
                    out = fp8(**inputs)
                    row["video_rel_l2_vs_bf16"] = rel_l2(out.sample, ref_video)
                    row["audio_rel_l2_vs_bf16"] = rel_l2(out.audio_sample, ref_audio)
                    del out
                    stats = time_fn(lambda: fp8(**inputs), self.device, *self.repeats_for(resolution))
                row.update(
                    stats, **mem, weights_gb=param_bytes(fp8) / GIB, stage_s_derived=steps * stats["median_ms"] / 1e3
                )
                del fp8
            except Exception as error:
                row.update(error=short_error(error), error_trace=traceback.format_exc()[-2000:])
            free_memory()
            self.rec.add(**row)

        # 4. model CPU offload (what `pipe.enable_model_cpu_offload()` does to the DiT): whole model moves per stage
        if self.device.type == "cuda" and self.deadline.allows(40):
            row = dict(
                section="tiers",
                name=f"model CPU offload, {STAGES[resolution][0]}",
                resolution=resolution,
                backend=backend,
                steps=steps,
            )
            try:
                from accelerate import cpu_offload_with_hook
                from accelerate.hooks import remove_hook_from_module

                t = time.perf_counter()
                model.to("cpu")
                row["gpu_to_cpu_s"] = time.perf_counter() - t
                free_memory()
                model, hook = cpu_offload_with_hook(model, execution_device=self.device)
                mem = {}
                with torch.inference_mode(), peak_memory(self.device, mem):
                    t = time.perf_counter()
                    model(**inputs)  # onload (the whole DiT, pageable memory) + step 1
                    sync(self.device)
                    first = time.perf_counter() - t
                    for _ in range(steps - 1):
                        model(**inputs)
                    sync(self.device)
                    row["stage_s"] = time.perf_counter() - t
                    row["first_step_incl_onload_s"] = first
                t = time.perf_counter()
                hook.offload()
                row["offload_s"] = time.perf_counter() - t
                remove_hook_from_module(model)
                row.update(**mem)
            except Exception as error:
                row.update(error=short_error(error), error_trace=traceback.format_exc()[-2000:])
            free_memory()
            self.rec.add(**row)

        # 5. group offload with CUDA streams (block level, one block per group, prefetch of the next)
        if self.device.type == "cuda" and self.deadline.allows(60):
            row = dict(
                section="tiers",
                name=f"group offload (block, streams), {STAGES[resolution][0]}",
                resolution=resolution,
                backend=backend,
                steps=steps,
            )
            try:
                model.to("cpu")
                free_memory()
                t = time.perf_counter()
                model.enable_group_offload(
                    onload_device=self.device,
                    offload_device=torch.device("cpu"),
                    offload_type="block_level",
                    num_blocks_per_group=1,
                    use_stream=True,
                )
                row["enable_s"] = time.perf_counter() - t
                mem = {}
                with torch.inference_mode(), peak_memory(self.device, mem):
                    t = time.perf_counter()
                    out = model(**inputs)
                    sync(self.device)
                    row["first_forward_s"] = time.perf_counter() - t
                    row["video_rel_l2_vs_full_gpu"] = rel_l2(out.sample, ref_video)
                    del out
                    stats = time_fn(lambda: model(**inputs), self.device, 0, 3)
                    row.update(stats)
                    if self.deadline.allows(3 * steps * stats["median_ms"] / 1e3):
                        t = time.perf_counter()
                        stage()
                        sync(self.device)
                        row["stage_s"] = time.perf_counter() - t
                    else:
                        row["stage_s_derived"] = steps * stats["median_ms"] / 1e3
                row.update(**mem)
                if "540p" in args.group_offload_resolutions and self.deadline.allows(30):
                    shapes540 = clip_shapes("540p", args.seconds, self.tiny)
                    inputs540 = make_dit_inputs(model, shapes540, args.text_tokens, self.device, seed=1)
                    with torch.inference_mode():
                        stats = time_fn(lambda: model(**inputs540), self.device, 1, 2)
                    row["forward_540p_ms"] = stats["median_ms"]
                    del inputs540
            except Exception as error:
                row.update(error=short_error(error), error_trace=traceback.format_exc()[-2000:])
            free_memory()
            self.rec.add(**row)
        model = None
        free_memory()

    # -- summary ------------------------------------------------------------------------------------------------------

    def summary(self) -> None:
        rows = self.rec.data["results"]
        gpu = self.rec.data["meta"].get("gpu", str(self.device))
        lines = [
            f"\nMagiHuman benchmark on {gpu} (torch {torch.__version__}); 5 s clip unless noted; times are medians"
        ]
        lines.append(
            f"{'what':58s} {'backend':20s} {'mode':9s} {'time':>10s} {'TFLOP/s':>8s} {'%peak':>6s} "
            f"{'peak GB':>8s}  stage / notes"
        )
        for r in rows:
            if r.get("section") in ("build", "ceilings"):
                continue
            t = r.get("median_ms")
            time_s = "" if t is None else (f"{t:8.1f}ms" if t < 10000 else f"{t / 1e3:8.2f} s")
            if r.get("stage_s") is not None and t is None:
                time_s = f"{r['stage_s']:8.2f} s"
            tf = r.get("tflops")
            pct = r.get("pct_of_measured_peak")
            peak = r.get("peak_one_model_gb", r.get("peak_gb"))
            notes = []
            if r.get("stage_s_derived") is not None:
                notes.append(f"{r.get('stage', 'stage')}: {r['stage_s_derived']:.2f} s")
            if r.get("stage_s") is not None:
                notes.append(f"stage {r['stage_s']:.2f} s")
            if r.get("compile_and_first_call_s") is not None:
                compile_s, recompiles = r["compile_and_first_call_s"], r.get("recompiles_across_steps")
                notes.append(f"compile+1st {compile_s:.0f} s, recompiles: {recompiles}")
            for key in ("video_rel_l2_vs_bf16", "rel_err_vs_first"):
                if r.get(key) is not None:
                    notes.append(f"{key}={r[key]:.2e}")
            if r.get("section") == "profile":
                time_s = f"{r.get('kernel_total_ms', 0):8.1f}ms"
                notes.append(
                    f"gemm {r.get('gemm_ms', 0):.1f} / attn {r.get('attention_ms', 0):.1f} / other "
                    f"{r.get('other_ms', 0):.1f} ms"
                )
            if r.get("error"):
                notes.append("ERROR " + r["error"][:90])
            if r.get("skipped"):
                notes.append("skipped: " + r["skipped"])
            backend = str(r.get("backend", r.get("decoder", "")))
            lines.append(
                f"{r.get('name', '')[:58]:58s} {backend:20s} {str(r.get('mode', '')):9s} "
                f"{time_s:>10s} {'' if tf is None else f'{tf:8.0f}':>8s} {'' if pct is None else f'{pct:6.1f}':>6s} "
                f"{'' if peak is None else f'{peak:8.1f}':>8s}  {'; '.join(notes)}"
            )
        text = "\n".join(lines)
        print(text, flush=True)
        self.rec.data["table"] = text
        self.rec.flush()


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--sections",
        default="dit,profile,attention,turbo_vae",
        help="comma list of: dit, profile, attention, turbo_vae, wan_vae, tiers, all",
    )
    parser.add_argument("--resolutions", default="256p,540p,1080p")
    parser.add_argument("--modes", default="eager,compiled")
    parser.add_argument(
        "--backends",
        default="native,_native_cudnn",
        help="diffusers attention backends for the 256p DiT (the first is the default elsewhere)",
    )
    parser.add_argument("--backends-540p", default=None, help="defaults to --backends")
    parser.add_argument("--backends-1080p", default=None, help="defaults to the fastest at 540p")
    parser.add_argument("--compiled-backend", default=None, help="defaults to the fastest eager backend at 256p")
    parser.add_argument("--compile-backend", default=None, help="torch.compile backend (default inductor)")
    parser.add_argument("--compile-mode", default=None, help="torch.compile mode (default None)")
    parser.add_argument(
        "--compare-unpadded",
        action="store_true",
        help="also time the unpadded swiglu width (13652) at 256p before padding in place",
    )
    parser.add_argument(
        "--keep-both-models",
        action="store_true",
        help="keep the base and the SR-1080p DiT on the GPU together (~60 GB of weights) instead of rebuilding",
    )
    parser.add_argument("--pad-swiglu", type=int, default=8, help="swiglu7 width multiple (0: unpadded)")
    parser.add_argument("--tier-resolution", default="256p")
    parser.add_argument("--group-offload-resolutions", default="", help="extra: '540p' also times group offload there")
    parser.add_argument("--fa4-resolutions", default="256p")
    parser.add_argument("--wan-resolutions", default="256p")
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--text-tokens", type=int, default=300)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--tiny", action="store_true", help="tiny random models and sizes: a quick dry run")
    parser.add_argument("--deadline", type=float, default=None, help="stop starting new measurements after N s")
    parser.add_argument("--output", default="magihuman_benchmark.json")
    parser.add_argument("--profile-dir", default=None, help="write per-kernel profiles here")
    args = parser.parse_args(argv)
    split = lambda s: [x for x in (s or "").split(",") if x]  # noqa: E731
    args.sections = split(args.sections)
    if "all" in args.sections:
        args.sections = ["dit", "profile", "attention", "turbo_vae", "wan_vae", "tiers"]
    args.resolutions = split(args.resolutions)
    for r in args.resolutions:
        if r not in RESOLUTIONS:
            parser.error(f"unknown resolution {r!r}; choose from {list(RESOLUTIONS)}")
    args.modes, args.backends = split(args.modes), split(args.backends)
    args.backends_540p, args.backends_1080p = split(args.backends_540p), split(args.backends_1080p)
    args.group_offload_resolutions = split(args.group_offload_resolutions)
    args.fa4_resolutions, args.wan_resolutions = split(args.fa4_resolutions), split(args.wan_resolutions)
    args.pad_swiglu = args.pad_swiglu or None
    if args.compare_unpadded and not args.pad_swiglu:
        parser.error("--compare-unpadded needs --pad-swiglu N")
    if args.tiny and args.text_tokens == 300:
        args.text_tokens = 5
    if args.tiny and args.seconds == 5:
        args.seconds = 1
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.profile_dir:
        os.makedirs(args.profile_dir, exist_ok=True)
    bench = Bench(args)
    try:
        bench.measure_ceilings()
        if "turbo_vae" in args.sections:
            bench.section_vae("turbo")
        if "dit" in args.sections:
            bench.section_dit()
        if "attention" in args.sections:
            bench.section_attention()
        if "tiers" in args.sections:
            bench.section_tiers()
        if "wan_vae" in args.sections:
            bench.section_vae("wan")
    finally:
        bench.summary()


if __name__ == "__main__":
    main()
