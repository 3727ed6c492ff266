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
"""The Turbo-VAE decode speed options (`AutoencoderTurboVAED.set_decode_options`) give the reference path's video.

The fixtures are the original code's decodes (tests/fixtures/upstream_pipeline/turbo_vae_*): the real block structure
with tiny widths, and an alternative config (depthwise-separable convs, pixel-shuffle output stage, 3/5-frame windows).
"""

from __future__ import annotations

import sys
import weakref
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from _tolerances import check, check_uint8_frames_of_bf16_decode, max_abs
from diffusers_magihuman.models.autoencoder_turbo_vaed import AutoencoderTurboVAED
from diffusers_magihuman.testing_utils import tiny_turbo_vae_config


ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `conversion/` lives at the repository root, outside the installed package
    sys.path.insert(0, str(ROOT))

from conversion.convert_turbo_vae_to_diffusers import load_turbo_vae_original  # noqa: E402


FIXTURES = Path(__file__).resolve().parent / "fixtures" / "upstream_pipeline"
CASES = ["turbo_vae_real_structure", "turbo_vae_alt_paths"]
SAME_FRAMES = {  # options that must give the reference video up to rounding
    "channels_last": dict(channels_last=True, fused=False),
    "fused": dict(channels_last=False, fused=True),
    "fast": dict(channels_last=True, fused=True),
}  # cudnn_benchmark does nothing on a CPU (see test_cudnn_benchmark_is_scoped)

# fp32 tolerance of an option against the reference path on the same CPU. Channels-last may pick another oneDNN
# kernel (another summation order); the fused norm sums the mean of squares in another order and goes through a
# sqrt/square round trip (relative error <= C * 2^-24 ~ 1e-6 for C <= 16 channels, typically sqrt(C) * 2^-24). The
# decoder chains ~25 norm -> conv stages on outputs |y| <= 2.7, so linear compounding bounds the change by
# 25 * 1e-6 * 2.7 ~ 7e-5; atol 1e-4 (the same bound as the fp32 parity with the original). Measured: 0 (channels-last,
# same kernel here) and 1.3e-5 (fused). A wrong activation, a missed time pad or a wrong frame interleave moves
# outputs by >= 1e-2 (see test_fused_path_would_catch_a_wrong_pad).
FP32_OPTION_ATOL = 1e-4


def _paths(name: str) -> tuple[Path, Path]:
    return FIXTURES / f"{name}.ckpt", FIXTURES / f"{name}_config.json"


def _to_uint8_frames(video: torch.Tensor) -> np.ndarray:
    """The pipeline's conversion: fp32, x * 0.5 + 0.5, clamp, * 255, truncating uint8 cast; `[T, H, W, 3]`."""
    video = video.float().mul(0.5).add(0.5).clamp(0, 1)
    return (video[0].permute(1, 2, 3, 0) * 255).numpy().astype(np.uint8)


@pytest.fixture(scope="module")
def cases() -> dict:
    """Per fixture: the model, the latent, the original's fp32 decode and our reference fp32 decode."""
    out = {}
    for name in CASES:
        tensors = load_file(str(FIXTURES / f"{name}.safetensors"))
        model = load_turbo_vae_original(*_paths(name))
        with torch.no_grad():
            reference = model.decode(tensors["latent"]).sample
        out[name] = dict(model=model, latent=tensors["latent"], upstream=tensors, reference=reference)
    return out


@pytest.mark.parametrize("option", list(SAME_FRAMES))
@pytest.mark.parametrize("name", CASES)
def test_option_gives_the_reference_video_fp32(name, option, cases):
    case = cases[name]
    model = case["model"]
    model.set_decode_options(**SAME_FRAMES[option])
    try:
        with torch.no_grad():
            out = model.decode(case["latent"]).sample
    finally:
        model.set_decode_options()
    assert out.shape == case["reference"].shape and out.dtype == torch.float32
    assert check("max abs vs reference path", max_abs(out, case["reference"]), FP32_OPTION_ATOL)
    assert check("max abs vs original", max_abs(out, case["upstream"]["decoded_fp32"]), FP32_OPTION_ATOL)


@pytest.mark.parity
def test_fast_path_bf16_frames(cases):
    # bf16: every conv output is rounded to bf16, and which values flip depends on the kernel's accumulation order, so
    # two bf16 decodes differ by compounded rounding noise; the uint8-frame rule of the parity tests bounds it (mean
    # <= 1 level, <= 1 % of pixels more than 4 levels off; see tests/_tolerances.py). Checked against our bf16
    # reference path and against the original's bf16 frames.
    case = cases["turbo_vae_real_structure"]
    model = load_turbo_vae_original(*_paths("turbo_vae_real_structure")).to(torch.bfloat16)
    with torch.no_grad():
        reference = model.decode(case["latent"]).sample
        model.set_decode_options(channels_last=True, fused=True)
        fast = model.decode(case["latent"]).sample
    assert fast.dtype == torch.bfloat16
    assert check_uint8_frames_of_bf16_decode(_to_uint8_frames(fast), _to_uint8_frames(reference))
    assert check_uint8_frames_of_bf16_decode(
        _to_uint8_frames(fast), case["upstream"]["frames_uint8_bf16_path"].numpy()
    )


