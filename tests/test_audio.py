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
"""Audio side: Oobleck conversion, driving-audio loading/encoding, audio decoding and the 441/512 resample."""

from __future__ import annotations

import json
import math
import shutil
import sys
import wave
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import AutoencoderOobleck
from safetensors.torch import load_file, save_file

from _tolerances import check_max_abs
from diffusers_magihuman.conversion import convert_oobleck_to_diffusers as conv
from diffusers_magihuman.utils.audio import (
    AUDIO_OUTPUT_SAMPLE_RATE,
    AUDIO_SAMPLE_RATE,
    AutoencoderOobleckUntied,
    decode_audio,
    encode_audio,
    load_audio,
    resample_audio,
)


FIXTURES = Path(__file__).parent / "fixtures" / "upstream_pipeline"
OOBLECK_TINY = FIXTURES / "oobleck_tiny"




def _fixture(name):
    meta = json.loads((FIXTURES / f"{name}.json").read_text())
    return meta, load_file(str(FIXTURES / f"{name}.safetensors"))


def _recipe_wave(meta) -> np.ndarray:
    """The fixtures' driving waveform, rebuilt from `audio_wave_recipe` (what whisper.load_audio was stubbed with)."""
    n = int((meta["seconds"] + 0.3) * 51200)
    rs = np.random.RandomState(meta["seed"])
    t = np.arange(n)
    return (0.3 * np.sin(2 * np.pi * 220 * t / 51200) + 0.05 * rs.randn(n)).astype(np.float32)


@pytest.fixture(scope="module")
def tiny_vae():
    return conv.load_oobleck_original(str(OOBLECK_TINY))


# ------------------------------------------------------------------------------------------------ conversion
def test_convert_tiny_round_trip(tmp_path, tiny_vae):
    original = load_file(str(OOBLECK_TINY / "model.safetensors"))
    # Tiny encoder: width 2 but latent 128, which plain AutoencoderOobleck cannot hold -> the untied subclass.
    assert type(tiny_vae) is AutoencoderOobleckUntied and isinstance(tiny_vae, AutoencoderOobleck)
    cfg = tiny_vae.config
    assert (cfg.encoder_hidden_size, cfg.decoder_channels, cfg.decoder_input_channels) == (2, 2, 64)
    assert list(cfg.downsampling_ratios) == [32, 64] and list(cfg.channel_multiples) == [1, 2]
    assert (cfg.audio_channels, cfg.sampling_rate, tiny_vae.hop_length) == (2, 44100, 2048)
    state = tiny_vae.state_dict()
    assert len(state) == len(original)
    # spot-check the renaming (and the snake [C] -> [1, C, 1] reshape)
    pairs = {
        "encoder.layers.0.weight_v": "encoder.conv1.weight_v",
        "encoder.layers.2.layers.1.layers.2.alpha": "encoder.block.1.res_unit2.snake2.alpha",
        "encoder.layers.2.layers.4.weight_g": "encoder.block.1.conv1.weight_g",
        "encoder.layers.4.weight_v": "encoder.conv2.weight_v",
        "decoder.layers.1.layers.1.weight_v": "decoder.block.0.conv_t1.weight_v",
        "decoder.layers.2.layers.4.layers.3.bias": "decoder.block.1.res_unit3.conv2.bias",
        "decoder.layers.3.beta": "decoder.snake1.beta",
        "decoder.layers.4.weight_v": "decoder.conv2.weight_v",
    }
    for old, new in pairs.items():
        torch.testing.assert_close(state[new].reshape(original[conv.ORIGINAL_PREFIX + old].shape),
                                   original[conv.ORIGINAL_PREFIX + old], rtol=0, atol=0)  # fmt: skip

    out = tmp_path / "vae"
    conv.main(["--input", str(OOBLECK_TINY), "--output", str(out)])
    reloaded = AutoencoderOobleckUntied.from_pretrained(str(out))
    keys = ["encoder_hidden_size", "downsampling_ratios", "channel_multiples", "decoder_channels",
            "decoder_input_channels", "audio_channels", "sampling_rate"]  # fmt: skip
    assert {k: reloaded.config[k] for k in keys} == {k: tiny_vae.config[k] for k in keys}
    for k, v in reloaded.state_dict().items():
        assert torch.equal(v, state[k]), k


