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
"""Pixel conversion and mp4 (H.264 + AAC) writing/reading for MagiHuman outputs.

Writes are safe: [`export_to_video`] encodes into a temporary file next to the destination and renames it into place
at the end, so an interrupted write never leaves a half file under the final name and never damages an existing one,
and it refuses to replace an existing file unless `overwrite=True`.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from fractions import Fraction

import numpy as np
import PIL.Image
import torch
from diffusers.utils import logging


logger = logging.get_logger(__name__)

_AV_MISSING = (
    'Writing and reading mp4 files needs PyAV: `pip install "diffusers-magihuman[video]"` (or `pip install av`).'
)


def _import_av():
    """Imports PyAV lazily, so the package works without it until a video is written or read."""
    try:
        import av
    except ImportError as e:
        raise ImportError(_AV_MISSING) from e
    return av


# Containers PyAV writes with an H.264 video stream and an AAC audio stream.
VIDEO_EXTENSIONS = (".mp4", ".mov", ".mkv")


def check_output_path(output_path: str | os.PathLike, overwrite: bool = False, what: str = "output") -> str:
    """
    Checks that a video can be written to `output_path`, without writing anything. Used by [`export_to_video`] and,
    before any weights load, by the `magihuman` command.

    Args:
        output_path (`str` or `os.PathLike`): the destination file.
        overwrite (`bool`, defaults to `False`): whether an existing file may be replaced.
        what (`str`, defaults to `"output"`): how the path is named in error messages (e.g. `"--output"`).

    Returns:
        `str`: the path.

    Raises:
        ValueError: the path is empty, a folder, or has no / an unsupported extension.
        FileNotFoundError: its parent folder does not exist.
        FileExistsError: the file exists and `overwrite` is false.
    """
    path = os.fspath(output_path)
    if not path:
        raise ValueError(f"{what} is empty; give a file name ending in {', '.join(VIDEO_EXTENSIONS)}.")
    if os.path.isdir(path):
        raise ValueError(f"{what} {path!r} is a folder; give a file name such as {os.path.join(path, 'out.mp4')!r}.")
    ext = os.path.splitext(path)[1].lower()
    if ext not in VIDEO_EXTENSIONS:
        shown = f"extension {ext!r}" if ext else "no extension"
        raise ValueError(f"{what} {path!r} has {shown}; use one of {', '.join(VIDEO_EXTENSIONS)} (H.264 + AAC).")
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise FileNotFoundError(f"{what} {path!r}: the folder {parent!r} does not exist; create it first.")
    if not os.access(parent, os.W_OK):
        raise PermissionError(f"{what} {path!r}: the folder {parent!r} is not writable.")
    if os.path.lexists(path) and not overwrite:
        raise FileExistsError(
            f"{what} {path!r} already exists; choose another name, or pass overwrite=True (CLI: --overwrite) to "
            "replace it."
        )
    return path


def _move_into_place(tmp: str, path: str, overwrite: bool) -> None:
    """Renames the finished temporary file `tmp` to `path`; without `overwrite`, never replaces a file that appeared
    in the meantime (a hard link fails if the name exists, atomically)."""
    if overwrite:
        os.replace(tmp, path)
        return
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise FileExistsError(
            f"{path!r} appeared while the video was written; it was left untouched. Pass overwrite=True (CLI: "
            "--overwrite) to replace it."
        ) from None
    except OSError:  # file systems without hard links: check, then rename
        if os.path.lexists(path):
            raise FileExistsError(f"{path!r} appeared while the video was written; it was left untouched.") from None
        os.replace(tmp, path)
        return
    os.unlink(tmp)


def frames_to_uint8(frames: torch.Tensor) -> torch.Tensor:
    """
    Decoder output in `[-1, 1]` to uint8 pixels, as the original: `uint8(clamp(x·0.5 + 0.5, 0, 1)·255)`.

    Quirk: the cast **truncates** (no rounding), so e.g. 0.999 maps to 254. Computed in float32
    (the original upcasts the Turbo-VAE output with `.float()` first). The layout is unchanged; permute to
    `(F, H, W, 3)` afterwards as needed.

    Args:
        frames (`torch.Tensor`): Any shape, e.g. `(B, 3, F, H, W)`, values nominally in `[-1, 1]`.

    Returns:
        `torch.Tensor`: uint8, same shape and device.
    """
    if not isinstance(frames, torch.Tensor):
        raise TypeError(f"`frames` must be a torch.Tensor in [-1, 1], got {type(frames).__name__}.")
    x = frames.float().mul(0.5).add(0.5).clamp(0.0, 1.0) * 255.0
    return x.to(torch.uint8)  # float -> uint8 cast truncates toward zero, like numpy's astype


def _frames_to_array(frames) -> np.ndarray:
    """Video frames in any supported layout -> uint8 array `(F, H, W, 3)`."""
    if isinstance(frames, (list, tuple)):
        if len(frames) == 0:
            raise ValueError("`frames` is empty.")
        if isinstance(frames[0], PIL.Image.Image):
            frames = np.stack([np.asarray(f.convert("RGB")) for f in frames])
        elif isinstance(frames[0], torch.Tensor):
            frames = torch.stack(list(frames))
        else:
            frames = np.stack([np.asarray(f) for f in frames])
    if isinstance(frames, torch.Tensor):
        t = frames.detach().cpu()
        if t.ndim == 5 and t.shape[0] == 1:
            t = t[0]
        if t.ndim == 4 and t.shape[-1] != 3 and t.shape[1] == 3:
            t = t.permute(0, 2, 3, 1)  # (F, 3, H, W) -> (F, H, W, 3)
        frames = t.float().numpy() if t.is_floating_point() else t.numpy()
    if not isinstance(frames, np.ndarray):
        raise TypeError(
            f"Unsupported `frames` type {type(frames).__name__}; give a list of PIL images, an array (F, H, W, 3) "
            "or a tensor (F, 3, H, W) / (F, H, W, 3)."
        )
    if frames.ndim == 5 and frames.shape[0] == 1:
        frames = frames[0]
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"Expected video frames of shape (F, H, W, 3), got {tuple(frames.shape)}.")
    if np.issubdtype(frames.dtype, np.floating):
        # Float frames are [0, 1] pixels (the pipeline's output_type="np"); truncate like the original.
        frames = (np.clip(frames, 0.0, 1.0) * 255.0).astype(np.uint8)
    elif frames.dtype != np.uint8:
        raise ValueError(f"Integer video frames must be uint8, got {frames.dtype}.")
    return np.ascontiguousarray(frames)


def _audio_to_int16(audio, audio_sample_rate: int) -> np.ndarray:
    """Waveform in `[-1, 1]` (`[S]`, `[S, C]`, `[C, S]`, or `[1, C, S]`) -> int16 `[C, S]`, as 16-bit PCM."""
    if isinstance(audio, torch.Tensor):
        audio = audio.detach().cpu().float().numpy()
    audio = np.asarray(audio)
    if audio.ndim == 3 and audio.shape[0] == 1:
        audio = audio[0]
    if audio.ndim == 1:
        audio = audio[None, :]
    elif audio.ndim == 2:
        if audio.shape[1] <= 2 and audio.shape[0] > audio.shape[1]:
            audio = audio.T  # (S, C) -> (C, S)
        elif audio.shape[0] > 2:
            raise ValueError(f"Expected mono or stereo audio (S,), (S, C) or (C, S); got shape {audio.shape}.")
    else:
        raise ValueError(f"Expected mono or stereo audio (S,), (S, C) or (C, S); got shape {audio.shape}.")
    if audio.shape[0] not in (1, 2):
        raise ValueError(f"Only mono or stereo audio can be written, got {audio.shape[0]} channels.")
    if audio.dtype == np.int16:
        return np.ascontiguousarray(audio)
    if not np.issubdtype(audio.dtype, np.floating):
        raise ValueError(f"Audio must be float in [-1, 1] or int16, got {audio.dtype}.")
    # The original writes a 16-bit PCM wav first (soundfile PCM_16: clip, ×32767, round to nearest),
    # then encodes that to AAC.
    pcm = np.rint(np.clip(audio.astype(np.float64), -1.0, 1.0) * 32767.0).astype(np.int16)
    return np.ascontiguousarray(pcm)


def export_to_video(
    frames,
    output_path: str | os.PathLike,
    fps: int = 25,
    audio: np.ndarray | torch.Tensor | None = None,
    audio_sample_rate: int = 44100,
    quality: float = 8.0,
    overwrite: bool = False,
) -> str:
    """
    Writes an mp4: H.264 (libx264, yuv420p) video plus, when `audio` is given, an AAC audio track.

    The file is encoded under a temporary name in the destination folder and renamed into place once complete: an
    interruption leaves any existing file untouched and no partial file under `output_path`. An existing file is
    only replaced with `overwrite=True`.

    Matches the original's output: imageio `quality=8` (x264 CRF `int((1 − quality/10)·51)` = 10) at 25 fps, audio
    quantised to 16-bit PCM before AAC, and no trimming of the longer stream. Odd frame sizes are padded by one
    replicated row/column (yuv420p needs even sizes); imageio instead rescales to multiples of 16.

    Args:
        frames (`list[PIL.Image.Image]`, `np.ndarray` or `torch.Tensor`):
            The video: PIL images, an array `(F, H, W, 3)` (uint8, or float in `[0, 1]`), or a tensor
            `(F, 3, H, W)` / `(F, H, W, 3)` (same dtypes; a leading batch of 1 is dropped). Float values are
            converted by truncation, like the original.
        output_path (`str` or `os.PathLike`): Destination `.mp4` file.
        fps (`int`, defaults to 25): Frame rate.
        audio (`np.ndarray` or `torch.Tensor`, *optional*):
            Waveform `(S,)`, `(S, C)` or `(C, S)` (C = 1 or 2), float in `[-1, 1]` (or int16).
        audio_sample_rate (`int`, defaults to 44100): Sample rate of `audio`.
        quality (`float`, defaults to 8.0): imageio-style quality in `[0, 10]` (10 is best), mapped to x264 CRF.
        overwrite (`bool`, defaults to `False`): replace an existing `output_path` (otherwise `FileExistsError`).

    Returns:
        `str`: `output_path`.

    Raises:
        FileExistsError: `output_path` exists and `overwrite` is false (checked before encoding).
        ValueError / FileNotFoundError: bad frames, audio or path (see [`check_output_path`]).
    """
    av = _import_av()
    output_path = check_output_path(output_path, overwrite=overwrite, what="output_path")
    if fps <= 0:
        raise ValueError(f"`fps` must be positive, got {fps}.")
    if not 0 <= quality <= 10:
        raise ValueError(f"`quality` must be in [0, 10] (imageio scale, 10 = best), got {quality}.")
    video = _frames_to_array(frames)
    num_frames, height, width, _ = video.shape
    pad_h, pad_w = height % 2, width % 2
    if pad_h or pad_w:
        logger.info(f"Padding frames from {width}x{height} to {width + pad_w}x{height + pad_h} for yuv420p.")
        video = np.pad(video, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="edge")
    pcm = _audio_to_int16(audio, audio_sample_rate) if audio is not None else None

    crf = int((1 - quality / 10.0) * 51)  # imageio-ffmpeg's mapping for libx264
    folder, name = os.path.split(os.path.abspath(output_path))
    stem, ext = os.path.splitext(name)
    fd, tmp_path = tempfile.mkstemp(prefix=f".{stem}.", suffix=f".partial{ext}", dir=folder)
    os.close(fd)
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(tmp_path, 0o666 & ~mask)  # mkstemp makes it private (0600); give the video a normal file's mode
    try:
        _encode(av, tmp_path, video, pcm, fps, crf, width + pad_w, height + pad_h, audio_sample_rate)
        _move_into_place(tmp_path, output_path, overwrite)
    finally:
        if os.path.exists(tmp_path):
            os.unlink(tmp_path)
    return output_path


def _encode(av, path, video, pcm, fps, crf, width, height, audio_sample_rate) -> None:
    """Encodes `video` (uint8 `(F, H, W, 3)`, even size) and optional int16 `pcm` `(C, S)` into the file `path`."""
    with av.open(path, mode="w", format=_container_format(path)) as container:
        stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
        stream.width = width
        stream.height = height
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": str(crf)}

        audio_stream = None
        if pcm is not None:
            layout = "mono" if pcm.shape[0] == 1 else "stereo"
            audio_stream = container.add_stream("aac", rate=int(audio_sample_rate))
            audio_stream.layout = layout

        for frame_array in video:
            frame = av.VideoFrame.from_ndarray(frame_array, format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)

        if audio_stream is not None:
            # packed s16 (1, S·C), interleaved; PyAV resamples to the encoder's planar float format.
            frame = av.AudioFrame.from_ndarray(
                np.ascontiguousarray(pcm.T).reshape(1, -1), format="s16", layout=audio_stream.layout.name
            )
            frame.sample_rate = int(audio_sample_rate)
            frame.pts = 0
            for packet in audio_stream.encode(frame):
                container.mux(packet)
            for packet in audio_stream.encode():
                container.mux(packet)


def _container_format(path: str) -> str:
    ext = os.path.splitext(path)[1].lower()
    return {".mp4": "mp4", ".mov": "mov", ".mkv": "matroska"}.get(ext, "mp4")


@dataclass
class VideoInfo:
    """What [`read_video_info`] reports about a media file. Durations are in seconds; audio fields are `None`
    without an audio stream."""

    num_frames: int
    fps: float
    duration: float
    width: int
    height: int
    audio_sample_rate: int | None = None
    audio_channels: int | None = None
    audio_duration: float | None = None


def _stream_duration(stream) -> float | None:
    """The container's duration of `stream` in seconds (mp4 edit lists exclude the AAC priming samples)."""
    if stream.duration is None or stream.time_base is None:
        return None
    return float(stream.duration * stream.time_base)


