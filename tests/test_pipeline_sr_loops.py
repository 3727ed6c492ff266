"""SR preparation and SR loop parity of MagiHumanSRPipeline against the ORIGINAL code's fixtures.

Tolerance ATOL as in test_pipeline_loops.py (same float32 arithmetic, CPU draws and sin / cos); structural
mistakes (align_corners, VP vs flow noise, mixing weights, guidance per frame) move values by >= 1e-3.
"""

from __future__ import annotations

import pytest
import torch

from _synthetic import SyntheticDiT, load_fixture, text_inputs
from _tolerances import EPS_FP32, check_max_abs
from diffusers_magihuman.pipelines.pipeline_magihuman import MagiHumanPipeline
from diffusers_magihuman.pipelines.pipeline_magihuman_sr import MagiHumanSRPipeline, zero_snr_signal_coefficients
from diffusers_magihuman.schedulers.scheduling_magihuman import MagiHumanScheduler


# The synthetic DiT runs on precomputed embeddings and returns latents: no VAEs, no text encoder.
NO_VAES_NO_TEXT = dict(vae=None, audio_vae=None, text_encoder=None, tokenizer=None)


# Tolerance of the loop comparisons. The loops are float32 elementwise arithmetic, and +, -, *, /, sqrt round the
# same on every CPU; what differs: (1) CPU `randn` (Box-Muller) uses vectorised log / sin / cos on AVX2 / AVX512 and
# libm with ATEN_CPU_CAPABILITY=default, so the same seed draws values up to ~4 ulp of |x| <= 5.5 apart (2e-6);
# (2) sin / cos in the stand-in DiT and exp / log in UniPC's coefficients differ by ~1 ulp between those libraries,
# at most 32 steps (5 for SR) * 1 ulp(|x| <= 4) = 1.5e-5 if every step's error added up. Bound ~2e-5; measured worst 2.0e-6
# over 11 CPU configurations (tests/README.md), 0 on the fixture machine's configuration. A wrong guidance switch,
# pin, order, sigma or noise stream moves values by >= 1e-3.
ATOL = 2e-5


