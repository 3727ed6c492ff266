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
"""MagiHumanScheduler against the conventions diffusers' SchedulerCommonTest checks, plus the stock flow schedulers
it is compatible with, driven through `scheduling_utils_magihuman`.

Written here (diffusers' test mixins are not importable from the wheel); each test names the convention it covers.
"""

from __future__ import annotations

import copy
import inspect
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import (
    DDIMScheduler,
    EDMEulerScheduler,
    FlowMatchEulerDiscreteScheduler,
    UniPCMultistepScheduler,
)
from diffusers.schedulers.scheduling_utils import SchedulerOutput
from safetensors.torch import load_file

from diffusers_magihuman.schedulers.scheduling_magihuman import MagiHumanScheduler
from diffusers_magihuman.schedulers.scheduling_utils_magihuman import (
    check_scheduler,
    deterministic_scheduler,
    is_distilled_scheduler,
    magihuman_sigmas,
    retrieve_timesteps,
    scheduler_step,
)


FIXTURES = Path(__file__).parent / "fixtures" / "upstream_pipeline"
OWN_KEYS = {"num_train_timesteps", "shift", "solver_order", "sampler", "solver_type", "lower_order_final", "disable_corrector"}
CONFIGS = [
    {},
    {"sampler": "dmd", "shift": 3.0},
    {"solver_order": 3, "disable_corrector": [0, 2], "num_train_timesteps": 500},
    {"solver_order": 1, "lower_order_final": False},
]


def _velocity(x, k):
    # A smooth synthetic flow velocity (the fixtures' video prediction).
    return 0.5 * x + 0.1 * torch.sin(x) + 0.01 * (k + 1)


def _run(scheduler, x, generator=None, steps=None):
    """Full loop through the pipelines' helper; returns the final latent."""
    timesteps, _ = retrieve_timesteps(scheduler, steps)
    for k, t in enumerate(timesteps):
        x = scheduler_step(scheduler, _velocity(x, k), t, x, generator=generator)
    return x


def _config(s):
    return {k: v for k, v in s.config.items() if k != "_use_default_values"}


# --------------------------------------------------------------------------- save / load / from_config
@pytest.mark.parametrize("kwargs", CONFIGS)
def test_save_pretrained_round_trip(tmp_path, kwargs):
    """SchedulerCommonTest.test_from_pretrained: save -> load gives the same config and the same steps."""
    s = MagiHumanScheduler(**kwargs)
    s.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "scheduler_config.json").read_text())
    # Only MagiHuman fields are written: no stock UniPC settings that could go stale.
    assert {k for k in saved if not k.startswith("_")} == OWN_KEYS
    loaded = MagiHumanScheduler.from_pretrained(tmp_path)
    assert _config(loaded) == _config(s)
    x = torch.randn(2, 3, 4, generator=torch.Generator().manual_seed(0))
    a = _run(s, x.clone(), torch.Generator().manual_seed(1), steps=6)
    b = _run(loaded, x.clone(), torch.Generator().manual_seed(1), steps=6)
    assert torch.equal(a, b)


@pytest.mark.parametrize("kwargs", CONFIGS)
def test_from_config_round_trip_has_no_silent_changes(kwargs):
    s = MagiHumanScheduler(**kwargs)
    again = MagiHumanScheduler.from_config(s.config)
    assert _config(again) == _config(s)
    for key, value in kwargs.items():
        assert again.config[key] == value


def test_config_exposes_stock_flow_keys_without_none_placeholders():
    s = MagiHumanScheduler(shift=4.0, sampler="dmd")
    c = s.config
    assert c.prediction_type == "flow_prediction" and c.use_flow_sigmas is True
    assert c.flow_shift == 4.0 and c.stochastic_sampling is True and c.final_sigmas_type == "zero"
    # The stock-UniPC settings the inherited methods read are attributes, not keys (they are neither saved nor passed
    # on by `from_config`): an EDM scheduler built from this config used to get sigma_min=None and raise TypeError.
    assert c.solver_p is None and c.timestep_spacing == "linspace"
    assert "sigma_min" not in c and "sigma_max" not in c and "beta_schedule" not in c
    edm = EDMEulerScheduler.from_config(c)
    assert edm.config.sigma_min == 0.002
    with pytest.raises(AttributeError):
        c.does_not_exist


