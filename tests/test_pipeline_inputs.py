"""Robustness of the pipeline API: audio and video in step, bad inputs refused before any model runs, NaN reported,
lossy conversions and ignored arguments warned about, no work lost when decoding fails."""

from __future__ import annotations

import logging as std_logging

import numpy as np
import PIL.Image
import pytest
import torch

from diffusers_magihuman import MagiHumanSRPipeline
from diffusers_magihuman.pipelines import pipeline_magihuman_base as base_module
from diffusers_magihuman.pipelines.pipeline_magihuman_base import MagiHumanDecodeError
from diffusers_magihuman.testing_utils import make_tiny_pipeline, make_tiny_transformer


PROMPT = 'A man waves. Dialogue: <Man, English>: "Hi!"'
FPS = 25


@pytest.fixture(scope="module")
def pipe():
    return make_tiny_pipeline(seed=0, distilled=True, with_turbo_vae=True)


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


class _CountCalls:
    """Counts forward calls of the DiT and the text encoder (nothing may run before a bad input is refused)."""

    def __init__(self, pipe):
        self.n = 0
        self.hooks = [
            m.register_forward_pre_hook(lambda *a: setattr(self, "n", self.n + 1))
            for m in (pipe.transformer, pipe.text_encoder)
        ]

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        for h in self.hooks:
            h.remove()


@pytest.fixture
def captured_warnings():
    """diffusers' loggers do not propagate to the root logger; attach a handler to ours, and reset `warn_once`."""
    records = []

    class _H(std_logging.Handler):
        def emit(self, record):
            records.append(record.getMessage())

    handler = _H(level=std_logging.WARNING)
    loggers = [std_logging.getLogger(n) for n in (base_module.__name__, "diffusers_magihuman.pipelines.pipeline_magihuman", "diffusers_magihuman.utils.image")]
    for lg in loggers:
        lg.addHandler(handler)
    base_module._WARNED.clear()
    yield records
    for lg in loggers:
        lg.removeHandler(handler)


# ---------------------------------------------------------------------------------------------- A/V in step
def _durations(out, sample_rate):
    frames = out.frames.shape[1]
    audio_seconds = out.audio.shape[-1] / sample_rate
    return frames, audio_seconds


_LENGTHS = [
    dict(),  # default 4 s
    dict(seconds=0.2),
    dict(seconds=1),
    dict(seconds=1.1),  # 28 audio frames vs 25 video frames before the cut
    dict(seconds=np.float32(0.5)),
    dict(num_frames=1),
    dict(num_frames=2),
    dict(num_frames=8),
    dict(num_frames=24),  # snapped to 25
    dict(num_frames=np.int64(13)),
]


@pytest.mark.parametrize("with_image", [False, True])
@pytest.mark.parametrize("length", _LENGTHS, ids=lambda d: ",".join(f"{k}={v}" for k, v in d.items()) or "default")
def test_audio_and_video_stay_in_step(pipe, length, with_image):
    image = (np.random.RandomState(0).rand(40, 40, 3) * 255).astype(np.uint8) if with_image else None
    out = pipe(PROMPT, image=image, height=32, width=32, num_inference_steps=1, generator=_gen(), **length)
    frames, audio_seconds = _durations(out, pipe.audio_sample_rate)
    # One audio latent frame = 1764 samples at 44.1 kHz = exactly 1/25 s; "in step" = within one video frame.
    assert abs(audio_seconds - frames / FPS) <= 1 / FPS + 1e-9, (frames, audio_seconds)
    assert (frames - 1) % 4 == 0
    if "seconds" in length:
        assert abs(frames / FPS - float(length["seconds"])) <= 4 / FPS  # the 4k+1 grid, at most 3 frames short


@pytest.mark.parametrize("audio_seconds", [0.1, 0.3, 0.52])
@pytest.mark.parametrize("trim", [None, 0.25])
def test_audio_driven_clip_stays_in_step(pipe, audio_seconds, trim):
    wave = np.sin(np.linspace(0, 2000, int(51200 * audio_seconds))).astype(np.float32)
    out = pipe(PROMPT, audio=(wave, 51200), seconds=trim, height=32, width=32, num_inference_steps=1, generator=_gen())
    frames, out_seconds = _durations(out, pipe.audio_sample_rate)
    assert abs(out_seconds - frames / FPS) <= 1 / FPS + 1e-9, (frames, out_seconds)


def test_num_frames_snaps_to_the_latent_grid_with_a_warning(pipe, captured_warnings):
    out = pipe(PROMPT, height=32, width=32, num_frames=24, num_inference_steps=1, generator=_gen(), output_type="latent")
    assert out.frames.shape[2] == 7 and out.audio.shape[1] == 25  # 24 -> 25 = 4*6+1
    assert any("num_frames=24" in m and "25" in m for m in captured_warnings)


