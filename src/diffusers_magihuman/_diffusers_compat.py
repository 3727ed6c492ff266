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
"""Every touch of diffusers' loader internals lives here, guarded (spec diffusers.md §1.6).

diffusers 0.42 resolves ``model_index.json`` entries only through ``sys.modules`` /
``diffusers.pipelines`` attributes and looks the pipeline class up as ``getattr(diffusers, name)``. So, on
``import diffusers_magihuman`` we:

1. expose the package as ``diffusers.pipelines.diffusers_magihuman`` (Hub ``download()`` accepts it),
2. set our public classes on ``diffusers`` where the name is free (``DiffusionPipeline.from_pretrained``),
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


def normalize_pipeline_config(pipeline) -> None:
    """Rewrite our component entries of a pipeline's ``model_index`` config to the top-level package name."""
    updates = {}
    for name, value in dict(pipeline.config).items():
        new = normalize_library_tuple(value)
        if new is not value and tuple(new) != tuple(value):
            updates[name] = new
    if updates:
        # `register_to_config` is the public way pipelines record components.
        pipeline.register_to_config(**updates)


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
        elif existing is not obj:
            logger.warning(
                f"diffusers already defines `{name}`; `DiffusionPipeline.from_pretrained` will use diffusers' class. "
                f"Use `diffusers_magihuman.{name}.from_pretrained` to load ours."
            )
    _registered = True