def test_compatibles_are_flow_schedulers_only():
    s = MagiHumanScheduler()
    names = {c.__name__ for c in s.compatibles}
    assert names <= {"MagiHumanScheduler", "UniPCMultistepScheduler", "FlowMatchEulerDiscreteScheduler"}
    assert {"UniPCMultistepScheduler", "FlowMatchEulerDiscreteScheduler"} <= names
    assert "DDIMScheduler" not in names and "PNDMScheduler" not in names  # cannot drive a flow model


@pytest.mark.parametrize("kwargs", [{}, {"sampler": "dmd", "shift": 3.0}])
def test_compatibles_both_ways(kwargs):
    """SchedulerCommonTest.test_compatibles: every compatible class loads our config, and back gives our config."""
    s = MagiHumanScheduler(**kwargs)
    for comp_cls in s.compatibles:
        comp = comp_cls.from_config(s.config)
        back = MagiHumanScheduler.from_config(comp.config)
        # diffusers' exact check, `_use_default_values` included.
        assert {k: v for k, v in back.config.items() if k in s.config} == dict(s.config), comp_cls.__name__
        extra = set(back.config) - set(s.config)
        assert not extra & set(inspect.signature(MagiHumanScheduler.__init__).parameters)
    unipc = UniPCMultistepScheduler.from_config(s.config)
    assert unipc.config.prediction_type == "flow_prediction" and unipc.config.use_flow_sigmas
    assert unipc.config.flow_shift == s.config.shift and unipc.config.solver_type == "bh2"
    fme = FlowMatchEulerDiscreteScheduler.from_config(s.config)
    assert fme.config.shift == s.config.shift and fme.config.stochastic_sampling == s.is_distilled
    check_scheduler(unipc)
    check_scheduler(fme)


def test_stock_flow_configs_are_read_not_dropped(tmp_path):
    # flow UniPC's `flow_shift` used to be dropped (shift silently 5.0).
    stock = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=7.0)
    assert MagiHumanScheduler.from_config(stock.config).config.shift == 7.0
    stock.save_config(tmp_path)
    from_file = MagiHumanScheduler.from_config(MagiHumanScheduler.load_config(tmp_path))
    assert from_file.config.shift == 7.0 and not from_file.is_distilled
    # FlowMatchEuler's stochastic (DMD) sampling maps to sampler="dmd".
    fme = FlowMatchEulerDiscreteScheduler(shift=3.0, stochastic_sampling=True)
    ours = MagiHumanScheduler.from_config(fme.config)
    assert ours.is_distilled and ours.config.shift == 3.0
    # Keyword arguments win, under either spelling.
    assert MagiHumanScheduler.from_config(stock.config, flow_shift=2.0).config.shift == 2.0
    assert MagiHumanScheduler.from_config(ours.config, sampler="unipc").is_distilled is False
    # A stock config that carries our fields as hidden entries: the stock class's own setting is what it ran with.
    unipc = UniPCMultistepScheduler.from_config(MagiHumanScheduler().config, flow_shift=6.0)
    assert unipc.config.shift == 5.0  # hidden copy of our field
    assert MagiHumanScheduler.from_config(unipc.config).config.shift == 6.0


# --------------------------------------------------------------------------- refusal of options that cannot work
@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"solver_type": "bh1"}, "bh2"),
        ({"lower_order_final": False}, "lower_order_final"),
        ({"solver_order": 4}, "solver_order"),
        ({"sampler": "euler"}, "sampler"),
        ({"shift": 0.0}, "shift"),
        ({"shift": float("nan")}, "shift"),
        ({"num_train_timesteps": 1}, "num_train_timesteps"),
        ({"disable_corrector": ["a"]}, "disable_corrector"),
    ],
)
def test_invalid_options_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MagiHumanScheduler(**kwargs)


