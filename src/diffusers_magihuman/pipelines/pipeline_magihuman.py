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
"""Text (+image, +audio) to audio+video with daVinci-MagiHuman (base and DMD-2 distilled checkpoints)."""

from __future__ import annotations

import copy
from typing import Any, Callable

import torch

from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback
from diffusers.models import AutoencoderKLWan, AutoencoderOobleck
from diffusers.pipelines.pipeline_utils import DiffusionPipeline
from diffusers.utils import logging, replace_example_docstring
from diffusers.utils.torch_utils import randn_tensor
from transformers import GemmaTokenizer, T5GemmaEncoderModel

from ..constants import (
    BASE_NUM_INFERENCE_STEPS,
    DEFAULT_AUDIO_GUIDANCE_SCALE,
    DEFAULT_FPS,
    DEFAULT_GUIDANCE_SCALE,
    DISTILL_NUM_INFERENCE_STEPS,
    TEXT_MAX_SEQUENCE_LENGTH,
    VIDEO_GUIDANCE_SWITCH_TIMESTEP,
    VIDEO_LATE_GUIDANCE_SCALE,
)
from ..models.autoencoder_turbo_vaed import AutoencoderTurboVAED
from ..models.transformer_magihuman import MagiHumanTransformer3DModel
from ..schedulers.scheduling_magihuman import MagiHumanScheduler
from .lora_magihuman import MagiHumanLoraLoaderMixin
from .pipeline_magihuman_base import MagiHumanPipelineMixin, as_number, check_tensor, snap_size, warn_once


logger = logging.get_logger(__name__)

MAX_SECONDS = 60

EXAMPLE_DOC_STRING = """
    Examples:
        ```python
        >>> import torch
        >>> from diffusers_magihuman import MagiHumanPipeline, export_to_video

        >>> pipe = MagiHumanPipeline.from_pretrained("path/to/magihuman-distill", dtype=torch.bfloat16)
        >>> pipe.enable_model_cpu_offload()  # or pipe.to("cuda") on an 80 GB card
        >>> prompt = 'A young woman in a red coat smiles at the camera. Dialogue: <Woman, English>: "Hello there!"'
        >>> out = pipe(prompt, height=256, width=448, seconds=4, generator=torch.Generator().manual_seed(42))
        >>> export_to_video(out.frames[0], "hello.mp4", fps=25, audio=out.audio[0], audio_sample_rate=pipe.audio_sample_rate)
        ```
"""



def _check_condition_batch(name: str, tensor: torch.Tensor, batch_size: int) -> None:
    """A conditioning latent is shared by every video (batch 1) or given once per video."""
    if tensor.shape[0] not in (1, batch_size):
        raise ValueError(f"`{name}` has batch {tensor.shape[0]}; give 1 or one per video ({batch_size}).")

