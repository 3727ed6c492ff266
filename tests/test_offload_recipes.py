"""1080p inside one card: the Turbo-VAE's exact memory-bounded decode, and every documented offload recipe runs."""

from __future__ import annotations

import pytest
import torch

from diffusers_magihuman import AutoencoderTurboVAED
from diffusers_magihuman.testing_utils import make_tiny_pipeline, tiny_turbo_vae_config


PROMPT = 'A man waves. Dialogue: <Man, English>: "Hi!"'


def _small_halo_vae():
    # One resnet per block keeps the receptive field (halo) at 9 latent pixels so a small latent has real tiles.
    config = tiny_turbo_vae_config()
    config.update(decoder_layers_per_block=[1, 1, 1, 1, 1])
    torch.manual_seed(0)
    return AutoencoderTurboVAED(**config).eval()


@torch.no_grad()
def test_memory_bounded_decode_equals_the_whole_window_decode():
    vae = _small_halo_vae()
    halo = vae._spatial_halo()
    z = torch.randn(1, 48, 1, 48, 4)
    ref = vae.decoder(z, is_first_chunk=True)
    # Forced budget: the whole window does not fit, tiles with their halo do.
    need = vae._estimate_window_bytes(1, 48, 4)
    vae.set_decode_memory_budget(need * 3 // 4)
    rows, cols = vae._plan_tiles(1, 48, 4, need * 3 // 4)
    assert rows > 1 and -(-48 // rows) + 2 * halo < 48  # the tiles really are smaller than the window
    out = vae._decode_window(z, is_first_chunk=True)
    # Same inputs for every kept pixel; only the convolution shapes differ, and the CPU convolution kernels pick
    # their blocking (so the fp32 summation order) by shape: ~6e-6 measured on outputs of scale ~1 after ~30
    # convolutions. atol 1e-4 allows that; a halo one step short of the receptive field is off by > 1e-2 (below).
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-4)
    vae._spatial_halo = lambda: 2
    short = vae._exact_tiled_decode_window(z, True, rows, cols)
    assert (short - ref).abs().max() > 1e-2
    del vae._spatial_halo
    vae.set_decode_memory_budget(None)
    assert vae._memory_budget(torch.device("cpu")) is None  # unbounded on the CPU by default
    with pytest.raises(ValueError, match="max_bytes"):
        vae.set_decode_memory_budget(0)


def test_group_offload_recipe_runs_with_the_oobleck_vae_included():
    """docs/usage.md's 24 GB recipe, with the CPU standing in for CUDA (no streams on the CPU)."""
    pipe = make_tiny_pipeline(seed=0)
    pipe.enable_group_offload(
        onload_device=torch.device("cpu"), offload_type="block_level", num_blocks_per_group=1, num_resident_blocks=1
    )
    out = pipe(PROMPT, height=32, width=32, num_frames=5, num_inference_steps=1, generator=torch.Generator().manual_seed(0))
    assert out.frames.shape == (1, 5, 32, 32, 3)
    plain = make_tiny_pipeline(seed=0)
    plain.enable_group_offload(torch.device("cpu"), torch.device("cpu"), "block_level", 1)  # positional, no resident
    assert plain(PROMPT, height=32, width=32, num_frames=5, num_inference_steps=1, output_type="latent").frames.shape[2] == 2


@pytest.mark.gpu
@pytest.mark.parametrize("recipe", ["model", "sequential", "group", "group_resident", "chained_model"])
def test_documented_offload_recipes_on_cuda(recipe):
    from diffusers_magihuman import MagiHumanSRPipeline
    from diffusers_magihuman.testing_utils import make_tiny_transformer

    pipe = make_tiny_pipeline(seed=0)
    if recipe in ("model", "chained_model"):
        pipe.enable_model_cpu_offload()
    elif recipe == "sequential":
        pipe.enable_sequential_cpu_offload()
    else:  # exactly as written in docs/usage.md and docs/performance.md (no exclude_modules)
        pipe.enable_group_offload(
            onload_device=torch.device("cuda"), offload_type="block_level", num_blocks_per_group=1,
            use_stream=True, record_stream=True, num_resident_blocks=1 if recipe == "group_resident" else 0,
        )  # fmt: skip
    out = pipe(PROMPT, height=32, width=32, num_frames=5, num_inference_steps=1, output_type="latent")
    if recipe == "chained_model":
        sr = MagiHumanSRPipeline.from_pipe(pipe, transformer=make_tiny_transformer(seed=1, coords_style="v1"))
        sr.enable_model_cpu_offload()
        out = sr(PROMPT, latents=out.frames, audio_latents=out.audio, height=64, width=64, num_inference_steps=1)
        assert out.frames.shape == (1, 5, 64, 64, 3)
    else:
        assert out.frames.shape == (1, 48, 2, 2, 2)
