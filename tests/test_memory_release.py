"""`del pipe` frees the models at once: no reference cycle keeps a transformer (30 GiB at full size) alive until
Python's cycle collector happens to run. diffusers' `maybe_free_model_hooks` and `cache_context` attach a
`HookRegistry` (which holds its model) to a model without hooks; the pipelines avoid or remove those empty registries,
and keep the ones that hold a cache."""

import gc
import weakref

import pytest
import torch

from diffusers_magihuman import MagiHumanScheduler, MagiHumanSRPipeline
from diffusers_magihuman.testing_utils import make_tiny_pipeline, make_tiny_transformer


@pytest.fixture
def no_gc():
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def test_deleting_the_pipelines_after_a_call_frees_the_transformers_without_gc(no_gc):
    pipe = make_tiny_pipeline()
    pipe.set_progress_bar_config(disable=True)
    low = pipe(prompt="a man", height=32, width=32, num_frames=5, num_inference_steps=2, output_type="np")
    sr_dit = make_tiny_transformer(1, coords_style="v1")
    sr = MagiHumanSRPipeline(**{**pipe.components, "transformer": sr_dit, "scheduler": MagiHumanScheduler(sampler="unipc")})
    sr.set_progress_bar_config(disable=True)
    latents = pipe(prompt="a man", height=32, width=32, num_frames=5, num_inference_steps=2, output_type="latent")
    sr(prompt="a man", latents=latents.frames, audio_latents=latents.audio, height=64, width=64, num_inference_steps=2, output_type="np")
    assert getattr(sr_dit, "_diffusers_hook", None) is None
    sr_ref, base_ref = weakref.ref(sr_dit), weakref.ref(pipe.transformer)
    del sr, sr_dit, pipe, low, latents
    assert sr_ref() is None, "the SR transformer outlived its pipeline (reference cycle)"
    assert base_ref() is None, "the base transformer outlived its pipeline (reference cycle)"


def test_a_cache_keeps_its_hooks_and_still_acts(no_gc):
    from diffusers.hooks import FirstBlockCacheConfig

    pipe = make_tiny_pipeline()
    pipe.set_progress_bar_config(disable=True)
    kw = dict(prompt="a man", height=32, width=32, num_frames=5, num_inference_steps=4, output_type="latent")
    ref = pipe(**kw, generator=torch.Generator().manual_seed(0))
    pipe.transformer.enable_cache(FirstBlockCacheConfig(threshold=10.0))  # so large that every later step is cached
    cached = pipe(**kw, generator=torch.Generator().manual_seed(0))
    registry = pipe.transformer._diffusers_hook  # made by enable_cache; holds the cache context for the blocks' hooks
    assert getattr(pipe.transformer, "_diffusers_hook", None) is registry
    assert any(getattr(b, "_diffusers_hook", None) is not None and b._diffusers_hook.hooks for b in pipe.transformer.blocks)
    assert (cached.frames - ref.frames).abs().max() > 0  # the cache skipped blocks
    again = pipe(**kw, generator=torch.Generator().manual_seed(0))
    assert getattr(pipe.transformer, "_diffusers_hook", None) is registry, "the cache's registry was removed"
    torch.testing.assert_close(again.frames, cached.frames, rtol=0, atol=0)  # stateful hooks were reset between calls
