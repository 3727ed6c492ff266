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
"""Every touch of diffusers' loader internals lives here, guarded.

diffusers 0.42 records a pipeline component in ``model_index.json`` as ``[library, ClassName]``, where the library
is the first part of the class's module when that library is in its loader table ``LOADABLE_CLASSES``, and the full
module path otherwise; it looks the pipeline class up as ``getattr(diffusers, name)``. So, on
``import diffusers_magihuman`` we register our names, and nothing else:

1. ``diffusers_magihuman`` joins ``LOADABLE_CLASSES`` (with diffusers' own base classes and their
   ``save_pretrained`` / ``from_pretrained``), so components are recorded as ``["diffusers_magihuman", "ClassName"]``
   and ``from_pretrained`` (local folders and Hub repos alike) imports them back from the package;
2. our public classes are set on ``diffusers`` where the name is free (``DiffusionPipeline.from_pretrained``), our
   pipelines on ``diffusers.pipelines`` too, and the package as ``diffusers.pipelines.diffusers_magihuman``.

Folders saved before (components recorded under their module path, e.g.
``"diffusers_magihuman.models.transformer_magihuman"``) still load: diffusers resolves an unknown library through
``sys.modules``, where that module is once the package is imported.
"""

from __future__ import annotations

import sys

from diffusers.utils import logging


logger = logging.get_logger(__name__)

PACKAGE_NAME = "diffusers_magihuman"
_registered = False


def register_with_diffusers() -> None:
    """Make diffusers' loaders find our classes (idempotent). Adds entries to diffusers' tables; changes none."""
    global _registered
    if _registered:
        return
    try:
        import diffusers
        import diffusers.pipelines
        from diffusers.pipelines import pipeline_loading_utils
    except ImportError:  # pragma: no cover - diffusers is a hard dependency
        return
    pkg = sys.modules.get(PACKAGE_NAME)
    if pkg is None:
        return
    # 1. Our package as a component library, with the base classes diffusers itself saves/loads through. The
    #    package re-exports `ModelMixin`, `SchedulerMixin` and `DiffusionPipeline`, which the loader looks up in it.
    loadable = getattr(pipeline_loading_utils, "LOADABLE_CLASSES", None)
    if isinstance(loadable, dict) and PACKAGE_NAME not in loadable:
        own = {
            base: list(methods)
            for base, methods in loadable.get("diffusers", {}).items()
            if base in ("ModelMixin", "SchedulerMixin", "DiffusionPipeline") and hasattr(pkg, base)
        }
        loadable[PACKAGE_NAME] = own  # `ALL_IMPORTABLE_CLASSES` already holds these three base classes
    elif not isinstance(loadable, dict):  # pragma: no cover - diffusers internals moved
        logger.warning(
            "This diffusers version has no `LOADABLE_CLASSES` table; our components are recorded under their module "
            "path in `model_index.json` (they still load after `import diffusers_magihuman`)."
        )
    # 2. Public names, and the package itself as `diffusers.pipelines.diffusers_magihuman` (where diffusers looks up
    #    pipeline folders by name; diffusers versions without our `LOADABLE_CLASSES` entry resolve it there).
    if not hasattr(diffusers.pipelines, PACKAGE_NAME):
        setattr(diffusers.pipelines, PACKAGE_NAME, pkg)
    for name in getattr(pkg, "__all__", []):
        obj = getattr(pkg, name, None)
        if not isinstance(obj, type):
            continue
        existing = getattr(diffusers, name, None)
        if existing is None:
            setattr(diffusers, name, obj)
        if name.endswith("Pipeline") and getattr(diffusers.pipelines, name, None) is None:
            # `diffusers.pipelines.MagiHumanPipeline`, where diffusers' own pipelines are listed
            setattr(diffusers.pipelines, name, obj)
        if existing is not None and existing is not obj:
            logger.warning(
                f"diffusers already defines `{name}`; `DiffusionPipeline.from_pretrained` will use diffusers' class. "
                f"Use `diffusers_magihuman.{name}.from_pretrained` to load ours."
            )
    _registered = True


def register_local_flash_attention_4() -> bool:
    """Point diffusers' `flash_4_hub` attention backend at a locally installed FlashAttention-4 (`flash_attn.cute`).

    diffusers 0.42 has no local FA4 backend, only `flash_4_hub`, which downloads its kernel from the Hub at first use.
    With the `flash-attn-4` wheels installed (see docs/performance.md), this makes
    `transformer.set_attention_backend("flash_4_hub")` use them without any download. Returns `False` (and changes
    nothing) when FA4 or the private registry is not available.
    """
    try:
        from flash_attn.cute import flash_attn_func
    except Exception:  # not installed, or no CUDA
        return False
    try:
        from diffusers.models.attention_dispatch import _HUB_KERNELS_REGISTRY, AttentionBackendName
    except ImportError:  # pragma: no cover - diffusers internals moved
        logger.warning("This diffusers version has no `_HUB_KERNELS_REGISTRY`; cannot register local FA4.")
        return False
    entry = _HUB_KERNELS_REGISTRY.get(AttentionBackendName.FLASH_4_HUB)
    if entry is None or not hasattr(entry, "kernel_fn"):
        return False
    entry.kernel_fn = flash_attn_func
    return True
