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
"""Helpers that let the MagiHuman pipelines drive either [`MagiHumanScheduler`] or a stock diffusers flow scheduler.

The pipelines need four things from a scheduler: a schedule (`retrieve_timesteps`), whether it is the distilled
re-noising rule (`is_distilled_scheduler`), one step with or without a generator (`scheduler_step`), and, for the
super-resolution stage, its deterministic counterpart (`deterministic_scheduler`). Supported: `MagiHumanScheduler`,
`UniPCMultistepScheduler` in flow mode (`use_flow_sigmas=True, prediction_type="flow_prediction"`) and
`FlowMatchEulerDiscreteScheduler` (with or without `stochastic_sampling`). `check_scheduler` refuses the others.
"""

from __future__ import annotations

import inspect

import numpy as np
import torch
from diffusers.schedulers.scheduling_flow_match_euler_discrete import FlowMatchEulerDiscreteScheduler
from diffusers.schedulers.scheduling_unipc_multistep import UniPCMultistepScheduler

from .scheduling_magihuman import MagiHumanScheduler


SUPPORTED_SCHEDULERS = (MagiHumanScheduler, UniPCMultistepScheduler, FlowMatchEulerDiscreteScheduler)


def magihuman_sigmas(num_inference_steps: int, num_train_timesteps: int = 1000) -> np.ndarray:
    """
    The model's *unshifted* sigma grid, `linspace(sigma_max, 0, N + 1)[:-1]` in float64 with
    `sigma_max = float32(1 - 1/num_train_timesteps)` (0.999, the top of the original's training grid).

    Passed as `sigmas=` to a stock flow scheduler (which applies its own `flow_shift`/`shift` once), it gives the
    schedule the original samples with: stock flow UniPC then reproduces `MagiHumanScheduler(sampler="unipc")`
    bit-exactly.

    Returns:
        `np.ndarray` of shape `(num_inference_steps,)`, float64, highest first, no final 0.
    """
    if isinstance(num_inference_steps, bool) or not isinstance(num_inference_steps, (int, np.integer)) or num_inference_steps < 1:
        raise ValueError(f"`num_inference_steps` must be a positive integer, got {num_inference_steps!r}.")
    sigma_max = float(np.float32(1.0 - 1.0 / num_train_timesteps))
    return np.linspace(sigma_max, 0.0, int(num_inference_steps) + 1)[:-1]


def check_scheduler(scheduler) -> None:
    """
    Raise a `ValueError` if `scheduler` cannot drive the timestep-free MagiHuman flow model.

    The DiT returns a flow velocity and never sees `t`, so the scheduler must be a flow-matching one with a static shift:
    `MagiHumanScheduler`, `UniPCMultistepScheduler(use_flow_sigmas=True, prediction_type="flow_prediction")` or
    `FlowMatchEulerDiscreteScheduler` (without dynamic shifting).
    """
    if isinstance(scheduler, MagiHumanScheduler):
        return
    name = type(scheduler).__name__
    supported = (
        "MagiHumanScheduler, UniPCMultistepScheduler(use_flow_sigmas=True, prediction_type='flow_prediction') or "
        "FlowMatchEulerDiscreteScheduler"
    )
    if not isinstance(scheduler, SUPPORTED_SCHEDULERS):
        raise ValueError(
            f"{name} cannot drive MagiHuman, a timestep-free flow-matching model; use {supported} (e.g. "
            "`UniPCMultistepScheduler.from_config(MagiHumanScheduler().config)`)."
        )
    config = scheduler.config
    if isinstance(scheduler, UniPCMultistepScheduler):
        problems = []
        if config.prediction_type != "flow_prediction":
            problems.append(f"prediction_type={config.prediction_type!r} (needs 'flow_prediction')")
        if not config.use_flow_sigmas:
            problems.append("use_flow_sigmas=False (needs True)")
        if config.final_sigmas_type != "zero":
            problems.append(f"final_sigmas_type={config.final_sigmas_type!r} (needs 'zero')")
        if config.use_karras_sigmas or config.use_exponential_sigmas or config.use_beta_sigmas:
            problems.append("Karras/exponential/beta sigmas (the grid must be the flow grid)")
        if problems:
            raise ValueError(f"This {name} cannot drive MagiHuman: {', '.join(problems)}. Use {supported}.")
    if getattr(config, "use_dynamic_shifting", False):
        raise ValueError(
            f"{name} with `use_dynamic_shifting=True` needs a resolution-dependent `mu` that the MagiHuman pipelines do "
            "not compute; use a static shift (`use_dynamic_shifting=False`, `flow_shift`/`shift`)."
        )
    if getattr(config, "invert_sigmas", False):
        raise ValueError(f"{name} with `invert_sigmas=True` cannot drive MagiHuman.")


def is_distilled_scheduler(scheduler) -> bool:
    """Whether `scheduler` uses the re-noising (DMD-2 distilled) rule: `MagiHumanScheduler(sampler="dmd")` or
    `FlowMatchEulerDiscreteScheduler(stochastic_sampling=True)`. Such schedulers sample without classifier-free
    guidance, default to 8 steps, and consume one noise draw per stream per step."""
    if isinstance(scheduler, MagiHumanScheduler):
        return scheduler.is_distilled
    return bool(getattr(scheduler.config, "stochastic_sampling", False))