def _to_original_layout(model: AutoencoderOobleck) -> dict[str, torch.Tensor]:
    """diffusers state dict -> `pretransform.model.*` keys (inverse of the converter's table)."""
    inverse = {v: k for k, v in conv._module_prefix_map(len(model.config.downsampling_ratios)).items()}
    out = {}
    for key, value in model.state_dict().items():
        module, param = key.rsplit(".", 1)
        if param in ("alpha", "beta"):
            value = value.reshape(-1)
        out[f"{conv.ORIGINAL_PREFIX}{inverse[module]}.{param}"] = value.contiguous()
    return out


def test_convert_tied_config_gives_plain_class(tmp_path):
    # Shaped like Stable-Audio-Open 1.0 (encoder width == encoder latent == 2 x decoder latent), but tiny.
    torch.manual_seed(0)
    ref = AutoencoderOobleck(encoder_hidden_size=8, downsampling_ratios=[2, 4], channel_multiples=[1, 2],
                             decoder_channels=4, decoder_input_channels=4, sampling_rate=48000)  # fmt: skip
    sd = _to_original_layout(ref)
    sd["model.transformer.dummy"] = torch.zeros(1)  # the diffusion model's keys are ignored, as upstream does
    sao = {"encoder": {"type": "oobleck", "config": {"in_channels": 2, "channels": 8, "c_mults": [1, 2],
           "strides": [2, 4], "latent_dim": 8, "use_snake": True}},
           "decoder": {"type": "oobleck", "config": {"out_channels": 2, "channels": 4, "c_mults": [1, 2],
           "strides": [2, 4], "latent_dim": 4, "use_snake": True, "final_tanh": False}},
           "bottleneck": {"type": "vae"}, "latent_dim": 4, "downsampling_ratio": 8, "io_channels": 2}  # fmt: skip
    src = tmp_path / "sao"
    src.mkdir()
    full_config = {"sample_rate": 48000, "model": {"pretransform": {"config": sao}}}
    (src / "model_config.json").write_text(json.dumps(full_config))
    save_file(sd, str(src / "model.safetensors"))
    conv.main(["--input", str(src), "--output", str(tmp_path / "out")])
    loaded = AutoencoderOobleck.from_pretrained(str(tmp_path / "out"))
    assert type(loaded) is AutoencoderOobleck and loaded.config.sampling_rate == 48000
    x = torch.randn(1, 2, 64)
    torch.testing.assert_close(loaded(x).sample, ref(x).sample, rtol=0, atol=0)


def _tiny_copy(tmp_path) -> tuple[Path, dict[str, torch.Tensor]]:
    dst = tmp_path / "tiny"
    shutil.copytree(OOBLECK_TINY, dst)
    return dst, load_file(str(dst / "model.safetensors"))


def test_convert_refuses_missing_key(tmp_path):
    folder, sd = _tiny_copy(tmp_path)
    del sd["pretransform.model.decoder.layers.2.layers.0.alpha"]
    save_file(sd, str(folder / "model.safetensors"))
    with pytest.raises(ValueError, match=r"missing \(1\): decoder\.block\.1\.snake1\.alpha"):
        conv.load_oobleck_original(str(folder))


def test_convert_refuses_unexpected_key(tmp_path):
    folder, sd = _tiny_copy(tmp_path)
    sd["pretransform.model.encoder.layers.7.alpha"] = torch.zeros(4)
    save_file(sd, str(folder / "model.safetensors"))
    with pytest.raises(ValueError, match=r"unexpected \(1\): pretransform\.model\.encoder\.layers\.7\.alpha"):
        conv.load_oobleck_original(str(folder))