@pytest.mark.parametrize(
    "stock_kwargs, match",
    [
        ({}, "prediction_type"),  # an epsilon UniPC, explicitly
        ({"prediction_type": "flow_prediction", "use_flow_sigmas": True, "solver_type": "bh1"}, "bh2"),
        ({"prediction_type": "flow_prediction", "use_flow_sigmas": True, "use_karras_sigmas": True}, "use_karras_sigmas"),
        ({"prediction_type": "flow_prediction", "use_flow_sigmas": True, "final_sigmas_type": "sigma_min"}, "final_sigmas_type"),
        ({"prediction_type": "flow_prediction", "use_flow_sigmas": False}, "use_flow_sigmas"),
    ],
)
def test_unusable_stock_configs_are_refused(stock_kwargs, match):
    stock = UniPCMultistepScheduler(**{"prediction_type": "epsilon", **stock_kwargs})
    with pytest.raises(ValueError, match=match):
        MagiHumanScheduler.from_config(stock.config)


def test_unusable_keyword_overrides_are_refused():
    with pytest.raises(ValueError, match="use_dynamic_shifting"):
        MagiHumanScheduler.from_config(MagiHumanScheduler().config, use_dynamic_shifting=True)
    with pytest.raises(ValueError, match="Conflicting"):
        MagiHumanScheduler.from_config(MagiHumanScheduler().config, shift=3.0, flow_shift=4.0)
    # Two spellings in one config can only come from a stock config carrying ours as a hidden entry: stock wins.
    assert MagiHumanScheduler.from_config({"shift": 3.0, "flow_shift": 4.0}).config.shift == 4.0
    with pytest.raises(TypeError):
        MagiHumanScheduler(prediction_type="epsilon")  # not an argument of ours at all


def test_getattr_conventions():
    """SchedulerCommonTest.test_getattr_is_correct."""
    s = MagiHumanScheduler()
    s.register_to_config(test_attribute=5)
    with pytest.warns(FutureWarning):
        assert s.test_attribute == 5
    with pytest.raises(AttributeError, match="'MagiHumanScheduler' object has no attribute 'does_not_exist'"):
        s.does_not_exist