@pytest.mark.parametrize("fps", [0, 50, 24, -25, 25.5, "25"])
def test_fps_other_than_25_is_refused(pipe, fps):
    with _CountCalls(pipe) as calls, pytest.raises(ValueError, match="fps"):
        pipe(PROMPT, height=32, width=32, seconds=1, fps=fps, output_type="latent")
    assert calls.n == 0


def test_fps_25_as_numpy_or_float_is_accepted(pipe):
    out = pipe(PROMPT, height=32, width=32, num_frames=5, fps=np.float64(25.0), num_inference_steps=1, output_type="latent")
    assert out.audio.shape[1] == 5


def test_sixty_second_limit_holds_for_driving_audio(pipe):
    long_wave = np.zeros(51200 * 61, dtype=np.float32)
    with _CountCalls(pipe) as calls, pytest.raises(ValueError, match="at most 60 s"):
        pipe(PROMPT, audio=(long_wave, 51200), height=32, width=32, output_type="latent")
    with pytest.raises(ValueError, match="audio_condition_latents"):
        pipe(PROMPT, audio_condition_latents=torch.zeros(1, 1502, 64), height=32, width=32, output_type="latent")
    assert calls.n == 0


# ---------------------------------------------------------------------------------------------- bad inputs
@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(prompt=5), "prompt"),
        (dict(prompt=[PROMPT, 3]), "prompt"),
        (dict(negative_prompt=7), "negative_prompt"),
        (dict(generator=42), "generator"),
        (dict(generator=[42]), "generator"),
        (dict(latents=np.zeros((1, 48, 2, 2, 2), np.float32)), "latents.*numpy"),
        (dict(audio_latents=np.zeros((1, 5, 64), np.float32)), "audio_latents"),
        (dict(latents=torch.full((1, 48, 2, 2, 2), float("nan"))), "latents.*NaN"),
        (dict(audio_latents=torch.full((1, 5, 64), float("inf"))), "audio_latents.*NaN or Inf"),
        (dict(audio_latents=torch.zeros(1, 7, 64)), "audio_latents"),
        (dict(image_latents=torch.full((1, 48, 1, 2, 2), float("nan"))), "image_latents"),
        (dict(prompt=None, prompt_embeds=torch.full((1, 4, 16), float("nan"))), "prompt_embeds"),
        (dict(prompt=None, prompt_embeds=torch.zeros(1, 4, 16), prompt_attention_mask=torch.ones(1, 5)), "prompt_attention_mask"),
        (dict(num_inference_steps=2.5), "num_inference_steps"),
        (dict(num_inference_steps="8"), "num_inference_steps"),
        (dict(num_frames=5.5), "num_frames"),
        (dict(seconds="1"), "seconds"),
        (dict(seconds=float("nan")), "seconds"),
        (dict(num_videos_per_prompt=0), "num_videos_per_prompt"),
        (dict(height=np.float32(32.5)), "height"),
        (dict(sigmas=[0.5, 0.9]), "sigmas"),
        (dict(sigmas=[0.9, 0.5], timesteps=[900, 500]), "not both"),
        (dict(renoise_driving_audio=True, scheduler="unipc"), "renoise_driving_audio"),
        (dict(image=np.full((8, 8, 3), np.nan, np.float32)), "image"),
    ],
)
def test_bad_inputs_are_refused_before_any_model_runs(kwargs, match):
    kwargs = dict(kwargs)
    distilled = kwargs.pop("scheduler", "dmd") == "dmd"
    pipe = _PIPES[distilled]
    args = dict(prompt=PROMPT, height=32, width=32, num_frames=5, num_inference_steps=1, output_type="latent")
    if "sigmas" in kwargs or "timesteps" in kwargs:
        args.pop("num_inference_steps")
    args.update(kwargs)
    with _CountCalls(pipe) as calls, pytest.raises(ValueError, match=match):
        pipe(**args)
    assert calls.n == 0


_PIPES = {True: make_tiny_pipeline(seed=0, distilled=True), False: make_tiny_pipeline(seed=0, distilled=False)}


def test_nan_driving_audio_is_refused(pipe):
    wave = np.zeros(51200, np.float32)
    wave[100] = np.nan
    with _CountCalls(pipe) as calls, pytest.raises(ValueError, match="NaN"):
        pipe(PROMPT, audio=(wave, 51200), height=32, width=32, output_type="latent")
    assert calls.n == 0


