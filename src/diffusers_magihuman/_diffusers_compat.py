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

diffusers 0.42 resolves ``model_index.json`` entries only through ``sys.modules`` /
``diffusers.pipelines`` attributes and looks the pipeline class up as ``getattr(diffusers, name)``. So, on
``import diffusers_magihuman`` we:

1. expose the package as ``diffusers.pipelines.diffusers_magihuman`` (Hub ``download()`` accepts it),
2. set our public classes on ``diffusers`` where the name is free (``DiffusionPipeline.from_pretrained``), and
   our pipelines on ``diffusers.pipelines`` too,
3. record our components as ``["diffusers_magihuman", "ClassName"]`` instead of a module path.
"""

from __future__ import annotations

import sys

from diffusers.utils import logging


logger = logging.get_logger(__name__)

PACKAGE_NAME = "diffusers_magihuman"
_registered = False


def normalize_library_tuple(library_tuple):
    """``("diffusers_magihuman.models.x", "Cls")`` -> ``("diffusers_magihuman", "Cls")``; others unchanged."""
    if isinstance(library_tuple, (tuple, list)) and len(library_tuple) == 2:
        library, class_name = library_tuple
        if isinstance(library, str) and library.startswith(PACKAGE_NAME + "."):
            return (PACKAGE_NAME, class_name)
    return library_tuple


def register_with_diffusers() -> None:
    """Make diffusers' loaders find our classes (idempotent)."""
    global _registered
    if _registered:
        return
    try:
        import diffusers
        import diffusers.pipelines
    except ImportError:  # pragma: no cover - diffusers is a hard dependency
        return
    pkg = sys.modules.get(PACKAGE_NAME)
    if pkg is None:
        return
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
