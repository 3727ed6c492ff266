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
"""diffusers' step caches on a tiny `MagiHumanTransformer3DModel` (CPU): the block-level caches skip work and give
finite outputs close to the uncached ones; FasterCache is refused with a clear error."""

from __future__ import annotations

import pytest
import torch
from diffusers.hooks import (
    FasterCacheConfig,
    FirstBlockCacheConfig,
    MagCacheConfig,
    PyramidAttentionBroadcastConfig,
    TaylorSeerCacheConfig,
)

from diffusers_magihuman import MagiHumanTransformer3DModel


CONFIG = dict(
    num_layers=3, hidden_size=32, head_dim=8, num_attention_heads=4, num_key_value_heads=2, in_channels=4,
    audio_in_channels=8, text_in_channels=12, mm_layers=[0], gelu7_layers=[0],
)  # fmt: skip
STEPS = 4


def make_model() -> MagiHumanTransformer3DModel:
    torch.manual_seed(0)
    model = MagiHumanTransformer3DModel(**CONFIG)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.05)
    return model.eval()


def run_steps(model, count_block: int = 2):
    """`STEPS` denoiser calls on slowly changing inputs, as in a sampling loop; counts calls of one later block."""
    calls = []
    # A hook on a submodule: a skipped block (or cached attention) does not run `to_q` (a hook on the block itself would still fire).
    handle = model.blocks[count_block].attn.to_q.register_forward_hook(lambda *args: calls.append(1))
    g = torch.Generator().manual_seed(1)
    video, audio, text = torch.randn(1, 4, 2, 4, 4, generator=g), torch.randn(1, 5, 8, generator=g), torch.randn(1, 4, 12, generator=g)
    outputs = []
    try:
        with torch.no_grad():
            for step in range(STEPS):
                with model.cache_context("cond"):
                    outputs.append(model(video * (1 - 0.01 * step), audio, text).sample)
    finally:
        handle.remove()
    return outputs, len(calls)


def rel_l2(actual, expected):
    return ((actual - expected).norm() / expected.norm()).item()


@pytest.mark.parametrize(
    "config",
    [
        FirstBlockCacheConfig(threshold=1.0),  # large threshold: every call after the first reuses the cache
        MagCacheConfig(num_inference_steps=STEPS, retention_ratio=0.0, threshold=1.0, max_skip_steps=3, mag_ratios=[1.0] * STEPS),
        TaylorSeerCacheConfig(cache_interval=2, max_order=1, disable_cache_before_step=1),
    ],
    ids=["first_block", "mag", "taylor_seer"],
)
def test_block_caches_skip_blocks_and_stay_close(config):
    reference, full_calls = run_steps(make_model())
    assert full_calls == STEPS
    model = make_model()
    model.enable_cache(config)
    cached, calls = run_steps(model)
    assert calls < STEPS, "the cache never skipped the later blocks"
    assert torch.equal(cached[0], reference[0])  # the first step always computes everything
    # Skipped steps reuse (or extrapolate) residuals of inputs 1% away: close to the uncached outputs, not equal.
    for out, ref in zip(cached, reference):
        assert torch.isfinite(out).all() and rel_l2(out, ref) < 0.1
    model.disable_cache()
    again, calls = run_steps(model)
    assert calls == STEPS and all(torch.equal(a, b) for a, b in zip(again, reference))


def test_pyramid_attention_broadcast_reuses_attention():
    reference, _ = run_steps(make_model())
    model = make_model()
    timestep = {"t": 999}
    model.enable_cache(
        PyramidAttentionBroadcastConfig(
            spatial_attention_block_skip_range=2,
            spatial_attention_timestep_skip_range=(-1, 1000),
            current_timestep_callback=lambda: timestep["t"],
        )
    )
    cached, _ = run_steps(model)
    assert torch.equal(cached[0], reference[0])
    assert not torch.equal(cached[1], reference[1])  # step 1 broadcasts step 0's attention outputs
    assert all(torch.isfinite(out).all() and rel_l2(out, ref) < 0.1 for out, ref in zip(cached, reference))


def test_faster_cache_is_refused_with_a_clear_error():
    model = make_model()
    with pytest.raises(ValueError, match="FasterCache does not work"):
        model.enable_cache(FasterCacheConfig(spatial_attention_block_skip_range=2, current_timestep_callback=lambda: 500))
    assert not model.is_cache_enabled


def test_pyramid_attention_broadcast_with_guidance_is_refused_before_any_step():
    """PAB keeps one state per attention module, so the unconditional pass would reuse the conditional pass's
    attention; with guidance on the pipeline refuses it before the DiT runs, without guidance it runs."""
    from diffusers.hooks import PyramidAttentionBroadcastConfig

    from diffusers_magihuman.testing_utils import make_tiny_pipeline

    pipe = make_tiny_pipeline(seed=0, distilled=False)
    pipe.transformer.enable_cache(
        PyramidAttentionBroadcastConfig(
            spatial_attention_block_skip_range=2,
            spatial_attention_timestep_skip_range=(-1, 1001),
            spatial_attention_block_identifiers=[r"^blocks\.\d+\.attn$"],
            current_timestep_callback=lambda: pipe.current_timestep,
        )
    )
    calls = []
    pipe.transformer.register_forward_pre_hook(lambda *a: calls.append(1))
    with pytest.raises(ValueError, match="Pyramid Attention Broadcast"):
        pipe("A man waves.", height=32, width=32, num_frames=5, num_inference_steps=2, guidance_scale=5.0,
             output_type="latent")  # fmt: skip
    assert calls == []
    out = pipe("A man waves.", height=32, width=32, num_frames=5, num_inference_steps=2, guidance_scale=1.0,
               audio_guidance_scale=1.0, output_type="latent")  # fmt: skip
    assert calls and torch.isfinite(out.frames).all()