def test_fused_path_would_catch_a_wrong_pad(cases, monkeypatch):
    # The tolerance above is meaningful: the fused path with zero instead of replicate time padding is far off.
    import diffusers_magihuman.models.autoencoder_turbo_vaed as module

    case = cases["turbo_vae_real_structure"]
    model = case["model"]
    def zero_edges(out, pad):
        if pad:
            out[:, :, :pad] = 0
            out[:, :, -pad:] = 0
        return out

    monkeypatch.setattr(module, "_fill_time_edges", zero_edges)
    model.set_decode_options(fused=True)
    try:
        with torch.no_grad():
            out = model.decode(case["latent"]).sample
    finally:
        model.set_decode_options()
    assert max_abs(out, case["reference"]) > 1e-2


def _layout(x: torch.Tensor) -> torch.memory_format:
    return torch.channels_last_3d if x.ndim == 5 else torch.channels_last


@pytest.mark.parametrize("name, batch", [(CASES[0], 1), (CASES[1], 1), (CASES[0], 2)])
def test_channels_last_reaches_every_convolution(name, batch, cases):
    # cuDNN returns a channels-last output for a channels-last input; some CPU convolution backends do not, so the
    # convolutions here are made to behave like cuDNN and the test checks that everything between them (time
    # padding, norms, the frame interleave of the temporal upsampler, per-frame reshapes, nearest upsampling) keeps
    # the layout, i.e. no convolution gets an input that cuDNN would first have to transpose.
    model = cases[name]["model"]
    seen = []

    def before(module, args):
        seen.append((tuple(args[0].shape), args[0].is_contiguous(memory_format=_layout(args[0]))))

    def after(module, args, output):
        return output.contiguous(memory_format=_layout(output))

    convs = [m for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Conv3d))]
    handles = [m.register_forward_pre_hook(before) for m in convs] + [m.register_forward_hook(after) for m in convs]
    model.set_decode_options(channels_last=True, fused=True)
    latent = cases[name]["latent"].repeat(batch, 1, 1, 1, 1)  # batch 2: windows sliced in time are not dense
    try:
        with torch.no_grad():
            out = model.decode(latent).sample
    finally:
        model.set_decode_options()
        for handle in handles:
            handle.remove()
    assert len(seen) > len(convs)  # every window ran
    assert all(ok for _, ok in seen), [shape for shape, ok in seen if not ok][:5]
    for sample in out:
        assert check("max abs vs reference path", max_abs(sample[None], cases[name]["reference"]), FP32_OPTION_ATOL)


