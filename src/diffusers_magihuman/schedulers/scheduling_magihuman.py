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

import functools
import inspect
import json
import math
from numbers import Integral, Real
from typing import Literal

import numpy as np
import torch
from diffusers.configuration_utils import FrozenDict, register_to_config
from diffusers.schedulers.scheduling_flow_match_euler_discrete import FlowMatchEulerDiscreteScheduler
from diffusers.schedulers.scheduling_utils import SchedulerMixin  # noqa: F401  (diffusers' loader looks it up here for folders naming this module)
from diffusers.schedulers.scheduling_unipc_multistep import UniPCMultistepScheduler
from diffusers.schedulers.scheduling_utils import SchedulerOutput
from diffusers.utils import logging
from diffusers.utils.torch_utils import randn_tensor


logger = logging.get_logger(__name__)

_SAMPLERS = ("unipc", "dmd")
# A hard ceiling on `num_inference_steps` for shifts where the first-timestep rule never binds (e.g. shift <= 1).
_STEPS_CAP = 100_000


def _init_defaults(cls) -> dict:
    return {
        name: p.default
        for name, p in inspect.signature(cls.__init__).parameters.items()
        if name != "self" and p.default is not inspect.Parameter.empty
    }


# Every argument of the stock UniPC scheduler with its default.
_UNIPC_DEFAULTS = _init_defaults(UniPCMultistepScheduler)

# The stock-UniPC settings this model fixes: flow prediction (the DiT returns a velocity v = eps - x0, so x0 = x - sigma*v),
# static shift on flow sigmas, x0-predicting UniPC with a final sigma of exactly 0, no thresholding, no dynamic shifting
# and no Karras/exponential/beta re-spacing. The inherited UniPC methods read them from `self.config`; they are readable
# there as attributes but are not config *keys*, so they are neither saved nor handed to other classes by `from_config`.
_FIXED_UNIPC = {
    **_UNIPC_DEFAULTS,
    "prediction_type": "flow_prediction",
    "predict_x0": True,
    "use_flow_sigmas": True,
    "final_sigmas_type": "zero",
    "thresholding": False,
    "use_dynamic_shifting": False,
    "shift_terminal": None,
    "use_karras_sigmas": False,
    "use_exponential_sigmas": False,
    "use_beta_sigmas": False,
    "solver_p": None,
}

# Options of the stock flow schedulers that this model's sampler cannot honour, with the only accepted value. A config
# (or `from_config` keyword) asking for anything else is refused rather than silently dropped.
_REFUSED_OPTIONS = {
    "prediction_type": (
        "flow_prediction",
        "the MagiHuman DiT predicts a flow velocity (v = noise - x0); epsilon/v/sample prediction cannot drive it",
    ),
    "use_flow_sigmas": (True, "MagiHuman samples on flow-matching sigmas (x_t = (1 - sigma) * x0 + sigma * noise)"),
    "predict_x0": (True, "the original's UniPC is the x0-predicting (data) variant"),
    "final_sigmas_type": ("zero", "the schedule always ends at sigma = 0, where the last step returns the x0 prediction"),
    "thresholding": (False, "dynamic thresholding is for pixel-space epsilon models"),
    "use_dynamic_shifting": (False, "MagiHuman uses a static shift; set `shift` instead"),
    "use_karras_sigmas": (False, "the sigma grid is the model's own (see the class docstring)"),
    "use_exponential_sigmas": (False, "the sigma grid is the model's own (see the class docstring)"),
    "use_beta_sigmas": (False, "the sigma grid is the model's own (see the class docstring)"),
    "shift_terminal": (None, "the schedule always ends at sigma = 0"),
    "invert_sigmas": (False, "inverted sigmas are a Mochi-only convention"),
}


class _MagiHumanConfig(FrozenDict):
    """A scheduler config whose keys are the registered fields plus the stock flow keys; the other fixed stock-UniPC
    settings are readable as attributes (for the inherited UniPC methods) without being keys."""

    def __getattr__(self, name):
        try:
            return _FIXED_UNIPC[name]
        except KeyError:
            raise AttributeError(f"'{type(self).__name__}' object has no attribute '{name}'") from None


def _check_int(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, Integral) or int(value) < minimum:
        raise ValueError(f"`{name}` must be an integer >= {minimum}, got {value!r}.")
    return int(value)