# --------------------------------------------------------------------------- set_timesteps / step contract
@pytest.mark.parametrize("sampler", ["unipc", "dmd"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_step_shapes_and_dtypes(sampler, dtype):
    s = MagiHumanScheduler(sampler=sampler)
    s.set_timesteps(5, device="cpu")
    assert s.timesteps.dtype == torch.int64 and s.timesteps.shape == (5,)
    assert s.sigmas.dtype == torch.float32 and s.sigmas.shape == (6,) and s.sigmas[-1] == 0
    assert s.num_inference_steps == 5
    x = torch.randn(2, 4, 3, 5, 5).to(dtype)
    gen = torch.Generator().manual_seed(0)
    for k, t in enumerate(s.timesteps):
        out = s.step(_velocity(x, k), t, x, generator=gen)
        assert isinstance(out, SchedulerOutput)
        assert out.prev_sample.shape == x.shape and out.prev_sample.dtype == dtype
        assert torch.isfinite(out.prev_sample.float()).all()
        x = out.prev_sample


@pytest.mark.parametrize("sampler", ["unipc", "dmd"])
def test_dict_and_tuple_outputs_are_equal(sampler):
    """SchedulerCommonTest.test_scheduler_outputs_equivalence."""
    outs = []
    for return_dict in (True, False):
        s = MagiHumanScheduler(sampler=sampler)
        s.set_timesteps(4)
        x = torch.randn(3, 4, generator=torch.Generator().manual_seed(0))
        out = s.step(_velocity(x, 0), s.timesteps[0], x, generator=torch.Generator().manual_seed(1), return_dict=return_dict)
        outs.append(out.prev_sample if return_dict else out[0])
    assert torch.equal(outs[0], outs[1])


def test_step_rejects_mismatched_shapes():
    s = MagiHumanScheduler()
    s.set_timesteps(4)
    with pytest.raises(ValueError, match="model_output"):
        s.step(torch.zeros(2, 3), s.timesteps[0], torch.zeros(2, 4))
    with pytest.raises(ValueError, match="batched"):
        s.step(torch.zeros(4), s.timesteps[0], torch.zeros(4))


def test_scale_model_input_add_noise_and_init_noise_sigma():
    """SchedulerCommonTest.test_scheduler_public_api / test_add_noise_device: the model input is never scaled, and
    add_noise is the flow interpolation x_t = (1 - sigma) * x0 + sigma * noise at the given timestep."""
    s = MagiHumanScheduler()
    assert s.init_noise_sigma == 1.0
    x0 = torch.randn(2, 3, 4, generator=torch.Generator().manual_seed(0))
    noise = torch.randn(2, 3, 4, generator=torch.Generator().manual_seed(1))
    assert s.scale_model_input(x0, 999) is x0
    # Before set_timesteps: the original's training grid (sigma = t / 1000, t = 999 .. 0).
    noisy = s.add_noise(x0, noise, torch.tensor([500]))
    sigma = s.sigmas[499]
    assert sigma.item() == pytest.approx(0.5, abs=1e-6)
    torch.testing.assert_close(noisy, (1 - sigma) * x0 + sigma * noise, rtol=0, atol=0)
    s.set_timesteps(8)
    t = s.timesteps[3:4]
    noisy = s.add_noise(x0, noise, t)
    assert noisy.shape == x0.shape
    sigma = s.sigmas[3]
    torch.testing.assert_close(noisy, (1 - sigma) * x0 + sigma * noise, rtol=0, atol=0)
    # A batch of timesteps noises each sample at its own level.
    noisy = s.add_noise(x0, noise, s.timesteps[[0, 5]])
    torch.testing.assert_close(noisy[1], (1 - s.sigmas[5]) * x0[1] + s.sigmas[5] * noise[1], rtol=0, atol=0)


def test_step_with_generator_is_deterministic():
    x = torch.randn(2, 3, 4, generator=torch.Generator().manual_seed(0))
    run = lambda seed, sampler: _run(MagiHumanScheduler(sampler=sampler), x.clone(), torch.Generator().manual_seed(seed), 8)  # noqa: E731
    assert torch.equal(run(3, "dmd"), run(3, "dmd"))
    # The re-noising draws do change the trajectory: compare after the first step, where sigma_1 > 0.
    firsts = []
    for seed in (3, 4):
        s = MagiHumanScheduler(sampler="dmd")
        s.set_timesteps(8)
        firsts.append(s.step(_velocity(x, 0), s.timesteps[0], x, generator=torch.Generator().manual_seed(seed)).prev_sample)
    assert not torch.equal(firsts[0], firsts[1])
    # UniPC is deterministic: the generator is accepted and ignored.
    assert torch.equal(run(3, "unipc"), run(4, "unipc"))


def test_step_index_and_reuse():
    s = MagiHumanScheduler()
    assert s.step_index is None and s.begin_index is None
    s.set_timesteps(4)
    assert s.step_index is None
    x = torch.randn(3, 4, generator=torch.Generator().manual_seed(0))
    first = None
    for run in range(2):  # set_timesteps resets the step index and the UniPC history
        s.set_timesteps(4)
        y = x.clone()
        for k, t in enumerate(s.timesteps):
            y = s.step(_velocity(y, k), t, y).prev_sample
            assert s.step_index == k + 1
        first = y if first is None else first
        assert torch.equal(y, first)
    with pytest.raises(ValueError, match="All 4 steps"):
        s.step(_velocity(y, 0), s.timesteps[-1], y)
    fresh = MagiHumanScheduler()
    with pytest.raises(ValueError, match="set_timesteps"):
        fresh.step(x, 999, x)


def test_deepcopy_streams_are_independent():
    s = MagiHumanScheduler()
    s.set_timesteps(6)
    other = copy.deepcopy(s)
    x = torch.randn(3, 4, generator=torch.Generator().manual_seed(0))
    s.step(_velocity(x, 0), s.timesteps[0], x)
    assert other.step_index is None and other.model_outputs[-1] is None


# --------------------------------------------------------------------------- num_inference_steps edge cases
def test_one_step_returns_the_x0_prediction():
    for sampler in ("unipc", "dmd"):
        s = MagiHumanScheduler(sampler=sampler)
        s.set_timesteps(1)
        assert s.timesteps.tolist() == [999] and s.sigmas.tolist()[1] == 0.0
        x = torch.randn(3, 4, generator=torch.Generator().manual_seed(0))
        v = _velocity(x, 0)
        assert torch.equal(s.step(v, 999, x, generator=torch.Generator().manual_seed(0)).prev_sample, x - s.sigmas[0] * v)


@pytest.mark.parametrize("shift", [5.0, 1.0, 12.0])
def test_max_num_inference_steps(shift):
    s = MagiHumanScheduler(shift=shift)
    n = s.max_num_inference_steps
    if shift == 5.0:
        assert n == 250
    s.set_timesteps(n)  # the largest schedule whose first timestep is unique
    assert s.timesteps.shape == (n,) and s.timesteps[0] != s.timesteps[1]
    x = torch.randn(3, 4, generator=torch.Generator().manual_seed(0))
    s.step(_velocity(x, 0), s.timesteps[0], x)
    assert s.step_index == 1  # the first step is not skipped
    with pytest.raises(ValueError, match=f"above the {n} this schedule supports"):
        s.set_timesteps(n + 1)


@pytest.mark.parametrize("bad", [0, -1, 2.5, True, "8"])
def test_bad_num_inference_steps(bad):
    with pytest.raises(ValueError, match="num_inference_steps"):
        MagiHumanScheduler().set_timesteps(bad)


def test_set_timesteps_needs_a_source():
    with pytest.raises(ValueError, match="num_inference_steps"):
        MagiHumanScheduler().set_timesteps()


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"sigmas": []}, "empty"),
        ({"sigmas": [0.5, 0.9]}, "decreasing"),
        ({"sigmas": [0.9, 0.9]}, "decreasing"),
        ({"sigmas": [1.5, 0.5]}, r"\(0, 1\]"),
        ({"sigmas": [0.5, 0.0]}, r"\(0, 1\]"),
        ({"sigmas": [0.9, float("nan")]}, "finite"),
        ({"sigmas": [0.9, 0.5], "num_inference_steps": 3}, "does not match"),
        ({"sigmas": [0.999, 0.9985]}, "same first two timesteps"),
        ({"sigmas": [0.9], "timesteps": [900]}, "not both"),
        ({"timesteps": [900.5, 500]}, "whole numbers"),
        ({"timesteps": [1001, 500]}, "whole numbers"),
        ({"timesteps": [500, 900]}, "decreasing"),
    ],
)
def test_bad_custom_schedules(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MagiHumanScheduler().set_timesteps(**kwargs)


def test_custom_sigmas_and_timesteps():
    s = MagiHumanScheduler(shift=5.0)
    s.set_timesteps(sigmas=torch.tensor([1.0, 0.5]))  # tensors are accepted; sigma 1 is nudged as stock UniPC does
    assert s.num_inference_steps == 2 and s.sigmas[0].item() == pytest.approx(1.0, abs=2e-6)
    s.set_timesteps(timesteps=[900, 500, 100], device="cpu")
    assert s.timesteps.tolist() == [900, 500, 100] and s.timesteps.dtype == torch.int64
    # A timestep already is a shifted noise level: sigma = t / 1000, used as it is.
    assert s.sigmas.tolist() == pytest.approx([0.9, 0.5, 0.1, 0.0], abs=1e-7)
    x = torch.randn(3, 4, generator=torch.Generator().manual_seed(0))
    for k, t in enumerate(s.timesteps):
        x = s.step(_velocity(x, k), t, x).prev_sample
    assert torch.isfinite(x).all()


# --------------------------------------------------------------------------- stock flow schedulers (helper)
def _fixture():
    meta = json.loads((FIXTURES / "scheduler_trajectories.json").read_text())
    return meta, load_file(str(FIXTURES / "scheduler_trajectories.safetensors"))


def test_stock_flow_unipc_reproduces_the_original_bit_exactly():
    """UniPCMultistepScheduler.from_config(our config) + the helper's default grid == the original's base run.

    Same float32 operations in the same order as MagiHumanScheduler (which *is* stock UniPC with this grid), so the
    difference is exactly 0; the fixture README's 1e-5 is the shared safety margin of the parity tests.
    """
    meta, t = _fixture()
    stock = UniPCMultistepScheduler.from_config(MagiHumanScheduler().config)
    ours = MagiHumanScheduler()
    timesteps, n = retrieve_timesteps(stock, 32)
    retrieve_timesteps(ours, 32)
    assert n == 32 and torch.equal(timesteps, ours.timesteps) and torch.equal(stock.sigmas, ours.sigmas)
    x, y = t["base.init_video"].clone(), t["base.init_video"].clone()
    for k, ts in enumerate(timesteps):
        x = scheduler_step(stock, _velocity(x, k), ts, x)
        y = scheduler_step(ours, _velocity(y, k), ts, y)
        assert torch.equal(x, y), k
        assert (x - t["base.latent_video"][k]).abs().max().item() <= 1e-5, k


def test_flow_match_euler_stochastic_is_the_dmd_rule():
    """FlowMatchEuler(stochastic_sampling=True) from our distilled config follows the DMD-2 trajectory.

    With the identical sigma grid the two updates are the same float32 operations: bit-equal. Through its own
    `set_timesteps` FlowMatchEuler shifts the grid in float32 (ours: float64, then rounded), which moves a sigma by at
    most 1 ulp (6e-8); over 8 steps with |noise - x0| of a few units that stays below 1e-6 (measured 2.4e-7).
    """
    meta, t = _fixture()
    ours = MagiHumanScheduler(sampler="dmd")
    fme = FlowMatchEulerDiscreteScheduler.from_config(ours.config)
    assert is_distilled_scheduler(fme) and is_distilled_scheduler(ours)
    seed = meta["seed"] + meta["cases"]["distill"]["seed_offset"]
    results = []
    for exact_grid in (True, False):
        for s in (ours, fme):
            timesteps, _ = retrieve_timesteps(s, 8)
            if exact_grid and s is fme:
                s.sigmas = ours.sigmas.clone()
            gen = torch.Generator().manual_seed(seed)
            x = t["distill.init_video"].clone()
            for k, ts in enumerate(timesteps):
                x = scheduler_step(s, _velocity(x, k), ts, x, generator=gen)
            results.append(x)
    assert torch.equal(results[0], results[1])
    assert (results[2] - results[3]).abs().max().item() <= 1e-6


def test_retrieve_timesteps_sources_and_errors():
    stock = UniPCMultistepScheduler.from_config(MagiHumanScheduler().config)
    timesteps, n = retrieve_timesteps(stock, sigmas=[0.9, 0.5, 0.2])  # a list works (stock UniPC needs an ndarray)
    assert n == 3
    ours = MagiHumanScheduler()
    ours.set_timesteps(sigmas=[0.9, 0.5, 0.2])
    assert torch.equal(stock.sigmas, ours.sigmas) and torch.equal(stock.timesteps, ours.timesteps)
    with pytest.raises(ValueError, match="does not accept custom `timesteps`"):
        retrieve_timesteps(stock, timesteps=[900, 500])
    timesteps, n = retrieve_timesteps(MagiHumanScheduler(), timesteps=torch.tensor([900, 500]))
    assert timesteps.tolist() == [900, 500] and n == 2
    fme = FlowMatchEulerDiscreteScheduler(shift=5.0)
    timesteps, n = retrieve_timesteps(fme, timesteps=[900.0, 500.0])
    assert n == 2
    with pytest.raises(ValueError, match="not both"):
        retrieve_timesteps(MagiHumanScheduler(), sigmas=[0.5], timesteps=[500])
    with pytest.raises(ValueError, match="does not match"):
        retrieve_timesteps(MagiHumanScheduler(), 4, sigmas=[0.9, 0.5])
    with pytest.raises(ValueError, match="Pass"):
        retrieve_timesteps(MagiHumanScheduler())
    assert magihuman_sigmas(4).tolist() == pytest.approx([0.999, 0.74925, 0.4995, 0.24975], abs=1e-7)


def test_check_scheduler_refuses_what_cannot_drive_the_model():
    with pytest.raises(ValueError, match="cannot drive MagiHuman"):
        check_scheduler(DDIMScheduler())
    with pytest.raises(ValueError, match="prediction_type"):
        check_scheduler(UniPCMultistepScheduler())
    with pytest.raises(ValueError, match="use_dynamic_shifting"):
        check_scheduler(FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True))
    with pytest.raises(ValueError, match="cannot drive MagiHuman"):
        retrieve_timesteps(DDIMScheduler(), 4)
    check_scheduler(MagiHumanScheduler())
    check_scheduler(FlowMatchEulerDiscreteScheduler())


