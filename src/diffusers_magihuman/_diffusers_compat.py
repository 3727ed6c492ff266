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


# ---------------------------------------------------------------------------------------------------------------------
# Attention backends and cache blocks: the only writes into diffusers' private registries
# ---------------------------------------------------------------------------------------------------------------------

_extensions_registered = False


def _add_backend_name(enum_cls, value: str):
    # diffusers' `set_attention_backend` / `attention_backend` / `dispatch_attention_fn` accept only members of its
    # `AttentionBackendName` (a `str` Enum), so a new backend needs a member. Enums cannot be extended by subclassing;
    # this adds one the way the `Enum` machinery stores its own (name map, value map, ordered names, attribute).
    member = enum_cls._value2member_map_.get(value)
    if member is not None:
        return member
    name = value.upper()
    member = str.__new__(enum_cls, value)
    member._name_ = name
    member._value_ = value
    member._sort_order_ = len(enum_cls._member_names_)
    member.__init__(value)
    setattr(enum_cls, name, member)  # before the member map: `EnumType.__setattr__` refuses to rebind members
    enum_cls._member_map_[name] = member
    enum_cls._value2member_map_[value] = member
    enum_cls._member_names_.append(name)
    return member


def _register_attention_backends() -> None:
    from diffusers.models.attention_dispatch import AttentionBackendName, _AttentionBackendRegistry

    from .models import attention_magihuman

    for name, function in attention_magihuman.MAGIHUMAN_BACKEND_FUNCTIONS.items():
        member = _add_backend_name(AttentionBackendName, name)
        if _AttentionBackendRegistry._backends.get(member) is not function:
            _AttentionBackendRegistry.register(member, constraints=[], supports_context_parallel=True)(function)
        attention_magihuman._BACKEND_MEMBERS[name] = member


def _register_block_with_diffusers_caches() -> None:
    # Block-level caches (FirstBlockCache, MagCache, ...) look blocks up in diffusers' private registry.
    from diffusers.hooks._helpers import TransformerBlockMetadata, TransformerBlockRegistry

    from .models.transformer_magihuman import MagiHumanTransformerBlock

    metadata = TransformerBlockMetadata(return_hidden_states_index=0, return_encoder_hidden_states_index=None)
    registry = getattr(TransformerBlockRegistry, "_registry", None)
    if isinstance(registry, dict):
        # Insert directly: `register()` would first import and register every diffusers transformer (slow import).
        metadata._cls = MagiHumanTransformerBlock
        registry[MagiHumanTransformerBlock] = metadata
    else:
        TransformerBlockRegistry.register(model_class=MagiHumanTransformerBlock, metadata=metadata)


def _point_flash_4_hub_at_local_fa4() -> bool:
    from diffusers.models.attention_dispatch import _HUB_KERNELS_REGISTRY, AttentionBackendName

    from .models.attention_flash4 import _flash_attn_cute

    module = _flash_attn_cute()
    entry = _HUB_KERNELS_REGISTRY.get(AttentionBackendName.FLASH_4_HUB)
    if module is None or entry is None or not hasattr(entry, "kernel_fn"):
        return False
    entry.kernel_fn = module.flash_attn_func
    return True


def register_magihuman_extensions(flash_4_hub_uses_local_fa4: bool = False) -> bool:
    r"""
    Registers this package's extensions in diffusers' private registries; called once at `import diffusers_magihuman`
    and idempotent. It is the only function that writes into them:

    1. the attention backends `magihuman_flash_4`, `magihuman_local_flex` and `magihuman_sdpa` (members of
       `AttentionBackendName`, entries of the attention-backend registry, all marked as supporting context
       parallelism), so `model.set_attention_backend(name)` and `diffusers.attention_backend(name)` select them;
    2. `MagiHumanTransformerBlock` in the transformer-block registry of the block-level step caches (FirstBlockCache,
       MagCache, ...).

    diffusers' active attention backend is left as it is. Each part is guarded: a diffusers without these internals
    logs a warning and the package still imports (the processor then calls our backend functions directly).

    Args:
        flash_4_hub_uses_local_fa4 (`bool`, defaults to `False`):
            Opt-in, not done at import: point diffusers' own `flash_4_hub` backend at a locally installed
            FlashAttention-4 (`flash_attn.cute`) instead of a Hub download (eager only). `magihuman_flash_4` needs no
            such change.

    Returns:
        `bool`: whether everything asked for was registered.
    """
    global _extensions_registered
    ok = True
    if not _extensions_registered:
        for part in (_register_attention_backends, _register_block_with_diffusers_caches):
            try:
                part()
            except Exception as error:  # private API: never break the import over it
                ok = False
                logger.warning(
                    f"diffusers_magihuman could not register with this diffusers version ({part.__name__}: {error}); "
                    "the MagiHuman attention backends cannot be selected by name and/or block caches may not find "
                    "the model's blocks."
                )
        _extensions_registered = ok
    if flash_4_hub_uses_local_fa4:
        try:
            ok = _point_flash_4_hub_at_local_fa4() and ok
        except Exception as error:  # pragma: no cover - diffusers internals moved
            logger.warning(f"Could not point `flash_4_hub` at the local FlashAttention-4: {error}")
            ok = False
    return ok
