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
"""Latent super-resolution (540p / 1080p) of a MagiHuman base-stage result."""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback
from diffusers.models import AutoencoderKLWan, AutoencoderOobleck
from diffusers.pipelines.pipeline_utils import DiffusionPipeline
from diffusers.utils import logging, replace_example_docstring
from diffusers.utils.torch_utils import randn_tensor
from transformers import GemmaTokenizer, T5GemmaEncoderModel

from ..constants import (
    SR_AUDIO_NOISE_SCALE,
    SR_CFG_TRICK_START_FRAME,
    SR_CFG_TRICK_VALUE,
    SR_NOISE_VALUE,
    SR_NUM_INFERENCE_STEPS,
    TEXT_MAX_SEQUENCE_LENGTH,
)
from ..models.autoencoder_turbo_vaed import AutoencoderTurboVAED
from ..models.transformer_magihuman import MagiHumanTransformer3DModel
from ..schedulers.scheduling_magihuman import MagiHumanScheduler
from .lora_magihuman import MagiHumanLoraLoaderMixin
from .pipeline_magihuman_base import MagiHumanPipelineMixin, as_number, check_tensor, snap_size


logger = logging.get_logger(__name__)

EXAMPLE_DOC_STRING = """
    Examples:
        ```python
        >>> import torch
        >>> from diffusers_magihuman import MagiHumanPipeline, MagiHumanSRPipeline, MagiHumanTransformer3DModel
        >>> from diffusers_magihuman import export_to_video

        >>> base = MagiHumanPipeline.from_pretrained("magihuman-distill", dtype=torch.bfloat16)
        >>> base.enable_model_cpu_offload()
        >>> prompt = 'A man in a grey suit talks to the camera. Dialogue: <Man, English>: "Welcome back."'
        >>> low = base(prompt, height=256, width=448, seconds=4, output_type="latent")

        >>> sr_dit = MagiHumanTransformer3DModel.from_pretrained("magihuman-sr-540p", subfolder="transformer", dtype=torch.bfloat16)
        >>> sr = MagiHumanSRPipeline(**{**base.components, "transformer": sr_dit})  # shares text encoder and VAEs
        >>> sr.enable_model_cpu_offload()
        >>> out = sr(prompt, latents=low.frames, audio_latents=low.audio, height=512, width=896)
        >>> export_to_video(out.frames[0], "welcome_540p.mp4", fps=25, audio=out.audio[0], audio_sample_rate=sr.audio_sample_rate)
        ```
"""


def zero_snr_signal_coefficients(num_steps: int = 1000) -> torch.Tensor:
    """The original's `ZeroSNRDDPMDiscretization` table, float32 `[num_steps]`.

    Upstream names it "sigmas", but the values are signal coefficients sqrt(alpha_bar) rescaled to zero terminal
    SNR: `Z[0] = 0.9995749`, `Z[num_steps - 1] = 0`.
    """
    betas = np.linspace(0.00085**0.5, 0.012**0.5, num_steps, dtype=np.float64) ** 2
    alphas_cumprod = np.cumprod(1.0 - betas)
    q = torch.from_numpy(alphas_cumprod).float().sqrt()  # float32 from here on, as upstream
    q0, qT = q[0].clone(), q[-1].clone()
    return (q - qT) * (q0 / (q0 - qT))