def deterministic_scheduler(scheduler):
    """
    A fresh scheduler for the super-resolution stage, which always samples without re-noising.

    `MagiHumanScheduler` becomes `MagiHumanScheduler(sampler="unipc")` with the same config (the original's SR stage);
    `FlowMatchEulerDiscreteScheduler(stochastic_sampling=True)` becomes the plain Euler one. A deterministic scheduler
    is returned as a fresh copy of itself (same class and config), so stepping it never disturbs the caller's.
    """
    check_scheduler(scheduler)
    if isinstance(scheduler, MagiHumanScheduler):
        return MagiHumanScheduler.from_config(scheduler.config, sampler="unipc")
    if isinstance(scheduler, FlowMatchEulerDiscreteScheduler):
        return type(scheduler).from_config(scheduler.config, stochastic_sampling=False)
    return type(scheduler).from_config(scheduler.config)


def retrieve_timesteps(
    scheduler,
    num_inference_steps: int | None = None,
    device: str | torch.device | None = None,
    timesteps: list[int] | np.ndarray | torch.Tensor | None = None,
    sigmas: list[float] | np.ndarray | torch.Tensor | None = None,
    **kwargs,
) -> tuple[torch.Tensor, int]:
    """
    Calls `scheduler.set_timesteps` and returns `(scheduler.timesteps, number of steps)`, like diffusers'
    `retrieve_timesteps`, for `MagiHumanScheduler` and the stock flow schedulers.

    Exactly one schedule source is used: `timesteps`, else `sigmas`, else `num_inference_steps`. A stock scheduler
    given only `num_inference_steps` samples on the model's grid ([`magihuman_sigmas`], its own shift applied once),
    so that e.g. `UniPCMultistepScheduler.from_config(MagiHumanScheduler().config)` reproduces the original.

    Args:
        scheduler: `MagiHumanScheduler`, flow `UniPCMultistepScheduler` or `FlowMatchEulerDiscreteScheduler`.
        num_inference_steps (`int`, *optional*):
            Number of steps. With `sigmas`/`timesteps` leave it `None` (or equal to their length).
        device (`str` or `torch.device`, *optional*):
            Device for the timesteps.
        timesteps (`list[int]`, *optional*):
            Custom timesteps, highest first; their meaning is the scheduler's own (for `MagiHumanScheduler`, integer
            timesteps with `sigma = t / 1000`, no shift). Stock UniPC does not accept them.
        sigmas (`list[float]`, *optional*):
            Custom unshifted sigmas, highest first, without the final 0; the scheduler applies its shift once.
        kwargs: passed to `set_timesteps`.

    Returns:
        `tuple[torch.Tensor, int]`: the timesteps on `device` and their number.
    """
    check_scheduler(scheduler)
    if timesteps is not None and sigmas is not None:
        raise ValueError("Give either `timesteps` or `sigmas`, not both.")
    custom = timesteps if timesteps is not None else sigmas
    if custom is not None:
        if isinstance(custom, torch.Tensor):
            custom = custom.detach().cpu().numpy()
        custom = np.asarray(custom, dtype=np.float64).reshape(-1)
        if num_inference_steps is not None and num_inference_steps != custom.size:
            raise ValueError(
                f"`num_inference_steps={num_inference_steps}` does not match the {custom.size} given "
                f"`{'timesteps' if timesteps is not None else 'sigmas'}`; leave it unset."
            )
    elif num_inference_steps is None:
        raise ValueError("Pass `num_inference_steps`, `sigmas` or `timesteps`.")
    elif not isinstance(scheduler, MagiHumanScheduler):
        # The model's grid, shifted by the stock scheduler itself (a list would fail in stock UniPC: ndarray).
        sigmas = custom = magihuman_sigmas(num_inference_steps, scheduler.config.num_train_timesteps)

    accepted = set(inspect.signature(scheduler.set_timesteps).parameters)
    if timesteps is not None:
        if "timesteps" not in accepted:
            raise ValueError(
                f"{type(scheduler).__name__}.set_timesteps does not accept custom `timesteps`; pass `sigmas` instead."
            )
        scheduler.set_timesteps(timesteps=custom, device=device, **kwargs)
    elif sigmas is not None:
        if "sigmas" not in accepted:
            raise ValueError(f"{type(scheduler).__name__}.set_timesteps does not accept custom `sigmas`.")
        scheduler.set_timesteps(sigmas=custom, device=device, **kwargs)
    else:
        scheduler.set_timesteps(num_inference_steps, device=device, **kwargs)
    return scheduler.timesteps, len(scheduler.timesteps)


def scheduler_step(
    scheduler,
    model_output: torch.Tensor,
    timestep: int | torch.Tensor,
    sample: torch.Tensor,
    generator: torch.Generator | list[torch.Generator] | None = None,
) -> torch.Tensor:
    """
    One `scheduler.step`, returning `prev_sample`. `generator` is passed only to schedulers whose `step` takes one
    (`MagiHumanScheduler`, FlowMatchEuler); stock UniPC's does not and is deterministic anyway.
    """
    if generator is not None and "generator" in inspect.signature(scheduler.step).parameters:
        return scheduler.step(model_output, timestep, sample, generator=generator, return_dict=False)[0]
    return scheduler.step(model_output, timestep, sample, return_dict=False)[0]