class MagiHumanScheduler(UniPCMultistepScheduler):
    r"""
    The daVinci-MagiHuman sampler, for the base and the DMD-2 distilled checkpoints.

    MagiHuman's DiT is *timestep-free*: it reads the noise level from its input and never receives `t` or `sigma`. Its
    output is a flow velocity `v = noise - x0`, so every update first forms `x0 = x - sigma * v`. The integer
    `timesteps` only locate the first step and drive the pipeline's video-guidance switch (`t > 500`).

    Two step rules, picked by the `sampler` config field so that a checkpoint folder samples correctly through
    `from_pretrained` alone:

    * `"unipc"` (base model, and every super-resolution stage): the original's flow-matching UniPC, order 2, `bh2`,
      x0-prediction, UniC corrector, `lower_order_final`. This *is* diffusers' [`UniPCMultistepScheduler`] in flow mode
      (`prediction_type="flow_prediction"`, `use_flow_sigmas=True`, `flow_shift=shift`), unchanged: its predictor and
      corrector evaluate in the same grouping as the original and reproduce it bit-exactly on CPU. Only the sigma grid
      differs, see below.
    * `"dmd"` (distilled model): the stochastic re-noising rule of DMD-2 sampling,
      `x_{i+1} = sigma_{i+1} * noise + (1 - sigma_{i+1}) * (x_i - sigma_i * v_i)` with fresh Gaussian noise at every
      step, the last one included (where `sigma_N = 0` makes it irrelevant but the draw still advances the generator,
      as in the original). This is the update of [`FlowMatchEulerDiscreteScheduler`] with `stochastic_sampling=True`;
      the noise comes from `generator` through diffusers' `randn_tensor`, or is given with `noise=`.

    The sigma grid: `s = linspace(sigma_max, 0, N + 1)[:-1]` in float64, with `sigma_max = float32(1 - 1/1000) = 0.999`
    (the top of the original's training grid, not 1.0), then `sigma = shift * s / (1 + (shift - 1) * s)` applied
    **once**, a final `sigma = 0` appended, `sigmas` cast to float32 and `timesteps = int64(sigma * 1000)` (truncated).
    The first sigma is therefore 0.9998 and the first timestep 999. Stock flow UniPC starts its default grid at 1.0;
    given `sigmas=linspace(0.999, 0, N + 1)[:-1]` it produces this exact grid (see
    [`~schedulers.scheduling_utils_magihuman.magihuman_sigmas`]).

    The step index is found on the first `step` call from the timestep, taking the *second* match when the timestep
    occurs more than once (the original's rule, shared with stock UniPC); a timestep that is not in the schedule
    raises. Because of that rule the first timestep must be unique: [`~MagiHumanScheduler.max_num_inference_steps`]
    (250 at shift 5) is the largest `num_inference_steps` for which it is, and more steps are refused.

    The scheduler is stateful (UniPC history, step index): step each latent stream (video, audio) with its own
    instance, e.g. a `copy.deepcopy`.

    Config and other schedulers: `scheduler.config` holds the fields below plus the keys stock flow schedulers read
    (`prediction_type="flow_prediction"`, `use_flow_sigmas=True`, `flow_shift` = `shift`, `final_sigmas_type="zero"`,
    `stochastic_sampling` = `sampler == "dmd"`), so `UniPCMultistepScheduler.from_config(scheduler.config)` and
    `FlowMatchEulerDiscreteScheduler.from_config(scheduler.config)` give the matching stock flow scheduler.
    `scheduler_config.json` holds the fields below plus those derived keys, so the stock classes' `from_pretrained`
    reads a checkpoint's schedule too. `MagiHumanScheduler.from_config` reads a stock flow config the
    other way round (`flow_shift` becomes `shift`, `stochastic_sampling=True` becomes `sampler="dmd"`) and refuses
    settings this model cannot sample with (epsilon prediction, dynamic shifting, Karras sigmas, `solver_type="bh1"`...).

    Args:
        num_train_timesteps (`int`, defaults to 1000):
            Number of training timesteps; sets `sigma_max = 1 - 1/num_train_timesteps` and the sigma -> timestep
            scale.
        shift (`float`, defaults to 5.0):
            Static flow shift, applied once to the sigma grid (stock UniPC calls it `flow_shift`).
        solver_order (`int`, defaults to 2):
            UniPC order, 1 to 3 (`"unipc"` only).
        sampler (`"unipc"` or `"dmd"`, defaults to `"unipc"`):
            Step rule: multistep UniPC (base checkpoints) or the DMD-2 re-noising rule (distilled checkpoints).
        solver_type (`"bh2"`, defaults to `"bh2"`):
            UniPC B(h) variant. Only `"bh2"` is accepted: with `"bh1"`, B(h) = h is infinite at the final sigma = 0 and
            the last step returns NaN.
        lower_order_final (`bool`, defaults to `True`):
            Use a first-order predictor at the last step. Must stay `True` for `solver_order > 1`: a higher order
            divides by the infinite log-SNR step to sigma = 0 and returns inf.
        disable_corrector (`list[int]`, *optional*):
            Step indices whose UniC correction is skipped (`"unipc"` only); the original corrects every step.
    """

    _compatibles = ["UniPCMultistepScheduler", "FlowMatchEulerDiscreteScheduler"]
    order = 1

    @register_to_config
    def __init__(
        self,
        num_train_timesteps: int = 1000,
        shift: float = 5.0,
        solver_order: int = 2,
        sampler: Literal["unipc", "dmd"] = "unipc",
        solver_type: Literal["bh2"] = "bh2",
        lower_order_final: bool = True,
        disable_corrector: list[int] | None = None,
    ) -> None:
        if sampler not in _SAMPLERS:
            raise ValueError(
                f"`sampler` must be one of {_SAMPLERS}: 'unipc' for base checkpoints, 'dmd' for the distilled (DMD-2) "
                f"checkpoint; got {sampler!r}."
            )
        _check_int("num_train_timesteps", num_train_timesteps, 2)
        if isinstance(shift, bool) or not isinstance(shift, Real) or not math.isfinite(shift) or shift <= 0:
            raise ValueError(f"`shift` must be a positive number, got {shift!r}.")
        if isinstance(solver_order, bool) or solver_order not in (1, 2, 3):
            raise ValueError(f"`solver_order` must be 1, 2 or 3, got {solver_order!r}.")
        if solver_type != "bh2":
            raise ValueError(
                f"`solver_type` must be 'bh2' (the original's UniPC variant), got {solver_type!r}. With 'bh1' the "
                "coefficient B(h) = h is infinite at the final sigma = 0 and the last step returns NaN."
            )
        if not lower_order_final and solver_order > 1:
            raise ValueError(
                "`lower_order_final=False` is not supported with `solver_order > 1`: the schedule ends at sigma = 0, "
                "where a higher-order final step divides by an infinite log-SNR step and returns inf. Keep the "
                "default `lower_order_final=True`."
            )
        if disable_corrector is not None and (
            isinstance(disable_corrector, (str, bytes))
            or not all(isinstance(i, Integral) and not isinstance(i, bool) and i >= 0 for i in disable_corrector)
        ):
            raise ValueError(f"`disable_corrector` must be a list of step indices (ints >= 0), got {disable_corrector!r}.")
        # Run the stock UniPC constructor without registering its arguments (the undecorated `__init__`): the
        # inherited methods read the fixed settings through `self.config`.
        unipc_init = getattr(UniPCMultistepScheduler.__init__, "__wrapped__", UniPCMultistepScheduler.__init__)
        unipc_init(self, **self._unipc_init_kwargs())
        # Before `set_timesteps`, expose the original's (unshifted) training grid: sigma_j = 1 - a_j with
        # a = linspace(1, 1/T, T) reversed, i.e. 0.999, 0.998, ..., 0 in float32.
        alphas = np.linspace(1.0, 1.0 / num_train_timesteps, num_train_timesteps)[::-1].copy()
        self.sigmas = torch.from_numpy(1.0 - alphas).to(torch.float32)
        self.timesteps = self.sigmas * num_train_timesteps
        # The grid starts at float32(0.999), not 1.0: the original's sigma_max.
        self.sigma_max = self.sigmas[0].item()
        self.sigma_min = self.sigmas[-1].item()

    # ------------------------------------------------------------------------------------------------ config
    def _unipc_init_kwargs(self) -> dict:
        """The stock UniPC constructor arguments that reproduce the original's flow UniPC for this config."""
        own = self._internal_dict
        disable_corrector = own.get("disable_corrector")
        kwargs = {
            **{k: v for k, v in _FIXED_UNIPC.items() if k in _UNIPC_DEFAULTS},
            "num_train_timesteps": own["num_train_timesteps"],
            "solver_order": own["solver_order"],
            "solver_type": own["solver_type"],
            "lower_order_final": own["lower_order_final"],
            "disable_corrector": list(disable_corrector) if disable_corrector else [],
            "flow_shift": float(own["shift"]),
        }
        return kwargs

    def _flow_keys(self) -> dict:
        """The keys stock flow schedulers read, derived from this config (see the class docstring)."""
        own = self._internal_dict
        return {
            "prediction_type": "flow_prediction",
            "use_flow_sigmas": True,
            "flow_shift": float(own["shift"]),
            "final_sigmas_type": "zero",
            "stochastic_sampling": own["sampler"] == "dmd",
        }

    @property
    def config(self) -> FrozenDict:
        """The registered config plus the derived stock flow keys (`prediction_type`, `use_flow_sigmas`, `flow_shift`,
        `final_sigmas_type`, `stochastic_sampling`); `save_config` writes both (see `to_json_string`)."""
        internal = self._internal_dict
        cached = self.__dict__.get("_config_cache")
        # The inherited UniPC code reads `self.config` ~20 times a step: rebuild only when the registered dict changed
        # (a new object from `register_to_config`, or keys added in place by `to_json_string`).
        if cached is not None and cached[0] is internal and cached[1] == len(internal):
            return cached[2]
        config = {**internal, **self._flow_keys()}
        if "_use_default_values" in config:
            # diffusers does not hand a source's *default* values to another class, but our default shift (5.0) is this
            # model's, not a neutral one: FlowMatchEuler (default shift 1.0) must receive it. Sorted, so that equal
            # configs compare equal (diffusers builds this list from a set).
            config["_use_default_values"] = sorted(k for k in config["_use_default_values"] if k != "shift")
        config = _MagiHumanConfig(config)
        self.__dict__["_config_cache"] = (internal, len(internal), config)
        return config

    def register_to_config(self, **kwargs) -> None:
        # Keys of the stock flow schedulers that are not ours are derived from our fields (see `config`) or refused in
        # `extract_init_dict`; never store copies of them (diffusers keeps a compatible class's keys as "hidden"
        # config entries), so that a saved config holds only MagiHuman fields and cannot go stale.
        super().register_to_config(**{k: v for k, v in kwargs.items() if k not in _STOCK_ONLY_KEYS})

    def to_json_string(self) -> str:
        """The saved config: our fields plus the derived stock flow keys (`prediction_type`, `use_flow_sigmas`,
        `flow_shift`, `final_sigmas_type`, `stochastic_sampling`), so that `UniPCMultistepScheduler.from_pretrained`
        and `FlowMatchEulerDiscreteScheduler.from_pretrained` on a checkpoint's `scheduler/` folder sample its schedule
        (without them a stock class would load an epsilon UniPC with `flow_shift=1.0`). Our own loader reads our
        fields and refuses a file whose derived keys were edited to disagree with them."""
        config = json.loads(super().to_json_string())
        config.update(self._flow_keys())
        return json.dumps(config, indent=2, sort_keys=True) + "\n"

    @classmethod
    def extract_init_dict(cls, config_dict, **kwargs):
        """Reads a MagiHuman config or a stock flow-scheduler config (`from_config`, `from_pretrained`).

        A stock flow config is translated: UniPC's `flow_shift` becomes `shift`, FlowMatchEuler's
        `stochastic_sampling=True` becomes `sampler="dmd"`. Keyword arguments win over the config. Settings this model
        cannot sample with (see `_REFUSED_OPTIONS`) raise a `ValueError` naming the setting.
        """
        config_dict = dict(config_dict)
        kwargs = dict(kwargs)
        # diffusers' rule: values the source class only had by default are not carried over to another class.
        used_defaults = set(config_dict.get("_use_default_values", []))
        given = {k: v for k, v in config_dict.items() if k not in used_defaults}
        source = config_dict.get("_class_name")

        for key, (accepted, why) in _REFUSED_OPTIONS.items():
            value = kwargs[key] if key in kwargs else given.get(key, accepted)
            if value != accepted:
                origin = "argument" if key in kwargs else f"config of {source or 'the given dict'}"
                raise ValueError(
                    f"MagiHumanScheduler cannot use `{key}={value!r}` (from the {origin}): {why}. Only "
                    f"`{key}={accepted!r}` is supported."
                )

        def resolve(own_key, stock_key, to_own):
            """One MagiHuman field that a stock class spells differently: keyword arguments first, then the config."""
            if own_key in kwargs and stock_key in kwargs and to_own(kwargs[stock_key]) != kwargs[own_key]:
                raise ValueError(
                    f"Conflicting arguments `{own_key}={kwargs[own_key]!r}` and `{stock_key}={kwargs[stock_key]!r}`; "
                    "give one of them."
                )
            if own_key in kwargs:
                return kwargs[own_key]
            if stock_key in kwargs:
                return to_own(kwargs[stock_key])
            # A config never holds two different values legitimately: ours always derives the stock key from our field
            # and never saves it. A difference means a stock scheduler's config that carries our field as a hidden
            # entry (diffusers keeps the keys of compatible classes), and the stock setting is what it sampled with.
            if stock_key in given:
                return to_own(given[stock_key])
            if own_key in given:
                return given[own_key]
            return inspect.Parameter.empty

        if source == cls.__name__:
            # Our own saved file: the derived stock keys are copies of our fields, written for stock classes.
            for own_key, stock_key, to_own in (
                ("shift", "flow_shift", lambda v: v),
                ("sampler", "stochastic_sampling", lambda v: "dmd" if v else "unipc"),
            ):
                if own_key in kwargs or stock_key in kwargs or own_key not in given or stock_key not in given:
                    continue
                if to_own(given[stock_key]) != given[own_key]:
                    raise ValueError(
                        f"This MagiHumanScheduler config has `{own_key}={given[own_key]!r}` but `{stock_key}="
                        f"{given[stock_key]!r}`; `{stock_key}` is a copy of `{own_key}` written for stock schedulers "
                        f"and must agree with it. Edit both, or re-save with `save_pretrained`."
                    )
                given.pop(stock_key)

        resolved = {
            "shift": resolve("shift", "flow_shift", lambda v: v),
            "sampler": resolve("sampler", "stochastic_sampling", lambda v: "dmd" if v else "unipc"),
        }
        for key in ("flow_shift", "stochastic_sampling", *_REFUSED_OPTIONS):
            kwargs.pop(key, None)
            config_dict.pop(key, None)
        defaults = inspect.signature(cls.__init__).parameters
        for key, value in resolved.items():
            # A value equal to our default that the source did not set itself stays a default (diffusers records which
            # fields were defaults in `_use_default_values`; a stock key such as `stochastic_sampling=False` must not
            # turn `sampler` into an explicitly set field).
            if value is inspect.Parameter.empty or (key not in kwargs and key not in given and value == defaults[key].default):
                continue
            kwargs[key] = value
        return super().extract_init_dict(config_dict, **kwargs)

    @property
    def is_distilled(self) -> bool:
        """Whether the DMD-2 step rule is used (distilled checkpoint: 8 steps, no classifier-free guidance)."""
        return self._internal_dict["sampler"] == "dmd"

    # ------------------------------------------------------------------------------------------------ schedule
    @property
    def max_num_inference_steps(self) -> int:
        """The largest `num_inference_steps` whose first timestep is unique (250 at shift 5, 1000 training steps), at
        most 100000.

        Above it the first two timesteps both truncate to the same integer (e.g. 999) and the step-index rule (second
        match) would silently skip the first step, as the original does; `set_timesteps` refuses such schedules.
        """
        return _max_num_inference_steps(float(self._internal_dict["shift"]), int(self._internal_dict["num_train_timesteps"]))

    def _shifted(self, s: np.ndarray) -> np.ndarray:
        # The same float64 expression as stock flow UniPC's `set_timesteps`, so the check below sees its exact grid.
        shift = float(self._internal_dict["shift"])
        return shift * s / (1 + (shift - 1) * s)

    def set_timesteps(
        self,
        num_inference_steps: int | None = None,
        device: str | torch.device | None = None,
        sigmas: list[float] | np.ndarray | torch.Tensor | None = None,
        timesteps: list[int] | np.ndarray | torch.Tensor | None = None,
    ) -> None:
        """
        Sets the sigma grid and timesteps. Run before the denoising loop.

        Args:
            num_inference_steps (`int`, *optional*):
                Number of denoising steps `N`, 1 to [`~MagiHumanScheduler.max_num_inference_steps`]. Optional when
                `sigmas` or `timesteps` are given (it must then equal their length).
            device (`str` or `torch.device`, *optional*):
                Device for `timesteps`. `sigmas` stay on the CPU, as in diffusers' UniPC.
            sigmas (`list[float]`, `np.ndarray` or `torch.Tensor`, *optional*):
                Custom *unshifted* noise levels, one per step, strictly decreasing in (0, 1]; `shift` is applied to
                them once and a final 0 appended, as stock flow UniPC and FlowMatchEuler do.
            timesteps (`list[int]`, `np.ndarray` or `torch.Tensor`, *optional*):
                Custom integer timesteps, one per step, strictly decreasing in [1, num_train_timesteps]. They are used
                as given and each step's noise level is `sigma = t / num_train_timesteps` (a timestep already is a
                shifted noise level, as `scheduler.timesteps` shows; no shift is applied).

        Sets `self.timesteps` (int64 `[N]`) and `self.sigmas` (float32 `[N + 1]`, last entry 0).
        """
        if sigmas is not None and timesteps is not None:
            raise ValueError("Give either `sigmas` or `timesteps`, not both.")
        custom = sigmas if sigmas is not None else timesteps
        name = "sigmas" if sigmas is not None else "timesteps"
        if custom is not None:
            if isinstance(custom, torch.Tensor):
                custom = custom.detach().cpu().numpy()
            try:
                custom = np.asarray(custom, dtype=np.float64).reshape(-1)
            except (TypeError, ValueError):
                raise ValueError(f"`{name}` must be a 1-D sequence of numbers, got {type(custom).__name__}.") from None
            if custom.size == 0:
                raise ValueError(f"`{name}` must not be empty.")
            if num_inference_steps is not None and num_inference_steps != custom.size:
                raise ValueError(
                    f"`num_inference_steps={num_inference_steps}` does not match the {custom.size} given `{name}`; "
                    "leave it unset."
                )
            if not np.all(np.isfinite(custom)) or np.any(np.diff(custom) >= 0):
                raise ValueError(f"`{name}` must be finite and strictly decreasing (one entry per step), got {custom.tolist()}.")
        num_train_timesteps = int(self._internal_dict["num_train_timesteps"])
        if sigmas is not None:
            if custom[0] > 1 or custom[-1] <= 0:
                raise ValueError(
                    f"`sigmas` must lie in (0, 1] (unshifted noise levels; the final 0 is appended), got {custom.tolist()}."
                )
            unshifted = custom
        elif timesteps is not None:
            if np.any(custom != np.round(custom)) or custom[0] > num_train_timesteps or custom[-1] < 1:
                raise ValueError(
                    f"`timesteps` must be whole numbers in [1, {num_train_timesteps}], got {custom.tolist()}."
                )
            # Invert the shift so that the stock code's single shift lands back on t / T (fixed up exactly below).
            shift = float(self._internal_dict["shift"])
            target = custom / num_train_timesteps
            unshifted = target / (shift - (shift - 1) * target)
        else:
            if num_inference_steps is None:
                raise ValueError("Pass `num_inference_steps`, `sigmas` or `timesteps` to `set_timesteps`.")
            n = _check_int("num_inference_steps", num_inference_steps, 1)
            if n > self.max_num_inference_steps:
                raise ValueError(
                    f"`num_inference_steps={n}` is above the {self.max_num_inference_steps} this schedule supports "
                    f"(shift {self._internal_dict['shift']}, {num_train_timesteps} training steps): the first two "
                    "timesteps would both truncate to the same integer and the step-index lookup would skip the first "
                    "step."
                )
            # float64 linspace from sigma_max (float32 0.999) down to 0, last point dropped.
            unshifted = np.linspace(self.sigma_max, self.sigma_min, n + 1)[:-1]

        if timesteps is None and unshifted.size > 1:
            head = self._shifted(unshifted[:2].copy())
            if np.fabs(head[0] - 1) < 1e-6:
                head[0] -= 1e-6  # stock UniPC's nudge away from sigma = 1
            first = (head * num_train_timesteps).astype(np.int64)
            if first[0] == first[1]:
                raise ValueError(
                    f"The given `sigmas` give the same first two timesteps ({first[0]}); the step-index lookup would "
                    "skip the first step. Space the first two sigmas further apart."
                )

        # The stock flow branch does the rest exactly as the original: the shift in float64,
        # `timesteps = int64(sigma * 1000)` (truncation) and float32 sigmas with a final 0.
        super().set_timesteps(device=device, sigmas=unshifted)
        if timesteps is not None:
            target = (custom / num_train_timesteps).astype(np.float32)
            target[np.fabs(target - 1) < 1e-6] = np.float32(1 - 1e-6)  # alpha = 1 - sigma must stay > 0 for UniPC
            self.sigmas = torch.cat([torch.from_numpy(target), torch.zeros(1)])
            self.timesteps = torch.from_numpy(custom.astype(np.int64)).to(device=self.timesteps.device)

    def index_for_timestep(self, timestep: int | torch.Tensor, schedule_timesteps: torch.Tensor | None = None) -> int:
        """
        Index of `timestep` in the schedule: the second match if it occurs more than once (the original's rule).

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

    # ------------------------------------------------------------------------------------------------ step
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
        One denoising step from `sample` at `timestep` to the next sigma of the schedule.

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
            [`~schedulers.scheduling_utils.SchedulerOutput`] or `tuple`: the next latent, `prev_sample`, shape and
            dtype of `sample`.
        """
        if self.num_inference_steps is None:
            raise ValueError("Call `set_timesteps` before `step`.")
        if self.step_index is not None and self.step_index >= self.num_inference_steps:
            raise ValueError(
                f"All {self.num_inference_steps} steps have been taken; call `set_timesteps` again to sample anew."
            )
        if sample.ndim < 2:
            # The stock UniPC update contracts over a batch dimension and fails on unbatched samples with an einsum error.
            raise ValueError(f"`sample` must be batched, `(batch, ...)`, got shape {tuple(sample.shape)}.")
        if model_output.shape != sample.shape:
            raise ValueError(
                f"`model_output` {tuple(model_output.shape)} must have the shape of `sample` {tuple(sample.shape)}."
            )
        if not self.is_distilled:
            return super().step(model_output, timestep, sample, return_dict=return_dict)

        if self.step_index is None:
            self._init_step_index(timestep)
        device = sample.device
        sigma = self.sigmas[self.step_index].to(device)
        sigma_next = self.sigmas[self.step_index + 1].to(device)
        if noise is None:
            # Fresh noise at every step, drawn even at the last one (sigma_N = 0), so that the generator advances as in
            # the original (video draw, then audio draw, every step).
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