def test_many_steps_run_to_the_end_or_are_refused_up_front():
    """The shift-5 grid supports 250 steps (above, the first two truncated integer timesteps coincide and the
    original's step-index rule would skip a step). 250 steps run to the end (it used to fail after the last step
    with "All N steps have been taken"); 300 are refused before the DiT runs. A stand-in DiT keeps this fast."""
    from _synthetic import SyntheticDiT
    from diffusers_magihuman import MagiHumanPipeline, MagiHumanScheduler

    for sampler in ("dmd", "unipc"):
        dit = SyntheticDiT(calls_per_step=1)
        pipe = MagiHumanPipeline(
            transformer=dit, scheduler=MagiHumanScheduler(sampler=sampler), vae=None, audio_vae=None,
            text_encoder=None, tokenizer=None,
        )  # fmt: skip
        pipe.set_progress_bar_config(disable=True)
        call = dict(
            prompt_embeds=torch.randn(1, 4, 16), height=32, width=32, num_frames=1,
            guidance_scale=1.0, output_type="latent",
        )  # fmt: skip
        ran = []
        hook = dit.register_forward_pre_hook(lambda *a: ran.append(1))
        with pytest.raises(ValueError, match="250"):
            pipe(**call, num_inference_steps=300, generator=_gen())
        hook.remove()
        assert not ran  # refused before the DiT ran
        seen = []
        out = pipe(
            **call, num_inference_steps=250, generator=_gen(),
            callback_on_step_end=lambda p, i, t, kw: seen.append(i) or {},
        )  # fmt: skip
        assert seen == list(range(250)) and torch.isfinite(out.frames).all()


def test_nan_outputs_are_reported(pipe, captured_warnings):
    hook = pipe.transformer.register_forward_hook(lambda m, a, out: tuple(torch.full_like(o, float("nan")) for o in out))
    try:
        pipe(PROMPT, height=32, width=32, num_frames=5, num_inference_steps=1, generator=_gen(), output_type="latent")
    finally:
        hook.remove()
    assert any("video latent after denoising" in m and "NaN" in m for m in captured_warnings)


def test_ignored_arguments_warn_once(pipe, captured_warnings):
    kw = dict(height=32, width=32, num_frames=5, num_inference_steps=1, output_type="latent")
    pipe(PROMPT, negative_prompt="blurry", **kw)
    pipe(PROMPT, negative_prompt="blurry", **kw)
    hits = [m for m in captured_warnings if "`negative_prompt`" in m and "ignored" in m]
    assert len(hits) == 1 and "distilled" in hits[0]


def test_lossy_image_conversions_warn_once(pipe, captured_warnings):
    from diffusers_magihuman.utils.image import to_pil_image

    rgba = PIL.Image.fromarray((np.random.RandomState(0).rand(16, 16, 4) * 255).astype(np.uint8), "RGBA")
    assert to_pil_image(rgba).mode == "RGB"
    to_pil_image(rgba)
    deep = (np.random.RandomState(0).rand(16, 16, 3) * 65535).astype(np.uint16)
    img = to_pil_image(deep)
    # 16-bit -> 8-bit keeps the top byte (rounded), like an image viewer
    np.testing.assert_array_equal(np.asarray(img), np.clip(np.rint(deep / 257.0), 0, 255).astype(np.uint8))
    to_pil_image(deep)
    assert sum("alpha" in m for m in captured_warnings) == 1
    assert sum("16-bit" in m for m in captured_warnings) == 1


# ---------------------------------------------------------------------------------------------- no lost work
def test_decode_failure_keeps_the_latents(pipe):
    from safetensors.torch import load_file

    ref = pipe(PROMPT, height=32, width=32, num_frames=5, num_inference_steps=1, generator=_gen(), output_type="latent")

    def boom(*args, **kwargs):
        raise RuntimeError("simulated out of memory")

    original = pipe.turbo_vae.decode
    pipe.turbo_vae.decode = boom
    try:
        with pytest.raises(MagiHumanDecodeError, match="saved in") as info:
            pipe(PROMPT, height=32, width=32, num_frames=5, num_inference_steps=1, generator=_gen())
    finally:
        pipe.turbo_vae.decode = original
    assert "simulated out of memory" in str(info.value) and isinstance(info.value.__cause__, RuntimeError)
    saved = load_file(info.value.latents_path)
    torch.testing.assert_close(saved["latents"], ref.frames, rtol=0, atol=0)
    torch.testing.assert_close(saved["audio_latents"], ref.audio, rtol=0, atol=0)


def test_sr_audio_and_video_lengths_must_agree(pipe):
    sr = MagiHumanSRPipeline.from_pipe(pipe, transformer=make_tiny_transformer(seed=1, coords_style="v1"))
    with pytest.raises(ValueError, match="audio_latents"):
        sr(PROMPT, latents=torch.zeros(1, 48, 2, 2, 2), audio_latents=torch.zeros(1, 20, 64), height=64, width=64)
