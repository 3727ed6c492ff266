"""Loop parity of MagiHumanPipeline against the ORIGINAL code's fixtures (tests/fixtures/upstream_pipeline/loop_*).

The fixtures replace the DiT by a deterministic function (tests/_synthetic.py). Our pipeline is driven with the
fixture's padded text embeddings and its initial noise (or a CPU generator seeded like the original), and every
latent the loop produces is compared with the original's.

Tolerance: see ATOL below (same rule as tests/test_scheduler.py); the policy is in tests/README.md, "Tolerances".
"""

from __future__ import annotations

import pytest
import torch

from _synthetic import SyntheticDiT, load_fixture, text_inputs
from _tolerances import check_max_abs, check_uint8_frames_of_bf16_decode
from diffusers_magihuman.pipelines.pipeline_magihuman import MagiHumanPipeline
from diffusers_magihuman.schedulers.scheduling_magihuman import MagiHumanScheduler


# The synthetic DiT runs on precomputed embeddings and returns latents: no VAEs, no text encoder.
NO_VAES_NO_TEXT = dict(vae=None, audio_vae=None, text_encoder=None, tokenizer=None)


pytestmark = pytest.mark.parity

# Tolerance of the loop comparisons. The loops are float32 elementwise arithmetic, and +, -, *, /, sqrt round the
# same on every CPU; what differs: (1) CPU `randn` (Box-Muller) uses vectorised log / sin / cos on AVX2 / AVX512 and
# libm with ATEN_CPU_CAPABILITY=default, so the same seed draws values up to ~4 ulp of |x| <= 5.5 apart (2e-6);
# (2) sin / cos in the stand-in DiT and exp / log in UniPC's coefficients differ by ~1 ulp between those libraries,
# at most 32 steps * 1 ulp(|x| <= 4) = 1.5e-5 if every step's error added up. Bound ~2e-5; measured worst 2.0e-6
# over 11 CPU configurations (tests/README.md), 0 on the fixture machine's configuration. A wrong guidance switch,
# pin, order, sigma or noise stream moves values by >= 1e-3.
ATOL = 2e-5