def test_deterministic_scheduler_for_the_sr_stage():
    sr = deterministic_scheduler(MagiHumanScheduler(sampler="dmd", shift=3.0))
    assert isinstance(sr, MagiHumanScheduler) and not sr.is_distilled and sr.config.shift == 3.0
    sr = deterministic_scheduler(FlowMatchEulerDiscreteScheduler(shift=3.0, stochastic_sampling=True))
    assert not is_distilled_scheduler(sr) and sr.config.shift == 3.0
    base = UniPCMultistepScheduler.from_config(MagiHumanScheduler().config)
    sr = deterministic_scheduler(base)
    assert sr is not base and sr.config.flow_shift == 5.0


def test_scheduler_step_passes_the_generator_only_where_accepted():
    stock = UniPCMultistepScheduler.from_config(MagiHumanScheduler().config)
    retrieve_timesteps(stock, 4)
    x = torch.randn(3, 4, generator=torch.Generator().manual_seed(0))
    out = scheduler_step(stock, _velocity(x, 0), stock.timesteps[0], x, generator=torch.Generator().manual_seed(0))
    assert out.shape == x.shape


# --------------------------------------------------------------------------- SchedulerCommonTest leftovers
def test_deprecated_kwargs_convention():
    """SchedulerCommonTest.test_deprecated_kwargs: `**kwargs` in `__init__` iff `_deprecated_kwargs` is declared."""
    has_kwargs = "kwargs" in inspect.signature(MagiHumanScheduler.__init__).parameters
    assert has_kwargs == bool(getattr(MagiHumanScheduler, "_deprecated_kwargs", []))