def read_video_info(path: str | os.PathLike) -> VideoInfo:
    """
    Reads the frame count (by decoding), frame rate, duration and size of the first video stream, and the sample
    rate, channel count and duration of the first audio stream, with PyAV.

    Args:
        path (`str` or `os.PathLike`): A video file, e.g. written by [`export_to_video`].

    Returns:
        [`VideoInfo`].
    """
    av = _import_av()
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ValueError(f"Video file {path!r} does not exist.")
    with av.open(path) as container:
        if not container.streams.video:
            raise ValueError(f"{path!r} has no video stream.")
        vstream = container.streams.video[0]
        fps = float(vstream.average_rate or vstream.guessed_rate or 0)
        width, height = vstream.codec_context.width, vstream.codec_context.height
        num_frames = sum(1 for _ in container.decode(vstream))
        duration = _stream_duration(vstream)
        if duration is None:
            duration = num_frames / fps if fps else 0.0

    audio_sample_rate = audio_channels = audio_duration = None
    with av.open(path) as container:
        if container.streams.audio:
            astream = container.streams.audio[0]
            audio_sample_rate = astream.codec_context.sample_rate
            audio_channels = astream.codec_context.layout.nb_channels
            audio_duration = _stream_duration(astream)
            if audio_duration is None:  # no container duration: count decoded samples (whole AAC frames)
                num_samples = sum(f.samples for f in container.decode(astream))
                audio_duration = num_samples / audio_sample_rate if audio_sample_rate else 0.0
    return VideoInfo(
        num_frames=num_frames,
        fps=fps,
        duration=duration,
        width=width,
        height=height,
        audio_sample_rate=audio_sample_rate,
        audio_channels=audio_channels,
        audio_duration=audio_duration,
    )
