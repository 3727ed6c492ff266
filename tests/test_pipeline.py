"""MagiHumanPipeline with real (tiny, random) components: end to end, save/load, offload, bad inputs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import diffusers
import diffusers_magihuman
from diffusers_magihuman import MagiHumanPipeline, MagiHumanSRPipeline
from diffusers_magihuman.testing_utils import make_tiny_pipeline, make_tiny_transformer


PROMPT = 'A man waves. Dialogue: <Man, English>: "Hi!"'


@pytest.fixture(scope="module")
def pipe():
    return make_tiny_pipeline(seed=0, distilled=True, with_turbo_vae=True)


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_tiny_pipeline_end_to_end_writes_mp4_with_audio(pipe, tmp_path):
    from diffusers_magihuman import export_to_video
    from diffusers_magihuman.utils.video import read_video_info

    out = pipe(PROMPT, height=32, width=64, num_frames=9, num_inference_steps=2, generator=_gen())
    frames, audio = out.frames, out.audio
    assert frames.shape == (1, 9, 32, 64, 3) and frames.dtype == np.float32
    assert 0.0 <= frames.min() and frames.max() <= 1.0
    # 9 audio latent frames * 2048 samples at 51.2 kHz, resampled by 441/512 (spec §7.5)
    assert audio.shape == (1, 2, int(9 * 2048 * 441 / 512))
    path = tmp_path / "clip.mp4"
    export_to_video(frames[0], str(path), fps=25, audio=audio[0], audio_sample_rate=pipe.audio_sample_rate)
    info = read_video_info(str(path))
    assert info.num_frames == 9
    assert info.fps == pytest.approx(25.0)
    assert info.audio_sample_rate == 44100
    assert info.audio_duration == pytest.approx(9 * 2048 / 51200, abs=0.05)


def test_output_types_and_tuple_return(pipe):
    kw = dict(prompt=PROMPT, height=32, width=32, num_frames=5, num_inference_steps=1)
    lat = pipe(**kw, generator=_gen(), output_type="latent")
    assert lat.frames.shape == (1, 48, 2, 2, 2) and lat.audio.shape == (1, 5, 64)
    pt = pipe(**kw, generator=_gen(), output_type="pt")
    assert pt.frames.shape == (1, 5, 3, 32, 32) and isinstance(pt.audio, torch.Tensor)
    pil = pipe(**kw, generator=_gen(), output_type="pil")
    assert len(pil.frames) == 1 and len(pil.frames[0]) == 5 and pil.frames[0][0].size == (32, 32)
    frames, audio = pipe(**kw, generator=_gen(), output_type="latent", return_dict=False)
    torch.testing.assert_close(frames, lat.frames)  # same seed -> same result
    # the Wan2.2 VAE decodes the same latent too
    np_vae = pipe(**kw, generator=_gen(), decode_with="vae")
    assert np_vae.frames.shape == (1, 5, 32, 32, 3)


def test_batched_prompts_and_num_videos_per_prompt(pipe):
    out = pipe(
        [PROMPT, "A woman laughs."],
        height=32,
        width=32,
        num_frames=5,
        num_inference_steps=1,
        num_videos_per_prompt=2,
        generator=_gen(),
        output_type="latent",
    )
    assert out.frames.shape[0] == 4 and out.audio.shape[0] == 4
    gens = [_gen(i) for i in range(2)]
    out2 = pipe([PROMPT, PROMPT], height=32, width=32, num_frames=5, num_inference_steps=1, generator=gens, output_type="latent")
    single = pipe(PROMPT, height=32, width=32, num_frames=5, num_inference_steps=1, generator=_gen(1), output_type="latent")
    # sample 1 of the batch equals the same prompt alone with the same generator
    torch.testing.assert_close(out2.frames[1:], single.frames, rtol=1e-4, atol=1e-4)


def test_base_pipeline_with_cfg_and_image_and_audio_modes(tmp_path):
    pipe = make_tiny_pipeline(seed=0, distilled=False, with_turbo_vae=False)
    image = (np.random.RandomState(0).rand(40, 50, 3) * 255).astype(np.uint8)
    calls = []
    out = pipe(
        PROMPT,
        image=image,
        height=32,
        width=32,
        num_frames=5,
        num_inference_steps=2,
        generator=_gen(),
        output_type="latent",
        callback_on_step_end=lambda p, i, t, kw: calls.append(int(t)) or {},
    )
    assert calls == [int(x) for x in pipe.scheduler.timesteps]
    img_lat = pipe.encode_image(image, 32, 32, 1, torch.device("cpu"))
    torch.testing.assert_close(out.frames[:, :, :1], img_lat)  # frame 0 is the image latent
    # audio-driven: the clip length comes from the audio; the audio latent is held clean
    wave = np.sin(np.linspace(0, 200, 51200 // 2)).astype(np.float32)
    out = pipe(PROMPT, audio=(wave, 51200), height=32, width=32, num_inference_steps=2, generator=_gen(), output_type="latent")
    assert out.audio.shape == (1, 12, 64) and out.frames.shape[2] == (12 - 1) // 4 + 1


def test_interrupt_stops_the_loop(pipe):
    steps = []

    def cb(p, i, t, kw):
        steps.append(i)
        p._interrupt = True
        return {}

    pipe(PROMPT, height=32, width=32, num_frames=5, num_inference_steps=3, generator=_gen(), output_type="latent", callback_on_step_end=cb)
    assert steps == [0]


def test_save_and_load_round_trip(pipe, tmp_path):
    pipe.save_pretrained(tmp_path / "p")
    index = json.loads((tmp_path / "p" / "model_index.json").read_text())
    assert index["transformer"] == ["diffusers_magihuman", "MagiHumanTransformer3DModel"]
    assert index["scheduler"] == ["diffusers_magihuman", "MagiHumanScheduler"]
    assert index["turbo_vae"] == ["diffusers_magihuman", "AutoencoderTurboVAED"]
    assert index["vae"] == ["diffusers", "AutoencoderKLWan"]
    loaded = MagiHumanPipeline.from_pretrained(tmp_path / "p")
    loaded.set_progress_bar_config(disable=True)
    assert loaded.scheduler.is_distilled
    kw = dict(prompt=PROMPT, height=32, width=32, num_frames=5, num_inference_steps=2, output_type="latent")
    a = pipe(**kw, generator=_gen())
    b = loaded(**kw, generator=_gen())
    torch.testing.assert_close(a.frames, b.frames, rtol=0, atol=0)
    torch.testing.assert_close(a.audio, b.audio, rtol=0, atol=0)
    # after `import diffusers_magihuman`, the generic loader works too
    generic = diffusers.DiffusionPipeline.from_pretrained(tmp_path / "p")
    assert type(generic) is MagiHumanPipeline


def test_sr_pipeline_from_components_shares_them_without_recasting(pipe):
    """`from_pipe` casts like any diffusers pipeline (tests/test_pipeline_conventions.py); building the SR pipeline from
    `pipe.components` shares every component as loaded."""
    pipe.text_encoder.to(torch.bfloat16)
    before = {n: [p.dtype for p in m.parameters()] for n, m in pipe.components.items() if isinstance(m, torch.nn.Module)}
    try:
        sr_dit = make_tiny_transformer(seed=1, coords_style="v1")
        sr = MagiHumanSRPipeline(**{**pipe.components, "transformer": sr_dit})
        assert sr.text_encoder is pipe.text_encoder and sr.vae is pipe.vae and sr.audio_vae is pipe.audio_vae
        assert sr.turbo_vae is pipe.turbo_vae
        assert sr.text_encoder.dtype == torch.bfloat16  # not re-cast
        after = {n: [p.dtype for p in m.parameters()] for n, m in pipe.components.items() if isinstance(m, torch.nn.Module)}
        assert after == before  # nothing in the source pipeline was re-cast either
        assert sr.transformer is sr_dit
    finally:
        pipe.text_encoder.to(torch.float32)
    with pytest.raises(ValueError, match="super-resolution transformer"):
        MagiHumanSRPipeline.from_pipe(pipe)  # the base DiT is not an SR model


def test_chained_base_then_sr_writes_mp4(pipe, tmp_path):
    from diffusers_magihuman import export_to_video
    from diffusers_magihuman.utils.video import read_video_info

    low = pipe(PROMPT, height=32, width=32, num_frames=5, num_inference_steps=1, generator=_gen(), output_type="latent")
    sr = MagiHumanSRPipeline.from_pipe(pipe, transformer=make_tiny_transformer(seed=1, coords_style="v1"))
    sr.set_progress_bar_config(disable=True)
    out = sr(PROMPT, latents=low.frames, audio_latents=low.audio, height=64, width=64, num_inference_steps=2, generator=_gen())
    assert out.frames.shape == (1, 5, 64, 64, 3)
    path = tmp_path / "sr.mp4"
    export_to_video(out.frames[0], str(path), fps=25, audio=out.audio[0], audio_sample_rate=sr.audio_sample_rate)
    info = read_video_info(str(path))
    assert info.num_frames == 5 and info.width == 64 and info.audio_sample_rate == 44100


def test_offload_apis_on_cpu():
    pipe = make_tiny_pipeline(seed=0)
    # group offload (cpu -> cpu) is the one offload mode diffusers allows without an accelerator
    pipe.enable_group_offload(
        onload_device=torch.device("cpu"),
        offload_type="block_level",
        num_blocks_per_group=1,
        exclude_modules=["audio_vae", "tokenizer"],
    )
    out = pipe(PROMPT, height=32, width=32, num_frames=5, num_inference_steps=1, generator=_gen(), output_type="latent")
    assert out.frames.shape == (1, 48, 2, 2, 2)
    assert MagiHumanPipeline.model_cpu_offload_seq.split("->")[0] == "text_encoder"
    if not torch.cuda.is_available():
        # model / sequential offload need an accelerator: diffusers refuses clearly rather than silently
        with pytest.raises(RuntimeError):
            make_tiny_pipeline().enable_model_cpu_offload()
        with pytest.raises(RuntimeError):
            make_tiny_pipeline().enable_sequential_cpu_offload()


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(prompt=""), "empty"),
        (dict(prompt="   "), "empty"),
        (dict(prompt=None), "prompt"),
        (dict(height=16), "at least 32"),
        (dict(width=-64), "at least 32"),
        (dict(height=32.5), "integer"),
        (dict(seconds=0), "seconds"),
        (dict(seconds=1000), "seconds"),
        (dict(num_frames=0), "num_frames"),
        (dict(seconds=1, num_frames=5), "not both"),
        (dict(guidance_scale=5.0), "distilled"),
        (dict(image="/nonexistent/face.png"), "does not exist"),
        (dict(audio="/nonexistent/voice.wav"), "voice.wav"),
        (dict(latents=torch.zeros(1, 48, 2, 4, 4)), "latents"),
        (dict(image_latents=torch.zeros(1, 48, 1, 4, 4)), "image_latents"),
        (dict(output_type="gif"), "output_type"),
        (dict(callback_on_step_end_tensor_inputs=["foo"]), "callback_on_step_end_tensor_inputs"),
        (dict(generator=[torch.Generator(), torch.Generator()]), "generators"),
    ],
)
def test_bad_inputs_fail_before_any_model_runs(pipe, kwargs, match):
    calls = {"n": 0}
    hook = pipe.transformer.register_forward_pre_hook(lambda *a: calls.__setitem__("n", calls["n"] + 1))
    te_hook = pipe.text_encoder.register_forward_pre_hook(lambda *a: calls.__setitem__("n", calls["n"] + 1))
    try:
        args = dict(prompt=PROMPT, height=32, width=32, num_frames=5, num_inference_steps=1, output_type="latent")
        args.update(kwargs)
        if "audio" in kwargs:
            args.pop("num_frames")  # the clip length comes from the audio
        with pytest.raises(ValueError, match=match):
            pipe(**args)
    finally:
        hook.remove()
        te_hook.remove()
    assert calls["n"] == 0


def test_unreadable_image_and_audio_files(pipe, tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not an image")
    with pytest.raises(ValueError, match="broken.png"):
        pipe(PROMPT, image=str(bad), height=32, width=32, num_frames=5, output_type="latent")
    bad_audio = tmp_path / "broken.wav"
    bad_audio.write_bytes(b"RIFF nonsense")
    with pytest.raises(ValueError, match="broken.wav"):
        pipe(PROMPT, audio=str(bad_audio), height=32, width=32, output_type="latent")


def test_size_is_snapped_down(pipe):
    out = pipe(PROMPT, height=40, width=70, num_frames=5, num_inference_steps=1, generator=_gen(), output_type="latent")
    assert out.frames.shape[-2:] == (2, 4)  # 32x64 pixels


def test_package_registers_with_diffusers():
    assert getattr(diffusers, "MagiHumanPipeline") is MagiHumanPipeline
    assert getattr(diffusers.pipelines, "diffusers_magihuman") is diffusers_magihuman
    from diffusers.pipelines.pipeline_loading_utils import LOADABLE_CLASSES

    assert set(LOADABLE_CLASSES["diffusers_magihuman"]) == {"ModelMixin", "SchedulerMixin", "DiffusionPipeline"}


@pytest.mark.gpu
@pytest.mark.parametrize("mode", ["model", "sequential", "group", "group_resident"])
def test_offload_modes_on_cuda_match_full_gpu(mode):
    ref_pipe = make_tiny_pipeline(seed=0).to("cuda")
    kw = dict(prompt=PROMPT, height=32, width=32, num_frames=5, num_inference_steps=2, output_type="latent")
    ref = ref_pipe(**kw, generator=_gen())
    pipe = make_tiny_pipeline(seed=0)
    if mode == "model":
        pipe.enable_model_cpu_offload()
    elif mode == "sequential":
        pipe.enable_sequential_cpu_offload()
    elif mode == "group":
        pipe.enable_group_offload(
            onload_device=torch.device("cuda"),
            offload_type="block_level",
            num_blocks_per_group=1,
            use_stream=True,
            exclude_modules=["audio_vae", "tokenizer"],
        )
    else:  # the DiT partly resident (its resident layers get compiled by the automatic compile)
        pipe.enable_group_offload(
            onload_device=torch.device("cuda"),
            offload_type="block_level",
            num_blocks_per_group=1,
            use_stream=True,
            record_stream=True,
            exclude_modules=["audio_vae", "tokenizer"],
            num_resident_blocks=1,
        )
    out = pipe(**kw, generator=_gen())
    torch.testing.assert_close(out.frames.cpu(), ref.frames.cpu(), rtol=1e-4, atol=1e-4)
    full = pipe(PROMPT, height=32, width=32, num_frames=5, num_inference_steps=1, generator=_gen())
    assert full.frames.shape == (1, 5, 32, 32, 3)


def test_sr_from_decoded_frames_and_with_image(pipe):
    """SR from the base stage's decoded frames (re-encoded with the Wan2.2 VAE), TI2V image re-encoded at SR size."""
    base = pipe(PROMPT, height=32, width=32, num_frames=5, num_inference_steps=1, generator=_gen(), output_type="latent")
    frames = pipe.postprocess_video(pipe.decode_latents(base.frames, "vae"), "np")  # (1, 5, 32, 32, 3) in [0, 1]
    sr = MagiHumanSRPipeline.from_pipe(pipe, transformer=make_tiny_transformer(seed=1, coords_style="v1"))
    sr.set_progress_bar_config(disable=True)
    image = (np.random.RandomState(1).rand(48, 48, 3) * 255).astype(np.uint8)
    out = sr(
        PROMPT, video=frames, audio_latents=base.audio, image=image, height=64, width=64, num_inference_steps=1,
        generator=_gen(), output_type="latent",
    )  # fmt: skip
    assert out.frames.shape == (1, 48, 2, 4, 4)
    torch.testing.assert_close(out.frames[:, :, :1], sr.encode_image(image, 64, 64, 1, torch.device("cpu")))
    torch.testing.assert_close(out.audio, base.audio)  # the base audio is returned


