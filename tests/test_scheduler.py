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
"""MagiHumanScheduler against the original's FlowUniPCMultistepScheduler trajectories (spec §5, fixtures README)."""

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import UniPCMultistepScheduler
from safetensors.torch import load_file

from _tolerances import EPS_FP32, check_max_abs
from diffusers_magihuman.schedulers.scheduling_magihuman import MagiHumanScheduler


FIXTURES = Path(__file__).parent / "fixtures" / "upstream_pipeline"

# Tolerance of the trajectory comparisons (same rule as tests/test_pipeline_loops.py): float32 elementwise arithmetic
# rounds the same on every CPU, but exp / log in UniPC's coefficients, sin in the synthetic predictions and the CPU
# `randn` draws (vectorised log / cos on AVX2+, libm with ATEN_CPU_CAPABILITY=default) differ by ~1-4 ulp between
# math libraries: <= 32 steps * 1 ulp(|x| <= 4) + 4 ulp(5.5) ~ 2e-5. Measured worst 2.0e-6 over 11 CPU configurations
# (tests/README.md), 0 on the fixture machine's. Any real bug (wrong sigma, order, history or noise) is >= 1e-3.
ATOL = 2e-5
# The synthetic predictions 0.5 x + 0.1 sin(x) + c: sin differs by <= 1 ulp(1) between libraries (x 0.1), and the sum
# may then round one ulp of |v| <= 4 apart: <= 2 ulp(4) = 9.5e-7. Measured 0.
PRED_ATOL = 8 * EPS_FP32
# CPU draws of the same seed: <= 4 ulp of |x| <= 5.5 (measured 1.7e-6 with ATEN_CPU_CAPABILITY=default); a wrong draw
# order or shape gives O(1).
DRAW_ATOL = 4 * 8 * EPS_FP32


def _load(name):
    return json.loads((FIXTURES / f"{name}.json").read_text()), load_file(str(FIXTURES / f"{name}.safetensors"))


@pytest.fixture(scope="module")
def traj():
    return _load("scheduler_trajectories")


# The fixtures' synthetic predictions (k is the 0-based step index).
def _pred_video(x, k):
    return 0.5 * x + 0.1 * torch.sin(x) + 0.01 * (k + 1)


def _pred_audio(a, k):
    return 0.5 * a + 0.1 * torch.sin(a) - 0.01 * (k + 1)


def _pred_video_sr(x, k):
    return 0.4 * x + 0.1 * torch.sin(x) + 0.02 * (k + 1)


# --------------------------------------------------------------------------- schedule (spec §5.2)
SCHEDULE_TABLE = {
    32: (
        "0.9998 0.993386 0.986634 0.979518 0.972006 0.964065 0.955657 0.94674 0.937265 0.92718 0.916422 0.904923 "
        "0.892602 0.879369 0.865118 0.849728 0.833055 0.814934 0.795165 0.773515 0.7497 0.723379 0.694136 0.661453 "
        "0.624687 0.583022 0.535408 0.480473 0.416389 0.340661 0.2498 0.138765 0",
        "999 993 986 979 972 964 955 946 937 927 916 904 892 879 865 849 833 814 795 773 749 723 694 661 624 583 535 "
        "480 416 340 249 138",
    ),
    8: ("0.9998 0.972006 0.937265 0.892602 0.833055 0.7497 0.624687 0.416389 0", "999 972 937 892 833 749 624 416"),
    5: ("0.9998 0.952154 0.882093 0.768935 0.555247 0", "999 952 882 768 555"),
}


@pytest.mark.parametrize("steps", [32, 8, 5])
def test_schedule_table(steps):
    sigmas, timesteps = SCHEDULE_TABLE[steps]
    s = MagiHumanScheduler()
    s.set_timesteps(steps)
    assert s.timesteps.dtype == torch.int64 and s.timesteps.shape == (steps,)
    assert s.sigmas.dtype == torch.float32 and s.sigmas.shape == (steps + 1,)
    assert s.timesteps.tolist() == [int(t) for t in timesteps.split()]
    # The table is printed to 6 significant digits.
    np.testing.assert_allclose(s.sigmas.numpy(), [float(v) for v in sigmas.split()], rtol=0, atol=1e-6)
    assert s.sigmas[-1].item() == 0.0
    assert s.timesteps[0].item() == 999  # σ_max = float32(0.999), shift applied once (spec §9.1)


@pytest.mark.parity
@pytest.mark.parametrize("case", ["base", "distill", "sr", "base_a2v"])
def test_schedule_matches_fixture_exactly(traj, case):
    meta, t = traj
    s = MagiHumanScheduler(sampler="dmd" if case == "distill" else "unipc")
    s.set_timesteps(meta["cases"][case]["steps"])
    # Exact on every CPU: numpy float64 linspace and the shift formula use only +, -, *, / (correctly rounded).
    assert torch.equal(s.timesteps, t[f"{case}.timesteps"])
    assert torch.equal(s.sigmas, t[f"{case}.sigmas"])