def test_fused_exact_tiles_equal_the_whole_window():
    # The memory-bounded exact tiles still work on the fused path (same bound as tests/test_offload_recipes.py).
    config = tiny_turbo_vae_config()
    config.update(decoder_layers_per_block=[1, 1, 1, 1, 1])
    torch.manual_seed(0)
    vae = AutoencoderTurboVAED(**config).eval()
    vae.set_decode_options(channels_last=True, fused=True)
    z = torch.randn(1, 48, 1, 40, 2)
    with torch.no_grad():
        vae._resolve_decode_options(torch.device("cpu"))
        assert vae.decoder.fused
        whole = vae.decoder(z, is_first_chunk=True)
        need = vae._estimate_window_bytes(1, 40, 2)
        vae.set_decode_memory_budget(need * 3 // 4)
        rows, cols = vae._plan_tiles(1, 40, 2, need * 3 // 4)
        assert rows > 1
        tiled = vae._decode_window(z, is_first_chunk=True)
    # only the convolution shapes differ (the kernels' summation order): ~6e-6 measured there; atol 1e-4
    torch.testing.assert_close(tiled, whole, rtol=0, atol=1e-4)


def test_fused_path_off_when_gradients_are_needed():
    torch.manual_seed(0)
    vae = AutoencoderTurboVAED(**tiny_turbo_vae_config())
    vae.set_decode_options(fused=True, channels_last=True)
    z = torch.randn(1, 48, 2, 2, 2)
    out = vae.decode(z).sample  # autograd refuses `out=` writes: the reference path runs
    assert out.requires_grad
    assert not vae.decoder.fused
    with torch.no_grad():
        fused = vae.decode(z).sample
    assert vae.decoder.fused
    assert check("max abs fused vs reference", max_abs(fused, out.detach()), FP32_OPTION_ATOL)


@pytest.mark.parametrize("channels_last", [False, True])
def test_fused_nearest_upsample_is_exact(channels_last):
    from diffusers_magihuman.models.autoencoder_turbo_vaed import TurboVAEDUpsample2x

    x = torch.randn(3, 5, 4, 7).to(torch.bfloat16)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    upsample = TurboVAEDUpsample2x()
    reference = upsample(x)
    upsample.fused = True
    fused = upsample(x)
    torch.testing.assert_close(fused, reference, rtol=0, atol=0)  # a copy of the same values
    assert fused.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


# ----------------------------------------------------------------------------------------------------------------
# windows


def test_decoded_latent_frames_counts_context_and_padding():
    count = AutoencoderTurboVAED._decoded_latent_frames
    assert count(32, 7, 7) == 8 + 9 + 9 + 9 + 8  # the 5 s clip with the release windows: 43 for 32
    assert count(32, 16, 16) == 17 + 17
    assert count(32, 32, 32) == 32
    assert count(5, 7, 7) == 7  # padded up to one window
    assert count(15, 3, 5) == 4 + 7 + 7 + 6


def test_window_option():
    torch.manual_seed(0)
    config = dict(tiny_turbo_vae_config(), first_chunk_size=2, step_size=2, decoder_layers_per_block=[1] * 5)
    vae = AutoencoderTurboVAED(**config).eval()
    z = torch.randn(1, 48, 4, 1, 1)
    with torch.no_grad():
        reference = vae.decode(z).sample
        vae.set_decode_options(window_frames=2)  # the config's own windows: the same computation
        torch.testing.assert_close(vae.decode(z).sample, reference, rtol=0, atol=0)
        vae.set_decode_options(window_frames="auto")
        assert vae._window_sizes(z) == (4, 4)  # unbounded on the CPU: one window, no context decoded twice
        whole = vae.decode(z).sample
        assert whole.shape == reference.shape
        assert max_abs(whole, reference) > 1e-3  # seams see other context: not the reference video
        z = torch.randn(1, 48, 9, 1, 1)
        need_whole = vae._estimate_window_bytes(9, 1, 1)
        vae.set_decode_memory_budget(need_whole - 1)  # the whole clip no longer fits
        first, step = vae._window_sizes(z)
        assert first == step and 2 <= first < 9
        assert vae._estimate_window_bytes(first + 2, 1, 1) <= need_whole - 1
        vae.set_decode_memory_budget(1)  # nothing fits: the config's windows (then the tiles logic)
        assert vae._window_sizes(z) == (2, 2)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(window_frames=0), "window_frames"),
        (dict(window_frames="whole"), "window_frames"),
        (dict(window_frames=True), "window_frames"),
        (dict(channels_last="yes"), "channels_last"),
        (dict(fused=1), "fused"),
    ],
)
def test_bad_options_raise(kwargs, match):
    vae = AutoencoderTurboVAED(**tiny_turbo_vae_config())
    with pytest.raises(ValueError, match=match):
        vae.set_decode_options(**kwargs)


# ----------------------------------------------------------------------------------------------------------------
# compile, cuDNN, auto defaults


def test_compiled_decoder_is_used_and_not_a_submodule(monkeypatch):
    calls = []

    def fake_compile(module, **kwargs):  # stands in for torch.compile (minutes on a CPU)
        def run(*args, **kw):
            calls.append(kw.get("is_first_chunk"))
            return module(*args, **kw)

        return run

    monkeypatch.setattr(torch, "compile", fake_compile)
    torch.manual_seed(0)
    vae = AutoencoderTurboVAED(**dict(tiny_turbo_vae_config(), first_chunk_size=2, step_size=2)).eval()
    keys = set(vae.state_dict())
    z = torch.randn(1, 48, 4, 1, 1)
    with torch.no_grad():
        reference = vae.decode(z).sample
        vae.set_decode_options(compile_decoder=True)
        out = vae.decode(z).sample
    assert calls == [True, False]  # every window went through the compiled decoder
    assert not vae.decoder.fused  # auto: the compiler fuses the reference ops itself
    assert set(vae.state_dict()) == keys
    torch.testing.assert_close(out, reference, rtol=0, atol=0)


def test_cudnn_benchmark_is_scoped():
    vae = AutoencoderTurboVAED(**tiny_turbo_vae_config())
    before = torch.backends.cudnn.benchmark
    with vae._cudnn_benchmark(True):
        assert torch.backends.cudnn.benchmark
    assert torch.backends.cudnn.benchmark == before
    with pytest.raises(RuntimeError):
        with vae._cudnn_benchmark(True):
            raise RuntimeError("decode failed")
    assert torch.backends.cudnn.benchmark == before