@pytest.mark.parametrize("solver_order", [1, 2, 3])
@pytest.mark.parametrize("num_train_timesteps", [250, 999, 1000])
def test_reloaded_scheduler_continues_a_run_identically(tmp_path, solver_order, num_train_timesteps):
    """SchedulerCommonTest.check_over_configs: a scheduler rebuilt from its saved config, given the same multistep
    history, makes the same steps (the history is state, not config)."""
    s = MagiHumanScheduler(solver_order=solver_order, num_train_timesteps=num_train_timesteps)
    s.set_timesteps(10)
    s.save_config(tmp_path)
    loaded = MagiHumanScheduler.from_pretrained(tmp_path)
    loaded.set_timesteps(10)
    assert torch.equal(loaded.timesteps, s.timesteps) and torch.equal(loaded.sigmas, s.sigmas)
    x = torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    residual = 0.1 * x
    history = [residual + 0.2, residual + 0.15, residual + 0.1][:solver_order]
    outputs = []
    for scheduler in (s, loaded):
        scheduler.model_outputs = list(history)
        scheduler.set_begin_index(5)
        y = x.clone()
        for t in scheduler.timesteps[5 : 5 + solver_order + 1]:
            y = scheduler.step(residual, t, y).prev_sample
        outputs.append(y)
    assert torch.isfinite(outputs[0]).all() and torch.equal(outputs[0], outputs[1])


