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
"""What [`MagiHumanPipeline`] and [`MagiHumanSRPipeline`] share: prompt encoding, latent (de)normalisation,
image encoding, decoding and output post-processing. One copy, used by both."""

from __future__ import annotations

import contextlib
import os

import numpy as np
import PIL.Image
import torch

from diffusers.utils import logging

from ..constants import DEFAULT_FPS, DEFAULT_NEGATIVE_PROMPT, TEXT_MAX_SEQUENCE_LENGTH, WAN22_LATENTS_MEAN, WAN22_LATENTS_STD
from ..utils.fp8 import check_float8_scales
from .pipeline_output import MagiHumanPipelineOutput


logger = logging.get_logger(__name__)

_OUTPUT_TYPES = ("np", "pt", "pil", "latent")


class MagiHumanDecodeError(RuntimeError):
    """Decoding failed after sampling; `latents_path` is the file holding the sampled latents (or `None`)."""

    def __init__(self, message: str, latents_path: str | None = None):
        super().__init__(message)
        self.latents_path = latents_path
_DECODERS = ("auto", "turbo", "vae")


def _has_triton() -> bool:
    try:
        from torch.utils._triton import has_triton
    except ImportError:  # pragma: no cover - private helper moved
        return True
    return has_triton()


_WARNED: set[str] = set()


def warn_once(key: str, message: str) -> None:
    """Log `message` as a warning the first time `key` is seen in this process (lossy conversions, ignored args)."""
    if key not in _WARNED:
        _WARNED.add(key)
        logger.warning(message)


def as_number(value, name: str, integer: bool = False):
    """A Python `int`/`float` from a Python or numpy scalar (0-d arrays and tensors too), else a `ValueError`."""
    if isinstance(value, (np.ndarray, torch.Tensor)) and value.ndim == 0:
        value = value.item()
    if isinstance(value, np.generic):
        value = value.item()
    kind = "an integer" if integer else "a number"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"`{name}` must be {kind}, got {value!r} ({type(value).__name__}).")
    if isinstance(value, float) and not np.isfinite(value):
        raise ValueError(f"`{name}` must be a finite number, got {value!r}.")
    if integer:
        if isinstance(value, float) and not value.is_integer():
            raise ValueError(f"`{name}` must be an integer, got {value!r}.")
        value = int(value)
    return value


def check_tensor(x, name: str, ndim: int | None = None, allow_none: bool = True):
    """Refuse non-tensors (numpy arrays included: say so), wrong ranks and NaN/Inf values, naming the argument."""
    if x is None:
        if allow_none:
            return None
        raise ValueError(f"`{name}` is required.")
    if isinstance(x, np.ndarray):
        raise ValueError(f"`{name}` must be a torch.Tensor, got a numpy array; pass `torch.from_numpy({name})`.")
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"`{name}` must be a torch.Tensor, got {type(x).__name__}.")
    if ndim is not None and x.ndim != ndim:
        raise ValueError(f"`{name}` must have {ndim} dimensions, got shape {tuple(x.shape)}.")
    if x.is_floating_point() and x.numel() and not bool(torch.isfinite(x).all()):
        raise ValueError(f"`{name}` contains NaN or Inf values; refusing to run on them.")
    return x


def check_generator(generator, name: str = "generator"):
    """`None`, a `torch.Generator` or a list of them; anything else (e.g. an int seed) is refused clearly."""
    if generator is None or isinstance(generator, torch.Generator):
        return
    if isinstance(generator, (list, tuple)) and generator and all(isinstance(g, torch.Generator) for g in generator):
        return
    raise ValueError(
        f"`{name}` must be a torch.Generator or a list of them, got {generator!r}; for a seed use "
        f"`{name}=torch.Generator().manual_seed(seed)`."
    )


def report_non_finite(x, stage: str) -> None:
    """Warn (naming the stage) when a result holds NaN/Inf: e.g. a half-precision overflow in the DiT or a decoder."""
    if isinstance(x, torch.Tensor) and x.is_floating_point() and x.numel() and not bool(torch.isfinite(x).all()):
        bad = (~torch.isfinite(x)).float().mean().item()
        logger.warning(
            f"The {stage} contains NaN/Inf values ({bad:.1%} of the entries): the output will be black or silent "
            "there. Common causes: float16 overflow (use bfloat16 or float32), or NaN inputs."
        )


def _to_unit_range(video: torch.Tensor) -> torch.Tensor:
    """Decoder output in about `[-1, 1]` -> float32 frames in `[0, 1]`: `(clamp(x, -1, 1) * 0.5 + 0.5).clamp(0, 1)`
    (the uint8 conversion truncates later, as the original)."""
    return (video.float().clamp(-1.0, 1.0) * 0.5 + 0.5).clamp(0.0, 1.0)


# Pixels per piece on the way to a numpy array: two 1088x1920 frames, 48 MiB of float32 per pinned staging buffer
# (torch keeps the two buffers in its pinned-memory cache for the next call).
_HOST_COPY_PIXELS = 2 * 1088 * 1920