def _whole_clip_to_numpy(video: torch.Tensor) -> np.ndarray:
    """The straightforward whole-tensor version of the pipelines' conversion to a numpy video."""
    frames = (video.float().clamp(-1.0, 1.0) * 0.5 + 0.5).clamp(0.0, 1.0)
    return frames.permute(0, 2, 3, 4, 1).cpu().numpy()


def _decoder_like_video(device: str, dtype: torch.dtype, frames: int = 9, height: int = 24, width: int = 40):
    g = torch.Generator().manual_seed(0)
    video = (torch.randn(2, 3, frames, height, width, generator=g) * 0.8).to(dtype)  # some values outside [-1, 1]
    video.view(-1)[:3] = torch.tensor([-1.0, 1.0, 0.0], dtype=dtype)
    return video.to(device)


def test_video_to_numpy_matches_the_whole_clip_conversion_on_cpu():
    from diffusers_magihuman.pipelines.pipeline_magihuman_base import video_to_numpy

    for dtype in (torch.float32, torch.bfloat16):
        video = _decoder_like_video("cpu", dtype)
        array = video_to_numpy(video)
        assert array.dtype == np.float32 and array.shape == (2, 9, 24, 40, 3)
        # the same element-wise float32 operations in the same order: identical values
        np.testing.assert_array_equal(array, _whole_clip_to_numpy(video))
        assert array.min() >= 0.0 and array.max() <= 1.0


@pytest.mark.gpu
def test_video_to_numpy_in_pieces_matches_the_whole_clip_conversion_on_cuda(monkeypatch):
    from diffusers_magihuman.pipelines import pipeline_magihuman_base as base

    monkeypatch.setattr(base, "_HOST_COPY_PIXELS", 2 * 24 * 40 * 2)  # 2 frames a piece: 5 pieces, both buffers reused
    for dtype in (torch.float32, torch.bfloat16):
        video = _decoder_like_video("cuda", dtype)
        # element-wise float32 operations on the GPU round like the CPU's: the pieces must give identical values
        np.testing.assert_array_equal(base.video_to_numpy(video), _whole_clip_to_numpy(video))