def test_stock_unipc_grid_differs():
    # Why the subclass overrides the grid: stock flow UniPC starts at σ = 1 (nudged by 1e-6), not 0.9998.
    stock = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=5.0)
    stock.set_timesteps(8)
    ours = MagiHumanScheduler()
    ours.set_timesteps(8)
    assert abs(stock.sigmas[0].item() - ours.sigmas[0].item()) > 1e-4


def test_custom_sigmas_list_shifted_once():
    s = MagiHumanScheduler(shift=5.0)
    s.set_timesteps(sigmas=[0.9, 0.5])  # a list works (the stock scheduler needs an ndarray)
    expected = [5 * 0.9 / (1 + 4 * 0.9), 5 * 0.5 / (1 + 4 * 0.5), 0.0]
    np.testing.assert_allclose(s.sigmas.numpy(), expected, rtol=0, atol=1e-7)
    assert s.num_inference_steps == 2


# --------------------------------------------------------------------------- UniPC trajectories (spec §5.3)
@pytest.mark.parity
def test_base_trajectory(traj):
    """32 UniPC steps on video and audio with two scheduler instances (deepcopy), order [1, 2 × 30, 1]."""
    meta, t = traj
    video_sched = MagiHumanScheduler()
    video_sched.set_timesteps(32)
    audio_sched = copy.deepcopy(video_sched)
    x, a = t["base.init_video"].clone(), t["base.init_audio"].clone()
    orders = []
    for k, ts in enumerate(video_sched.timesteps):
        x = video_sched.step(_pred_video(x, k), ts, x, return_dict=False)[0]
        orders.append(video_sched.this_order)
        a = audio_sched.step(_pred_audio(a, k), ts, a).prev_sample
        assert check_max_abs(f"video step {k}", x, t["base.latent_video"][k], ATOL)
        assert check_max_abs(f"audio step {k}", a, t["base.latent_audio"][k], ATOL)
    assert orders == meta["cases"]["base"]["predictor_order_per_step"]
    assert video_sched.step_index == 32


@pytest.mark.parity
def test_base_a2v_trajectory(traj):
    """A2V: only the video is stepped (audio held); its trajectory must not depend on an audio scheduler."""
    _, t = traj
    s = MagiHumanScheduler()
    s.set_timesteps(32)
    x = t["base_a2v.init_video"].clone()
    for k, ts in enumerate(s.timesteps):
        x = s.step(_pred_video(x, k), ts, x).prev_sample
        assert check_max_abs(f"step {k}", x, t["base_a2v.latent_video"][k], ATOL)


@pytest.mark.parity
def test_sr_trajectory(traj):
    """SR: 5 UniPC steps from the SR-prepared latent, order [1, 2, 2, 2, 1]."""
    meta, t = traj
    s = MagiHumanScheduler()
    s.set_timesteps(5)
    x = t["sr.init_video"].clone()
    orders = []
    for k, ts in enumerate(s.timesteps):
        assert check_max_abs(f"pred {k}", _pred_video_sr(x, k), t["sr.pred_video"][k], PRED_ATOL)  # the fixture's input, reproduced
        x = s.step(_pred_video_sr(x, k), ts, x).prev_sample
        orders.append(s.this_order)
        assert check_max_abs(f"step {k}", x, t["sr.latent_video"][k], ATOL)
    assert orders == meta["cases"]["sr"]["predictor_order_per_step"]


def test_last_unipc_step_returns_x0(traj):
    # spec §5.3: σ_N = 0 makes the last (order-1) step return the x0 prediction exactly.
    _, t = traj
    s = MagiHumanScheduler()
    s.set_timesteps(5)
    x = t["sr.init_video"].clone()
    for k, ts in enumerate(s.timesteps):
        v = _pred_video_sr(x, k)
        x_in = x
        x = s.step(v, ts, x).prev_sample
    assert torch.equal(x, s.model_outputs[-1])
    # spec §5.3 step 1: m_4 comes from the *uncorrected* sample the model saw, not from the UniC-corrected one.
    assert torch.equal(x, x_in - s.sigmas[4] * v)
    assert not torch.equal(s.last_sample, x_in)  # the corrector did change x_4


