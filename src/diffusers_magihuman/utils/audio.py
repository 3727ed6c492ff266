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
"""The audio side of daVinci-MagiHuman: driving-audio loading and Oobleck encoding, audio decoding and resampling.

The audio latent runs at 25 frames/s and one latent frame is 2048 Oobleck samples, so the whole audio path treats
waveforms as 51 200 Hz. The Stable-Audio-Open VAE is natively 44.1 kHz; the decoded waveform
is resampled by 441/512 to 44 100 Hz with an FFT resample.
"""

from __future__ import annotations

import math
import os
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn as nn
from diffusers import AutoencoderOobleck
from diffusers.configuration_utils import register_to_config
from diffusers.utils import logging
from diffusers.utils.torch_utils import randn_tensor
from torch.nn.utils import weight_norm


logger = logging.get_logger(__name__)

# ----------------------------------------------------------------------------------------------- constants
#: Audio latent frames per second (equal to the video frame rate).
AUDIO_LATENT_RATE = 25
#: Oobleck samples per audio latent frame (prod of the downsampling ratios).
AUDIO_HOP_LENGTH = 2048
#: The rate the pipeline treats every waveform as: 25 x 2048 = 51 200 Hz.
AUDIO_SAMPLE_RATE = AUDIO_LATENT_RATE * AUDIO_HOP_LENGTH
#: The rate of the written audio: the Stable-Audio VAE's native 44.1 kHz.
AUDIO_OUTPUT_SAMPLE_RATE = 44100
#: Decoded waveform length factor 51 200 Hz -> 44 100 Hz.
AUDIO_RESAMPLE_RATIO = 441 / 512
#: Audio latent channels (the Oobleck bottleneck's mean half).
AUDIO_LATENT_CHANNELS = 64
#: Long driving audio is encoded in windows of this many seconds, with this overlap ratio.
AUDIO_WINDOW_SECONDS = 29
AUDIO_WINDOW_OVERLAP = 0.5

_PYAV_HINT = 'install PyAV with `pip install "diffusers-magihuman[video]"` (or `pip install av`)'


# ------------------------------------------------------------------------------------------------- the VAE
class AutoencoderOobleckUntied(AutoencoderOobleck):
    r"""
    [`AutoencoderOobleck`] whose encoder width may differ from its output width.

    Diffusers' class ties the encoder's last convolution to `encoder_hidden_size` outputs, which works only when
    `encoder_hidden_size == 2 * decoder_input_channels` (true for Stable-Audio-Open 1.0: 128 = 2 x 64). The original
    Stable-Audio layout sets the encoder's `latent_dim` separately; this subclass makes the last encoder convolution
    output `2 * decoder_input_channels` channels (mean and scale) whatever `encoder_hidden_size` is. It has the same
    config as [`AutoencoderOobleck`]; when the two sizes agree it is the same network.

    Use it only for checkpoints that need it (e.g. tiny test models); `load_oobleck_original` in
    `conversion/convert_oobleck_to_diffusers.py` picks the plain class whenever it can.
    """

    @register_to_config
    def __init__(
        self,
        encoder_hidden_size: int = 128,
        downsampling_ratios: list[int] = [2, 4, 4, 8, 8],
        channel_multiples: list[int] = [1, 2, 4, 8, 16],
        decoder_channels: int = 128,
        decoder_input_channels: int = 64,
        audio_channels: int = 2,
        sampling_rate: int = 44100,
    ):
        super().__init__(
            encoder_hidden_size=encoder_hidden_size,
            downsampling_ratios=downsampling_ratios,
            channel_multiples=channel_multiples,
            decoder_channels=decoder_channels,
            decoder_input_channels=decoder_input_channels,
            audio_channels=audio_channels,
            sampling_rate=sampling_rate,
        )
        if encoder_hidden_size != 2 * decoder_input_channels:
            width = encoder_hidden_size * channel_multiples[-1]
            self.encoder.conv2 = weight_norm(nn.Conv1d(width, 2 * decoder_input_channels, kernel_size=3, padding=1))


