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
"""Running MagiHuman over several GPUs with diffusers' context parallelism (Ulysses), e.g. under `torchrun`.

```python
# torchrun --nproc-per-node 4 my_script.py
from diffusers_magihuman.utils.distributed import enable_context_parallel, is_main_process

pipe = MagiHumanSRPipeline.from_pretrained(folder, torch_dtype=torch.bfloat16)
device = enable_context_parallel(pipe)   # joins the process group, picks this rank's GPU, splits the DiT(s)
pipe.to(device)
out = pipe(...)                           # every rank runs the same call and gets the same output
if is_main_process():
    export_to_video(out.frames[0], "out.mp4")   # only rank 0 writes
```

Every rank must run the same calls with the same inputs and seeds: the DiT splits its sequence over the ranks and
gathers it back after its last block, everything else (text encoder, VAEs, scheduler) runs on every rank.
"""

from __future__ import annotations

import os

import torch

from diffusers.utils import logging


logger = logging.get_logger(__name__)


def is_distributed() -> bool:
    r"""Whether `torch.distributed` is initialised in this process."""
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def get_rank() -> int:
    r"""This process's rank (0 when not distributed)."""
    return torch.distributed.get_rank() if is_distributed() else 0


def get_world_size() -> int:
    r"""The number of processes (1 when not distributed)."""
    return torch.distributed.get_world_size() if is_distributed() else 1


def is_main_process() -> bool:
    r"""Whether this process should write outputs (files, logs): rank 0, or the only process."""
    return get_rank() == 0


def init_distributed(backend: str | None = None) -> torch.device:
    r"""
    Joins the process group described by `torchrun`'s environment (`RANK`, `WORLD_SIZE`, `LOCAL_RANK`, `MASTER_ADDR`,
    `MASTER_PORT`) unless one is already initialised, and selects this rank's GPU (`LOCAL_RANK`).

    Args:
        backend (`str`, *optional*): `"nccl"` on CUDA, `"gloo"` otherwise.

    Returns:
        `torch.device`: the device this rank should run on (`cuda:LOCAL_RANK`, or the CPU).
    """
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if torch.cuda.is_available():
        if local_rank >= torch.cuda.device_count():
            raise RuntimeError(
                f"LOCAL_RANK={local_rank} but only {torch.cuda.device_count()} GPUs are visible: launch at most "
                f"{torch.cuda.device_count()} processes per host (`torchrun --nproc-per-node N`)."
            )
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    if not is_distributed():
        if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
            raise RuntimeError(
                "No process group: launch with `torchrun --nproc-per-node N script.py ...` (which sets RANK, "
                "WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT), or call `torch.distributed.init_process_group` "
                "first."
            )
        if backend is None:
            backend = "nccl" if device.type == "cuda" else "gloo"
        kwargs = {"device_id": device} if device.type == "cuda" else {}
        torch.distributed.init_process_group(backend=backend, **kwargs)
    return device


def _magihuman_transformers(pipe_or_model) -> list:
    from ..models.transformer_magihuman import MagiHumanTransformer3DModel

    if isinstance(pipe_or_model, MagiHumanTransformer3DModel):
        return [pipe_or_model]
    components = getattr(pipe_or_model, "components", None)
    if not isinstance(components, dict):
        raise TypeError(
            f"`enable_context_parallel` takes a MagiHuman pipeline or a MagiHumanTransformer3DModel, got "
            f"{type(pipe_or_model).__name__}."
        )
    return [c for c in components.values() if isinstance(c, MagiHumanTransformer3DModel)]


def enable_context_parallel(pipe_or_model, degree: int | None = None, backend: str | None = None) -> torch.device:
    r"""
    Splits the DiT(s) of a MagiHuman pipeline (or one [`MagiHumanTransformer3DModel`]) over `degree` ranks with
    diffusers' context parallelism: `transformer.enable_parallelism(config=ContextParallelConfig(ulysses_degree=N))`.
    Joins the process group first if needed (see [`init_distributed`]). Bad degrees (not dividing the attention and
    key/value heads, other than the number of processes, more ranks than GPUs on a host) raise before anything
    changes.

    It pays off on long sequences (1080p super-resolution: ~65k tokens per forward); at 256p a forward is short and the
    all-to-alls and the ranks' duplicated text encoder / VAE work take the gain.

    Args:
        pipe_or_model: a pipeline with MagiHuman transformer components, or a transformer.
        degree (`int`, *optional*): ranks to split over; defaults to (and must equal) the number of processes. 1
            changes nothing and needs no process group.
        backend (`str`, *optional*): process-group backend if one must be created (`"nccl"` / `"gloo"`).

    Returns:
        `torch.device`: this rank's device; move the pipeline there (`pipe.to(device)`).
    """
    transformers = _magihuman_transformers(pipe_or_model)
    if not transformers:
        raise ValueError("The pipeline has no MagiHumanTransformer3DModel component to split.")
    if degree is not None and (not isinstance(degree, int) or degree < 1):
        raise ValueError(f"`degree` must be a positive integer, got {degree!r}.")
    if degree == 1:
        return _this_rank_device()
    from diffusers import ContextParallelConfig

    # Check the degree against the model before joining a process group (a clear error, nothing started).
    if degree is not None:
        for transformer in transformers:
            transformer._check_context_parallel_config(ContextParallelConfig(ulysses_degree=degree))
    device = init_distributed(backend)
    world_size = get_world_size()
    degree = world_size if degree is None else degree
    if degree != world_size:
        raise ValueError(
            f"`degree={degree}` must equal the {world_size} processes launched (every rank takes part in the split)."
        )
    if degree == 1:
        return device
    if getattr(torch, "accelerator", None) is not None and torch.accelerator.device_count() == 0:
        raise RuntimeError(
            "diffusers' context parallelism needs an accelerator: it places each rank on "
            "`rank % torch.accelerator.device_count()`, and this torch sees none."
        )
    for transformer in transformers:
        transformer.enable_parallelism(config=ContextParallelConfig(ulysses_degree=degree))
    if is_main_process():
        logger.info(f"MagiHuman DiT split over {degree} ranks (Ulysses context parallelism).")
    return device


def _this_rank_device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", torch.cuda.current_device())))
    return torch.device("cpu")
