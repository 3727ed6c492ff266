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
"""Conditioning-image preprocessing for image+text-to-video, as the original's `encode_image`."""

from __future__ import annotations

import os

import numpy as np
import PIL.Image
import PIL.ImageOps
import torch
from diffusers.utils import load_image, logging
from diffusers.video_processor import VideoProcessor


logger = logging.get_logger(__name__)

# The original preprocesses with `VideoProcessor(vae_scale_factor=16)`.
_VAE_SCALE_FACTOR = 16
_video_processor: VideoProcessor | None = None


def _get_video_processor() -> VideoProcessor:
    global _video_processor
    if _video_processor is None:
        _video_processor = VideoProcessor(vae_scale_factor=_VAE_SCALE_FACTOR)
    return _video_processor


def resize_crop(image: PIL.Image.Image, height: int, width: int) -> PIL.Image.Image:
    """
    Centre-crops `image` to the aspect ratio `width / height`, without resizing (the original's `resizecrop`).

    Quirks kept: the crop box is computed in floats and PIL rounds each edge half-to-even,
    so the crop can be one pixel wider than the exact aspect ratio (50×37 → 38×37 for a square target); an image that
    already has the target size is returned as is.

    Args:
        image (`PIL.Image.Image`): The image, any size.
        height (`int`): Target height in pixels (only the ratio matters here).
        width (`int`): Target width in pixels.

    Returns:
        `PIL.Image.Image`: The cropped image (the input object itself when it already is `width × height`).
    """
    if height <= 0 or width <= 0:
        raise ValueError(f"`height` and `width` must be positive, got {height}x{width} (HxW).")
    w, h = image.size
    if w == width and h == height:
        return image
    if h / w > height / width:
        new_w = int(w)
        new_h = int(new_w * height / width)
    else:
        new_h = int(h)
        new_w = int(new_h * width / height)
    # Float box: PIL rounds each coordinate.
    box = ((w - new_w) / 2, (h - new_h) / 2, (w + new_w) / 2, (h + new_h) / 2)
    return image.crop(box)


def _warn_once(key: str, message: str) -> None:
    from ..pipelines.pipeline_magihuman_base import warn_once

    warn_once(key, message)


def _warn_alpha() -> None:
    _warn_once(
        "image-alpha",
        "The conditioning image has an alpha channel; it is dropped (the colour channels are used as they are, "
        "not composited). Flatten the image yourself for another background.",
    )


def _warn_deep() -> None:
    _warn_once(
        "image-16bit",
        "The conditioning image has more than 8 bits per channel (16-bit); it is reduced to 8 bits (value / 257, rounded), "
        "as the model's image encoder path expects 8-bit pixels.",
    )


def _pil_to_rgb(image: PIL.Image.Image) -> PIL.Image.Image:
    """RGB copy of a PIL image, warning (once) about what the conversion loses: alpha, or depth beyond 8 bits."""
    mode = image.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        _warn_deep()
        array = np.asarray(image).astype(np.float64)
        scale = 257.0 if mode.startswith("I;16") or array.max() <= 65535 else array.max() / 255.0
        array = np.clip(np.rint(array / scale), 0, 255).astype(np.uint8)
        return PIL.Image.fromarray(array).convert("RGB")
    if "A" in mode or (mode == "P" and "transparency" in image.info):
        _warn_alpha()
    return image.convert("RGB") if mode != "RGB" else image