@pytest.mark.parametrize("sampler", ["unipc", "dmd"])
@pytest.mark.parametrize("shape", [(4, 3, 8), (4, 3, 8, 8)], ids=["1d", "2d"])
def test_full_loop_on_image_and_sequence_shaped_samples(sampler, shape):
    """The stock UniPC test's full loops (its 1-D variant too), on this scheduler's flow grid: finite, same shape and
    dtype, and the last step lands on the x0 prediction (sigma_N = 0)."""
    s = MagiHumanScheduler(sampler=sampler)
    s.set_timesteps(10)
    x = torch.rand(*shape, generator=torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(1)
    for k, t in enumerate(s.timesteps):
        v = _velocity(x, k)
        x_prev, x = x, s.step(v, t, x, generator=g).prev_sample
    assert x.shape == shape and x.dtype == torch.float32 and torch.isfinite(x).all()
    if sampler == "dmd":
        # DMD-2 at sigma_N = 0: x_N = x0 = x_{N-1} - sigma_{N-1} * v exactly (the noise term has weight 0).
        torch.testing.assert_close(x, x_prev - s.sigmas[-2] * v, rtol=0, atol=0)


# --------------------------------------------------------------------------- scheduler swap in the pipeline
@pytest.mark.parametrize("distilled", [False, True], ids=["base_unipc", "distilled_dmd"])
def test_scheduler_swap_in_the_pipeline_reproduces_ours_on_the_model_grid(distilled):
    """`pipe.scheduler = Stock.from_config(pipe.scheduler.config)` plus `sigmas=magihuman_sigmas(N)` samples exactly
    what MagiHumanScheduler samples: stock flow UniPC for the base rule, stochastic FlowMatchEuler (guidance off, as
    the distilled checkpoint samples) for the DMD-2 rule. Transformer only, with precomputed text embeddings."""
    from diffusers_magihuman import MagiHumanPipeline
    from diffusers_magihuman.testing_utils import TINY_TEXT_DIM, make_tiny_transformer

    pipe = MagiHumanPipeline(
        transformer=make_tiny_transformer(0),
        scheduler=MagiHumanScheduler(sampler="dmd" if distilled else "unipc"),
        vae=None, audio_vae=None, text_encoder=None, tokenizer=None,
    )  # fmt: skip
    pipe.set_progress_bar_config(disable=True)
    g = torch.Generator().manual_seed(0)
    embeds = {"prompt_embeds": torch.randn(1, 6, TINY_TEXT_DIM, generator=g)}
    if not distilled:
        embeds["negative_prompt_embeds"] = torch.randn(1, 4, TINY_TEXT_DIM, generator=g)
    kw = dict(height=32, width=32, num_frames=5, output_type="latent", **embeds)
    ours = pipe(num_inference_steps=3, generator=torch.Generator().manual_seed(0), **kw)
    stock_cls = FlowMatchEulerDiscreteScheduler if distilled else UniPCMultistepScheduler
    pipe.scheduler = stock_cls.from_config(pipe.scheduler.config)
    assert is_distilled_scheduler(pipe.scheduler) == distilled
    guidance = dict(guidance_scale=1.0, audio_guidance_scale=1.0) if distilled else {}
    stock = pipe(sigmas=magihuman_sigmas(3), generator=torch.Generator().manual_seed(0), **guidance, **kw)
    if distilled:
        # FlowMatchEuler shifts the grid in float32 (ours in float64): sigmas differ by ~1 ulp (6e-8), which the DiT
        # and three re-noising steps carry to a few 1e-7 on latents of size ~3 (measured 4.8e-7); bound 10x.
        torch.testing.assert_close(stock.frames, ours.frames, rtol=0, atol=5e-6)
        torch.testing.assert_close(stock.audio, ours.audio, rtol=0, atol=5e-6)
    else:
        # MagiHumanScheduler *is* stock flow UniPC on this grid: the same float32 ops, bit-identical.
        assert torch.equal(stock.frames, ours.frames) and torch.equal(stock.audio, ours.audio)