@torch.no_grad()
def video_to_numpy(video: torch.Tensor) -> np.ndarray:
    """Decoder output `(B, 3, F, H, W)` in about `[-1, 1]`, any float dtype -> float32 array `(B, F, H, W, 3)` in `[0, 1]`.

    The values are `_to_unit_range(video)`'s, computed element by element exactly as on the whole tensor. A CUDA video
    goes to the host a few frames at a time through two pinned buffers, so the cast, the scaling and the
    device-to-host copy of one piece overlap the host-side copy of the previous one, and no float32 copy of the whole
    clip is made on the GPU (3 GiB for a 5 s 1080p clip).
    """
    batch, channels, num_frames, height, width = video.shape
    if video.device.type != "cuda":
        return _to_unit_range(video).permute(0, 2, 3, 4, 1).cpu().numpy()
    out = np.empty((batch, num_frames, height, width, channels), dtype=np.float32)
    host = torch.from_numpy(out)
    step = max(1, _HOST_COPY_PIXELS // max(1, batch * height * width))
    staging = [torch.empty((batch, min(step, num_frames), height, width, channels), pin_memory=True) for _ in range(2)]
    pending: list = [None, None]  # per buffer: (event, frame slice) still to be copied to `host`

    def drain(index: int) -> None:
        event, frames = pending[index]
        event.synchronize()
        host[:, frames].copy_(staging[index][:, : frames.stop - frames.start])
        pending[index] = None

    with torch.cuda.device(video.device):
        for piece, start in enumerate(range(0, num_frames, step)):
            index = piece % 2
            if pending[index] is not None:
                drain(index)
            frames = slice(start, min(start + step, num_frames))
            chunk = _to_unit_range(video[:, :, frames])
            staging[index][:, : frames.stop - frames.start].copy_(chunk.permute(0, 2, 3, 4, 1), non_blocking=True)
            event = torch.cuda.Event()
            event.record()
            pending[index] = (event, frames)
    for index in range(2):  # the pieces still in flight fill disjoint frames: any order
        if pending[index] is not None:
            drain(index)
    return out


def snap_size(height: int, width: int, name: str = "") -> tuple[int, int]:
    """Round a pixel size down to multiples of 32 (the DiT's 2x2 patch on a x16 latent), warning when it changes."""
    for label, value in (("height", height), ("width", width)):
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool):
            raise ValueError(f"`{name}{label}` must be an integer number of pixels, got {value!r}.")
        if value < 32:
            raise ValueError(f"`{name}{label}` must be at least 32 pixels, got {value}.")
    new_h, new_w = (int(height) // 32) * 32, (int(width) // 32) * 32
    if (new_h, new_w) != (height, width):
        logger.warning(
            f"`{name}height`/`{name}width` {height}x{width} are not multiples of 32; using {new_h}x{new_w} "
            "(rounded down, as the original does)."
        )
    return new_h, new_w


class MagiHumanPipelineMixin:
    """Shared helpers. Expects the attributes `transformer`, `text_encoder`, `tokenizer`, `vae`, `audio_vae` and
    optionally `turbo_vae` (the pipelines declare them)."""

    # ------------------------------------------------------------------ group offload with resident DiT layers
    def enable_group_offload(
        self, onload_device: torch.device, *args, exclude_modules=None, num_resident_blocks: int = 0, **kwargs
    ) -> None:
        r"""
        diffusers' [`~DiffusionPipeline.enable_group_offload`] for every component, with two additions:

        * `num_resident_blocks`: that many DiT layers stay on `onload_device` (see
          [`MagiHumanTransformer3DModel.enable_group_offload`]). With 22 resident layers and `use_stream=True` the
          distilled 256p stage fits a 24 GB card at under 2x the full-GPU time (docs/performance.md).
        * Components that diffusers cannot group-offload (the Oobleck audio VAE: `_supports_group_offloading =
          False`) are placed on `onload_device` whole instead of failing (about 0.6 GB for Stable-Audio-Open), like
          the components named in `exclude_modules`.

        The other options (`offload_device`, `offload_type`, `num_blocks_per_group`, `use_stream`, ...) are
        diffusers', positionally or by keyword.
        """
        import inspect

        from diffusers.hooks import apply_group_offloading
        from diffusers.pipelines.pipeline_utils import DiffusionPipeline

        bound = inspect.signature(DiffusionPipeline.enable_group_offload).bind(
            self, onload_device, *args, exclude_modules=exclude_modules, **kwargs
        )
        bound.apply_defaults()
        options = {k: v for k, v in bound.arguments.items() if k not in ("self", "exclude_modules")}
        exclude = [exclude_modules] if isinstance(exclude_modules, str) else list(exclude_modules or [])
        if num_resident_blocks and "transformer" in exclude:
            raise ValueError("`num_resident_blocks` applies to the transformer; do not exclude it.")
        modules = {n: c for n, c in self.components.items() if isinstance(c, torch.nn.Module)}
        # The transformer first: it validates `num_resident_blocks` before anything else is touched.
        order = sorted(modules, key=lambda n: n != "transformer")
        for name in order:
            component = modules[name]
            if name in exclude:
                component.to(options["onload_device"])
            elif getattr(component, "_supports_group_offloading", True) is False:
                logger.info(
                    f"`{name}` ({type(component).__name__}) does not support group offloading; it is placed on "
                    f"{options['onload_device']} whole."
                )
                component.to(options["onload_device"])
            elif name == "transformer" and num_resident_blocks:
                component.enable_group_offload(num_resident_blocks=num_resident_blocks, **options)
            elif hasattr(component, "enable_group_offload"):
                component.enable_group_offload(**options)
            else:
                apply_group_offloading(module=component, **options)

    # ------------------------------------------------------------------ fast path: regional compile on CUDA
    _auto_compile = "auto"
    _auto_compile_kwargs = None
    _AUTO_COMPILE_MODES = {True: "auto", "auto": "auto", "always": "always", False: "never", "never": "never"}

    def enable_auto_compile(self, enabled: bool | str = True, **compile_kwargs) -> None:
        r"""
        When the pipeline compiles the DiT's repeated blocks on a CUDA GPU
        (`transformer.compile_repeated_blocks(fullgraph=True)`: one compiled graph per layer kind, no graph breaks,
        no recompiles across steps; about 1.5x faster forwards once compiled).

        Compiling costs about 20-45 s once per process and resolution, more than a single clip's DiT stage gains
        (8 eager 256p forwards take about 3 s), so by default (`True` / `"auto"`) the first call of a process runs
        eagerly and the blocks are compiled at the start of the second call: a one-shot run pays nothing, a
        process that renders several clips compiles once. Long sequences (>= 32768 video tokens, e.g. 1080p SR)
        compile on the first call: there eager forwards are slower than compiling plus compiled forwards and need
        ~26 GiB more GPU memory. `"always"` compiles on the first call (benchmarks, long
        renders); `False` / `"never"` never compiles. The environment variable `MAGIHUMAN_AUTO_COMPILE` (`0`,
        `auto`, `always`) does the same for processes you do not control. Skipped on CPU, without Triton, under
        sequential CPU offload, while a step cache (`transformer.enable_cache`) is on, and when the blocks are compiled
        already; group-offloaded layers stay eager.

        Args:
            enabled (`bool` or `str`, defaults to `True`): `True`/`"auto"`, `"always"` or `False`/`"never"`.
            compile_kwargs: passed to `torch.compile` instead of the default `fullgraph=True`.
        """
        if enabled not in self._AUTO_COMPILE_MODES:
            raise ValueError(f"`enabled` must be True, False, 'auto', 'always' or 'never', got {enabled!r}.")
        self._auto_compile = self._AUTO_COMPILE_MODES[enabled]
        self._auto_compile_kwargs = compile_kwargs or None

    def _auto_compile_mode(self) -> str:
        env = os.environ.get("MAGIHUMAN_AUTO_COMPILE", "").strip().lower()
        if env in ("0", "false", "no", "never", "off"):
            return "never"
        if env in ("always", "first"):
            return "always"
        mode = self._AUTO_COMPILE_MODES.get(self._auto_compile, "auto")
        return mode

    # In `"auto"` mode a first call over at least this many video tokens compiles at once (1080p SR: ~65k tokens for
    # 5 s). Measured on one H100 (5 s clip, 1080p SR stage + decode): eager first call 72.7 s at a 72.8 GiB peak;
    # compiled 39.9 s at a 46.7 GiB peak, so compiling (~40 s) costs no time there and keeps the chain inside 80 GB.
    _EAGER_FIRST_CALL_MAX_TOKENS = 32768

    def _maybe_auto_compile(self, device: torch.device, num_video_tokens: int = 0) -> None:
        transformer = self.transformer
        if transformer is None or self._step_aside_for_step_cache(transformer):
            return
        if getattr(transformer, "_magihuman_compile_checked", False):
            return
        mode = self._auto_compile_mode()
        if mode == "never":
            return
        if device.type != "cuda" or torch.compiler.is_compiling():
            return
        # Count pipeline calls, not DiT forwards: `_begin_call` marks the start of each `__call__`, and only the first
        # forward of a call counts it (counting forwards would compile at the second forward of the first call).
        calls = getattr(transformer, "_magihuman_cuda_calls", 0)
        if self.__dict__.get("_auto_compile_new_call", True):
            calls += 1
            transformer._magihuman_cuda_calls = calls
            self._auto_compile_new_call = False
        if mode == "auto" and calls < 2 and num_video_tokens < self._EAGER_FIRST_CALL_MAX_TOKENS:
            return  # a one-shot run stays eager: compiling would cost more than it saves
        transformer._magihuman_compile_checked = True
        blocks = list(getattr(transformer, "blocks", []))
        if not blocks or not hasattr(transformer, "compile_repeated_blocks"):
            return
        if any(getattr(block, "_compiled_call_impl", None) is not None for block in blocks):
            return  # the user compiled them already
        if any(hasattr(module, "_hf_hook") for block in blocks for module in block.modules()):
            logger.info("Sequential CPU offload is on: the DiT blocks are not compiled.")
            return
        compile_kwargs = self._auto_compile_kwargs or {"fullgraph": True}
        if compile_kwargs.get("backend", "inductor") == "inductor" and not _has_triton():
            logger.warning("Triton is not available: running the DiT eagerly (slower). See docs/performance.md.")
            return
        logger.info(
            "Compiling the DiT blocks (once per process and resolution, ~20-45 s; this process has called the "
            "pipeline before, so the compile pays off). Turn off with `pipe.enable_auto_compile(False)` or "
            "MAGIHUMAN_AUTO_COMPILE=0."
        )
        transformer.compile_repeated_blocks(**compile_kwargs)
        transformer._magihuman_auto_compiled = True

    @staticmethod
    def _step_aside_for_step_cache(transformer) -> bool:
        """Whether a diffusers step cache (`transformer.enable_cache(...)`) is on, so the automatic compile must stay
        out of its way.

        The caches' hooks wrap the blocks with Python-side decisions (and `torch.compiler.disable`d helpers) that a
        `fullgraph=True` compile cannot trace, so the blocks run eagerly while a cache is on (the speed-ups measured
        with the caches are against eager). If this pipeline's automatic compile compiled the blocks in an earlier
        call, that compile is undone here (and redone on a later call after `disable_cache()`); blocks the user
        compiled are left as they are.
        """
        if not getattr(transformer, "is_cache_enabled", False):
            return False
        if getattr(transformer, "_magihuman_auto_compiled", False):
            for block in transformer.blocks:
                block._compiled_call_impl = None  # back to the plain `nn.Module` call, as before `Module.compile()`
            transformer._magihuman_auto_compiled = False
            transformer._magihuman_compile_checked = False
            logger.info("A step cache is on: the DiT blocks compiled by the automatic compile run eagerly again.")
        return True

    def _compile_limits(self):
        """Room for dynamo's graphs while (and only while) the DiT runs, instead of a process-wide setting.

        One static graph per layer kind and prompt length at most; the uncond pass and a new resolution add entries,
        so the compiled blocks need more than dynamo's default of 8 (five layer kinds at 1080p). The limit is
        raised to 64 inside the DiT call and restored after it.
        """
        if not getattr(self.transformer, "_magihuman_compile_checked", False) or not hasattr(torch, "_dynamo"):
            return contextlib.nullcontext()
        config = torch._dynamo.config
        patch = {n: max(getattr(config, n), 64) for n in ("recompile_limit", "cache_size_limit") if hasattr(config, n)}
        return config.patch(**patch) if patch else contextlib.nullcontext()

    # ------------------------------------------------------------------ properties
    @property
    def vae_scale_factor_spatial(self) -> int:
        return 16

    @property
    def vae_scale_factor_temporal(self) -> int:
        return 4

    @property
    def latent_channels(self) -> int:
        return int(self.transformer.config.in_channels)

    @property
    def audio_sample_rate(self) -> int:
        """Sample rate of the decoded waveform (the Oobleck VAE's, 44.1 kHz for Stable-Audio-Open)."""
        if getattr(self, "audio_vae", None) is not None:
            return int(getattr(self.audio_vae.config, "sampling_rate", 44100))
        return 44100

    @property
    def guidance_scale(self):
        return self._guidance_scale

    @property
    def do_classifier_free_guidance(self) -> bool:
        return self._do_cfg

    @property
    def num_timesteps(self):
        return self._num_timesteps

    @property
    def current_timestep(self):
        return self._current_timestep

    @property
    def interrupt(self):
        return self._interrupt

    @property
    def attention_kwargs(self):
        return self._attention_kwargs

    # ------------------------------------------------------------------ latent statistics
    def _latents_mean_std(self) -> tuple[list[float], list[float]]:
        vae = getattr(self, "vae", None)
        if vae is not None and getattr(vae.config, "latents_mean", None) is not None:
            return list(vae.config.latents_mean), list(vae.config.latents_std)
        return WAN22_LATENTS_MEAN, WAN22_LATENTS_STD

    def normalize_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Raw Wan2.2 latent -> DiT latent, `(z - mean) * (1 / std)`, in `latents.dtype`."""
        mean, std = self._latents_mean_std()
        view = (1, -1) + (1,) * (latents.ndim - 2)
        mean = torch.tensor(mean, dtype=latents.dtype, device=latents.device).view(view)
        inv_std = 1.0 / torch.tensor(std, dtype=latents.dtype, device=latents.device).view(view)
        return (latents - mean) * inv_std

    def denormalize_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """DiT latent -> raw Wan2.2 latent, `z / (1 / std) + mean` (a division by the stored reciprocal)."""
        mean, std = self._latents_mean_std()
        view = (1, -1) + (1,) * (latents.ndim - 2)
        mean = torch.tensor(mean, dtype=latents.dtype, device=latents.device).view(view)
        inv_std = 1.0 / torch.tensor(std, dtype=latents.dtype, device=latents.device).view(view)
        return latents / inv_std + mean

    def _cache_context(self, name: str):
        """diffusers' block-cache context (`CacheMixin`) when hooks are installed on the transformer, else a no-op.

        `cache_context` creates a `HookRegistry` on a module that has none, and the registry holds the module: a
        reference cycle that keeps the transformer (30 GiB at full size) on the GPU after `del pipe` until Python's
        cycle collector happens to run. A step cache, context parallelism or group offload installs the registry
        before the first step, so the context is only needed (and only entered) when one exists.
        """
        transformer = self.transformer
        ctx = getattr(transformer, "cache_context", None)
        if ctx is None or getattr(transformer, "_diffusers_hook", None) is None:
            return contextlib.nullcontext()
        return ctx(name)

    def _input_device(self, module) -> torch.device:
        """Where a component's inputs must go. Offload hooks (accelerate's, or diffusers' group offload) bring the
        weights to the execution device only when the component runs, and `encode`/`decode` do not move inputs."""
        if hasattr(module, "_hf_hook") or getattr(module, "_diffusers_hook", None) is not None:
            return self._execution_device
        device = getattr(module, "device", None)
        return self._execution_device if device is None or device.type == "meta" else device

    def _denoise_pass(self, context: str, latents, audio_latents, embeds, mask, attention_kwargs):
        """One DiT call: `(video_velocity, audio_velocity)` for the `"cond"` or `"uncond"` text (cache context)."""
        patch = getattr(getattr(self.transformer, "config", None), "patch_size", (1, 2, 2))
        num_video_tokens = latents[0, 0].numel() // max(1, int(patch[0]) * int(patch[1]) * int(patch[2]))
        self._maybe_auto_compile(latents.device, num_video_tokens)
        with self._cache_context(context), self._compile_limits():
            return self.transformer(
                hidden_states=latents,
                audio_hidden_states=audio_latents,
                encoder_hidden_states=embeds,
                encoder_attention_mask=mask,
                attention_kwargs=attention_kwargs,
                return_dict=False,
            )

    @staticmethod
    def load_image(image):
        """Open/validate the conditioning image(s) early, so an unreadable file fails before any model runs."""
        from ..utils.image import to_pil_image

        if isinstance(image, list):
            return [to_pil_image(x) for x in image]
        return to_pil_image(image)

    # ------------------------------------------------------------------ text
    def _get_t5_prompt_embeds(
        self, prompt: list[str], max_sequence_length: int, device: torch.device
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """T5-Gemma encoder embeddings as the original computes them.

        Each prompt is tokenised alone, with no padding or truncation, the encoder output is cast to float16, padded
        or trimmed to `max_sequence_length` rows, then cast to float32. Returns embeddings `(B, L, D)` float32 and a
        boolean mask `(B, L)` marking the real tokens.
        """
        if self.text_encoder is None or self.tokenizer is None:
            raise ValueError(
                "This pipeline has no `text_encoder`/`tokenizer`. Pass `prompt_embeds` (and `negative_prompt_embeds` "
                "when guidance is on), or load the pipeline with `text_encoder=` and `tokenizer=` (T5-Gemma)."
            )
        te_device = self._input_device(self.text_encoder)
        embeds, masks = [], []
        for text in prompt:
            inputs = self.tokenizer([text], return_tensors="pt")
            input_ids = inputs["input_ids"].to(te_device)
            attention_mask = inputs["attention_mask"].to(te_device)
            hidden = self.text_encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            # Quirk: encoder output (bf16 upstream) -> float16 -> zero pad/trim -> float32.
            hidden = hidden.to(device=device, dtype=torch.float16)
            n = min(hidden.shape[1], max_sequence_length)
            padded = hidden.new_zeros((1, max_sequence_length, hidden.shape[-1]))
            padded[:, :n] = hidden[:, :n]
            mask = torch.zeros((1, max_sequence_length), dtype=torch.bool, device=device)
            mask[:, :n] = True
            embeds.append(padded.float())
            masks.append(mask)
        return torch.cat(embeds), torch.cat(masks)

    def encode_prompt(
        self,
        prompt: str | list[str] | None,
        negative_prompt: str | list[str] | None = None,
        do_classifier_free_guidance: bool = True,
        num_videos_per_prompt: int = 1,
        prompt_embeds: torch.Tensor | None = None,
        prompt_attention_mask: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        negative_prompt_attention_mask: torch.Tensor | None = None,
        max_sequence_length: int = TEXT_MAX_SEQUENCE_LENGTH,
        device: torch.device | None = None,
    ):
        r"""Encode the prompt and the negative prompt with T5-Gemma, as `__call__` does.

        Args:
            prompt (`str` or `list[str]`, *optional*): the prompt(s); not needed when `prompt_embeds` are given.
            negative_prompt (`str` or `list[str]`, *optional*): defaults to the original's negative prompt; one, or one
                per prompt.
            do_classifier_free_guidance (`bool`, defaults to `True`): also encode the negative prompt.
            num_videos_per_prompt (`int`, defaults to 1): each row is repeated this many times.
            prompt_embeds, prompt_attention_mask, negative_prompt_embeds, negative_prompt_attention_mask
                (`torch.Tensor`, *optional*): precomputed values, passed through (cast to float32 / bool).
            max_sequence_length (`int`, defaults to 640): rows of the padded/trimmed embeddings.
            device (`torch.device`, *optional*): where the results go; the execution device by default.

        Returns:
            `(prompt_embeds, prompt_attention_mask, negative_prompt_embeds, negative_prompt_attention_mask)`, the
            arguments of the same names of `__call__`: embeddings `(B * num_videos_per_prompt, L, D)` float32 and
            boolean masks `(B * num_videos_per_prompt, L)`; the negative pair is `None` without guidance. So
            `pipe(prompt_embeds=pe, prompt_attention_mask=pm, negative_prompt_embeds=ne,
            negative_prompt_attention_mask=nm)` gives the same result as `pipe(prompt)`.
        """
        device = device or self._execution_device
        if prompt_embeds is None:
            prompt = [prompt] if isinstance(prompt, str) else list(prompt)
            prompt_embeds, prompt_attention_mask = self._get_t5_prompt_embeds(prompt, max_sequence_length, device)
        else:
            prompt_embeds = prompt_embeds.to(device=device, dtype=torch.float32)
            if prompt_attention_mask is None:
                prompt_attention_mask = torch.ones(prompt_embeds.shape[:2], dtype=torch.bool, device=device)
            prompt_attention_mask = prompt_attention_mask.to(device=device, dtype=torch.bool)
        batch_size = prompt_embeds.shape[0]

        if do_classifier_free_guidance and negative_prompt_embeds is None:
            negative_prompt = DEFAULT_NEGATIVE_PROMPT if negative_prompt is None else negative_prompt
            negative_prompt = [negative_prompt] if isinstance(negative_prompt, str) else list(negative_prompt)
            if len(negative_prompt) == 1 and batch_size > 1:
                # The original encodes the negative prompt once and reuses it for every call.
                neg, neg_mask = self._get_t5_prompt_embeds(negative_prompt, max_sequence_length, device)
                negative_prompt_embeds = neg.expand(batch_size, -1, -1).clone()
                negative_prompt_attention_mask = neg_mask.expand(batch_size, -1).clone()
            elif len(negative_prompt) != batch_size:
                raise ValueError(
                    f"`negative_prompt` has {len(negative_prompt)} entries but `prompt` has {batch_size}; give one "
                    "negative prompt or one per prompt."
                )
            else:
                negative_prompt_embeds, negative_prompt_attention_mask = self._get_t5_prompt_embeds(
                    negative_prompt, max_sequence_length, device
                )
        elif do_classifier_free_guidance:
            negative_prompt_embeds = negative_prompt_embeds.to(device=device, dtype=torch.float32)
            if negative_prompt_attention_mask is None:
                negative_prompt_attention_mask = torch.ones(
                    negative_prompt_embeds.shape[:2], dtype=torch.bool, device=device
                )
            negative_prompt_attention_mask = negative_prompt_attention_mask.to(device=device, dtype=torch.bool)
            if negative_prompt_embeds.shape[0] == 1 and batch_size > 1:
                negative_prompt_embeds = negative_prompt_embeds.expand(batch_size, -1, -1)
                negative_prompt_attention_mask = negative_prompt_attention_mask.expand(batch_size, -1)
        else:
            negative_prompt_embeds = negative_prompt_attention_mask = None

        if num_videos_per_prompt > 1:
            prompt_embeds = prompt_embeds.repeat_interleave(num_videos_per_prompt, dim=0)
            prompt_attention_mask = prompt_attention_mask.repeat_interleave(num_videos_per_prompt, dim=0)
            if negative_prompt_embeds is not None:
                negative_prompt_embeds = negative_prompt_embeds.repeat_interleave(num_videos_per_prompt, dim=0)
                negative_prompt_attention_mask = negative_prompt_attention_mask.repeat_interleave(
                    num_videos_per_prompt, dim=0
                )

        # The names are those of `__call__`'s arguments: `pipe(**dict(zip(names, pipe.encode_prompt(...))))`.
        return prompt_embeds, prompt_attention_mask, negative_prompt_embeds, negative_prompt_attention_mask

    # ------------------------------------------------------------------ image (TI2V)
    def encode_image(
        self, image, height: int, width: int, batch_size: int, device: torch.device
    ) -> torch.Tensor:
        """Crop/resize/encode the conditioning image as the original.

        Returns the normalised first-frame latent `(batch_size, 48, 1, height // 16, width // 16)` float32.
        """
        from ..utils.image import preprocess_image

        if self.vae is None:
            raise ValueError(
                "Image conditioning needs the Wan2.2 `vae` to encode the image; load the pipeline with `vae=` or pass "
                "`image_latents`."
            )
        images = image if isinstance(image, list) else [image]
        if len(images) not in (1, batch_size):
            raise ValueError(f"Got {len(images)} images for a batch of {batch_size}; give one image or one per video.")
        vae_device = self._input_device(self.vae)
        latents = []
        for img in images:
            pixels = preprocess_image(img, height, width)  # [1, 3, H, W] float32 in [-1, 1]
            pixels = pixels.to(device=vae_device, dtype=self.vae.dtype).unsqueeze(2)
            posterior = self.vae.encode(pixels).latent_dist
            mu = posterior.mode() if hasattr(posterior, "mode") else posterior.mean
            # Normalised in the VAE dtype (bf16 upstream), then float32.
            latents.append(self.normalize_latents(mu.to(self.vae.dtype)).to(device=device, dtype=torch.float32))
        latents = torch.cat(latents)
        if latents.shape[0] == 1 and batch_size > 1:
            latents = latents.expand(batch_size, -1, -1, -1, -1).clone()
        return latents

    # ------------------------------------------------------------------ decoding
    def _resolve_decoder(self, decode_with: str) -> str:
        if decode_with not in _DECODERS:
            raise ValueError(f"`decode_with` must be one of {_DECODERS}, got {decode_with!r}.")
        turbo = getattr(self, "turbo_vae", None)
        if decode_with == "auto":
            decode_with = "turbo" if turbo is not None else "vae"
        if decode_with == "turbo" and turbo is None:
            raise ValueError("`decode_with='turbo'` but the pipeline has no `turbo_vae`; load one or use 'vae'.")
        if decode_with == "vae" and getattr(self, "vae", None) is None:
            raise ValueError(
                "Decoding needs a video decoder: load the pipeline with `vae=` (Wan2.2) or `turbo_vae=`, or use "
                "`output_type='latent'`."
            )
        return decode_with

    def decode_latents(self, latents: torch.Tensor, decode_with: str = "auto") -> torch.Tensor:
        """Normalised DiT latent `(B, 48, T, h, w)` -> video `(B, 3, 4(T-1)+1, 16h, 16w)` float32 in `[-1, 1]`."""
        return self._decode_latents_raw(latents, decode_with).float().clamp(-1.0, 1.0)

    def _decode_latents_raw(self, latents: torch.Tensor, decode_with: str = "auto") -> torch.Tensor:
        """The decoder's own output `(B, 3, 4(T-1)+1, 16h, 16w)`, in its dtype and not clamped."""
        decode_with = self._resolve_decoder(decode_with)
        if decode_with == "turbo":
            turbo = self.turbo_vae
            # The Turbo-VAE denormalises internally, in float32.
            return turbo.decode(latents.to(device=self._input_device(turbo), dtype=turbo.dtype)).sample
        vae = self.vae
        # Wan2.2 path: denormalisation in the VAE dtype (bf16 upstream).
        z = self.denormalize_latents(latents.to(device=self._input_device(vae), dtype=vae.dtype))
        return vae.decode(z).sample

    def decode_audio_latents(self, audio_latents: torch.Tensor) -> torch.Tensor:
        """Audio latent `(B, Na, 64)` -> waveform `(B, 2, S)` float32 at `audio_sample_rate`."""
        from ..utils.audio import decode_audio

        if getattr(self, "audio_vae", None) is None:
            raise ValueError(
                "Decoding audio needs the Oobleck `audio_vae`; load the pipeline with `audio_vae=` or use "
                "`output_type='latent'`."
            )
        return decode_audio(self.audio_vae, audio_latents.to(self._input_device(self.audio_vae)))

    @staticmethod
    def postprocess_video(video: torch.Tensor, output_type: str):
        """`(B, 3, F, H, W)` in `[-1, 1]` -> the requested output type (values in `[0, 1]`).

        `"pt"`: a float32 tensor `(B, F, 3, H, W)` on the video's device; `"np"`: a float32 array `(B, F, H, W, 3)`;
        `"pil"`: lists of `PIL.Image` frames (truncating uint8 cast, as the original).
        """
        if output_type == "pt":
            return _to_unit_range(video).permute(0, 2, 1, 3, 4).contiguous()
        array = video_to_numpy(video)
        if output_type == "np":
            return array
        # "pil": truncating uint8 cast like the original.
        u8 = (array * 255).astype(np.uint8)
        return [[PIL.Image.fromarray(f) for f in clip] for clip in u8]

    @staticmethod
    def postprocess_audio(audio: torch.Tensor, output_type: str):
        return audio if output_type == "pt" else audio.detach().cpu().numpy()

    def trim_audio_to_video(self, audio: torch.Tensor, num_video_frames: int) -> torch.Tensor:
        """Cut a decoded waveform `(B, 2, S)` to at most one video frame past the video's `num_video_frames` frames.

        The audio latent has one frame per requested video frame (`num_frames`), but the video decodes to
        `4 * (T - 1) + 1` frames, up to 3 fewer when `num_frames` is off that grid (an audio-driven clip's length, or
        `seconds` such as 1.1). The extra audio would run past the last picture. One frame of slack keeps the
        original's output unchanged where it was already in step (1 s = 26 audio vs 25 video frames).
        """
        max_samples = int(round((num_video_frames + 1) * self.audio_sample_rate / DEFAULT_FPS))
        return audio[..., :max_samples] if audio.shape[-1] > max_samples else audio

    @staticmethod
    def _release_cached_memory(device: torch.device) -> None:
        """Return the caching allocator's free blocks to the driver before a decode, so the decoder can use them
        (after a 1080p SR loop ~22 GiB sat reserved but unallocated, and the decode's 8 GiB request failed)."""
        if device.type == "cuda" and torch.cuda.is_available():
            torch.cuda.empty_cache()

    @staticmethod
    def save_latents_for_recovery(latents: torch.Tensor, audio_latents: torch.Tensor | None) -> str:
        """Write the sampled latents to a new temporary folder (`.safetensors`, written then renamed) and return
        the file path. Reload with `safetensors.torch.load_file(path)`."""
        import tempfile

        from safetensors.torch import save_file

        folder = tempfile.mkdtemp(prefix="magihuman_latents_")
        path = os.path.join(folder, "latents.safetensors")
        tensors = {"latents": latents.detach().to("cpu", torch.float32).contiguous()}
        if audio_latents is not None:
            tensors["audio_latents"] = audio_latents.detach().to("cpu", torch.float32).contiguous()
        save_file(tensors, path + ".tmp")
        os.replace(path + ".tmp", path)
        return path

    def _finish(self, latents, audio_latents, output_type: str, decode_with: str, return_dict: bool):
        """Decode (unless `output_type="latent"`), release offload hooks, and package the result.

        A failure while decoding keeps the work: the sampled latents are saved to a temporary file whose path the
        raised [`MagiHumanDecodeError`] gives (and holds as `.latents_path`).
        """
        report_non_finite(latents, "video latent after denoising")
        report_non_finite(audio_latents, "audio latent after denoising")
        if output_type == "latent":
            frames, audio = latents, audio_latents
        else:
            try:
                self._release_cached_memory(latents.device)
                # the decoder's own dtype: `postprocess_video` casts and clamps it in pieces on the way to the host
                video = self._decode_latents_raw(latents, decode_with)
                report_non_finite(video, "decoded video")
                frames = self.postprocess_video(video, output_type)
                num_video_frames = video.shape[2]
                del video
                waveform = self.decode_audio_latents(audio_latents)
                report_non_finite(waveform, "decoded audio")
                audio = self.postprocess_audio(self.trim_audio_to_video(waveform, num_video_frames), output_type)
            except Exception as error:
                try:
                    path = self.save_latents_for_recovery(latents, audio_latents)
                    where = (
                        f"The sampled latents are saved in {path} (keys 'latents', 'audio_latents'): reload them "
                        "with `safetensors.torch.load_file(path)` and decode with `pipe.decode_latents(latents)` / "
                        "`pipe.decode_audio_latents(audio_latents)`, or pass `output_type='latent'`."
                    )
                except Exception as save_error:  # pragma: no cover - disk full, read-only temp dir
                    path, where = None, f"Saving the sampled latents failed too ({save_error})."
                raise MagiHumanDecodeError(
                    f"Decoding failed after sampling: {type(error).__name__}: {error}. {where}", path
                ) from error
        self._free_model_hooks()
        if not return_dict:
            return (frames, audio)
        return MagiHumanPipelineOutput(frames=frames, audio=audio)

    def _free_model_hooks(self) -> None:
        """`maybe_free_model_hooks()`, without leaving a reference cycle on components that had no hooks.

        diffusers resets each `CacheMixin` component's stateful hooks there through `HookRegistry.
        check_if_exists_or_initialize`, which attaches an empty registry to a model that had none; the registry holds
        the model, so after `del pipe` the model (30 GiB for a full-size DiT) stays on the GPU until Python's cycle
        collector runs. A registry that this call created and that holds no hook is removed again.
        """
        modules = [c for c in self.components.values() if isinstance(c, torch.nn.Module)]
        without = [m for m in modules if getattr(m, "_diffusers_hook", None) is None]
        self.maybe_free_model_hooks()
        for module in without:
            registry = getattr(module, "_diffusers_hook", None)
            if registry is not None and not getattr(registry, "hooks", True):
                del module._diffusers_hook

    def _begin_call(self) -> None:
        """Start of a `__call__` (after its inputs are checked): refuses cache/guidance combinations that cannot work
        and marks a new call for the automatic compile policy."""
        self._check_cache_with_guidance()
        check_float8_scales(self.transformer)  # quantized weights that can only give NaN: refused before any step
        self._auto_compile_new_call = True

    def _check_cache_with_guidance(self) -> None:
        """Pyramid Attention Broadcast keeps one cached attention output per attention module, not one per cache
        context: with classifier-free guidance the unconditional pass would reuse the conditional pass's attention
        (guidance silently off), or fail when the two prompts have different lengths. Refused before any step."""
        config = getattr(self.transformer, "_cache_config", None)
        if config is None or not self._do_cfg:
            return
        from diffusers.hooks import PyramidAttentionBroadcastConfig

        if isinstance(config, PyramidAttentionBroadcastConfig):
            raise ValueError(
                "Pyramid Attention Broadcast cannot be combined with classifier-free guidance here: its cached attention "
                "is shared by the conditional and unconditional passes. Use guidance_scale=1.0 (e.g. the distilled "
                "model), or FirstBlockCacheConfig / MagCacheConfig / TaylorSeerCacheConfig, which keep one state per pass."
            )

    # ------------------------------------------------------------------ schedulers (ours or stock flow ones)
    def _uses_distilled_rule(self, scheduler=None) -> bool:
        """Whether the scheduler steps with the re-noising (DMD-2 distilled) rule: a [`MagiHumanScheduler`] with
        `sampler="dmd"`, or diffusers' `FlowMatchEulerDiscreteScheduler(stochastic_sampling=True)` (the same rule).
        Such a scheduler samples without guidance and defaults to 8 steps; other stock flow schedulers (UniPC with
        `use_flow_sigmas`, deterministic FlowMatchEuler) sample like the base model."""
        from ..schedulers.scheduling_utils_magihuman import is_distilled_scheduler

        return is_distilled_scheduler(self.scheduler if scheduler is None else scheduler)

    @staticmethod
    def _set_timesteps(scheduler, num_inference_steps, device, sigmas=None, timesteps=None):
        """`scheduler.set_timesteps` with `sigmas=` / `timesteps=` as diffusers' `retrieve_timesteps` does, then
        `set_begin_index(0)`: every step is taken in order even where integer timesteps repeat (above ~211 steps
        the truncated timesteps of the shift-5 grid collide, and a timestep lookup would run off the end).

        Returns `(timesteps, num_inference_steps)`.
        """
        import inspect

        params = set(inspect.signature(scheduler.set_timesteps).parameters)
        if timesteps is not None:
            if "timesteps" not in params:
                raise ValueError(
                    f"`timesteps=` is not supported by {type(scheduler).__name__}; pass `sigmas=` (flow noise levels, "
                    "highest first) or `num_inference_steps`."
                )
            scheduler.set_timesteps(timesteps=timesteps, device=device)
        elif sigmas is not None:
            if "sigmas" not in params:
                raise ValueError(f"`sigmas=` is not supported by {type(scheduler).__name__}.")
            scheduler.set_timesteps(sigmas=sigmas, device=device)
        else:
            scheduler.set_timesteps(num_inference_steps, device=device)
        if hasattr(scheduler, "set_begin_index"):
            scheduler.set_begin_index(0)
        return scheduler.timesteps, len(scheduler.timesteps)

    def _check_schedule(self, scheduler, num_inference_steps, sigmas, timesteps) -> None:
        """Build the schedule on a copy before any model runs, so an unsupported step count or grid fails first."""
        import copy

        if sigmas is not None and timesteps is not None:
            raise ValueError("Give either `sigmas` or `timesteps`, not both.")
        for name, values in (("sigmas", sigmas), ("timesteps", timesteps)):
            if values is None:
                continue
            array = np.asarray(values.detach().cpu() if isinstance(values, torch.Tensor) else values, dtype=np.float64)
            if array.ndim != 1 or array.size == 0 or not np.isfinite(array).all():
                raise ValueError(f"`{name}` must be a non-empty 1-D list of finite numbers, got {values!r}.")
            if np.any(np.diff(array) > 0):
                raise ValueError(f"`{name}` must decrease (highest noise first), got {array.tolist()}.")
        try:
            probe = copy.deepcopy(scheduler)
            steps, n = self._set_timesteps(probe, num_inference_steps, "cpu", sigmas, timesteps)
        except ValueError:
            raise
        except Exception as e:
            raise ValueError(
                f"The scheduler ({type(scheduler).__name__}) cannot build a schedule for "
                f"num_inference_steps={num_inference_steps!r}, sigmas={sigmas!r}, timesteps={timesteps!r}: {e}"
            ) from e
        if n < 1:
            raise ValueError("The schedule has no steps; give `num_inference_steps` >= 1.")

    @staticmethod
    def _scheduler_step(scheduler, model_output, t, sample, generator):
        """`scheduler.step`, passing `generator` only to schedulers whose step draws noise (DMD, FlowMatchEuler)."""
        import inspect

        if "generator" in inspect.signature(scheduler.step).parameters:
            return scheduler.step(model_output, t, sample, generator=generator, return_dict=False)[0]
        return scheduler.step(model_output, t, sample, return_dict=False)[0]

    # ------------------------------------------------------------------ shared checks
    def _check_common(
        self,
        prompt,
        prompt_embeds,
        negative_prompt_embeds,
        do_cfg,
        output_type,
        callback_on_step_end_tensor_inputs,
        generator,
        batch_size_hint,
        prompt_attention_mask=None,
        negative_prompt_attention_mask=None,
    ):
        if prompt is None and prompt_embeds is None:
            raise ValueError("Give a `prompt` (or precomputed `prompt_embeds`).")
        if prompt is not None and prompt_embeds is not None:
            raise ValueError("Give either `prompt` or `prompt_embeds`, not both.")
        if prompt is not None:
            self._check_prompt(prompt, "prompt")
        check_tensor(prompt_embeds, "prompt_embeds", ndim=3)
        check_tensor(negative_prompt_embeds, "negative_prompt_embeds", ndim=3)
        for name, mask, embeds in (
            ("prompt_attention_mask", prompt_attention_mask, prompt_embeds),
            ("negative_prompt_attention_mask", negative_prompt_attention_mask, negative_prompt_embeds),
        ):
            check_tensor(mask, name, ndim=2)
            if mask is not None and embeds is not None and tuple(mask.shape) != tuple(embeds.shape[:2]):
                raise ValueError(
                    f"`{name}` must be (batch, tokens) = {tuple(embeds.shape[:2])} like its embeddings, got "
                    f"{tuple(mask.shape)}."
                )
        if (
            prompt_embeds is not None
            and negative_prompt_embeds is not None
            and prompt_embeds.shape[-1] != negative_prompt_embeds.shape[-1]
        ):
            raise ValueError(
                f"`prompt_embeds` ({prompt_embeds.shape[-1]} channels) and `negative_prompt_embeds` "
                f"({negative_prompt_embeds.shape[-1]}) differ in width."
            )
        if not isinstance(output_type, str) or output_type not in _OUTPUT_TYPES:
            raise ValueError(f"`output_type` must be one of {_OUTPUT_TYPES}, got {output_type!r}.")
        if callback_on_step_end_tensor_inputs is not None:
            bad = [k for k in callback_on_step_end_tensor_inputs if k not in self._callback_tensor_inputs]
            if bad:
                raise ValueError(
                    f"`callback_on_step_end_tensor_inputs` has {bad}; allowed: {self._callback_tensor_inputs}."
                )
        check_generator(generator)
        if isinstance(generator, list) and len(generator) != batch_size_hint:
            raise ValueError(
                f"Got {len(generator)} generators for an effective batch of {batch_size_hint}; give one generator "
                "or one per video."
            )

    def _check_components(self, prompt, negative_prompt_embeds, do_cfg, output_type, decode_with, vae_use=None):
        """Refuse a call that needs a component this pipeline was loaded without (e.g. `vae=None`), before any model
        runs. `vae_use` names what needs the Wan2.2 VAE's encoder (an image, decoded frames), if anything."""
        if prompt is not None or (do_cfg and negative_prompt_embeds is None):
            missing = [n for n in ("text_encoder", "tokenizer") if getattr(self, n, None) is None]
            if missing:
                what = "`prompt`" if prompt is not None else "the negative prompt (guidance is on)"
                raise ValueError(
                    f"Encoding {what} needs the T5-Gemma `text_encoder` and `tokenizer`, but this pipeline has no "
                    f"{' or '.join(f'`{n}`' for n in missing)}. Load them, or pass `prompt_embeds` (and, with "
                    "guidance, `negative_prompt_embeds`) computed with `encode_prompt`."
                )
        if output_type != "latent":
            self._resolve_decoder(decode_with)
            if getattr(self, "audio_vae", None) is None:
                raise ValueError(
                    f"`output_type={output_type!r}` decodes the audio with the Oobleck `audio_vae`, but this pipeline "
                    "has none; load it, or use `output_type='latent'`."
                )
        elif decode_with not in _DECODERS:
            raise ValueError(f"`decode_with` must be one of {_DECODERS}, got {decode_with!r}.")
        if vae_use is not None and getattr(self, "vae", None) is None:
            raise ValueError(f"{vae_use} needs the Wan2.2 `vae` to encode it, but this pipeline has none; load it.")

    @staticmethod
    def _check_prompt(prompt, name: str) -> list[str]:
        prompts = [prompt] if isinstance(prompt, str) else prompt
        if not isinstance(prompts, (list, tuple)) or not all(isinstance(p, str) for p in prompts):
            raise ValueError(f"`{name}` must be a string or a list of strings, got {prompt!r} ({type(prompt).__name__}).")
        if len(prompts) == 0 or any(len(p.strip()) == 0 for p in prompts):
            raise ValueError(f"`{name}` is empty; describe the video (and the speech) you want.")
        return list(prompts)