def _pipe(calls_per_step: int, sampler: str) -> MagiHumanPipeline:
    pipe = MagiHumanPipeline(
        transformer=SyntheticDiT(calls_per_step=calls_per_step), scheduler=MagiHumanScheduler(sampler=sampler), **NO_VAES_NO_TEXT
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _recorder(store):
    def cb(pipe, i, t, kw):
        store.append((int(t), kw["latents"].clone(), kw["audio_latents"].clone()))
        return {}

    return cb


def _common_kwargs(meta, tensors, cfg: bool):
    ctx, mask, ctx_null, mask_null = text_inputs(meta, tensors)
    w, h = meta["br_width_height_requested"]
    kw = dict(prompt_embeds=ctx, prompt_attention_mask=mask, height=h, width=w, output_type="latent")
    if cfg:
        kw.update(negative_prompt_embeds=ctx_null, negative_prompt_attention_mask=mask_null)
    return kw


def _assert_close(actual, expected, what):
    assert check_max_abs(what, actual, expected, ATOL)


def test_t2v_base_loop_matches_original():
    meta, t = load_fixture("loop_t2v_base")
    pipe = _pipe(calls_per_step=2, sampler="unipc")
    steps = []
    out = pipe(
        **_common_kwargs(meta, t, cfg=True),
        seconds=meta["seconds"],
        latents=t["rng.01"],
        audio_latents=t["rng.00"],
        callback_on_step_end=_recorder(steps),
        callback_on_step_end_tensor_inputs=["latents", "audio_latents"],
    )
    stage = meta["stages"]["base"]
    # s seen by the stand-in equals the original's (text masks and fp32 embeddings are right)
    assert pipe.transformer.seen_s[0] == pytest.approx(stage["s_cond"], abs=1e-12)
    assert pipe.transformer.seen_s[1] == pytest.approx(stage["s_uncond"], abs=1e-12)
    assert [s[0] for s in steps] == stage["t"]
    for i, (_, v, a) in enumerate(steps):
        _assert_close(v, t["base.latent_video"][i], f"video step {i}")
        _assert_close(a, t["base.latent_audio"][i], f"audio step {i}")
    _assert_close(out.frames, t["out.latent_video"], "final video")
    _assert_close(out.audio, t["out.latent_audio"], "final audio")


def test_t2v_base_generator_reproduces_original_draw_order():
    meta, t = load_fixture("loop_t2v_base")
    pipe = _pipe(calls_per_step=2, sampler="unipc")
    out = pipe(
        **_common_kwargs(meta, t, cfg=True),
        seconds=meta["seconds"],
        generator=torch.Generator().manual_seed(meta["seed"]),
    )
    _assert_close(out.frames, t["out.latent_video"], "final video")
    _assert_close(out.audio, t["out.latent_audio"], "final audio")


def test_ti2v_base_loop_pins_frame0_like_original():
    meta, t = load_fixture("loop_ti2v_base")
    pipe = _pipe(calls_per_step=2, sampler="unipc")
    steps = []
    out = pipe(
        **_common_kwargs(meta, t, cfg=True),
        seconds=meta["seconds"],
        image_latents=t["base.latent_image"],
        latents=t["rng.01"],
        audio_latents=t["rng.00"],
        callback_on_step_end=_recorder(steps),
        callback_on_step_end_tensor_inputs=["latents", "audio_latents"],
    )
    # what the model saw in frame 0 (cond calls only)
    seen = pipe.transformer.seen_video[::2]
    for i in range(len(seen)):
        _assert_close(seen[i][:, :, :1], t["base.x_in_video_frame0"][i], f"model input frame0 step {i}")
    for i, (_, v, a) in enumerate(steps):
        _assert_close(v, t["base.latent_video"][i], f"video step {i}")
        _assert_close(a, t["base.latent_audio"][i], f"audio step {i}")
    _assert_close(out.frames, t["out.latent_video"], "final video")
    _assert_close(out.audio, t["out.latent_audio"], "final audio")


def test_a2v_base_holds_driving_audio_clean():
    meta, t = load_fixture("loop_a2v_base")
    pipe = _pipe(calls_per_step=2, sampler="unipc")
    steps = []
    out = pipe(
        **_common_kwargs(meta, t, cfg=True),
        audio_condition_latents=t["base.init_audio"],
        latents=t["rng.01"],
        callback_on_step_end=_recorder(steps),
        callback_on_step_end_tensor_inputs=["latents", "audio_latents"],
    )
    assert out.frames.shape[2] == 7  # Na = 25 -> T = 7 (spec §6.5)
    for i, (_, v, a) in enumerate(steps):
        _assert_close(v, t["base.latent_video"][i], f"video step {i}")
        assert torch.equal(a, t["base.init_audio"])  # held: the driving latent is copied back, exact everywhere
    _assert_close(out.frames, t["out.latent_video"], "final video")
    _assert_close(out.audio, t["out.latent_audio"], "final audio")


def _a2v_distill_generator(meta, t):
    # The original draws the Oobleck bottleneck noise (rng.00) first; we pass the encoded latent, so consume it.
    gen = torch.Generator().manual_seed(meta["seed"])
    torch.randn(tuple(t["rng.00"].shape), generator=gen)
    return gen


def test_a2v_distill_with_original_renoise_quirk():
    meta, t = load_fixture("loop_a2v_distill")
    pipe = _pipe(calls_per_step=1, sampler="dmd")
    steps = []
    out = pipe(
        **_common_kwargs(meta, t, cfg=False),
        audio_condition_latents=t["base.init_audio"],
        generator=_a2v_distill_generator(meta, t),
        renoise_driving_audio=True,
        callback_on_step_end=_recorder(steps),
        callback_on_step_end_tensor_inputs=["latents", "audio_latents"],
    )
    assert pipe.transformer.calls == 8  # no CFG with the distilled rule
    for i, (_, v, a) in enumerate(steps):
        _assert_close(v, t["base.latent_video"][i], f"video step {i}")
        _assert_close(a, t["base.latent_audio"][i], f"audio step {i}")
    _assert_close(out.frames, t["out.latent_video"], "final video")
    _assert_close(out.audio, t["out.latent_audio"], "final audio")


def test_a2v_distill_fixed_behaviour_holds_audio_and_keeps_noise_stream():
    meta, t = load_fixture("loop_a2v_distill")
    pipe = _pipe(calls_per_step=1, sampler="dmd")
    out = pipe(
        **_common_kwargs(meta, t, cfg=False),
        audio_condition_latents=t["base.init_audio"],
        generator=_a2v_distill_generator(meta, t),
    )
    assert torch.equal(out.audio, t["base.init_audio"])  # held: a copy of the input, exact everywhere
    # step 0 sees the same noise and the same (clean) audio as the original, so its video latent agrees
    first = pipe.transformer.seen_video[1]
    _assert_close(first, t["base.latent_video"][0], "video after step 0")


def test_distill_e2e_latents_match_original():
    meta, t = load_fixture("loop_t2v_distill_e2e")
    pipe = _pipe(calls_per_step=1, sampler="dmd")
    out = pipe(
        **_common_kwargs(meta, t, cfg=False),
        seconds=meta["seconds"],
        generator=torch.Generator().manual_seed(meta["seed"]),
    )
    _assert_close(out.frames, t["base.final_video"], "final video")
    _assert_close(out.audio, t["base.final_audio"], "final audio")


def test_distill_e2e_decoded_frames_and_audio_match_original():
    """Latents -> tiny Turbo-VAE (bf16, as the original) -> truncating uint8, and tiny Oobleck -> 441/512 resample.

    Audio: fp32 Oobleck decode (fp32 accumulation order only) then the FFT resample, which differs from scipy's
    float32 FFT by ~1e-7 of |x| <= 0.33; measured worst 2.1e-7 over 11 CPU configurations, limit ATOL.
    Frames: the bf16 CPU convolution kernels decide the exact bits (AVX512-BF16 vs AVX2 kernels flip roundings):
    compared as two bf16 decodes of the same latent (see `check_uint8_frames_of_bf16_decode`). The truncating cast
    itself is checked exactly, kernel-independently, in test_turbo_vae.py::test_uint8_rule_is_truncation.
    """
    from conversion.convert_oobleck_to_diffusers import load_oobleck_original
    from conversion.convert_turbo_vae_to_diffusers import load_turbo_vae_original
    from _synthetic import FIXTURES

    meta, t = load_fixture("loop_t2v_distill_e2e")
    turbo = load_turbo_vae_original(
        FIXTURES / "turbo_vae_real_structure.ckpt", FIXTURES / "turbo_vae_real_structure_config.json"
    ).to(torch.bfloat16)
    pipe = MagiHumanPipeline(
        transformer=SyntheticDiT(calls_per_step=1),
        scheduler=MagiHumanScheduler(sampler="dmd"),
        audio_vae=load_oobleck_original(str(FIXTURES / "oobleck_tiny")),
        turbo_vae=turbo,
        vae=None,
        text_encoder=None,
        tokenizer=None,
    )
    pipe.set_progress_bar_config(disable=True)
    kw = _common_kwargs(meta, t, cfg=False)
    kw["output_type"] = "np"
    out = pipe(**kw, seconds=meta["seconds"], generator=torch.Generator().manual_seed(meta["seed"]))
    frames = (out.frames[0] * 255).astype("uint8")  # the original's truncating cast (spec §7.4)
    ref = t["out.video_uint8"].numpy()
    assert frames.shape == ref.shape
    assert check_uint8_frames_of_bf16_decode(frames, ref)
    audio = torch.from_numpy(out.audio[0]).T  # [S, 2]
    ref_audio = t["out.audio_44100"]
    assert audio.shape == ref_audio.shape
    _assert_close(audio, ref_audio, "audio 44.1 kHz")


def test_a2v_base_from_waveform_encodes_like_original():
    """The whole audio-driven path: waveform -> 51.2 kHz trim -> tiny Oobleck encode (bottleneck draw first) -> loop."""
    from conversion.convert_oobleck_to_diffusers import load_oobleck_original
    from _synthetic import FIXTURES

    meta, t = load_fixture("loop_a2v_base")
    pipe = MagiHumanPipeline(
        transformer=SyntheticDiT(calls_per_step=2),
        scheduler=MagiHumanScheduler(sampler="unipc"),
        audio_vae=load_oobleck_original(str(FIXTURES / "oobleck_tiny")),
        vae=None,
        text_encoder=None,
        tokenizer=None,
    )
    pipe.set_progress_bar_config(disable=True)
    out = pipe(
        **_common_kwargs(meta, t, cfg=True),
        audio=(t["audio_wave_51200hz"], 51200),
        seconds=meta["seconds"],
        generator=torch.Generator().manual_seed(meta["seed"]),
    )
    _assert_close(out.audio, t["base.init_audio"], "encoded driving audio")
    _assert_close(out.frames, t["out.latent_video"], "final video")
