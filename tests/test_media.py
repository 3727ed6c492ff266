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
"""Image preprocessing (centre crop to the aspect ratio, Lanczos resize) against the original, and mp4 writing/reading
(truncating uint8 conversion, H.264 + AAC with 16-bit PCM audio, as the original writes)."""

import io
import sys
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
from safetensors.torch import load_file

from diffusers_magihuman.utils.image import preprocess_image, resize_crop
from diffusers_magihuman.utils.video import export_to_video, frames_to_uint8, read_video_info


FIXTURES = Path(__file__).parent / "fixtures" / "upstream_pipeline"


@pytest.fixture(scope="module")
def ti2v():
    return load_file(str(FIXTURES / "loop_ti2v_base.safetensors"))


# --------------------------------------------------------------------------- image
def test_resize_crop_rounding_quirk():
    # The original's crop box is fractional and PIL rounds it: 50x37 -> square target keeps the height, box (6.5, 0, 43.5, 37) -> PIL rounds to 38x37.
    image = PIL.Image.new("RGB", (50, 37))
    assert resize_crop(image, 32, 32).size == (38, 37)
    # Tall image: keep the width, new_h = int(40 * 16 / 32) = 20.
    assert resize_crop(PIL.Image.new("RGB", (40, 90)), 16, 32).size == (40, 20)
    exact = PIL.Image.new("RGB", (32, 16))
    assert resize_crop(exact, 16, 32) is exact  # returned untouched


def test_preprocess_image_matches_upstream(ti2v, tmp_path):
    """image_source_uint8 [37, 50, 3] -> image_preprocessed.0, bf16 [1, 3, 1, 32, 32] (what the original encodes).

    The reference is stored in bf16 (upstream casts before the VAE), so we compare after the same cast. Lanczos via
    PIL is deterministic, so the bf16 result must be identical (max |diff| measured 0); an exact-aspect crop instead of
    the rounded one, or bilinear resizing, changes it by > 1e-2.
    """
    source = ti2v["image_source_uint8"].numpy()
    reference = ti2v["image_preprocessed.0"][:, :, 0]  # [1, 3, 32, 32] bf16
    path = tmp_path / "image.png"
    PIL.Image.fromarray(source).save(path)
    inputs = {
        "pil": PIL.Image.fromarray(source),
        "numpy_uint8": source,
        "path": str(path),
        "tensor_chw_uint8": torch.from_numpy(source).permute(2, 0, 1),
        "tensor_float01": torch.from_numpy(source).permute(2, 0, 1).float() / 255,
    }
    for name, image in inputs.items():
        out = preprocess_image(image, 32, 32)
        assert out.shape == (1, 3, 32, 32) and out.dtype == torch.float32, name
        assert out.min() >= -1 and out.max() <= 1, name
        assert torch.equal(out.to(torch.bfloat16), reference), name

    # The rounded 38-px crop matters: an exact 37x37 crop gives a different image.
    exact_crop = PIL.Image.fromarray(source).crop((6, 0, 43, 37))
    assert (preprocess_image(exact_crop, 32, 32) - reference.float()).abs().max() > 1e-2


def test_preprocess_image_exif_transpose():
    # A portrait photo stored landscape with EXIF orientation 6 (rotate 90° CW) is loaded upright, as the original's loader does.
    stored = PIL.Image.new("RGB", (64, 32), (255, 0, 0))
    stored.paste((0, 0, 255), (0, 0, 32, 32))  # left half blue
    exif = stored.getexif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    stored.save(buf, format="JPEG", exif=exif.tobytes(), quality=95)
    buf.seek(0)
    loaded = PIL.Image.open(buf)
    out = preprocess_image(loaded, 64, 32)  # upright: 32 wide, 64 tall
    assert out.shape == (1, 3, 64, 32)
    top, bottom = out[0, :, :16].mean((1, 2)), out[0, :, -16:].mean((1, 2))
    assert top[2] > 0.5 and bottom[0] > 0.5  # blue on top after the rotation, red below


def test_preprocess_image_errors(tmp_path):
    bad = tmp_path / "not_an_image.png"
    bad.write_bytes(b"definitely not a png")
    with pytest.raises(ValueError, match="not_an_image.png"):
        preprocess_image(str(bad), 32, 32)
    with pytest.raises(ValueError, match="missing.png"):
        preprocess_image(tmp_path / "missing.png", 32, 32)
    with pytest.raises(ValueError, match="multiples of 16"):
        preprocess_image(PIL.Image.new("RGB", (8, 8)), 30, 32)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        preprocess_image(torch.full((3, 8, 8), 2.0), 32, 32)


