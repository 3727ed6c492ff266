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
"""The timestep-free daVinci-MagiHuman scheduler: flow-matching UniPC (base) and the DMD-2 rule (distilled)."""

from __future__ import annotations

import inspect
from typing import Literal

import numpy as np
import torch
from diffusers.configuration_utils import FrozenDict, register_to_config
from diffusers.schedulers.scheduling_unipc_multistep import UniPCMultistepScheduler
from diffusers.schedulers.scheduling_utils import KarrasDiffusionSchedulers, SchedulerOutput
from diffusers.utils import logging
from diffusers.utils.torch_utils import randn_tensor


logger = logging.get_logger(__name__)

_SAMPLERS = ("unipc", "dmd")

# Every argument of the stock UniPC scheduler with its default. The inherited UniPC methods read their settings from
# `self.config`; MagiHuman fixes most of them (spec §5.3), so they are supplied by `MagiHumanScheduler.config` rather
# than stored in `scheduler_config.json`.
_UNIPC_DEFAULTS = {
    name: p.default
    for name, p in inspect.signature(UniPCMultistepScheduler.__init__).parameters.items()
    if name != "self" and p.default is not inspect.Parameter.empty
}


class MagiHumanScheduler(UniPCMultistepScheduler):
    r"""
    The daVinci-MagiHuman sampler, for the base and the DMD-2 distilled checkpoints.

    MagiHuman's DiT is *timestep-free*: it reads the noise level from its input and never receives `t` or `σ` (spec
    §5.1). Its output is a flow velocity `v = ε − x0`, so every update first forms `x0 = x − σ·v`. The integer
    `timesteps` only locate the first step and drive the pipeline's video-guidance switch (`t > 500`).

    Two step rules, picked by the `sampler` config field so that a checkpoint folder samples correctly through
    `from_pretrained` alone:

    * `"unipc"` (base model, and every super-resolution stage): the original's flow-matching UniPC (spec §5.3):
      order 2, `bh2`, x0-prediction, UniC corrector, `lower_order_final`. This is diffusers'
      [`UniPCMultistepScheduler`] in flow mode, unchanged: its predictor/corrector evaluate in the same grouping as the
      original and reproduce it bit-exactly on CPU. Only the σ grid differs, see below.
    * `"dmd"` (distilled model, spec §5.4): the stochastic re-noising rule of DMD-2 sampling,
      `x_{i+1} = σ_{i+1}·ε + (1 − σ_{i+1})·(x_i − σ_i·v_i)` with fresh Gaussian noise `ε` at every step, the last one
      included (where `σ_N = 0` makes it irrelevant). The noise comes from `generator` through diffusers'
      `randn_tensor`, or is given with `noise=`.

    The σ grid (spec §5.2, §9.1): `s = linspace(σ_max, 0, N + 1)[:-1]` in float64, with `σ_max = float32(1 − 1/1000)
    = 0.999` (the top of the original's training grid, not 1.0), then `σ = shift·s / (1 + (shift − 1)·s)` applied
    **once**, a final `σ = 0` appended, `sigmas` cast to float32 and `timesteps = int64(σ·1000)` (truncated). The first
    σ is therefore 0.9998 and the first timestep 999. Stock UniPC starts its grid at 1.0 instead.

    The step index is found on the first `step` call from the timestep, taking the *second* match when the timestep
    occurs more than once (spec §5.2, §9.23), as stock UniPC does; a timestep that is not in the schedule raises.

    The scheduler is stateful (UniPC history, step index): step each latent stream (video, audio) with its own
    instance, e.g. a `copy.deepcopy`.

    Args:
        num_train_timesteps (`int`, defaults to 1000):
            Number of training timesteps; sets `σ_max = 1 − 1/num_train_timesteps` and the σ → timestep scale.
        shift (`float`, defaults to 5.0):
            Static flow shift, applied once to the σ grid.
        solver_order (`int`, defaults to 2):
            UniPC order (`"unipc"` only).
        sampler (`"unipc"` or `"dmd"`, defaults to `"unipc"`):
            Step rule: multistep UniPC (base checkpoints) or the DMD-2 re-noising rule (distilled checkpoints).
        solver_type (`"bh1"` or `"bh2"`, defaults to `"bh2"`):
            UniPC B(h) variant (`"unipc"` only).
        lower_order_final (`bool`, defaults to `True`):
            Use a first-order predictor at the last step (`"unipc"` only).
        disable_corrector (`list[int]`, *optional*):
            Step indices whose UniC correction is skipped (`"unipc"` only); the original corrects every step.
    """

    _compatibles = [e.name for e in KarrasDiffusionSchedulers] + ["FlowMatchEulerDiscreteScheduler"]
    order = 1

    @register_to_config
    def __init__(
        self,
        num_train_timesteps: int = 1000,
        shift: float = 5.0,
        solver_order: int = 2,
        sampler: Literal["unipc", "dmd"] = "unipc",
        solver_type: Literal["bh1", "bh2"] = "bh2",
        lower_order_final: bool = True,
        disable_corrector: list[int] | None = None,
    ) -> None:
        if sampler not in _SAMPLERS:
            raise ValueError(
                f"`sampler` must be one of {_SAMPLERS}: 'unipc' for base checkpoints, 'dmd' for the distilled (DMD-2) "
                f"checkpoint; got {sampler!r}."
            )
        if shift <= 0:
            raise ValueError(f"`shift` must be positive, got {shift}.")
        # Run the stock UniPC constructor without registering its arguments (the undecorated `__init__`): the
        # inherited methods see them through `self.config` below.
        unipc_init = getattr(UniPCMultistepScheduler.__init__, "__wrapped__", UniPCMultistepScheduler.__init__)
        unipc_init(self, **{k: v for k, v in self._unipc_overrides().items() if k in _UNIPC_DEFAULTS})
        # Before `set_timesteps`, expose the original's (unshifted) training grid, spec §5.2 step 1.
        alphas = np.linspace(1.0, 1.0 / num_train_timesteps, num_train_timesteps)[::-1].copy()
        self.sigmas = torch.from_numpy(1.0 - alphas).to(torch.float32)
        self.timesteps = self.sigmas * num_train_timesteps
        # Quirk (spec §5.2, §9.1): the grid starts at float32(0.999), not 1.0.
        self.sigma_max = self.sigmas[0].item()
        self.sigma_min = self.sigmas[-1].item()

    def _unipc_overrides(self) -> dict:
        """The stock UniPC settings that reproduce the original's FlowUniPCMultistepScheduler (spec §5.3)."""
        own = self._internal_dict
        disable_corrector = own.get("disable_corrector")
        return {
            "num_train_timesteps": own["num_train_timesteps"],
            "solver_order": own["solver_order"],
            "solver_type": own["solver_type"],
            "lower_order_final": own["lower_order_final"],
            "disable_corrector": list(disable_corrector) if disable_corrector else [],
            "prediction_type": "flow_prediction",
            "predict_x0": True,
            "use_flow_sigmas": True,
            "flow_shift": float(own["shift"]),
            "final_sigmas_type": "zero",
            "thresholding": False,
            "use_dynamic_shifting": False,
            "shift_terminal": None,
        }

    @property
    def config(self) -> FrozenDict:
        """The registered MagiHuman config, plus the fixed stock-UniPC settings the inherited methods read.

        Only the MagiHuman fields (`num_train_timesteps`, `shift`, `solver_order`, `sampler`, ...) are saved to
        `scheduler_config.json`; the UniPC ones are derived from them and listed here for the inherited code.
        """
        return FrozenDict({**_UNIPC_DEFAULTS, **self._internal_dict, **self._unipc_overrides()})

    def register_to_config(self, **kwargs) -> None:
        # The stock-UniPC settings are derived from the MagiHuman fields (see `config`), never stored: this keeps
        # `from_config(other.config)` from saving stale copies of them (diffusers registers unknown keys as "hidden").
        super().register_to_config(**{k: v for k, v in kwargs.items() if k not in _DERIVED_KEYS})

    @property
    def is_distilled(self) -> bool:
        """Whether the DMD-2 step rule is used (distilled checkpoint: 8 steps, no classifier-free guidance)."""
        return self._internal_dict["sampler"] == "dmd"

    def set_timesteps(
        self,
        num_inference_steps: int | None = None,
        device: str | torch.device | None = None,
        sigmas: list[float] | np.ndarray | None = None,
    ) -> None:
        """
        Sets the σ grid and timesteps (spec §5.2). Run before the denoising loop.

        Args:
            num_inference_steps (`int`):
                Number of denoising steps `N`.
            device (`str` or `torch.device`, *optional*):
                Device for `timesteps`. `sigmas` stay on the CPU, as in diffusers' UniPC.
            sigmas (`list[float]` or `np.ndarray`, *optional*):
                Custom *unshifted* noise levels, one per step, highest first; `shift` is applied to them once and a
                final 0 appended. Replaces `num_inference_steps`.

        Sets `self.timesteps` (int64 `[N]`) and `self.sigmas` (float32 `[N + 1]`, last entry 0).
        """
        if sigmas is None:
            if num_inference_steps is None or int(num_inference_steps) < 1:
                raise ValueError(f"`num_inference_steps` must be a positive integer, got {num_inference_steps}.")
            # spec §5.2 step 2: float64 linspace from σ_max (float32 0.999) down to 0, last point dropped.
            sigmas = np.linspace(self.sigma_max, self.sigma_min, int(num_inference_steps) + 1)[:-1]
        else:
            # The stock scheduler needs an array here (a list fails there, diffusers spec §5.2).
            sigmas = np.asarray(sigmas, dtype=np.float64).reshape(-1)
            if sigmas.size == 0:
                raise ValueError("`sigmas` must not be empty.")
        # The stock flow branch does the rest exactly as the original (spec §5.2 steps 3-4): the shift in float64,
        # `timesteps = int64(σ·1000)` (truncation) and float32 sigmas with a final 0.
        super().set_timesteps(device=device, sigmas=sigmas)

    def index_for_timestep(self, timestep: int | torch.Tensor, schedule_timesteps: torch.Tensor | None = None) -> int:
        """
        Index of `timestep` in the schedule: the second match if it occurs more than once (spec §5.2, §9.23).

        Raises:
            ValueError: if `timestep` is not in the schedule (stock UniPC would silently use the last step).
        """
        if schedule_timesteps is None:
            schedule_timesteps = self.timesteps
        if (schedule_timesteps == timestep).sum() == 0:
            raise ValueError(
                f"Timestep {timestep} is not in this scheduler's schedule {schedule_timesteps.tolist()}. Pass the "
                "values of `scheduler.timesteps` (after `set_timesteps`), or call `set_begin_index` first."
            )
        return super().index_for_timestep(timestep, schedule_timesteps)

    def step(
        self,
        model_output: torch.Tensor,
        timestep: int | torch.Tensor,
        sample: torch.Tensor,
        generator: torch.Generator | list[torch.Generator] | None = None,
        noise: torch.Tensor | None = None,
        return_dict: bool = True,
    ) -> SchedulerOutput | tuple:
        """
        One denoising step from `sample` at `timestep` to the next σ of the schedule.

        Args:
            model_output (`torch.Tensor`):
                The DiT's flow velocity `v` for `sample`, same shape (e.g. video `(B, 48, T, h, w)`, audio
                `(B, Na, 64)`).
            timestep (`int` or `torch.Tensor`):
                The current entry of `self.timesteps`; it only locates the first step.
            sample (`torch.Tensor`):
                The latent the model was given.
            generator (`torch.Generator` or list, *optional*):
                Source of the DMD re-noising draw (`"dmd"` only; ignored by `"unipc"`).
            noise (`torch.Tensor`, *optional*):
                The DMD re-noising noise, shape of `sample`, instead of a draw (`"dmd"` only; ignored by `"unipc"`).
            return_dict (`bool`, defaults to `True`):
                Return a [`~schedulers.scheduling_utils.SchedulerOutput`] instead of a tuple.

        Returns:
            [`~schedulers.scheduling_utils.SchedulerOutput`] or `tuple`: the next latent, `prev_sample`, shape of
            `sample`.
        """
        if self.num_inference_steps is None:
            raise ValueError("Call `set_timesteps` before `step`.")
        if self.step_index is not None and self.step_index >= self.num_inference_steps:
            raise ValueError(
                f"All {self.num_inference_steps} steps have been taken; call `set_timesteps` again to sample anew."
            )
        if not self.is_distilled:
            return super().step(model_output, timestep, sample, return_dict=return_dict)

        if self.step_index is None:
            self._init_step_index(timestep)
        device = sample.device
        sigma = self.sigmas[self.step_index].to(device)
        sigma_next = self.sigmas[self.step_index + 1].to(device)
        if noise is None:
            # spec §5.4, §9.7: fresh noise at every step, drawn even at the last one (σ_N = 0).
            noise = randn_tensor(sample.shape, generator=generator, device=device, dtype=sample.dtype)
        elif noise.shape != sample.shape:
            raise ValueError(
                f"`noise` must have the shape of `sample` {tuple(sample.shape)}, got {tuple(noise.shape)}."
            )
        else:
            noise = noise.to(device=device, dtype=sample.dtype)
        x0 = sample - sigma * model_output
        prev_sample = sigma_next * noise + (1 - sigma_next) * x0
        self._step_index += 1

        if not return_dict:
            return (prev_sample,)
        return SchedulerOutput(prev_sample=prev_sample)


# Stock-UniPC config keys that MagiHumanScheduler derives instead of storing.
_DERIVED_KEYS = frozenset(_UNIPC_DEFAULTS) - frozenset(inspect.signature(MagiHumanScheduler.__init__).parameters)