def _sr_pipe(calls_per_step=1):
    pipe = MagiHumanSRPipeline(
        transformer=SyntheticDiT(calls_per_step=calls_per_step, sr=True, coords_style="v1"),
        scheduler=MagiHumanScheduler(sampler="unipc"),
        **NO_VAES_NO_TEXT,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _close(a, b, what):
    assert check_max_abs(what, a, b, ATOL)


@pytest.mark.parity
def test_zero_snr_table_matches_original():
    _, t = load_fixture("sr_prep")
    z = zero_snr_signal_coefficients(1000)
    # float64 linspace / square / cumprod (numpy may use SIMD pow, not correctly rounded) cast to float32, then
    # sqrt and (q - qT) * (q0 / (q0 - qT)) in float32: a 1-ulp difference in q is scaled by q0 / (q0 - qT) = 1.07,
    # so allow 2.5 ulp(1) = 3e-7 (measured 0 here, 1 ulp on another CPU). A linear-in-beta schedule, a missing
    # zero-terminal-SNR rescale or an off-by-one index moves entries by >= 1e-3.
    assert check_max_abs("table", z, t["zero_snr_sigmas"], 2.5 * EPS_FP32)
    assert z[220].item() == pytest.approx(0.8389104008674622, abs=2.5 * EPS_FP32)
    assert z[-1].item() == 0.0


@pytest.mark.parity
def test_sr_prep_matches_original():
    meta, t = load_fixture("sr_prep")
    pipe = _sr_pipe()
    w, h = meta["sr_width_height_requested"]
    # inject the original's draws
    up, audio = pipe.prepare_sr_latents(
        t["base_latent_video"], t["base_latent_audio"], h, w, 220, 0.7, None, noise=t["rng.02"], audio_noise=t["rng.03"]
    )
    assert up.shape == t["sr_input_video"].shape and audio.shape == t["sr_input_audio"].shape
    _close(up, t["sr_input_video"], "sr video input")
    _close(audio, t["sr_input_audio"], "sr audio input")
    # and with a generator positioned after the base draws (rng.00, rng.01)
    gen = torch.Generator().manual_seed(meta["seed"])
    torch.randn(tuple(t["rng.00"].shape), generator=gen)
    torch.randn(tuple(t["rng.01"].shape), generator=gen)
    up2, audio2 = pipe.prepare_sr_latents(t["base_latent_video"], t["base_latent_audio"], h, w, 220, 0.7, gen)
    _close(up2, t["sr_input_video"], "sr video input (generator)")
    _close(audio2, t["sr_input_audio"], "sr audio input (generator)")
    # no noise: the pure upsample
    up3, _ = pipe.prepare_sr_latents(t["base_latent_video"], t["base_latent_audio"], h, w, 0, 0.7, None, audio_noise=t["rng.03"])
    _close(up3, t["upsampled_video"], "upsampled video")


@pytest.mark.parity
def test_t2v_base_then_sr540_matches_original():
    meta, t = load_fixture("loop_t2v_base_sr540")
    ctx, mask, ctx_null, mask_null = text_inputs(meta, t)
    bw, bh = meta["br_width_height_requested"]  # 48x40 -> snaps to 32x32
    base = MagiHumanPipeline(
        transformer=SyntheticDiT(calls_per_step=2), scheduler=MagiHumanScheduler(sampler="unipc"), **NO_VAES_NO_TEXT
    )
    base.set_progress_bar_config(disable=True)
    gen = torch.Generator().manual_seed(meta["seed"])
    low = base(
        prompt_embeds=ctx,
        prompt_attention_mask=mask,
        negative_prompt_embeds=ctx_null,
        negative_prompt_attention_mask=mask_null,
        height=bh,
        width=bw,
        seconds=meta["seconds"],
        generator=gen,
        output_type="latent",
    )
    _close(low.frames, t["base.final_video"], "base video")
    _close(low.audio, t["base.final_audio"], "base audio")

    sr = _sr_pipe()
    sw, sh = meta["sr_width_height_requested"]
    steps = []
    out = sr(
        prompt_embeds=ctx,
        prompt_attention_mask=mask,
        latents=low.frames,
        audio_latents=low.audio,
        height=sh,
        width=sw,
        generator=gen,  # continues the same stream: SR video noise, then SR audio noise
        output_type="latent",
        callback_on_step_end=lambda p, i, tt, kw: steps.append(kw["latents"].clone()) or {},
    )
    first_in = sr.transformer.seen_video[0]
    _close(first_in, t["sr.init_video"], "sr init video")
    for i, v in enumerate(steps):
        _close(v, t["sr.latent_video"][i], f"sr step {i}")
    _close(out.frames, t["out.latent_video"], "sr final video")
    # The base audio is returned untouched (a copy: exact everywhere); it equals the fixture's to the loop tolerance.
    assert torch.equal(out.audio, low.audio)
    _close(out.audio, t["out.latent_audio"], "sr audio")


@pytest.mark.parity
def test_sr_cfg_trick_matches_original():
    meta, t = load_fixture("loop_sr_cfg2_trick")
    # This fixture stores no text tensors; loop_t2v_base has the same prompt (same s_cond / s_uncond).
    meta_txt, t_txt = load_fixture("loop_t2v_base")
    assert meta_txt["stages"]["base"]["s_cond"] == meta["stages"]["sr"]["s_cond"]
    ctx, mask, ctx_null, mask_null = text_inputs(meta_txt, t_txt)
    sr = _sr_pipe(calls_per_step=2)
    init = t["sr.init_video"]
    g = sr.video_guidance_per_frame(init.shape[2], 3.5, True, 13, 2.0)
    torch.testing.assert_close(g, t["sr.expected_video_guidance_per_frame"], rtol=0, atol=0)  # constants: exact
    steps = []
    out = sr(
        prompt_embeds=ctx,
        prompt_attention_mask=mask,
        negative_prompt_embeds=ctx_null,
        negative_prompt_attention_mask=mask_null,
        latents=init,  # same size: the align_corners upsample is the identity
        audio_latents=torch.zeros_like(t["sr.init_audio"]),
        audio_noise=t["sr.init_audio"],
        audio_noise_scale=1.0,  # the model's audio input is exactly sr.init_audio
        noise_value=0,
        height=init.shape[-2] * 16,
        width=init.shape[-1] * 16,
        guidance_scale=3.5,
        output_type="latent",
        callback_on_step_end=lambda p, i, tt, kw: steps.append(kw["latents"].clone()) or {},
    )
    assert sr.transformer.calls == 10
    for i, v in enumerate(steps):
        _close(v, t["sr.latent_video"][i], f"sr step {i}")
    _close(out.frames, t["sr.final_video"], "sr final video")


def test_sr_rejects_bad_inputs():
    sr = _sr_pipe()
    lat = torch.zeros(1, 48, 2, 4, 4)  # base 64x64
    aud = torch.zeros(1, 5, 64)
    emb = torch.ones(1, 3, 8)
    with pytest.raises(ValueError, match="smaller than the base size"):
        sr(prompt_embeds=emb, latents=lat, audio_latents=aud, height=32, width=64, output_type="latent")
    with pytest.raises(ValueError, match="latents"):
        sr(prompt_embeds=emb, latents=torch.zeros(1, 16, 2, 4, 4), audio_latents=aud, output_type="latent")
    with pytest.raises(ValueError, match="audio_latents"):
        sr(prompt_embeds=emb, latents=lat, output_type="latent")
    with pytest.raises(ValueError, match="super-resolution transformer"):
        MagiHumanSRPipeline(transformer=SyntheticDiT(coords_style="v2"), scheduler=MagiHumanScheduler(), **NO_VAES_NO_TEXT)