def test_convert_refuses_unsupported_config(tmp_path):
    folder, _ = _tiny_copy(tmp_path)
    cfg = json.loads((folder / "model_config.json").read_text())
    cfg["model"]["pretransform"]["config"]["decoder"]["config"]["final_tanh"] = True
    (folder / "model_config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="final tanh"):
        conv.load_oobleck_original(str(folder))


# ------------------------------------------------------------------------------------------------- resample
@pytest.mark.parity
def test_resample_matches_fixture():
    _, t = _fixture("audio_resample")
    out = resample_audio(t["audio_51200"])  # [S, C], time axis 0, as the original calls scipy
    assert out.shape == t["audio_44100"].shape and out.dtype == torch.float32
    # atol 1e-6: upstream's scipy FFT runs the float32 input in single precision, we transform in float64; the
    # single-precision rounding is ~1e-7 of the signal's scale (|x| <= 1.3 here; measured 2.5e-7).
    assert check_max_abs("resampled", out, t["audio_44100"], 1e-6)


@pytest.mark.parametrize(("n", "num"), [(1001, 862), (1024, 882), (999, 1500), (1000, 1500), (1000, 998), (7, 4)])
def test_resample_matches_scipy(n, num):
    signal = pytest.importorskip("scipy.signal")
    rng = np.random.default_rng(n + num)
    x = rng.standard_normal((3, n))
    ours = resample_audio(torch.from_numpy(x), axis=-1, num_samples=num)
    # float64 in, float64 out: only FFT-backend rounding differs (~1e-15).
    np.testing.assert_allclose(ours.numpy(), signal.resample(x, num, axis=-1), rtol=0, atol=1e-12)
    x32 = x.T.astype(np.float32)  # [S, C] float32, the original's call
    ours32 = resample_audio(x32, num_samples=num)
    assert ours32.shape == (num, 3) and ours32.dtype == torch.float32
    np.testing.assert_allclose(ours32.numpy(), signal.resample(x32, num), rtol=0, atol=2e-6)


# -------------------------------------------------------------------------------------------------- encoding
@pytest.mark.parity
def test_encode_a2v_base_injected_noise_and_generator(tiny_vae):
    meta, t = _fixture("loop_a2v_base")
    wave = load_audio(t["audio_wave_51200hz"], sample_rate_in=AUDIO_SAMPLE_RATE, seconds=meta["seconds"])
    assert wave.shape == (int(meta["seconds"] * AUDIO_SAMPLE_RATE),)
    # atol 1e-5: the same fp32 convolutions, oneDNN's accumulation order varies by ISA / threads (~sqrt(K) 2^-24 per
    # layer) and the bottleneck draw by <= 4 ulp; measured worst 1.7e-6 over 11 CPU configurations (tests/README.md).
    latent = encode_audio(tiny_vae, wave, noise=[t["rng.00"]])
    assert latent.shape == (1, 25, 64)  # floor(51200 / 2048), time-major
    assert check_max_abs("latent (injected noise)", latent, t["base.init_audio"], 1e-5)
    # The bottleneck draw from a CPU generator seeded like upstream's global RNG reproduces rng.00.
    latent = encode_audio(tiny_vae, wave, generator=torch.Generator("cpu").manual_seed(meta["seed"]))
    assert check_max_abs("latent (generator)", latent, t["base.init_audio"], 1e-5)


@pytest.mark.parity
def test_encode_a2v_distill_from_recipe(tiny_vae):
    meta, t = _fixture("loop_a2v_distill")
    wave = load_audio((_recipe_wave(meta), AUDIO_SAMPLE_RATE), seconds=meta["seconds"])
    latent = encode_audio(tiny_vae, wave, generator=torch.Generator("cpu").manual_seed(meta["seed"]))
    assert check_max_abs("latent", latent, t["base.init_audio"], 1e-5)  # fp32, as above


def _reference_windowed_encode(vae, wave: np.ndarray, window: int, noises) -> torch.Tensor:
    """The original's load_audio_and_encode + merge_overlapping_vae_features, frame by frame (spec §6.5)."""
    step = int(window * 0.5)
    feats, ratio = [], None
    for i, start in enumerate(range(0, len(wave), step)):
        end = min(start + window, len(wave))
        chunk = np.pad(wave[start:end], (0, window - (end - start)))
        h = vae.encoder(torch.from_numpy(chunk)[None, None].expand(1, 2, -1))
        mean, scale = h.chunk(2, dim=1)
        z = noises[i] * (torch.nn.functional.softplus(scale) + 1e-4) + mean
        ratio = ratio or z.shape[-1] / window
        feats.append(z.permute(0, 2, 1))
        if end >= len(wave):
            break
    frames = feats[0].shape[1]
    overlap = int(frames * 0.5)
    hop = frames - overlap
    out = torch.zeros(1, (len(feats) - 1) * hop + frames, feats[0].shape[2])
    out[:, :frames] = feats[0]
    for b, cur in enumerate(feats[1:], start=1):
        s = b * hop
        out[:, s + overlap : s + frames] = cur[:, overlap:]
        for f in range(overlap):
            out[:, s + f] = (overlap - f) / overlap * out[:, s + f] + f / overlap * cur[:, f]
    return out[:, : math.ceil(len(wave) * ratio)], feats


@torch.no_grad()
def test_encode_long_audio_windows(tiny_vae):
    # 0.2 s windows (10240 samples = 5 latent frames, hop 5120 = 2.5 frames) stand in for the 29 s ones.
    rng = np.random.default_rng(0)
    wave = (0.1 * rng.standard_normal(25600)).astype(np.float32)  # 0.5 s -> 4 windows
    gen = torch.Generator().manual_seed(3)
    noises = [torch.randn(1, 64, 5, generator=gen) for _ in range(4)]
    latent = encode_audio(tiny_vae, torch.from_numpy(wave), window_seconds=0.2, noise=noises)
    # 4 windows merged to 3*3 + 5 = 14 frames, cut to ceil(25600 * 5 / 10240) = 13 (quirk §9.11: latent hop 3
    # for a sample hop of 2.5 frames).
    assert latent.shape == (1, 13, 64)
    expected, feats = _reference_windowed_encode(tiny_vae, wave, 10240, noises)
    assert check_max_abs("merged", latent, expected, 1e-6)  # same ops; vectorised vs per-frame blend
    # At the window-1 boundary (frames 3, 4) the merge cross-fades window 0 into window 1 with weights 1 and 1/2.
    torch.testing.assert_close(latent[:, 3], feats[0][:, 3], rtol=0, atol=0)
    torch.testing.assert_close(latent[:, 4], 0.5 * feats[0][:, 4] + 0.5 * feats[1][:, 1], rtol=0, atol=1e-7)
    torch.testing.assert_close(latent[:, 5], feats[1][:, 2], rtol=0, atol=0)
    # Drawing from a generator consumes one [1, 64, L_win] draw per window, in order.
    gen = torch.Generator().manual_seed(3)
    drawn = encode_audio(tiny_vae, torch.from_numpy(wave), window_seconds=0.2, generator=gen)
    torch.testing.assert_close(drawn, latent, rtol=0, atol=0)
    with pytest.raises(ValueError, match="4 windows"):
        encode_audio(tiny_vae, torch.from_numpy(wave), window_seconds=0.2, noise=noises[:3])


def test_encode_rejects_too_short_audio(tiny_vae):
    with pytest.raises(ValueError, match="at least 2048"):
        encode_audio(tiny_vae, torch.zeros(2000))


# -------------------------------------------------------------------------------------------------- decoding
@pytest.mark.parity
def test_decode_matches_e2e_fixture(tiny_vae):
    _, t = _fixture("loop_t2v_distill_e2e")
    audio = decode_audio(tiny_vae, t["base.final_audio"])
    assert audio.shape == (1, 2, 45864) and audio.dtype == torch.float32  # 26 * 2048 * 441 / 512
    # atol 1e-6: the Oobleck decode is bit-exact fp32 (the raw 53248 samples fed to scipy reproduce the fixture
    # exactly); what remains is scipy's single-precision FFT vs our float64 one (~1e-7 of |x| <= 0.33).
    assert check_max_abs("audio", audio[0].T, t["out.audio_44100"], 1e-6)


def test_decode_upcasts_half_precision_vae():
    # a fresh copy (a deepcopy of the shared one fails whenever its weight-norm weights are not graph leaves)
    vae = conv.load_oobleck_original(str(OOBLECK_TINY)).to(torch.bfloat16)
    audio = decode_audio(vae, torch.randn(1, 3, 64))
    assert vae.dtype == torch.float32 and audio.dtype == torch.float32 and audio.shape == (1, 2, 5292)


# -------------------------------------------------------------------------------------------------- loading
def _write_wav(path: Path, seconds: float = 0.5, rate: int = 44100) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    stereo = np.stack([0.3 * np.sin(2 * np.pi * 441 * t), 0.2 * np.sin(2 * np.pi * 441 * t + 0.5)], axis=1)
    pcm = np.round(stereo * 32767).astype(np.int16)
    with wave.open(str(path), "wb") as f:
        f.setnchannels(2)
        f.setsampwidth(2)
        f.setframerate(rate)
        f.writeframes(pcm.tobytes())
    return pcm


def _dominant_hz(x: torch.Tensor, rate: int) -> float:
    spectrum = torch.fft.rfft(x.double() * torch.hann_window(len(x), dtype=torch.float64)).abs()
    return float(spectrum.argmax()) * rate / len(x)


def test_load_audio_wav(tmp_path):
    path = tmp_path / "speech.wav"
    pcm = _write_wav(path)
    wave51 = load_audio(path)
    assert wave51.ndim == 1 and wave51.dtype == torch.float32
    assert wave51.shape[0] == 22050 * AUDIO_SAMPLE_RATE // 44100  # 25600 samples at 51.2 kHz
    assert torch.equal(wave51 * 32768, (wave51 * 32768).round())  # 16-bit quantised like `ffmpeg -f s16le`
    assert abs(_dominant_hz(wave51, AUDIO_SAMPLE_RATE) - 441) < 2.1
    # At the file's own rate, the mono downmix is the channel mean (within one rounding step).
    native = load_audio(str(path), sample_rate=44100)
    np.testing.assert_allclose(native.numpy(), pcm.astype(np.float64).mean(1) / 32768, rtol=0, atol=1.01 / 32768)
    assert load_audio(path, seconds=0.25).shape == (12800,)


@pytest.mark.parametrize(("suffix", "codec"), [(".mp3", "libmp3lame"), (".m4a", "aac")])
def test_load_audio_compressed(tmp_path, suffix, codec):
    av = pytest.importorskip("av")
    if codec not in av.codecs_available:
        pytest.skip(f"PyAV has no {codec} encoder")
    src = tmp_path / "src.wav"
    _write_wav(src)
    dst = tmp_path / f"speech{suffix}"
    with av.open(str(src)) as inp, av.open(str(dst), "w") as out:
        stream = out.add_stream(codec, rate=44100, layout="stereo")
        for frame in inp.decode(audio=0):
            frame.pts = None
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    x = load_audio(dst)
    assert x.ndim == 1 and x.dtype == torch.float32
    # Encoder delay/padding changes the length by a few ms at most.
    assert abs(x.shape[0] - 25600) < 0.05 * AUDIO_SAMPLE_RATE
    assert abs(_dominant_hz(x, AUDIO_SAMPLE_RATE) - 441) < 2.1


def test_load_audio_arrays():
    rate = 44100
    t = np.arange(rate) / rate  # 1 s: 441 whole periods, so the periodic FFT resample is exact
    tone = 0.5 * np.sin(2 * np.pi * 441 * t)
    expected = 0.5 * np.sin(2 * np.pi * 441 * np.arange(AUDIO_SAMPLE_RATE) / AUDIO_SAMPLE_RATE)
    stereo = np.stack([tone + 0.1, tone - 0.1])  # [C, S]; the mean downmix cancels the offsets
    cases = [((stereo, rate), {}), ((stereo.T.copy(), rate), {}), (torch.from_numpy(stereo), {"sample_rate_in": rate})]
    for source, kwargs in cases:
        x = load_audio(source, **kwargs)
        assert x.shape == (AUDIO_SAMPLE_RATE,) and x.dtype == torch.float32
        np.testing.assert_allclose(x.numpy(), expected, rtol=0, atol=1e-5)
    same = load_audio((torch.arange(10.0), AUDIO_SAMPLE_RATE))  # no resample, no quantisation
    assert torch.equal(same, torch.arange(10.0))
    with pytest.raises(ValueError, match="sample rate of an audio array is unknown"):
        load_audio(np.zeros(100, dtype=np.float32))


def test_load_audio_errors(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="missing.wav.*does not exist"):
        load_audio(tmp_path / "missing.wav")
    junk = tmp_path / "junk.mp3"
    junk.write_bytes(b"this is not audio" * 10)
    with pytest.raises(ValueError, match="junk.mp3"):
        load_audio(junk)
    image = tmp_path / "still.png"
    from PIL import Image

    Image.new("RGB", (8, 8)).save(image)
    with pytest.raises(ValueError, match="no audio stream"):
        load_audio(image)
    _write_wav(tmp_path / "ok.wav")
    monkeypatch.setitem(sys.modules, "av", None)  # simulate PyAV not installed
    with pytest.raises(ValueError, match=r'pip install "diffusers-magihuman\[video\]"'):
        load_audio(tmp_path / "ok.wav")


def test_constants():
    from diffusers_magihuman.utils import audio

    assert audio.AUDIO_SAMPLE_RATE == 51200 == audio.AUDIO_LATENT_RATE * audio.AUDIO_HOP_LENGTH
    assert AUDIO_OUTPUT_SAMPLE_RATE == round(AUDIO_SAMPLE_RATE * audio.AUDIO_RESAMPLE_RATIO) == 44100