def test_auto_options_follow_the_device():
    vae = AutoencoderTurboVAED(**tiny_turbo_vae_config())
    with torch.no_grad():
        cpu = vae._resolve_decode_options(torch.device("cpu"))
        cuda = vae._resolve_decode_options(torch.device("cuda"))  # resolution only, nothing runs
    assert not cpu["channels_last"] and not cpu["fused"]  # the CPU keeps the reference path (parity fixtures)
    assert cuda["channels_last"] and cuda["fused"] and not cuda["cudnn_benchmark"]
    vae.set_decode_options(compile_decoder=True)
    with torch.no_grad():
        assert not vae._resolve_decode_options(torch.device("cuda"))["fused"]


# ----------------------------------------------------------------------------------------------------------------
# memory estimate of the fused path


class _LiveBytes(TorchDispatchMode):
    """Peak bytes of the tensors created inside the mode (storages counted once, freed with their last tensor)."""

    def __init__(self):
        super().__init__()
        self.refs, self.sizes, self.current, self.peak = {}, {}, 0, 0

    def _release(self, key):
        self.refs[key] -= 1
        if self.refs[key] == 0:
            del self.refs[key]
            self.current -= self.sizes.pop(key)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in tree_flatten(out)[0]:
            if isinstance(tensor, torch.Tensor):
                storage = tensor.untyped_storage()
                key = storage._cdata
                if key not in self.refs:
                    self.refs[key], self.sizes[key] = 0, storage.nbytes()
                    self.current += storage.nbytes()
                    self.peak = max(self.peak, self.current)
                self.refs[key] += 1
                weakref.finalize(tensor, self._release, key)
        return out


@pytest.mark.parametrize("fused", [False, True])
def test_window_estimate_covers_the_live_tensors(fused):
    # The real config on the meta device (shapes only): the tensors alive at once during one window stay below the
    # estimate the budget logic uses (measured at a 1080p 9-frame window: reference 13.0, fused 7.1 bytes per
    # element of the largest activation; estimates 28 and 10), and the fused path needs less.
    with torch.device("meta"):
        vae = AutoencoderTurboVAED().to(torch.bfloat16).requires_grad_(False)
    vae.set_decode_options(channels_last=True, fused=fused)
    vae._resolve_decode_options(torch.device("cuda"))
    assert vae.decoder.fused == fused
    z = torch.empty(1, 48, 9, 4, 6, device="meta", dtype=torch.bfloat16)
    with torch.no_grad(), _LiveBytes() as live:
        out = vae.decoder(z, is_first_chunk=False)
        del out
    estimate = vae._estimate_window_bytes(9, 4, 6)
    assert live.peak <= estimate
    assert live.peak > estimate / 3  # not a vacuous bound
    if fused:
        vae.set_decode_options(fused=False)
        vae._resolve_decode_options(torch.device("cuda"))
        assert vae._estimate_window_bytes(9, 4, 6) > 2 * estimate


# ----------------------------------------------------------------------------------------------------------------
# CUDA (skipped without a GPU)


@pytest.mark.gpu
@pytest.mark.parametrize("name", CASES)
def test_cuda_default_path_is_fast_and_gives_the_reference_frames(name, cases):
    # On CUDA the default (auto) is channels-last + fused; real cuDNN must keep the layout (no emulation hooks here)
    # and the frames must pass the uint8 rule against the reference path and the original's bf16 frames.
    model = load_turbo_vae_original(*_paths(name)).to("cuda", torch.bfloat16).requires_grad_(False)
    latent = cases[name]["latent"].to("cuda")
    layouts = []
    convs = [m for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Conv3d))]
    handles = [
        m.register_forward_pre_hook(lambda m, a: layouts.append(a[0].is_contiguous(memory_format=_layout(a[0]))))
        for m in convs
    ]
    with torch.no_grad():
        fast = model.decode(latent).sample
        for handle in handles:
            handle.remove()
        assert model.decoder.fused and model.decoder.channels_last
        model.set_decode_options(channels_last=False, fused=False)
        reference = model.decode(latent).sample
    assert layouts
    if name == "turbo_vae_real_structure":  # the release structure; PyTorch's depthwise 3D kernel (alt) is NCDHW
        assert all(layouts)
    fast, reference = fast.cpu(), reference.cpu()
    assert check_uint8_frames_of_bf16_decode(_to_uint8_frames(fast), _to_uint8_frames(reference))
    assert check_uint8_frames_of_bf16_decode(
        _to_uint8_frames(fast), cases[name]["upstream"]["frames_uint8_bf16_path"].numpy()
    )