# --------------------------------------------------------------------------- pixels (truncating uint8 cast)
def test_frames_to_uint8_truncates():
    x = torch.tensor([-2.0, -1.0, 0.0, 0.999, 1.0, 3.0, 2 * (100.7 / 255) - 1])
    out = frames_to_uint8(x)
    assert out.dtype == torch.uint8
    # 0 -> 127.5 -> 127 (not 128); 0.999 -> 254.87 -> 254; 100.7/255 -> 100 (rounding would give 101).
    assert out.tolist() == [0, 0, 127, 254, 255, 255, 100]
    # Same as the original's numpy path: (clamp(x*0.5+0.5)*255).astype(uint8).
    y = torch.randn(2, 3, 4, 5, 6, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)
    ref = (y.float().mul(0.5).add(0.5).clamp(0, 1) * 255).numpy().astype(np.uint8)
    assert np.array_equal(frames_to_uint8(y).numpy(), ref)


# --------------------------------------------------------------------------- mp4 (H.264 + AAC)
def _decode(path):
    import av

    with av.open(str(path)) as c:
        video = np.stack([f.to_ndarray(format="rgb24") for f in c.decode(c.streams.video[0])])
    audio = None
    with av.open(str(path)) as c:
        if c.streams.audio:
            audio = np.concatenate([f.to_ndarray() for f in c.decode(c.streams.audio[0])], axis=1)
    return video, audio


def test_export_to_video_with_audio_round_trip(tmp_path):
    fps, sr, num_frames, h, w = 25, 44100, 9, 32, 48
    yy, xx = np.meshgrid(np.linspace(0, 1, h), np.linspace(0, 1, w), indexing="ij")
    frames = np.stack([np.stack([xx, yy, np.full_like(xx, i / num_frames)], -1) for i in range(num_frames)])
    frames = frames.astype(np.float32)  # float [0, 1], (F, H, W, 3)
    n = num_frames * sr // fps
    left = 0.5 * np.sin(2 * np.pi * 440 * np.arange(n) / sr)
    audio = np.stack([left, np.zeros(n)], axis=1).astype(np.float32)  # (S, 2): tone left, silence right
    out = export_to_video(frames, tmp_path / "clip.mp4", fps=fps, audio=audio, audio_sample_rate=sr)

    info = read_video_info(out)
    assert (info.num_frames, info.fps, info.width, info.height) == (num_frames, fps, w, h)
    assert abs(info.duration - num_frames / fps) <= 1 / fps
    assert (info.audio_sample_rate, info.audio_channels) == (sr, 2)
    assert abs(info.audio_duration - n / sr) <= 1 / fps

    video, decoded_audio = _decode(out)
    # H.264 at CRF 10 on a smooth gradient: lossy, but close (a wrong layout/colour order is off by ~100).
    assert np.abs(video.astype(int) - (frames * 255).astype(int)).mean() < 3
    # AAC: the tone stays on the left channel at ~its level, the right stays silent.
    rms = np.sqrt((decoded_audio**2).mean(axis=1))
    assert 0.3 < rms[0] < 0.4 and rms[1] < 0.01


def test_export_to_video_layouts_mono_and_odd_size(tmp_path):
    frames = torch.rand(5, 3, 15, 21, generator=torch.Generator().manual_seed(0))  # (F, 3, H, W), odd sizes
    out = export_to_video(frames, tmp_path / "odd.mp4", fps=10, audio=torch.zeros(1, 8000), audio_sample_rate=16000)
    info = read_video_info(out)
    assert (info.num_frames, info.width, info.height, info.fps) == (5, 22, 16, 10)  # padded to even
    assert (info.audio_channels, info.audio_sample_rate) == (1, 16000)
    pil_frames = [PIL.Image.new("RGB", (16, 16), (i * 40, 0, 0)) for i in range(3)]
    info = read_video_info(export_to_video(pil_frames, tmp_path / "pil.mp4"))
    assert (info.num_frames, info.audio_channels) == (3, None)
    with pytest.raises(ValueError, match=r"\(F, H, W, 3\)"):
        export_to_video(np.zeros((2, 8, 8), np.uint8), tmp_path / "bad.mp4")
    with pytest.raises(ValueError, match="mono or stereo"):
        export_to_video(np.zeros((2, 8, 8, 3), np.uint8), tmp_path / "bad.mp4", audio=np.zeros((1000, 6)))


def test_audio_pcm16_quantisation():
    from diffusers_magihuman.utils.video import _audio_to_int16

    pcm = _audio_to_int16(np.array([[-2.0, -1.0, -0.5, 0.5, 1.0, 3.0, 0.7 / 32767]], np.float32), 44100)
    # Clipped to [-1, 1], ×32767, rounded to nearest (soundfile PCM_16 behaviour; truncation would give 16383, 0).
    assert pcm.dtype == np.int16 and pcm.tolist() == [[-32767, -32767, -16384, 16384, 32767, 32767, 1]]
    assert _audio_to_int16(np.zeros((100, 2)), 44100).shape == (2, 100)  # (S, C) -> (C, S)


def test_missing_pyav_message(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "av", None)  # makes `import av` raise ImportError
    with pytest.raises(ImportError, match=r'pip install "diffusers-magihuman\[video\]"'):
        export_to_video(np.zeros((1, 8, 8, 3), np.uint8), tmp_path / "x.mp4")
    with pytest.raises(ImportError, match="diffusers-magihuman"):
        read_video_info(tmp_path / "x.mp4")