class MagiHumanSRPipeline(MagiHumanPipelineMixin, DiffusionPipeline, MagiHumanLoraLoaderMixin):
    r"""
    Latent super-resolution stage of daVinci-MagiHuman (540p and 1080p checkpoints).

    Takes the base stage's latents (`MagiHumanPipeline(..., output_type="latent")`) — or decoded frames, re-encoded
    with the Wan2.2 VAE — upsamples the video latent (trilinear, `align_corners=True`), re-noises it at ZeroSNR index
    `noise_value` (VP, not flow, as the original), and runs `num_inference_steps` UniPC steps of the SR DiT on the
    full shift-5 schedule. The SR DiT sees `0.7 * noise + 0.3 * base_audio` as its audio input; the audio is never
    stepped and the base audio is returned. Guidance is off by default (the shipped SR configs use one pass).

    Components are those of [`MagiHumanPipeline`] (`vae`, `audio_vae`, `text_encoder` and `tokenizer` are required
    arguments, which may be `None` where the call does not need them; `turbo_vae` is optional); `transformer` must be an SR checkpoint (coords "v1"; the 1080p one
    has local attention). Build it from a base pipeline, sharing its other components as they are (no copy, no cast):
    `MagiHumanSRPipeline(**{**base_pipe.components, "transformer": sr_transformer})`. diffusers'
    `MagiHumanSRPipeline.from_pipe(base_pipe, transformer=sr_transformer, torch_dtype=torch.bfloat16)` shares them
    too but, as for every diffusers pipeline, then casts every component to `torch_dtype` (float32 when not given),
    the transformer's fp32 modules included.
    """

    model_cpu_offload_seq = "text_encoder->transformer->vae->turbo_vae->audio_vae"
    # Only what the default call (a prompt in, decoded video and audio out) does without: with no Turbo-VAE the video
    # is decoded by the Wan2.2 `vae`. The other components may still be passed as `None` explicitly (e.g.
    # `from_pretrained(folder, text_encoder=None, tokenizer=None)` to run on `prompt_embeds`); a call that needs one
    # of them is then refused before any model runs.
    _optional_components = ["turbo_vae"]
    _callback_tensor_inputs = ["latents", "prompt_embeds", "negative_prompt_embeds"]

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
        coords_style = getattr(getattr(transformer, "config", None), "coords_style", "v1")
        if coords_style != "v1":
            raise ValueError(
                "MagiHumanSRPipeline needs a super-resolution transformer (the 540p_sr / 1080p_sr checkpoints, "
                f"coordinate style 'v1'), but got one with coords_style={coords_style!r} — a base or distilled "
                "checkpoint. Convert the SR checkpoint with `--variant sr_540p` or `--variant sr_1080p` and pass it as "
                "`transformer=`."
            )
        self.register_modules(
            transformer=transformer,
            scheduler=scheduler,
            vae=vae,
            audio_vae=audio_vae,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            turbo_vae=turbo_vae,
        )

    # ------------------------------------------------------------------ preparation
    def encode_video_frames(self, video, height: int, width: int, device) -> torch.Tensor:
        """Decoded frames (`(B, F, H, W, 3)` np/pt in [0,1], `(B, F, 3, H, W)` pt, or lists of PIL) -> normalised
        Wan2.2 latent `(B, 48, T, H/16, W/16)` float32 (mean of the posterior)."""
        if self.vae is None:
            raise ValueError("Re-encoding frames needs the Wan2.2 `vae`; pass the base stage's `latents` instead.")
        if isinstance(video, list):
            video = np.stack([np.stack([np.asarray(f, dtype=np.float32) / 255.0 for f in clip]) for clip in video])
        if isinstance(video, np.ndarray):
            video = torch.from_numpy(video)
        if video.ndim != 5:
            raise ValueError(f"`video` must be a batch of clips (B, F, H, W, 3) or (B, F, 3, H, W), got {tuple(video.shape)}.")
        if video.shape[-1] == 3:
            video = video.permute(0, 4, 1, 2, 3)  # B, 3, F, H, W
        else:
            video = video.permute(0, 2, 1, 3, 4)
        video = video.float() * 2.0 - 1.0
        if tuple(video.shape[-2:]) != (height, width):
            raise ValueError(
                f"`video` frames are {video.shape[-2]}x{video.shape[-1]} but the base size was given as "
                f"{height}x{width}; pass `base_height`/`base_width` matching the frames."
            )
        vae_device = self._input_device(self.vae)
        posterior = self.vae.encode(video.to(device=vae_device, dtype=self.vae.dtype)).latent_dist
        mu = posterior.mode() if hasattr(posterior, "mode") else posterior.mean
        return self.normalize_latents(mu.to(self.vae.dtype)).to(device=device, dtype=torch.float32)

    def prepare_sr_latents(
        self,
        latents: torch.Tensor,
        audio_latents: torch.Tensor,
        height: int,
        width: int,
        noise_value: int,
        audio_noise_scale: float,
        generator,
        noise: torch.Tensor | None = None,
        audio_noise: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Upsample + VP re-noise the video latent, mix the audio input.

        Returns `(sr_video_input (B, 48, T, H/16, W/16), sr_audio_input (B, Na, 64))`. Draw order: video noise, then
        audio noise.
        """
        size = (latents.shape[2], height // self.vae_scale_factor_spatial, width // self.vae_scale_factor_spatial)
        up = F.interpolate(latents, size=size, mode="trilinear", align_corners=True)
        if noise_value:
            table = zero_snr_signal_coefficients(1000)
            a = table[noise_value]
            if noise is None:
                noise = randn_tensor(up.shape, generator=generator, device=up.device, dtype=up.dtype)
            elif tuple(noise.shape) != tuple(up.shape):
                raise ValueError(f"`noise` must have shape {tuple(up.shape)}, got {tuple(noise.shape)}.")
            # Variance-preserving DDPM-style injection, not the flow interpolation.
            up = a * up + torch.sqrt(1 - a**2) * noise.to(up)
        if audio_noise is None:
            audio_noise = randn_tensor(audio_latents.shape, generator=generator, device=up.device, dtype=torch.float32)
        elif tuple(audio_noise.shape) != tuple(audio_latents.shape):
            raise ValueError(
                f"`audio_noise` must have shape {tuple(audio_latents.shape)}, got {tuple(audio_noise.shape)}."
            )
        # A linear (not variance-preserving) mix, never stepped.
        sr_audio = audio_noise_scale * audio_noise.to(audio_latents) + (1 - audio_noise_scale) * audio_latents
        return up, sr_audio

    @staticmethod
    def video_guidance_per_frame(
        num_latent_frames: int, guidance_scale: float, use_cfg_trick: bool, trick_start_frame: int, trick_value: float
    ) -> torch.Tensor:
        """Per-latent-frame video CFG scale `[1, 1, T, 1, 1]` (the original's "cfg trick")."""
        g = torch.full((1, 1, num_latent_frames, 1, 1), float(guidance_scale), dtype=torch.float32)
        if use_cfg_trick:
            g[:, :, :trick_start_frame] = min(trick_value, guidance_scale)
        return g

    # ------------------------------------------------------------------ call
    @torch.no_grad()
    @replace_example_docstring(EXAMPLE_DOC_STRING)
    def __call__(
        self,
        prompt: str | list[str] | None = None,
        negative_prompt: str | list[str] | None = None,
        latents: torch.Tensor | None = None,
        audio_latents: torch.Tensor | None = None,
        video: Any = None,
        image: Any = None,
        image_latents: torch.Tensor | None = None,
        height: int = 512,
        width: int = 896,
        num_inference_steps: int = SR_NUM_INFERENCE_STEPS,
        guidance_scale: float = 1.0,
        use_cfg_trick: bool = True,
        cfg_trick_start_frame: int = SR_CFG_TRICK_START_FRAME,
        cfg_trick_value: float = SR_CFG_TRICK_VALUE,
        noise_value: int = SR_NOISE_VALUE,
        audio_noise_scale: float = SR_AUDIO_NOISE_SCALE,
        generator: torch.Generator | list[torch.Generator] | None = None,
        noise: torch.Tensor | None = None,
        audio_noise: torch.Tensor | None = None,
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
    ):
        r"""
        Super-resolve a base-stage result.

        Args:
            prompt, negative_prompt: as for [`MagiHumanPipeline`] (the same prompt as the base stage).
            latents (`torch.Tensor`): the base stage's normalised video latent `(B, 48, T, h, w)`
                (`output_type="latent"`). Or give `video` instead.
            audio_latents (`torch.Tensor`): the base stage's audio latent `(B, Na, 64)`; returned (decoded) as the audio.
            video: decoded base frames (`(B, F, H, W, 3)` in [0, 1] or lists of PIL), re-encoded with the Wan2.2 VAE.
            image / image_latents: TI2V first frame; the image is re-encoded at the SR size and pinned.
            height (`int`, defaults to 512), width (`int`, defaults to 896): SR size in pixels, rounded down to
                multiples of 32 (1088x1920 for 1080p). Must not be smaller than the base size.
            num_inference_steps (`int`, defaults to 5): UniPC steps on the full shift-5 schedule (as the original).
            guidance_scale (`float`, defaults to 1.0): video CFG; the shipped SR configs use 1.0 (one pass per
                step). The original's SR value is 3.5, with `use_cfg_trick` lowering latent frames
                `[0, cfg_trick_start_frame)` to `min(cfg_trick_value, guidance_scale)`.
            noise_value (`int`, defaults to 220): ZeroSNR index of the re-noising; 0 disables it.
            audio_noise_scale (`float`, defaults to 0.7): the SR DiT's audio input is
                `audio_noise_scale * noise + (1 - audio_noise_scale) * audio_latents`.
            generator: random draws (video noise, then audio noise). `noise` / `audio_noise` inject them instead.
            output_type, decode_with, return_dict, callback_on_step_end, callback_on_step_end_tensor_inputs,
                attention_kwargs, max_sequence_length: as for [`MagiHumanPipeline`].

        Examples:

        Returns:
            [`MagiHumanPipelineOutput`] or `tuple(frames, audio)`; the audio is the base stage's.
        """
        if isinstance(callback_on_step_end, (PipelineCallback, MultiPipelineCallbacks)):
            callback_on_step_end_tensor_inputs = callback_on_step_end.tensor_inputs
        callback_on_step_end_tensor_inputs = callback_on_step_end_tensor_inputs or ["latents"]

        # 1. Check inputs
        height, width = snap_size(height, width)
        if latents is None and video is None:
            raise ValueError(
                "Give the base stage's `latents` (MagiHumanPipeline(..., output_type='latent').frames) or its decoded "
                "`video`."
            )
        if latents is not None and video is not None:
            raise ValueError("Give either `latents` or `video`, not both.")
        if audio_latents is None:
            raise ValueError(
                "Give the base stage's `audio_latents` (MagiHumanPipeline(..., output_type='latent').audio); the SR "
                "stage conditions on them and returns them as the audio track."
            )
        check_tensor(latents, "latents")
        check_tensor(audio_latents, "audio_latents")
        check_tensor(image_latents, "image_latents")
        check_tensor(noise, "noise")
        check_tensor(audio_noise, "audio_noise")
        c = self.latent_channels
        if latents is not None and (latents.ndim != 5 or latents.shape[1] != c):
            raise ValueError(f"`latents` must be a base-stage video latent (B, {c}, T, h, w), got {tuple(latents.shape)}.")
        audio_c = int(self.transformer.config.audio_in_channels)
        if audio_latents.ndim != 3 or audio_latents.shape[-1] != audio_c:
            raise ValueError(f"`audio_latents` must be (B, Na, {audio_c}), got {tuple(audio_latents.shape)}.")
        if latents is not None:
            base_h, base_w = latents.shape[-2] * 16, latents.shape[-1] * 16
            if base_h > height or base_w > width:
                raise ValueError(
                    f"The SR size {height}x{width} is smaller than the base size {base_h}x{base_w}; super-resolution "
                    "must not shrink the video (540p: 512x896, 1080p: 1088x1920)."
                )
            expected_t = (audio_latents.shape[1] - 1) // self.vae_scale_factor_temporal + 1
            if latents.shape[2] != expected_t:
                raise ValueError(
                    f"`audio_latents` has {audio_latents.shape[1]} frames, which go with {expected_t} video latent "
                    f"frames, but `latents` has {latents.shape[2]}: pass the audio and video latents of the same "
                    "base-stage result."
                )
            if audio_latents.shape[0] != latents.shape[0]:
                raise ValueError(
                    f"`latents` batch {latents.shape[0]} and `audio_latents` batch {audio_latents.shape[0]} differ."
                )
        if image is not None and image_latents is not None:
            raise ValueError("Give either `image` or `image_latents`, not both.")
        if image_latents is not None and tuple(image_latents.shape[-2:]) != (height // 16, width // 16):
            raise ValueError(
                f"`image_latents` must be encoded at the SR size ({height // 16}x{width // 16} latent), got "
                f"{tuple(image_latents.shape[-2:])}; pass `image` to re-encode it."
            )
        num_inference_steps = as_number(num_inference_steps, "num_inference_steps", integer=True)
        if num_inference_steps < 1:
            raise ValueError(f"`num_inference_steps` must be a positive integer, got {num_inference_steps!r}.")
        if not isinstance(noise_value, int) or not (0 <= noise_value < 1000):
            raise ValueError(f"`noise_value` must be an integer in [0, 1000), got {noise_value!r}.")
        batch_size = latents.shape[0] if latents is not None else len(video)
        self._check_common(
            prompt,
            prompt_embeds,
            negative_prompt_embeds,
            guidance_scale > 1.0,
            output_type,
            callback_on_step_end_tensor_inputs,
            generator,
            batch_size,
        )
        self._check_components(
            prompt,
            negative_prompt_embeds,
            guidance_scale > 1.0,
            output_type,
            decode_with,
            vae_use="Re-encoding the decoded base frames (`video=`)"
            if video is not None
            else ("Image conditioning (`image=`)" if image is not None else None),
        )
        if image is not None:
            image = self.load_image(image)

        self._guidance_scale = guidance_scale
        self._do_cfg = guidance_scale > 1.0
        self._attention_kwargs = attention_kwargs
        self._interrupt = False
        self._current_timestep = None
        device = self._execution_device

        # 2. Prompt
        n_prompts = 1 if isinstance(prompt, str) else (len(prompt) if prompt is not None else prompt_embeds.shape[0])
        if batch_size % n_prompts:
            raise ValueError(f"{batch_size} latents cannot be split over {n_prompts} prompts.")
        prompt_embeds, prompt_attention_mask, negative_prompt_embeds, negative_prompt_attention_mask = (
            self.encode_prompt(
                prompt,
                negative_prompt,
                self._do_cfg,
                batch_size // n_prompts,
                prompt_embeds,
                prompt_attention_mask,
                negative_prompt_embeds,
                negative_prompt_attention_mask,
                max_sequence_length,
                device,
            )
        )

        # 3. SR inputs
        if latents is None:
            first = video[0] if isinstance(video, list) else video[0]
            base_h, base_w = (first[0].size[1], first[0].size[0]) if isinstance(video, list) else (
                (video.shape[2], video.shape[3]) if video.shape[-1] == 3 else (video.shape[3], video.shape[4])
            )
            latents = self.encode_video_frames(video, base_h, base_w, device)
        latents = latents.to(device=device, dtype=torch.float32)
        audio_latents = audio_latents.to(device=device, dtype=torch.float32)
        sr_latents, sr_audio = self.prepare_sr_latents(
            latents, audio_latents, height, width, noise_value, audio_noise_scale, generator, noise, audio_noise
        )
        if image is not None:
            image_latents = self.encode_image(image, height, width, batch_size, device)
        if image_latents is not None:
            image_latents = image_latents.to(device=device, dtype=torch.float32)

        # 4. Timesteps: the SR stage always steps with UniPC on the full schedule
        scheduler = self.scheduler
        if self._uses_distilled_rule(scheduler):
            logger.info("The SR stage samples with UniPC; ignoring the scheduler's distilled rule.")
            scheduler = MagiHumanScheduler.from_config(scheduler.config, sampler="unipc")
        timesteps, num_inference_steps = self._set_timesteps(scheduler, num_inference_steps, device)
        self._num_timesteps = len(timesteps)
        g_video = None
        if self._do_cfg:
            g_video = self.video_guidance_per_frame(
                sr_latents.shape[2], guidance_scale, use_cfg_trick, cfg_trick_start_frame, cfg_trick_value
            ).to(device)

        # 5. Denoising loop (video only)
        latents = sr_latents
        with self.progress_bar(total=num_inference_steps) as progress_bar:
            for i, t in enumerate(timesteps):
                if self.interrupt:
                    continue
                self._current_timestep = t
                if image_latents is not None:
                    latents[:, :, :1] = image_latents
                # The SR audio velocity is ignored: the audio is never stepped.
                v_video = self._denoise_pass(
                    "cond", latents, sr_audio, prompt_embeds, prompt_attention_mask, attention_kwargs
                )[0]
                if self._do_cfg:
                    u_video = self._denoise_pass(
                        "uncond", latents, sr_audio, negative_prompt_embeds, negative_prompt_attention_mask, attention_kwargs
                    )[0]
                    v_video = u_video + g_video * (v_video - u_video)
                latents = scheduler.step(v_video, t, latents, return_dict=False)[0]

                if callback_on_step_end is not None:
                    callback_kwargs = {}
                    for k in callback_on_step_end_tensor_inputs:
                        callback_kwargs[k] = locals()[k]
                    callback_outputs = callback_on_step_end(self, i, t, callback_kwargs)
                    latents = callback_outputs.pop("latents", latents)
                    prompt_embeds = callback_outputs.pop("prompt_embeds", prompt_embeds)
                    negative_prompt_embeds = callback_outputs.pop("negative_prompt_embeds", negative_prompt_embeds)
                progress_bar.update()

        if image_latents is not None:
            latents[:, :, :1] = image_latents
        self._current_timestep = None

        # 6. Decode (the audio is the base stage's)
        return self._finish(latents, audio_latents, output_type, decode_with, return_dict)