# ---------------------------------------------------------------------------------------------- resampling
def resample_audio(
    x: torch.Tensor | np.ndarray,
    ratio: float = AUDIO_RESAMPLE_RATIO,
    axis: int = 0,
    num_samples: int | None = None,
) -> torch.Tensor:
    r"""
    FFT (periodic) resample along `axis`, reproducing `scipy.signal.resample(x, int(n * ratio), axis=axis)`.

    The original calls this `resample_audio_sinc` but it is `scipy.signal.resample`, i.e. the spectrum is truncated
    or zero-padded, so the signal is treated as periodic. Implemented with `torch.fft` so scipy
    is not needed at run time. Float32 input matches scipy to ~1e-7 of the signal scale (`scipy.fft` keeps single
    precision; this transforms in float64 and casts back to the input dtype).

    Args:
        x (`torch.Tensor` or `np.ndarray`):
            Real signal, e.g. `[S, C]` (`axis=0`, the original's layout) or `[B, C, S]` (`axis=-1`).
        ratio (`float`, defaults to 441/512):
            Output length factor; the output has `int(n * ratio)` samples (51.2 kHz -> 44.1 kHz by default).
        axis (`int`, defaults to 0):
            The time axis.
        num_samples (`int`, *optional*):
            Output length; overrides `ratio`.

    Returns:
        `torch.Tensor`: the resampled signal, same layout, `num_samples` along `axis`.
    """
    x = torch.as_tensor(x)
    if x.is_complex():
        raise ValueError("`resample_audio` expects a real signal.")
    if not x.is_floating_point():
        x = x.to(torch.float32)
    if x.ndim == 0:
        raise ValueError("`resample_audio` expects at least a 1-D signal.")
    n = x.shape[axis]
    num = int(n * ratio) if num_samples is None else int(num_samples)
    if num < 1 or n < 1:
        raise ValueError(f"Cannot resample {n} samples to {num} samples.")
    if num == n:
        return x.clone()
    # Transform in float64 where the device has it, so the result does not depend on the FFT backend; scipy runs
    # float32 input in single precision, which differs from the exact result by ~1e-7 of the signal's scale.
    compute_dtype = torch.float32 if x.device.type == "mps" else torch.float64
    signal = x.movedim(axis, -1).to(compute_dtype)
    m = min(num, n)  # bins that survive
    spectrum = torch.fft.rfft(signal, dim=-1)[..., : m // 2 + 1].clone()
    if m % 2 == 0:
        # The bin at m/2 is unpaired: down-sampling folds the +/- pair into it, up-sampling splits it in two.
        spectrum[..., m // 2] *= 2.0 if num < n else 0.5
    out = torch.fft.irfft(spectrum / (n / num), n=num, dim=-1)
    return out.to(x.dtype).movedim(-1, axis)


# ------------------------------------------------------------------------------------------------- loading
def _decode_file(source: Any, sample_rate: int) -> torch.Tensor:
    """Decode with PyAV to mono s16 at `sample_rate`, like `ffmpeg -ac 1 -ar <sr> -f s16le` (whisper.load_audio)."""
    name = os.fspath(source) if isinstance(source, (str, os.PathLike)) else repr(source)
    try:
        import av
    except ImportError as e:
        raise ValueError(f"Reading the audio file {name!r} needs PyAV: {_PYAV_HINT}.") from e

    if isinstance(source, (str, os.PathLike)) and not os.path.isfile(name):
        raise ValueError(f"Audio file {name!r} does not exist.")
    try:
        container = av.open(name if isinstance(source, (str, os.PathLike)) else source, mode="r")
    except Exception as e:  # av.error.FFmpegError and OSError subclasses
        raise ValueError(f"Could not open {name!r} as an audio/video file: {e}") from e

    chunks = []
    try:
        with container:
            if len(container.streams.audio) == 0:
                raise ValueError(f"{name!r} has no audio stream.")
            stream = container.streams.best("audio")
            # libswresample, as the ffmpeg CLI uses: downmix to mono, resample, quantise to 16 bit.
            resampler = av.AudioResampler(format="s16", layout="mono", rate=sample_rate)
            for frame in container.decode(stream):
                chunks.extend(f.to_ndarray().reshape(-1) for f in resampler.resample(frame))
            chunks.extend(f.to_ndarray().reshape(-1) for f in resampler.resample(None))
    except ValueError:
        raise
    except Exception as e:
        raise ValueError(f"Could not decode the audio of {name!r}: {e}") from e
    if not chunks:
        raise ValueError(f"{name!r} has an audio stream but no decodable samples.")
    pcm = np.concatenate(chunks)
    return torch.from_numpy(pcm.astype(np.float32) / 32768.0)


def _array_to_mono(wave: Any) -> torch.Tensor:
    """`[S]`, `[C, S]` or `[S, C]` (channels = the smaller dim) array/tensor -> float `[S]` mono (mean downmix)."""
    if isinstance(wave, np.ndarray):
        wave = torch.from_numpy(np.ascontiguousarray(wave))
    elif not isinstance(wave, torch.Tensor):
        wave = torch.as_tensor(np.asarray(wave))
    if wave.dtype == torch.int16:
        wave = wave.to(torch.float32) / 32768.0
    elif wave.dtype == torch.int32:
        wave = wave.to(torch.float64) / 2147483648.0
    elif wave.dtype == torch.uint8:
        wave = (wave.to(torch.float32) - 128.0) / 128.0
    elif not wave.is_floating_point():
        raise ValueError(f"Unsupported audio array dtype {wave.dtype}; pass float samples in [-1, 1] or int16.")
    if wave.ndim == 2:
        if wave.shape[0] == wave.shape[1]:
            raise ValueError(f"Ambiguous audio array of shape {tuple(wave.shape)}: pass mono `[S]` or `[C, S]`.")
        wave = wave.mean(dim=0 if wave.shape[0] < wave.shape[1] else 1)
    elif wave.ndim != 1:
        raise ValueError(f"Audio arrays must be `[S]`, `[C, S]` or `[S, C]`, got shape {tuple(wave.shape)}.")
    return wave


def load_audio(
    source: Any,
    sample_rate: int = AUDIO_SAMPLE_RATE,
    seconds: float | None = None,
    sample_rate_in: int | None = None,
) -> torch.Tensor:
    r"""
    Load driving audio as the original does: mono float32 at 51.2 kHz, truncated to `seconds`.

    Args:
        source:
            * a path (or readable file object) to any file FFmpeg can read, including videos: decoded with PyAV,
              downmixed to mono and resampled by libswresample to `sample_rate` as 16-bit samples, like the
              original's `whisper.load_audio` (`ffmpeg -ac 1 -ar 51200 -f s16le`);
            * `(array, sr)`: a numpy array or tensor, `[S]` mono or `[C, S]` / `[S, C]` multi-channel (downmixed by
              the mean), with its sample rate;
            * an array or tensor alone, with its rate in `sample_rate_in`.
            Arrays are not 16-bit quantised. If their rate differs from `sample_rate` they are resampled with the
            FFT resample of [`resample_audio`] (periodic: exact for band-limited periodic signals, with some edge
            ringing otherwise) to `n * sample_rate // sr` samples.
        sample_rate (`int`, defaults to 51200):
            Output rate.
        seconds (`float`, *optional*):
            Keep the first `int(seconds * sample_rate)` samples.
        sample_rate_in (`int`, *optional*):
            Rate of an array/tensor `source`.

    Returns:
        `torch.Tensor`: `[S]` float32 mono waveform at `sample_rate`.
    """
    if isinstance(source, (str, os.PathLike)) or hasattr(source, "read"):
        if sample_rate_in is not None:
            logger.warning("`sample_rate_in` is ignored for audio files; the file's own rate is used.")
        wave = _decode_file(source, sample_rate)
    else:
        if isinstance(source, tuple):
            if len(source) != 2:
                raise ValueError("Pass audio as `(array, sample_rate)`.")
            source, rate = source
            if sample_rate_in is not None and int(sample_rate_in) != int(rate):
                raise ValueError(f"Conflicting sample rates: tuple gives {rate}, `sample_rate_in` {sample_rate_in}.")
        else:
            rate = sample_rate_in
        if rate is None:
            raise ValueError(
                "The sample rate of an audio array is unknown: pass `(array, sample_rate)` or `sample_rate_in=`."
            )
        rate = int(rate)
        if rate <= 0:
            raise ValueError(f"Invalid sample rate {rate}.")
        wave = _array_to_mono(source)
        if rate != sample_rate:
            if wave.shape[0] < 2:
                raise ValueError("Audio array is too short to resample.")
            wave = resample_audio(wave, axis=0, num_samples=wave.shape[0] * sample_rate // rate)
        wave = wave.to(torch.float32)
    if seconds is not None:
        wave = wave[: min(int(seconds * sample_rate), wave.shape[0])]
    if wave.numel() == 0:
        raise ValueError("The driving audio is empty.")
    return wave.contiguous()


# ------------------------------------------------------------------------------------------------ encoding
def _ensure_fp32(audio_vae: AutoencoderOobleck) -> None:
    # The original runs the Oobleck VAE in fp32 (its bf16 cast is commented out); upcast like
    # diffusers' `upcast_vae` pattern when a pipeline was loaded in half precision.
    if audio_vae.dtype != torch.float32:
        logger.info(f"Upcasting the audio VAE from {audio_vae.dtype} to float32, as the original runs it in fp32.")
        audio_vae.to(torch.float32)


def _encoder_moments(audio_vae: AutoencoderOobleck, stereo: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`[1, 2, S]` -> Oobleck bottleneck `(mean, std)`, each `[1, 64, S // 2048]`; std = softplus(scale) + 1e-4."""
    use_tiling = getattr(audio_vae, "use_tiling", False)
    audio_vae.use_tiling = False  # the original encodes each (<= 29 s) window in one piece
    try:
        dist = audio_vae.encode(stereo).latent_dist
    finally:
        audio_vae.use_tiling = use_tiling
    return dist.mean, dist.std


def _merge_windows(latents: list[torch.Tensor], overlap_ratio: float) -> torch.Tensor:
    """Merge per-window latents `[1, L, C]` with a linear cross-fade."""
    if len(latents) == 1:
        return latents[0]
    batch, frames, channels = latents[0].shape
    # Quirk: the latent overlap is int(L * 0.5) (362 for 725) and the latent hop L - overlap
    # (363), while the sample hop is 362.5 latent frames, so the merge drifts by half a frame per window.
    overlap = int(frames * overlap_ratio)
    hop = frames - overlap
    out = latents[0].new_zeros(batch, (len(latents) - 1) * hop + frames, channels)
    out[:, :frames] = latents[0]
    ref = latents[0]
    # Weights are Python floats rounded to the latent dtype, as in the original's per-frame loop.
    w_prev = torch.tensor([(overlap - i) / overlap for i in range(overlap)], dtype=ref.dtype, device=ref.device)
    w_cur = torch.tensor([i / overlap for i in range(overlap)], dtype=ref.dtype, device=ref.device)
    for k, cur in enumerate(latents[1:], start=1):
        start = k * hop
        out[:, start + overlap : start + frames] = cur[:, overlap:]
        blended = w_prev[:, None] * out[:, start : start + overlap] + w_cur[:, None] * cur[:, :overlap]
        out[:, start : start + overlap] = blended
    return out


@torch.no_grad()
def encode_audio(
    audio_vae: AutoencoderOobleck,
    waveform: torch.Tensor | np.ndarray,
    generator: torch.Generator | None = None,
    window_seconds: float = AUDIO_WINDOW_SECONDS,
    noise: Sequence[torch.Tensor] | torch.Tensor | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    r"""
    Oobleck-encode a 51.2 kHz mono driving waveform into the audio latent, like the original's
    `load_audio_and_encode`.

    The mono signal is duplicated to stereo and encoded; the VAE bottleneck is *sampled*,
    `z = mean + (softplus(scale) + 1e-4) * eps`. Audio longer than `window_seconds` is encoded in zero-padded
    windows of `window_seconds` with a hop of half a window (one bottleneck draw per window, in order), merged with
    a linear cross-fade and cut to `ceil(S * L_win / window)` latent frames.

    Args:
        audio_vae ([`AutoencoderOobleck`]):
            The Stable-Audio-Open VAE (run in fp32; upcast in place if needed).
        waveform (`torch.Tensor` of shape `(S,)`):
            Mono waveform at 51 200 Hz, e.g. from [`load_audio`].
        generator (`torch.Generator`, *optional*):
            Source of the bottleneck noise (`randn_tensor`, one `[1, 64, L]` draw per window, before any video
            noise). `None` uses the global RNG, as the original does.
        window_seconds (`float`, defaults to 29):
            Window length of the long-audio path.
        noise (list of `torch.Tensor`, *optional*):
            Bottleneck noise to use instead of drawing: one `[1, 64, L_win]` tensor per window.
        device (`torch.device`, *optional*):
            Where to run the encoder; defaults to `audio_vae.device`.

    Returns:
        `torch.Tensor`: `(1, Na, 64)` float32 audio latent, time-major, with `Na = S // 2048` for short audio.
    """
    waveform = torch.as_tensor(waveform)
    if waveform.ndim == 2 and 1 in waveform.shape:
        waveform = waveform.reshape(-1)
    if waveform.ndim != 1:
        raise ValueError(f"`waveform` must be mono `(S,)`, got shape {tuple(waveform.shape)}; see `load_audio`.")
    hop_length = int(getattr(audio_vae, "hop_length", AUDIO_HOP_LENGTH))
    total = waveform.shape[0]
    if total < hop_length:
        raise ValueError(
            f"The driving audio has {total} samples; at least {hop_length} ({hop_length / AUDIO_SAMPLE_RATE:.3f} s "
            f"at {AUDIO_SAMPLE_RATE} Hz) are needed for one latent frame."
        )
    _ensure_fp32(audio_vae)
    device = torch.device(device) if device is not None else audio_vae.device
    waveform = waveform.to(device=device, dtype=torch.float32)

    window = int(window_seconds * AUDIO_SAMPLE_RATE)
    step = int(window * (1 - AUDIO_WINDOW_OVERLAP))
    if window < hop_length or step < 1:
        raise ValueError(f"`window_seconds={window_seconds}` is shorter than one latent frame.")
    if total <= window:
        chunks = [waveform]
    else:
        chunks = []
        for start in range(0, total, step):
            end = min(start + window, total)
            # whisper.pad_or_trim: zero padding at the end up to a full window
            chunks.append(torch.nn.functional.pad(waveform[start:end], (0, window - (end - start))))
            if end >= total:
                break

    if noise is not None:
        noise = [noise] if isinstance(noise, torch.Tensor) else list(noise)
        if len(noise) != len(chunks):
            raise ValueError(f"`noise` has {len(noise)} tensors but the audio is encoded in {len(chunks)} windows.")

    latents = []
    latent_per_sample = None
    for i, chunk in enumerate(chunks):
        # Mono duplicated to stereo (the original passes it unbatched; the result is batched).
        stereo = chunk[None, None].expand(1, 2, -1)
        mean, std = _encoder_moments(audio_vae, stereo)
        if noise is None:
            eps = randn_tensor(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
        else:
            if noise[i].numel() != mean.numel():
                raise ValueError(f"`noise[{i}]` must have shape {tuple(mean.shape)}, got {tuple(noise[i].shape)}.")
            eps = noise[i].to(device=mean.device, dtype=mean.dtype).reshape(mean.shape)
        # Same expression order as the original's `randn_like(mean) * stdev + mean`.
        z = eps * std + mean
        if latent_per_sample is None:
            latent_per_sample = z.shape[-1] / window
        latents.append(z.permute(0, 2, 1))

    if total <= window:  # short audio: one unpadded window, no cut
        return latents[0].contiguous()
    merged = _merge_windows(latents, AUDIO_WINDOW_OVERLAP)
    return merged[:, : math.ceil(total * latent_per_sample)].contiguous()


# ------------------------------------------------------------------------------------------------ decoding
@torch.no_grad()
def decode_audio(
    audio_vae: AutoencoderOobleck,
    latents: torch.Tensor,
    resample: bool = True,
) -> torch.Tensor:
    r"""
    Decode audio latents to 44.1 kHz stereo waveforms.

    The Oobleck decoder runs in fp32 (as in the original), producing `Na * 2048` samples that the pipeline treats as
    51.2 kHz; they are then FFT-resampled by 441/512 ([`resample_audio`]; the original's periodic FFT resample).

    Args:
        audio_vae ([`AutoencoderOobleck`]):
            The Stable-Audio-Open VAE (upcast to fp32 in place if needed).
        latents (`torch.Tensor` of shape `(B, Na, 64)`):
            Time-major audio latents.
        resample (`bool`, defaults to `True`):
            `False` returns the raw decoder output (`Na * 2048` samples, "51.2 kHz").

    Returns:
        `torch.Tensor`: `(B, 2, int(Na * 2048 * 441 / 512))` float32 waveform at 44 100 Hz.
    """
    channels = int(audio_vae.config.decoder_input_channels)
    if latents.ndim == 2:
        latents = latents[None]
    if latents.ndim != 3 or latents.shape[-1] != channels:
        raise ValueError(f"Audio latents must be `(B, Na, {channels})`, got shape {tuple(latents.shape)}.")
    _ensure_fp32(audio_vae)
    z = latents.to(dtype=torch.float32).transpose(1, 2)
    wave = audio_vae.decode(z).sample.to(torch.float32)
    if not resample:
        return wave
    return resample_audio(wave, AUDIO_RESAMPLE_RATIO, axis=-1)


__all__ = [
    "AUDIO_HOP_LENGTH",
    "AUDIO_LATENT_CHANNELS",
    "AUDIO_LATENT_RATE",
    "AUDIO_OUTPUT_SAMPLE_RATE",
    "AUDIO_RESAMPLE_RATIO",
    "AUDIO_SAMPLE_RATE",
    "AUDIO_WINDOW_OVERLAP",
    "AUDIO_WINDOW_SECONDS",
    "AutoencoderOobleckUntied",
    "decode_audio",
    "encode_audio",
    "load_audio",
    "resample_audio",
]