def to_pil_image(image) -> PIL.Image.Image:
    """PIL image, path, numpy array or tensor -> RGB PIL image with the EXIF orientation applied.

    Lossy conversions warn once: an alpha channel is dropped, and 16-bit images are reduced to 8 bits. Float inputs
    must be finite and in `[0, 1]`.
    """
    if isinstance(image, (str, os.PathLike)):
        path = os.fspath(image)
        if path.startswith(("http://", "https://")):
            return load_image(path)
        if not os.path.isfile(path):
            raise ValueError(f"Image file {path!r} does not exist.")
        try:
            opened = PIL.Image.open(path)
            opened.load()
        except Exception as e:  # PIL raises several exception types for unreadable files
            raise ValueError(f"Could not read image file {path!r} ({e}). Give a PNG/JPEG file or a PIL image.") from e
        image = opened
    if isinstance(image, PIL.Image.Image):
        # EXIF transpose first (as diffusers' `load_image`), then RGB.
        return _pil_to_rgb(PIL.ImageOps.exif_transpose(image))
    if isinstance(image, torch.Tensor):
        array = image.detach().cpu()
        if array.ndim == 4 and array.shape[0] == 1:
            array = array[0]
        if array.ndim == 3 and array.shape[0] in (1, 3, 4) and array.shape[-1] not in (1, 3, 4):
            array = array.permute(1, 2, 0)  # (C, H, W) -> (H, W, C)
        image = array.float().numpy() if array.is_floating_point() else array.numpy()
    if isinstance(image, np.ndarray):
        array = image
        if array.ndim == 4 and array.shape[0] == 1:
            array = array[0]
        if array.ndim == 3 and array.shape[-1] == 1:
            array = array[..., 0]
        if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] not in (3, 4)):
            raise ValueError(
                f"Expected an image array (H, W), (H, W, 3|4) or a tensor (3, H, W); got shape {tuple(image.shape)}."
            )
        if array.ndim == 3 and array.shape[-1] == 4:
            _warn_alpha()
            array = array[..., :3]
        if np.issubdtype(array.dtype, np.floating):
            if not np.isfinite(array).all():
                raise ValueError("The `image` array/tensor contains NaN or Inf values.")
            if array.min() < -1e-3 or array.max() > 1 + 1e-3:
                raise ValueError(
                    "Float image arrays/tensors must hold values in [0, 1] (got range "
                    f"[{float(array.min()):.3g}, {float(array.max()):.3g}]); give uint8 pixels for 0..255 data."
                )
            # Quantised to 8 bits like an image file, so every input takes the original's PIL path.
            array = np.rint(np.clip(array, 0.0, 1.0) * 255.0).astype(np.uint8)
        elif array.dtype == np.uint16:
            _warn_deep()
            array = np.clip(np.rint(array / 257.0), 0, 255).astype(np.uint8)
        elif array.dtype != np.uint8:
            raise ValueError(f"Integer image arrays must be uint8 (or uint16), got {array.dtype}.")
        return PIL.Image.fromarray(np.ascontiguousarray(array)).convert("RGB")
    raise ValueError(
        f"Unsupported `image` type {type(image).__name__}; give a PIL image, a file path, a uint8 (H, W, 3) array or "
        "a (3, H, W) tensor."
    )


def preprocess_image(image, height: int, width: int) -> torch.Tensor:
    """
    The conditioning image as the original hands it to the Wan2.2 VAE.

    Steps: load (EXIF transpose + RGB), centre crop to the target aspect ratio ([`resize_crop`]), then diffusers'
    `VideoProcessor(vae_scale_factor=16).preprocess`: PIL Lanczos resize to `width × height`, `/255`, `2x − 1`.

    Args:
        image (`PIL.Image.Image`, `str`, `os.PathLike`, `np.ndarray` or `torch.Tensor`):
            A PIL image, an image file path (or URL), a uint8 array `(H, W)` / `(H, W, 3|4)`, or a tensor `(3, H, W)`
            / `(H, W, 3)` (optionally with a leading batch of 1). Float arrays/tensors must be in `[0, 1]` and are
            quantised to 8 bits first.
        height (`int`): Output height, a multiple of 16 (the pipeline snaps sizes to multiples of 32).
        width (`int`): Output width, a multiple of 16.

    Returns:
        `torch.Tensor`: `(1, 3, height, width)` float32 in `[-1, 1]`.
    """
    if height <= 0 or width <= 0 or height % _VAE_SCALE_FACTOR or width % _VAE_SCALE_FACTOR:
        raise ValueError(
            f"`height` and `width` must be positive multiples of {_VAE_SCALE_FACTOR}, got {height}x{width} (HxW). "
            "Snap the size first (the pipeline rounds down to multiples of 32)."
        )
    pil = to_pil_image(image)
    pil = resize_crop(pil, height, width)
    pixels = _get_video_processor().preprocess(pil, height=height, width=width)
    return pixels.to(torch.float32)