@pytest.mark.parity
def test_ti2v_loop_with_pinning_and_cfg():
    """The TI2V loop: frame 0 pinned before each call, CFG 5 -> 2 at t <= 500 (spec §6.2, §6.4, §9.18).

    The scheduler must keep the pinned sample in its history; the fixture is the original's full `evaluate()`.
    """
    meta, t = _load("loop_ti2v_base")
    stage = meta["stages"]["base"]
    s_cond, s_uncond = stage["s_cond"], stage["s_uncond"]

    def dit(x, a, s, k):  # the fixtures' synthetic DiT (README)
        v = 0.5 * x + 0.1 * torch.sin(x) + (0.2 * s) * torch.cos(x) + 0.01 * k
        va = 0.5 * a + 0.1 * torch.sin(a) + (0.2 * s) * torch.cos(a) - 0.01 * k
        return v, va

    video_sched = MagiHumanScheduler()
    video_sched.set_timesteps(stage["num_inference_steps"])
    audio_sched = copy.deepcopy(video_sched)
    x, a, image = t["base.init_video"].clone(), t["base.init_audio"].clone(), t["base.latent_image"]
    for k, ts in enumerate(video_sched.timesteps):
        x[:, :, :1] = image
        assert check_max_abs(f"frame0 step {k}", x[:, :, :1], t["base.x_in_video_frame0"][k], ATOL)
        v_c, va_c = dit(x, a, s_cond, k)
        v_u, va_u = dit(x, a, s_uncond, k)
        g = 5.0 if ts > 500 else 2.0
        x = video_sched.step(v_u + g * (v_c - v_u), ts, x).prev_sample
        a = audio_sched.step(va_u + 5.0 * (va_c - va_u), ts, a).prev_sample
        assert check_max_abs(f"video step {k}", x, t["base.latent_video"][k], ATOL)
        assert check_max_abs(f"audio step {k}", a, t["base.latent_audio"][k], ATOL)
    x[:, :, :1] = image
    assert check_max_abs("final video", x, t["out.latent_video"], ATOL)
    assert check_max_abs("final audio", a, t["out.latent_audio"], ATOL)


# --------------------------------------------------------------------------- DMD-2 rule (spec §5.4)
@pytest.mark.parity
def test_distill_trajectory_injected_noise(traj):
    _, t = traj
    video_sched = MagiHumanScheduler(sampler="dmd")
    video_sched.set_timesteps(8)
    audio_sched = copy.deepcopy(video_sched)
    assert video_sched.is_distilled
    x, a = t["distill.init_video"].clone(), t["distill.init_audio"].clone()
    for k, ts in enumerate(video_sched.timesteps):
        v, va = _pred_video(x, k), _pred_audio(a, k)
        assert check_max_abs(f"pred {k}", v, t["distill.pred_video"][k], PRED_ATOL)
        x = video_sched.step(v, ts, x, noise=t[f"distill.ddim_noise.{2 * k:02d}"]).prev_sample
        a = audio_sched.step(va, ts, a, noise=t[f"distill.ddim_noise.{2 * k + 1:02d}"], return_dict=False)[0]
        assert check_max_abs(f"video step {k}", x, t["distill.latent_video"][k], ATOL)
        assert check_max_abs(f"audio step {k}", a, t["distill.latent_audio"][k], ATOL)


@pytest.mark.parity
def test_distill_trajectory_generator_draw_order(traj):
    """Same run with one torch.Generator: the original's global-RNG order (spec §3.3) is audio init, video init,
    then per step video noise, audio noise, also at the last step (fixture seed 0 + seed_offset 1)."""
    meta, t = traj
    gen = torch.Generator("cpu").manual_seed(meta["seed"] + meta["cases"]["distill"]["seed_offset"])
    a = torch.randn(t["distill.init_audio"].shape, generator=gen)
    x = torch.randn(t["distill.init_video"].shape, generator=gen)
    assert check_max_abs("init audio draw", a, t["distill.init_audio"], DRAW_ATOL)
    assert check_max_abs("init video draw", x, t["distill.init_video"], DRAW_ATOL)
    video_sched = MagiHumanScheduler(sampler="dmd")
    video_sched.set_timesteps(8)
    audio_sched = copy.deepcopy(video_sched)
    for k, ts in enumerate(video_sched.timesteps):
        v, va = _pred_video(x, k), _pred_audio(a, k)
        x = video_sched.step(v, ts, x, generator=gen).prev_sample
        a = audio_sched.step(va, ts, a, generator=gen).prev_sample
        assert check_max_abs(f"video step {k}", x, t["distill.latent_video"][k], ATOL)
        assert check_max_abs(f"audio step {k}", a, t["distill.latent_audio"][k], ATOL)
    # All 16 draws were consumed: the next draw equals a fresh generator's 19th.
    ref = torch.Generator("cpu").manual_seed(1)
    for shape in [a.shape, x.shape] + [x.shape, a.shape] * 8:
        torch.randn(shape, generator=ref)
    assert torch.equal(torch.randn(3, generator=gen), torch.randn(3, generator=ref))


