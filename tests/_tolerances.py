"""Deviation measures and checks shared by the parity tests (the policy is in tests/README.md, "Tolerances").

Every check goes through `check(what, value, limit)`, so one switch can turn the suite into a measurement:
with `MAGIHUMAN_MEASURE=<file.jsonl>` set, checks append `{test, what, value, limit}` to that file and do NOT
assert (so one run sees every deviation, not only the first failing one). `tests/measure_tolerances.py` runs the
parity tests under several CPU configurations that way and prints the table quoted in tests/README.md.
"""

from __future__ import annotations

import json
import os

import numpy as np
import torch


# Unit roundoffs (half the spacing at 1): a correctly rounded op has relative error <= u.
U_FP32 = 2.0**-24
U_BF16 = 2.0**-8
EPS_FP32 = 2.0**-23  # spacing of float32 numbers in [1, 2)


def max_abs(actual, expected) -> float:
    """max |actual - expected| in float64."""
    return (_as64(actual) - _as64(expected)).abs().max().item()


def rel_l2(actual, expected) -> float:
    """||actual - expected|| / ||expected|| in float64."""
    actual, expected = _as64(actual), _as64(expected)
    return ((actual - expected).norm() / expected.norm()).item()


def check(what: str, value: float, limit: float) -> bool:
    """Whether `value <= limit`; tests write `assert check(...)`. In measuring mode (see the module docstring) it
    records both and returns True."""
    path = os.environ.get("MAGIHUMAN_MEASURE")
    if path:
        test = os.environ.get("PYTEST_CURRENT_TEST", "?").rsplit(" (", 1)[0]
        with open(path, "a") as f:
            f.write(json.dumps({"test": test, "what": what, "value": float(value), "limit": float(limit)}) + "\n")
        return True
    if value > limit:
        print(f"{what}: {value:.3e} > limit {limit:.3e}")  # shown by pytest next to the failed assert
    return value <= limit


def check_max_abs(what: str, actual, expected, atol: float) -> bool:
    """`check` on max |actual - expected| (shapes must agree)."""
    assert tuple(actual.shape) == tuple(expected.shape), f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    return check(what, max_abs(actual, expected), atol)


def check_uint8_frames_of_bf16_decode(frames, ref) -> bool:
    """Frames from two bf16 decodes of the same latent (ours, the original's), both truncated to uint8.

    A pixel is 127.5 * x + 127.5 for a decoded x in [-1, 1]; the bf16 spacing there is <= 2^-8, i.e. <= 0.5 level,
    so ONE rounding flip of the output moves a pixel by at most 1 level after truncation. The decoder chains ~30
    bf16-rounded convs, and flips that compound in the same direction move a pixel further: the original's own bf16
    decode is 1.3 - 1.7 levels off its fp32 decode on average, 0.6 % - 7 % of pixels more than 4 levels (fixtures).
    Two bf16 decodes (different kernels) are closer to each other than to fp32: measured worst over 11 CPU
    configurations 0.54 level mean and 0.06 % of pixels more than 4 levels off (max 12). Limits: mean <= 1 level and
    <= 1 % of pixels more than 4 levels off. A real bug (a wrong window, a missing denormalisation, a wrong layer)
    moves most pixels by many levels.
    """
    assert frames.shape == ref.shape, f"shape {frames.shape} != {ref.shape}"
    diff = np.abs(np.asarray(frames).astype(np.int16) - np.asarray(ref).astype(np.int16))
    mean_ok = check("uint8 mean |diff| (levels)", float(diff.mean()), 1.0)
    return check("uint8 fraction > 4 levels", float((diff > 4).mean()), 0.01) and mean_ok



def _as64(x) -> torch.Tensor:
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(x)
    return x.detach().to(torch.float64)