class MagiHumanPipeline(MagiHumanPipelineMixin, DiffusionPipeline, MagiHumanLoraLoaderMixin):
    r"""
    daVinci-MagiHuman: one single-stream DiT denoises a video latent and a speech/audio latent together.

    Modes: text-to-audio+video (`prompt`), image+text (`image` or `image_latents`: frame 0 is pinned to the image
    latent before every step) and audio-driven (`audio` or `audio_condition_latents`: the audio latent is held
    clean and only the video is generated). Base checkpoints sample with 32 UniPC steps and CFG; distilled (DMD-2)
    checkpoints with 8 re-noising steps and no CFG — the scheduler's `sampler` config picks the rule.

    Args:
        transformer ([`MagiHumanTransformer3DModel`]): the 15B audio-video DiT.
        scheduler ([`MagiHumanScheduler`]): flow UniPC (base) or the DMD-2 rule (distilled).
        vae ([`AutoencoderKLWan`]): Wan2.2 TI2V-5B VAE (z=48); encodes images, decodes video without a Turbo-VAE.
        audio_vae ([`AutoencoderOobleck`]): Stable-Audio-Open VAE; encodes driving audio, decodes audio.
        text_encoder (`T5GemmaEncoderModel`): T5-Gemma 9B encoder (width 3584).
        tokenizer (`GemmaTokenizer`): its tokenizer.
        turbo_vae ([`AutoencoderTurboVAED`], *optional*): the distilled fast video decoder; used when present.

    `vae`, `audio_vae`, `text_encoder` and `tokenizer` may be passed as `None` (e.g. `from_pretrained(folder,
    text_encoder=None, tokenizer=None)` to run on `prompt_embeds`, or without decoders for `output_type="latent"`); a
    call that needs a missing one is refused before any model runs.

    A call that needs a component the pipeline has none of (a prompt without `text_encoder`/`tokenizer`, decoded
    output without a video decoder or `audio_vae`, `image=` without `vae`) is refused before any model runs.
    """

    model_cpu_offload_seq = "text_encoder->transformer->vae->turbo_vae->audio_vae"
    # Only what the default call (a prompt in, decoded video and audio out) does without: with no Turbo-VAE the video
    # is decoded by the Wan2.2 `vae`. The other components may still be passed as `None` explicitly (e.g.
    # `from_pretrained(folder, text_encoder=None, tokenizer=None)` to run on `prompt_embeds`); a call that needs one
    # of them is then refused before any model runs.
    _optional_components = ["turbo_vae"]
    _callback_tensor_inputs = ["latents", "audio_latents", "prompt_embeds", "negative_prompt_embeds"]

    def __init__(
        self,
        transformer: MagiHumanTransformer3DModel,
        scheduler: MagiHumanScheduler,
        vae: AutoencoderKLWan | None,
        audio_vae: AutoencoderOobleck | None,
        text_encoder: T5GemmaEncoderModel | None,
        tokenizer: GemmaTokenizer | None,
        turbo_vae: AutoencoderTurboVAED | None = None,
    ):
        super().__init__()
        self.register_modules(
            transformer=transformer,
            scheduler=scheduler,
            vae=vae,
            audio_vae=audio_vae,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            turbo_vae=turbo_vae,
        )

    # ------------------------------------------------------------------ inputs
    def _frames_from_request(self, num_frames, seconds, fps, has_audio) -> int | None:
        """The clip length in frames (`None`: it comes from the driving audio).

        The audio latent has one frame per video frame at 25 frames/s and the video latent `(num_frames - 1) // 4 + 1`
        frames, which decode to `4 * (T - 1) + 1` pictures; so `num_frames` is snapped to that `4k + 1` grid (with a
        warning) to keep the audio and the video the same length. `seconds` keeps the original's
        `seconds * fps + 1` (the decoded audio is cut to the video, see `trim_audio_to_video`).
        """
        fps = as_number(fps, "fps")
        if fps != DEFAULT_FPS:
            raise ValueError(
                f"`fps` must be {DEFAULT_FPS}, got {fps!r}: the model makes video frames and audio latent frames at "
                f"{DEFAULT_FPS} per second, so any other rate would put the sound out of step with the picture. "
                "Choose the length with `seconds` or `num_frames`, and resample the frames when exporting if you need "
                "another frame rate."
            )
        fps = DEFAULT_FPS
        if num_frames is not None and seconds is not None:
            raise ValueError("Give either `num_frames` or `seconds`, not both.")
        if has_audio and num_frames is not None:
            raise ValueError(
                "In audio-driven mode the clip length comes from the audio; use `seconds` to trim it, not `num_frames`."
            )
        max_frames = MAX_SECONDS * fps + 1
        if seconds is not None:
            seconds = as_number(seconds, "seconds")
            if not (0 < seconds <= MAX_SECONDS):
                raise ValueError(f"`seconds` must be a number in (0, {MAX_SECONDS}], got {seconds!r}.")
            if has_audio:
                return None
            # T2V / TI2V: num_frames = seconds * fps + 1, as the original (4 s -> 101 frames).
            return int(seconds * fps) + 1
        if num_frames is not None:
            num_frames = as_number(num_frames, "num_frames", integer=True)
            if not (1 <= num_frames <= max_frames):
                raise ValueError(f"`num_frames` must be an integer in [1, {max_frames}], got {num_frames!r}.")
            scale = self.vae_scale_factor_temporal
            snapped = min(((num_frames - 1 + scale // 2) // scale) * scale + 1, max_frames)
            if snapped != num_frames:
                logger.warning(
                    f"`num_frames={num_frames}` is not of the form {scale}k+1 that the video latent decodes to; using "
                    f"{snapped} so that the audio and the video have the same length."
                )
            return snapped
        return None if has_audio else 4 * fps + 1  # the original's 4 s default

    def check_inputs(
        self,
        prompt,
        height,
        width,
        image,
        image_latents,
        audio,
        audio_condition_latents,
        latents,
        audio_latents,
        prompt_embeds,
        negative_prompt_embeds,
        guidance_scale,
        output_type,
        callback_on_step_end_tensor_inputs,
        generator,
        batch_size,
        prompt_attention_mask=None,
        negative_prompt_attention_mask=None,
    ):
        distilled = self._uses_distilled_rule()
        do_cfg_requested = guidance_scale is not None and guidance_scale > 1.0
        if distilled and do_cfg_requested:
            raise ValueError(
                f"The scheduler uses the distilled (DMD-2) step rule, which samples without guidance; got "
                f"`guidance_scale={guidance_scale}`. Leave it unset (or 1.0), or load a base checkpoint's scheduler."
            )
        self._check_common(
            prompt,
            prompt_embeds,
            negative_prompt_embeds,
            do_cfg_requested or (guidance_scale is None and not distilled),
            output_type,
            callback_on_step_end_tensor_inputs,
            generator,
            batch_size,
            prompt_attention_mask,
            negative_prompt_attention_mask,
        )
        if image is not None and image_latents is not None:
            raise ValueError("Give either `image` or `image_latents`, not both.")
        if audio is not None and audio_condition_latents is not None:
            raise ValueError("Give either `audio` or `audio_condition_latents`, not both.")
        h, w = height // 16, width // 16
        c = self.latent_channels
        check_tensor(image_latents, "image_latents")
        check_tensor(latents, "latents")
        check_tensor(audio_latents, "audio_latents")
        check_tensor(audio_condition_latents, "audio_condition_latents")
        if image_latents is not None:
            if image_latents.ndim != 5 or image_latents.shape[1] != c or image_latents.shape[2] != 1:
                raise ValueError(
                    f"`image_latents` must be (B, {c}, 1, height/16, width/16), got {tuple(image_latents.shape)}."
                )
            if tuple(image_latents.shape[-2:]) != (h, w):
                raise ValueError(
                    f"`image_latents` spatial size {tuple(image_latents.shape[-2:])} does not match height/width "
                    f"{height}x{width} (latent {h}x{w})."
                )
            _check_condition_batch("image_latents", image_latents, batch_size)
        if latents is not None:
            if latents.ndim != 5 or latents.shape[1] != c or tuple(latents.shape[-2:]) != (h, w):
                raise ValueError(
                    f"`latents` must be (B, {c}, T, {h}, {w}) for {height}x{width}, got {tuple(latents.shape)}."
                )
        audio_c = int(self.transformer.config.audio_in_channels)
        for name, x in (("audio_latents", audio_latents), ("audio_condition_latents", audio_condition_latents)):
            if x is not None and (x.ndim != 3 or x.shape[-1] != audio_c):
                raise ValueError(f"`{name}` must be (B, Na, {audio_c}), got {tuple(x.shape)}.")
        if audio_condition_latents is not None:
            max_frames = MAX_SECONDS * DEFAULT_FPS + 1
            if not (1 <= audio_condition_latents.shape[1] <= max_frames):
                raise ValueError(
                    f"`audio_condition_latents` has {audio_condition_latents.shape[1]} frames; the model makes clips "
                    f"of at most {MAX_SECONDS} s ({max_frames} frames)."
                )
            _check_condition_batch("audio_condition_latents", audio_condition_latents, batch_size)

    def _warn_ignored_arguments(self, distilled, do_cfg, negative_prompt, negative_prompt_embeds, extra_cfg_args):
        """Arguments that change nothing in this configuration are reported once, rather than silently dropped."""
        reason = (
            "the distilled (DMD-2) scheduler samples without classifier-free guidance"
            if distilled
            else "guidance is off (`guidance_scale` <= 1)"
        )
        if not do_cfg:
            given = [n for n, v in (("negative_prompt", negative_prompt), ("negative_prompt_embeds", negative_prompt_embeds)) if v is not None]
            given += [n for n, changed in extra_cfg_args.items() if changed]
            if given:
                warn_once(f"ignored-cfg-{'-'.join(given)}-{distilled}", f"{', '.join(f'`{g}`' for g in given)} ignored: {reason}.")

    def _check_driving_audio_length(self, waveform) -> None:
        from ..utils.audio import AUDIO_SAMPLE_RATE

        seconds = waveform.shape[0] / AUDIO_SAMPLE_RATE
        if seconds > MAX_SECONDS + 1e-9:
            raise ValueError(
                f"The driving `audio` is {seconds:.2f} s long; the model makes clips of at most {MAX_SECONDS} s. "
                f"Pass `seconds=` (at most {MAX_SECONDS}) to use its beginning, or cut the audio."
            )
        if not bool(torch.isfinite(waveform).all()):
            raise ValueError("The driving `audio` contains NaN or Inf samples; refusing to encode it.")

    # ------------------------------------------------------------------ latents
    def prepare_latents(
        self,
        batch_size: int,
        num_latent_frames: int,
        height: int,
        width: int,
        num_audio_frames: int,
        generator,
        device: torch.device,
        latents: torch.Tensor | None = None,
        audio_latents: torch.Tensor | None = None,
        draw_audio: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Initial noise, drawn in the original's order: audio first, then video."""
        video_shape = (
            batch_size,
            self.latent_channels,
            num_latent_frames,
            height // self.vae_scale_factor_spatial,
            width // self.vae_scale_factor_spatial,
        )
        audio_shape = (batch_size, num_audio_frames, int(self.transformer.config.audio_in_channels))
        if draw_audio:
            if audio_latents is None:
                audio_latents = randn_tensor(audio_shape, generator=generator, device=device, dtype=torch.float32)
            elif tuple(audio_latents.shape) != audio_shape:
                raise ValueError(f"`audio_latents` must have shape {audio_shape}, got {tuple(audio_latents.shape)}.")
            audio_latents = audio_latents.to(device=device, dtype=torch.float32)
        if latents is None:
            latents = randn_tensor(video_shape, generator=generator, device=device, dtype=torch.float32)
        elif tuple(latents.shape) != video_shape:
            raise ValueError(f"`latents` must have shape {video_shape}, got {tuple(latents.shape)}.")
        return latents.to(device=device, dtype=torch.float32), audio_latents

    def encode_driving_audio(self, waveform: torch.Tensor, batch_size: int, generator, device) -> torch.Tensor:
        """Oobleck-encode a 51.2 kHz mono driving waveform `(S,)`.

        Returns the audio latent `(batch_size, Na, 64)` float32. The bottleneck sample draws from `generator`
        before the video noise, as the original does.
        """
        from ..utils.audio import encode_audio

        if isinstance(generator, list):
            audio_device = self._input_device(self.audio_vae)
            latents = [encode_audio(self.audio_vae, waveform, generator=g, device=audio_device) for g in generator]
            return torch.cat(latents).to(device=device, dtype=torch.float32)
        latent = encode_audio(self.audio_vae, waveform, generator=generator, device=self._input_device(self.audio_vae))
        return latent.to(device=device, dtype=torch.float32).expand(batch_size, -1, -1).clone()

    def _load_driving_audio(self, audio, seconds, driving_audio_sample_rate):
        from ..utils.audio import load_audio

        if self.audio_vae is None:
            raise ValueError(
                "Audio-driven mode needs the Oobleck `audio_vae` to encode the audio; load it or pass "
                "`audio_condition_latents`."
            )
        kwargs = {"seconds": seconds}
        if driving_audio_sample_rate is not None:
            kwargs["sample_rate_in"] = driving_audio_sample_rate
        return load_audio(audio, **kwargs)

    # ------------------------------------------------------------------ call
    @torch.no_grad()
    @replace_example_docstring(EXAMPLE_DOC_STRING)
    def __call__(
        self,
        prompt: str | list[str] | None = None,
        negative_prompt: str | list[str] | None = None,
        image: Any = None,
        image_latents: torch.Tensor | None = None,
        audio: Any = None,
        driving_audio_sample_rate: int | None = None,
        audio_condition_latents: torch.Tensor | None = None,
        height: int = 256,
        width: int = 448,
        num_frames: int | None = None,
        seconds: float | None = None,
        fps: int = DEFAULT_FPS,
        num_inference_steps: int | None = None,
        sigmas: list[float] | None = None,
        timesteps: list[int] | None = None,
        guidance_scale: float | None = None,
        audio_guidance_scale: float = DEFAULT_AUDIO_GUIDANCE_SCALE,
        late_guidance_scale: float = VIDEO_LATE_GUIDANCE_SCALE,
        guidance_switch_timestep: int = VIDEO_GUIDANCE_SWITCH_TIMESTEP,
        num_videos_per_prompt: int = 1,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        audio_latents: torch.Tensor | None = None,
        prompt_embeds: torch.Tensor | None = None,
        prompt_attention_mask: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        negative_prompt_attention_mask: torch.Tensor | None = None,
        output_type: str = "np",
        decode_with: str = "auto",
        return_dict: bool = True,
        callback_on_step_end: Callable | PipelineCallback | MultiPipelineCallbacks | None = None,
        callback_on_step_end_tensor_inputs: list[str] | None = None,
        attention_kwargs: dict[str, Any] | None = None,
        max_sequence_length: int = TEXT_MAX_SEQUENCE_LENGTH,
        renoise_driving_audio: bool = False,
    ):
        r"""
        Generate a talking-human video with its audio track.

        Args:
            prompt (`str` or `list[str]`): what happens and what is said (see the model card's prompt guide).
            negative_prompt (`str` or `list[str]`, *optional*): defaults to the original's three-part negative prompt.
            image (`PIL.Image.Image`, path, array or tensor, *optional*): first frame (TI2V). Centre-cropped to the
                aspect ratio, Lanczos-resized, Wan2.2-encoded, pinned to latent frame 0 before every step.
            image_latents (`torch.Tensor`, *optional*): an already-encoded normalised image latent `(B, 48, 1, h, w)`.
            audio (path, array, tensor or `(array, sample_rate)`, *optional*): driving audio (audio-driven mode).
                Decoded with PyAV to 51.2 kHz mono, Oobleck-encoded, and held clean while the video is generated.
            driving_audio_sample_rate (`int`, *optional*): sample rate of an `audio` array/tensor (required for
                arrays and tensors unless `audio` is an `(array, sample_rate)` tuple; files carry their own).
            audio_condition_latents (`torch.Tensor`, *optional*): an already-encoded driving audio latent `(B, Na, 64)`.
            height (`int`, defaults to 256), width (`int`, defaults to 448): pixels, rounded down to multiples of 32.
            num_frames (`int`, *optional*) or seconds (`float`, *optional*): clip length; `num_frames = seconds*fps+1`
                (4 s when neither is given). The audio latent has `num_frames` frames, the video latent
                `(num_frames - 1) // 4 + 1`, decoded to `4 * (T - 1) + 1` frames: `num_frames` is snapped to that
                `4k + 1` grid with a warning, and the decoded audio is never more than one frame longer than the video.
                At most 60 s. In audio-driven mode the length comes from the audio (at most 60 s).
            fps (`int`, defaults to 25): frame rate. Only 25 is accepted: the model makes video and audio latent frames
                at 25 per second, and another rate would put the sound out of step.
            num_inference_steps (`int`, *optional*): 32 for UniPC (base), 8 for the distilled rule by default.
            sigmas (`list[float]`, *optional*), timesteps (`list[int]`, *optional*): a custom schedule, passed to the
                scheduler's `set_timesteps` as diffusers' Wan and LTX-2 pipelines do ([`MagiHumanScheduler`] takes
                unshifted `sigmas`; stock flow schedulers take theirs).
            guidance_scale (`float`, *optional*): video CFG while `t > guidance_switch_timestep` (5.0 by default), then
                `late_guidance_scale` (2.0), as the original. Must stay unset/1.0 with a distilled scheduler.
            audio_guidance_scale (`float`, defaults to 5.0): audio CFG (constant).
            num_videos_per_prompt (`int`, defaults to 1): videos per prompt.
            generator (`torch.Generator` or list, *optional*): all random draws (noise, audio bottleneck, DMD re-noise).
            latents (`torch.Tensor`, *optional*): initial video noise `(B, 48, T, h, w)`.
            audio_latents (`torch.Tensor`, *optional*): initial audio noise `(B, Na, 64)`.
            prompt_embeds, prompt_attention_mask, negative_prompt_embeds, negative_prompt_attention_mask
                (`torch.Tensor`, *optional*): precomputed text embeddings `(B, L, 3584)` and boolean masks `(B, L)`.
            output_type (`str`, defaults to `"np"`): `"np"`, `"pt"`, `"pil"` or `"latent"`.
            decode_with (`str`, defaults to `"auto"`): `"turbo"` (Turbo-VAE, when loaded), `"vae"` (Wan2.2), or
                `"auto"` (Turbo-VAE when present).
            return_dict (`bool`, defaults to `True`): return a [`MagiHumanPipelineOutput`] rather than a tuple.
            callback_on_step_end, callback_on_step_end_tensor_inputs: diffusers' step-end callback contract.
            attention_kwargs (`dict`, *optional*): passed to the transformer (e.g. LoRA `scale`).
            max_sequence_length (`int`, defaults to 640): text embeddings are padded/trimmed to this length.
            renoise_driving_audio (`bool`, defaults to `False`): reproduce the original's distilled audio-driven bug:
                the DMD rule re-noises and updates the driving audio latent instead of holding it clean.
                Only for parity with the original; the fixed behaviour holds it clean.

        Examples:

        Returns:
            [`MagiHumanPipelineOutput`] or `tuple(frames, audio)`.
        """
        if isinstance(callback_on_step_end, (PipelineCallback, MultiPipelineCallbacks)):
            callback_on_step_end_tensor_inputs = callback_on_step_end.tensor_inputs
        callback_on_step_end_tensor_inputs = callback_on_step_end_tensor_inputs or ["latents"]

        # 1. Check inputs (everything that can fail does so here, before any model runs)
        height, width = snap_size(height, width)
        num_videos_per_prompt = as_number(num_videos_per_prompt, "num_videos_per_prompt", integer=True)
        if num_videos_per_prompt < 1:
            raise ValueError(f"`num_videos_per_prompt` must be a positive integer, got {num_videos_per_prompt!r}.")
        if prompt is not None:
            n_prompts = len(self._check_prompt(prompt, "prompt"))
        else:
            n_prompts = prompt_embeds.shape[0] if isinstance(prompt_embeds, torch.Tensor) else 1
        batch_size = n_prompts * num_videos_per_prompt
        if guidance_scale is not None:
            guidance_scale = as_number(guidance_scale, "guidance_scale")
        audio_guidance_scale = as_number(audio_guidance_scale, "audio_guidance_scale")
        late_guidance_scale = as_number(late_guidance_scale, "late_guidance_scale")
        guidance_switch_timestep = as_number(guidance_switch_timestep, "guidance_switch_timestep")
        if negative_prompt is not None:
            negs = [negative_prompt] if isinstance(negative_prompt, str) else negative_prompt
            if not isinstance(negs, (list, tuple)) or not all(isinstance(n, str) for n in negs):
                raise ValueError(
                    f"`negative_prompt` must be a string or a list of strings, got {negative_prompt!r}."
                )
        self.check_inputs(
            prompt,
            height,
            width,
            image,
            image_latents,
            audio,
            audio_condition_latents,
            latents,
            audio_latents,
            prompt_embeds,
            negative_prompt_embeds,
            guidance_scale,
            output_type,
            callback_on_step_end_tensor_inputs,
            generator,
            batch_size,
            prompt_attention_mask,
            negative_prompt_attention_mask,
        )
        is_distilled = self._uses_distilled_rule()
        if renoise_driving_audio and not is_distilled:
            raise ValueError(
                "`renoise_driving_audio=True` reproduces a quirk of the distilled DMD-2 rule; it needs "
                "`MagiHumanScheduler(sampler='dmd')` as the scheduler."
            )
        if guidance_scale is None:
            guidance_scale = 1.0 if is_distilled else DEFAULT_GUIDANCE_SCALE
        if num_inference_steps is None and sigmas is None and timesteps is None:
            num_inference_steps = DISTILL_NUM_INFERENCE_STEPS if is_distilled else BASE_NUM_INFERENCE_STEPS
        if num_inference_steps is not None:
            num_inference_steps = as_number(num_inference_steps, "num_inference_steps", integer=True)
            if num_inference_steps < 1:
                raise ValueError(f"`num_inference_steps` must be a positive integer, got {num_inference_steps!r}.")
        self._check_schedule(self.scheduler, num_inference_steps, sigmas, timesteps)
        self._warn_ignored_arguments(
            is_distilled,
            guidance_scale > 1.0,
            negative_prompt,
            negative_prompt_embeds,
            {
                "audio_guidance_scale": audio_guidance_scale != DEFAULT_AUDIO_GUIDANCE_SCALE,
                "late_guidance_scale": late_guidance_scale != VIDEO_LATE_GUIDANCE_SCALE,
                "guidance_switch_timestep": guidance_switch_timestep != VIDEO_GUIDANCE_SWITCH_TIMESTEP,
            },
        )
        self._check_components(
            prompt,
            negative_prompt_embeds,
            guidance_scale > 1.0,
            output_type,
            decode_with,
            vae_use="Image conditioning (`image=`)" if image is not None else None,
        )
        is_a2v = audio is not None or audio_condition_latents is not None
        if renoise_driving_audio and not is_a2v:
            warn_once("ignored-renoise", "`renoise_driving_audio` ignored: there is no driving audio.")
        if driving_audio_sample_rate is not None and audio is None:
            warn_once("ignored-driving-sr", "`driving_audio_sample_rate` ignored: no driving `audio` was given.")
        num_frames = self._frames_from_request(num_frames, seconds, fps, has_audio=is_a2v)
        if image is not None:
            image = self.load_image(image)  # unreadable files fail here, before any model runs
        waveform = None
        if audio is not None:
            # Decoded, resampled and trimmed once, here, so a bad file fails before any model runs.
            waveform = self._load_driving_audio(audio, seconds, driving_audio_sample_rate)
            self._check_driving_audio_length(waveform)
        if latents is not None and num_frames is not None:
            expected_t = (num_frames - 1) // self.vae_scale_factor_temporal + 1
            if latents.shape[2] != expected_t:
                raise ValueError(
                    f"`latents` have {latents.shape[2]} latent frames but {num_frames} frames need {expected_t}."
                )
        if audio_latents is not None and num_frames is not None and audio_latents.shape[1] != num_frames:
            raise ValueError(
                f"`audio_latents` have {audio_latents.shape[1]} frames but the clip has {num_frames} (one audio latent "
                "frame per video frame)."
            )

        self._guidance_scale = guidance_scale
        self._do_cfg = guidance_scale > 1.0
        self._attention_kwargs = attention_kwargs
        self._interrupt = False
        self._current_timestep = None
        device = self._execution_device

        # 2. Encode the prompt
        prompt_embeds, prompt_attention_mask, negative_prompt_embeds, negative_prompt_attention_mask = (
            self.encode_prompt(
                prompt,
                negative_prompt,
                self._do_cfg,
                num_videos_per_prompt,
                prompt_embeds,
                prompt_attention_mask,
                negative_prompt_embeds,
                negative_prompt_attention_mask,
                max_sequence_length,
                device,
            )
        )

        # 3. Conditioning: driving audio (draws the bottleneck noise first, as the original) and image
        if waveform is not None:
            audio_condition_latents = self.encode_driving_audio(waveform, batch_size, generator, device)
        if audio_condition_latents is not None:
            audio_condition_latents = audio_condition_latents.to(device=device, dtype=torch.float32)
            if audio_condition_latents.shape[0] == 1 and batch_size > 1:
                audio_condition_latents = audio_condition_latents.expand(batch_size, -1, -1).clone()
            num_frames = audio_condition_latents.shape[1]  # audio-driven: one video frame per audio latent frame
        num_latent_frames = (num_frames - 1) // self.vae_scale_factor_temporal + 1

        # 4. Initial noise: audio then video (T2V/TI2V); video only in audio-driven mode
        latents, audio_latents = self.prepare_latents(
            batch_size,
            num_latent_frames,
            height,
            width,
            num_frames,
            generator,
            device,
            latents,
            audio_latents,
            draw_audio=not is_a2v,
        )
        if is_a2v:
            audio_latents = audio_condition_latents.clone()

        if image is not None:
            image_latents = self.encode_image(image, height, width, batch_size, device)
        if image_latents is not None:
            image_latents = image_latents.to(device=device, dtype=torch.float32)
            if image_latents.shape[0] == 1 and batch_size > 1:
                image_latents = image_latents.expand(batch_size, -1, -1, -1, -1)

        # 5. Timesteps: one scheduler per latent stream (each keeps its own multistep history)
        video_scheduler = self.scheduler
        timesteps, num_inference_steps = self._set_timesteps(
            video_scheduler, num_inference_steps, device, sigmas, timesteps
        )
        audio_scheduler = copy.deepcopy(video_scheduler)
        self._num_timesteps = len(timesteps)
        # Which stream moves: the distilled rule moves both; otherwise the driving audio is held clean.
        update_audio = (not is_a2v) or (is_distilled and renoise_driving_audio)

        # 6. Denoising loop
        with self.progress_bar(total=num_inference_steps) as progress_bar:
            for i, t in enumerate(timesteps):
                if self.interrupt:
                    continue
                self._current_timestep = t
                if image_latents is not None:
                    # TI2V: pin the clean image latent into frame 0 before every call.
                    latents[:, :, :1] = image_latents

                v_video, v_audio = self._denoise_pass(
                    "cond", latents, audio_latents, prompt_embeds, prompt_attention_mask, attention_kwargs
                )
                if self._do_cfg:
                    u_video, u_audio = self._denoise_pass(
                        "uncond",
                        latents,
                        audio_latents,
                        negative_prompt_embeds,
                        negative_prompt_attention_mask,
                        attention_kwargs,
                    )
                    # Video CFG switches to a fixed 2.0 once t <= 500; audio CFG is constant.
                    g = guidance_scale if int(t) > guidance_switch_timestep else late_guidance_scale
                    v_video = u_video + g * (v_video - u_video)
                    v_audio = u_audio + audio_guidance_scale * (v_audio - u_audio)

                latents = self._scheduler_step(video_scheduler, v_video, t, latents, generator)
                if update_audio:
                    audio_latents = self._scheduler_step(audio_scheduler, v_audio, t, audio_latents, generator)
                elif is_distilled:
                    # Fixed behaviour holds the driving audio clean, but still consumes the audio noise draw so that
                    # the video noise stream is the original's.
                    audio_scheduler.step(v_audio, t, audio_latents, generator=generator, return_dict=False)

                if callback_on_step_end is not None:
                    callback_kwargs = {}
                    for k in callback_on_step_end_tensor_inputs:
                        callback_kwargs[k] = locals()[k]
                    callback_outputs = callback_on_step_end(self, i, t, callback_kwargs)
                    latents = callback_outputs.pop("latents", latents)
                    audio_latents = callback_outputs.pop("audio_latents", audio_latents)
                    prompt_embeds = callback_outputs.pop("prompt_embeds", prompt_embeds)
                    negative_prompt_embeds = callback_outputs.pop("negative_prompt_embeds", negative_prompt_embeds)
                progress_bar.update()

        if image_latents is not None:
            latents[:, :, :1] = image_latents  # one final pin
        self._current_timestep = None

        # 7. Decode
        return self._finish(latents, audio_latents, output_type, decode_with, return_dict)