@functools.lru_cache(maxsize=64)
def _max_num_inference_steps(shift: float, num_train_timesteps: int) -> int:
    """Largest N whose default grid has a unique first timestep (the duplicate test is monotone in N)."""
    sigma_max = float(np.float32(1.0 - 1.0 / num_train_timesteps))

    def first_two_equal(n: int) -> bool:
        s = np.linspace(sigma_max, 0.0, n + 1)[:-1][:2].copy()
        if s.size < 2:
            return False
        sig = shift * s / (1 + (shift - 1) * s)
        if np.fabs(sig[0] - 1) < 1e-6:
            sig[0] -= 1e-6
        t = (sig * num_train_timesteps).astype(np.int64)
        return bool(t[0] == t[1])

    if not first_two_equal(_STEPS_CAP + 1):
        return _STEPS_CAP
    lo, hi = 1, _STEPS_CAP + 1
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if first_two_equal(mid):
            hi = mid
        else:
            lo = mid
    return lo


# Keys of the compatible stock flow schedulers that MagiHumanScheduler derives (see `config`) or refuses, never stores.
_STOCK_ONLY_KEYS = frozenset(
    (set(_UNIPC_DEFAULTS) | set(_init_defaults(FlowMatchEulerDiscreteScheduler)))
    - set(inspect.signature(MagiHumanScheduler.__init__).parameters)
)