def test_dmd_last_step_returns_x0_and_rejects_bad_noise():
    s = MagiHumanScheduler(sampler="dmd")
    s.set_timesteps(2)
    x = torch.randn(1, 4, 3)
    v = torch.randn(1, 4, 3)
    with pytest.raises(ValueError, match="shape"):
        s.step(v, s.timesteps[0], x, noise=torch.zeros(2))
    s.step(v, s.timesteps[0], x, noise=torch.zeros_like(x))
    out = s.step(v, s.timesteps[1], x, noise=torch.full_like(x, 1e3)).prev_sample
    assert torch.equal(out, x - s.sigmas[1] * v)  # σ_N = 0: the noise has no effect
    with pytest.raises(ValueError, match="set_timesteps"):
        s.step(v, s.timesteps[1], x)


def test_unipc_ignores_generator_and_noise(traj):
    _, t = traj
    x = t["sr.init_video"].clone()
    outs = []
    for kwargs in ({}, {"generator": torch.Generator().manual_seed(3), "noise": torch.randn_like(x)}):
        s = MagiHumanScheduler()
        s.set_timesteps(5)
        outs.append(s.step(_pred_video_sr(x, 0), s.timesteps[0], x, **kwargs).prev_sample)
    assert torch.equal(outs[0], outs[1])


# --------------------------------------------------------------------------- step index (spec §5.2, §9.23)
def test_step_index_second_match_and_begin_index():
    s = MagiHumanScheduler()
    s.set_timesteps(4)
    s.timesteps = torch.tensor([999, 999, 500, 200])  # a duplicated first timestep, as a custom grid could give
    s._init_step_index(torch.tensor(999))
    assert s.step_index == 1  # the original takes the *second* match
    s = MagiHumanScheduler()
    s.set_timesteps(4)
    s.set_begin_index(2)
    assert s.begin_index == 2
    x = torch.randn(2, 3)
    s.step(torch.zeros_like(x), s.timesteps[0], x)
    assert s.step_index == 3  # begin_index wins over the timestep lookup
    s = MagiHumanScheduler()
    s.set_timesteps(4)
    with pytest.raises(ValueError, match="not in this scheduler's schedule"):
        s.step(torch.zeros_like(x), 123, x)


def test_contract_attributes():
    s = MagiHumanScheduler()
    assert s.order == 1 and s.init_noise_sigma == 1.0 and not s.is_distilled
    x = torch.randn(2, 3)
    assert s.scale_model_input(x, 999) is x
    with pytest.raises(ValueError, match="set_timesteps"):
        s.step(x, 999, x)
    with pytest.raises(ValueError, match="sampler"):
        MagiHumanScheduler(sampler="euler")


# --------------------------------------------------------------------------- config
def test_save_load_round_trip(tmp_path):
    s = MagiHumanScheduler(shift=3.0, sampler="dmd")
    s.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "scheduler_config.json").read_text())
    assert saved["_class_name"] == "MagiHumanScheduler"
    assert saved["sampler"] == "dmd" and saved["shift"] == 3.0
    # The derived stock flow keys are stored too (for stock classes' from_pretrained); other UniPC settings are not.
    assert saved["flow_shift"] == 3.0 and saved["stochastic_sampling"] is True and "beta_start" not in saved
    loaded = MagiHumanScheduler.from_pretrained(tmp_path)
    assert loaded.is_distilled and loaded.config.shift == 3.0 and loaded.config.flow_shift == 3.0
    s.set_timesteps(8)
    loaded.set_timesteps(8)
    assert torch.equal(s.sigmas, loaded.sigmas) and torch.equal(s.timesteps, loaded.timesteps)


def test_from_config_switches_sampler(tmp_path):
    base = MagiHumanScheduler()
    distilled = MagiHumanScheduler.from_config(base.config, sampler="dmd")
    assert distilled.is_distilled and not base.is_distilled
    back = MagiHumanScheduler.from_config(distilled.config, sampler="unipc", shift=7.0)
    assert not back.is_distilled and back.config.flow_shift == 7.0  # derived settings follow `shift`
    back.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "scheduler_config.json").read_text())["flow_shift"] == 7.0  # saved copy follows `shift`
    # A step with the switched rule behaves as the DMD rule: deterministic given the noise.
    distilled.set_timesteps(8)
    x, v, n = torch.randn(3, 2), torch.randn(3, 2), torch.randn(3, 2)
    out = distilled.step(v, 999, x, noise=n).prev_sample
    sigma, sigma_next = distilled.sigmas[0], distilled.sigmas[1]
    assert torch.equal(out, sigma_next * n + (1 - sigma_next) * (x - sigma * v))
