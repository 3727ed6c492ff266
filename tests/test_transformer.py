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
"""`MagiHumanTransformer3DModel`: packing, coordinates, batching, attention backends and diffusers opt-ins (CPU)."""

from pathlib import Path

import pytest
import torch
import torch.nn as nn
from diffusers.models.attention_dispatch import _AttentionBackendRegistry
from safetensors.torch import load_file

import diffusers_magihuman.models.transformer_magihuman as tm
from _tolerances import check_max_abs
from diffusers_magihuman.models.transformer_magihuman import (
    MagiHumanAttnProcessor,
    MagiHumanRotaryPosEmbed,
    MagiHumanTokenLayout,
    MagiHumanTransformer3DModel,
    MagiHumanTransformerBlock,
    MagiHumanTransformerOutput,
    get_magihuman_coords,
    patchify_video,
    unpatchify_video,
)


FIXTURES = Path(__file__).parent / "fixtures" / "upstream_dit"
FIXTURE_NAMES = ["tiny_a_seed0", "tiny_local_seed0"]

TINY_CONFIG = {
    "num_layers": 4,
    "hidden_size": 64,
    "head_dim": 16,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "in_channels": 4,
    "patch_size": (1, 2, 2),
    "audio_in_channels": 8,
    "text_in_channels": 24,
    "mm_layers": [0, 3],
    "gelu7_layers": [0],
    "local_attn_layers": [1, 3],
    "coords_style": "v2",
    "frame_receptive_field": 1,
}


def rel_l2(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return ((actual.double() - expected.double()).norm() / expected.double().norm()).item()


@pytest.fixture(autouse=True)
def restore_attention_backend():
    # `set_attention_backend` also sets diffusers' process-global active backend.
    saved = _AttentionBackendRegistry._active_backend
    yield
    _AttentionBackendRegistry.set_active_backend(saved)


def released_layout(model: MagiHumanTransformer3DModel, dtype: torch.dtype = torch.bfloat16):
    """What `from_pretrained(dtype=bf16)` gives: block linears in `dtype`, `_keep_in_fp32_modules` in fp32."""
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) and name.startswith("blocks."):
            module.to(dtype)
    return model


def tiny_model(seed: int = 0, dtype: torch.dtype = torch.bfloat16, **overrides) -> MagiHumanTransformer3DModel:
    torch.manual_seed(seed)
    model = MagiHumanTransformer3DModel(**{**TINY_CONFIG, **overrides})
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name:  # offset-from-1 weights: make them non-trivial
                param.normal_(0.0, 0.1)
    return released_layout(model, dtype).eval()


def tiny_inputs(batch_size=1, frames=4, height=4, width=6, audio_len=13, text_len=5, seed=1):
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randn(batch_size, TINY_CONFIG["in_channels"], frames, height, width, generator=g),
        torch.randn(batch_size, audio_len, TINY_CONFIG["audio_in_channels"], generator=g),
        torch.randn(batch_size, text_len, TINY_CONFIG["text_in_channels"], generator=g),
    )


# ---------------------------------------------------------------------------------------------------------------------
# Packing, coordinates, RoPE, local ranges against the upstream fixtures
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parity
@pytest.mark.parametrize("name", FIXTURE_NAMES)
def test_packing_coords_and_rope_match_upstream(name):
    inputs = load_file(FIXTURES / name / "inputs.safetensors")
    outputs = load_file(FIXTURES / name / "outputs.safetensors")
    import json

    config = json.loads((FIXTURES / name / "config.json").read_text())
    proxy = config["data_proxy_config"]
    video = inputs["video_latent"]
    num_frames, height, width = video.shape[2:]
    grid = (num_frames, height // 2, width // 2)
    num_video = grid[0] * grid[1] * grid[2]
    audio_len, text_len = inputs["audio_feat_len"].item(), inputs["text_feat_len"].item()
    packed = inputs["packed.x"]

    # Channel-major patchify on input, exact.
    assert torch.equal(patchify_video(video, (1, 2, 2))[0], packed[:num_video, :192])
    assert torch.equal(packed[num_video : num_video + audio_len, :64], inputs["audio_latent"][0])
    assert torch.equal(packed[num_video + audio_len :], inputs["text_embeds"][0, :text_len])
    # Spatial-major unpacking of the raw output is upstream's `depack_token_sequence`, exact.
    x_out = outputs["x_out"]
    assert torch.equal(unpatchify_video(x_out[None, :num_video], (1, 2, 2), grid), outputs["video_pred"])
    assert not torch.equal(patchify_video(outputs["video_pred"], (1, 2, 2))[0], x_out[:num_video])

    coords = get_magihuman_coords(grid, audio_len, text_len, proxy["coords_style"], proxy["text_offset"])
    assert torch.equal(coords, inputs["packed.coords_mapping"])
    freqs_cos, freqs_sin = MagiHumanRotaryPosEmbed(config["model_config"]["head_dim"])(coords)
    # sin / cos of the same fp32 angles differ by <= 1 ulp per math library (libm vs vectorised): 2 ulp(1) (measured 0).
    assert check_max_abs("rope table", torch.cat([freqs_sin, freqs_cos], dim=-1), outputs["debug.rope"], 2 * 2.0**-23)

    # Local-attention rule == the union of upstream's (query range, key range) pairs.
    layout = MagiHumanTokenLayout.build([audio_len], [text_len], grid, proxy["frame_receptive_field"], "cpu")
    seq_len = packed.shape[0]
    expected = torch.zeros(seq_len, seq_len, dtype=torch.bool)
    for (q0, q1), (k0, k1) in zip(inputs["packed.local_q_ranges"].tolist(), inputs["packed.local_k_ranges"].tolist()):
        expected[q0:q1, k0:k1] = True
    assert torch.equal(layout.local_attention_mask(seq_len), expected)


def test_coords_edge_cases():
    # v2 text with n = 1 sits at t = -1 with scale forced to 1; v1 text with n = 1 is rejected like upstream.
    coords = get_magihuman_coords((2, 1, 1), 5, 1, "v2")
    assert coords[-1].tolist() == [-1, 0, 0, 1, 1, 1, 1, 1, 1]
    with pytest.raises(ValueError, match="infinite RoPE scale"):
        get_magihuman_coords((2, 1, 1), 5, 1, "v1")
    # v2 text gets a zero angle on every axis (cos 1, sin 0); v1 text does not.
    for style, zero in (("v2", True), ("v1", False)):
        freqs_cos, freqs_sin = MagiHumanRotaryPosEmbed(16)(get_magihuman_coords((2, 2, 2), 5, 3, style))
        assert bool((freqs_sin[-3:] == 0).all()) == zero and bool((freqs_cos[-3:] == 1).all()) == zero


# ---------------------------------------------------------------------------------------------------------------------
# Forward contract, batching, masks
# ---------------------------------------------------------------------------------------------------------------------


def test_forward_shapes_and_tuple_output():
    model = tiny_model()
    video, audio, text = tiny_inputs(batch_size=2)
    with torch.no_grad():
        out = model(video, audio, text)
        tup = model(video, audio, text, return_dict=False)
    assert isinstance(out, MagiHumanTransformerOutput)
    assert out.sample.shape == video.shape and out.sample.dtype == torch.float32
    assert out.audio_sample.shape == audio.shape and out.audio_sample.dtype == torch.float32
    assert isinstance(tup, tuple) and torch.equal(tup[0], out.sample) and torch.equal(tup[1], out.audio_sample)
    assert torch.isfinite(out.sample).all() and out.sample.abs().sum() > 0


def test_batch_of_two_with_different_lengths_matches_single_runs():
    model = tiny_model()
    video, audio, text = tiny_inputs(batch_size=2, audio_len=13, text_len=6)
    audio_mask = torch.ones(2, 13, dtype=torch.bool)
    audio_mask[1, 4:7] = False  # padding in the middle
    audio_mask[1, 11:] = False
    text_mask = torch.ones(2, 6, dtype=torch.int64)
    text_mask[0, 4:] = 0  # trailing padding, given as int
    with torch.no_grad():
        batched = model(video, audio, text, audio_attention_mask=audio_mask, encoder_attention_mask=text_mask)
        first = model(video[:1], audio[:1], text[:1, :4])
        second = model(video[1:], audio[1:, audio_mask[1]], text[1:])
    # Each sample runs the same ops on the same real tokens (attention sample by sample, experts row-wise); only the
    # GEMM row count differs, which on CPU gives at most fp32 reduction-order noise.
    assert rel_l2(batched.sample[:1], first.sample) < 1e-5
    assert rel_l2(batched.sample[1:], second.sample) < 1e-5
    assert rel_l2(batched.audio_sample[:1], first.audio_sample) < 1e-5
    assert rel_l2(batched.audio_sample[1, audio_mask[1]], second.audio_sample[0]) < 1e-5
    assert batched.audio_sample[1, ~audio_mask[1]].abs().max() == 0  # padded audio rows are zero


def test_padded_text_rows_are_dropped():
    model = tiny_model()
    video, audio, text = tiny_inputs(text_len=5)
    padded = torch.cat([text, 100 * torch.randn(1, 3, text.shape[-1])], dim=1)
    mask = torch.tensor([[1, 1, 1, 1, 1, 0, 0, 0]])
    with torch.no_grad():
        ref = model(video, audio, text)
        out = model(video, audio, padded, encoder_attention_mask=mask)
        garbage = model(video, audio, padded)
    # Same real tokens, but the text embedder GEMM sees 8 instead of 5 rows, which may change its fp32 blocking: fp32
    # reduction-order noise (~1e-7 relative) that a bf16 rounding downstream can turn into one bf16 ulp (2^-8).
    assert rel_l2(out.sample, ref.sample) < 1e-5 and rel_l2(out.audio_sample, ref.audio_sample) < 1e-5
    assert rel_l2(garbage.sample, ref.sample) > 1e-3  # the padded rows would matter if they were attended


@pytest.mark.parametrize("padded", [False, True])
def test_attention_gets_no_mask(monkeypatch, padded):
    # B=1 without padding (and, by per-sample attention, also padded batches) must call attention without any mask,
    # so mask-less flash backends work.
    seen = []
    original = tm.dispatch_attention_fn

    def spy(*args, **kwargs):
        seen.append(kwargs.get("attn_mask"))
        return original(*args, **kwargs)

    monkeypatch.setattr(tm, "dispatch_attention_fn", spy)
    model = tiny_model()
    video, audio, text = tiny_inputs(batch_size=2 if padded else 1)
    mask = torch.ones(text.shape[:2], dtype=torch.bool)
    if padded:
        mask[1, 3:] = False
    with torch.no_grad():
        model(video, audio, text, encoder_attention_mask=mask)
    assert seen and all(m is None for m in seen)


def test_input_validation_errors():
    model = tiny_model()
    video, audio, text = tiny_inputs()
    with pytest.raises(ValueError, match="divisible by the patch size"):
        model(video[..., :5], audio, text)
    with pytest.raises(ValueError, match="video latent"):
        model(video[0], audio, text)
    with pytest.raises(ValueError, match="encoder_attention_mask"):
        model(video, audio, text, encoder_attention_mask=torch.ones(1, 3))
    with pytest.raises(ValueError, match="head_dim"):
        MagiHumanTransformer3DModel(**{**TINY_CONFIG, "head_dim": 12})
    with pytest.raises(ValueError, match="multiple of"):
        MagiHumanTransformer3DModel(**{**TINY_CONFIG, "num_key_value_heads": 3})


# ---------------------------------------------------------------------------------------------------------------------
# Attention: local modes, backends, GQA
# ---------------------------------------------------------------------------------------------------------------------


def test_local_attention_equals_dense_masked_softmax():
    # The per-frame gathered-key path must be the same single softmax as a dense boolean mask over the packed
    # sequence (checked with an explicit fp32 reference on one layer's q/k/v).
    layout = MagiHumanTokenLayout.build([7], [3], (5, 2, 2), 1, "cpu")
    seq_len = layout.seq_len
    g = torch.Generator().manual_seed(0)
    q = torch.randn(1, seq_len, 4, 16, generator=g).bfloat16()
    k = torch.randn(1, seq_len, 2, 16, generator=g).bfloat16()
    v = torch.randn(1, seq_len, 2, 16, generator=g).bfloat16()
    out = MagiHumanAttnProcessor()._attention(q, k, v, layout, is_local=True)
    mask = layout.local_attention_mask(seq_len)
    kk, vv = k.float().repeat_interleave(2, dim=2), v.float().repeat_interleave(2, dim=2)  # q head h -> kv h // 2
    scores = torch.einsum("bqhd,bkhd->bhqk", q.float(), kk) / 4.0
    ref = torch.einsum("bhqk,bkhd->bqhd", scores.masked_fill(~mask, float("-inf")).softmax(-1), vv)
    assert out.dtype == torch.bfloat16
    # Equal up to the one bf16 rounding of the output (relative error <= 2^-8 per element) plus fp32 noise.
    assert ((out.float() - ref).abs() <= 2**-8 * ref.abs() + 1e-6).all()
    # A global softmax is clearly different (the window is one frame).
    glob = MagiHumanAttnProcessor()._attention(q, k, v, layout, is_local=False)
    assert rel_l2(glob.float(), ref) > 5e-2


def test_gqa_head_mapping_is_interleaved():
    # Query head h uses kv head h // group (flash-attn convention), not h % num_kv_heads.
    layout = MagiHumanTokenLayout.build([0], [0], (1, 1, 6), -1, "cpu")
    g = torch.Generator().manual_seed(0)
    q = torch.randn(1, 6, 4, 8, generator=g).bfloat16()
    k = torch.randn(1, 6, 2, 8, generator=g).bfloat16()
    v = torch.randn(1, 6, 2, 8, generator=g).bfloat16()
    out = MagiHumanAttnProcessor()._attention(q, k, v, layout, is_local=False).float()
    for head in range(4):
        kv = head // 2
        p = torch.softmax(q[0, :, head].float() @ k[0, :, kv].float().T / 8**0.5, dim=-1)
        assert torch.allclose(out[0, :, head], (p @ v[0, :, kv].float()).bfloat16().float(), atol=1e-2)


def test_set_attention_backend_switches_on_cpu():
    model = tiny_model()
    video, audio, text = tiny_inputs()
    with torch.no_grad():
        ref = model(video, audio, text).sample
        for backend in ["_native_math", "flex"]:
            model.set_attention_backend(backend)
            processors = {p._attention_backend.value for p in model.attn_processors.values()}
            assert processors == {backend}
            out = model(video, audio, text).sample
            # Same math through another kernel (flex: one BlockMask call for the local layers); differences are
            # fp32 reduction order flipping a few bf16 roundings; this small-gain model barely amplifies them.
            assert rel_l2(out, ref) < 1e-2
        model.set_attention_backend("native")
        assert torch.equal(model(video, audio, text).sample, ref)


def test_upstream_fallback_mode_is_close_to_one_softmax():
    model = tiny_model()
    video, audio, text = tiny_inputs()
    with torch.no_grad():
        ref = model(video, audio, text).sample
        model.set_attn_processor(MagiHumanAttnProcessor(local_attn_mode="upstream_fallback"))
        out = model(video, audio, text).sample
    # Only the per-range bf16 rounding differs; not identical, but at bf16-noise level.
    assert 0 < rel_l2(out, ref) < 1e-2
    with pytest.raises(ValueError, match="local_attn_mode"):
        MagiHumanAttnProcessor(local_attn_mode="sum")


# ---------------------------------------------------------------------------------------------------------------------
# Structure and diffusers opt-ins
# ---------------------------------------------------------------------------------------------------------------------


def test_full_size_config_on_meta_has_original_parameter_count():
    with torch.device("meta"):
        model = MagiHumanTransformer3DModel()
    # A fresh model is uniform fp32 (diffusers' convention); `from_pretrained(dtype=bf16)` makes the block linears
    # bf16 and keeps `_keep_in_fp32_modules` (embedders, norms, RoPE, heads) in fp32, like the released checkpoints.
    assert {p.dtype for p in model.parameters()} == {torch.float32} and model.dtype == torch.float32
    keep = MagiHumanTransformer3DModel._keep_in_fp32_modules
    kept = sum(p.numel() for n, p in model.named_parameters() if any(m in n.split(".") for m in keep))
    kept += sum(b.numel() for b in model.buffers())  # rope.bands: a persistent buffer, in the checkpoint
    block_linears = sum(p.numel() for p in model.parameters()) - kept + sum(b.numel() for b in model.buffers())
    assert block_linears == 15_277_834_240 and kept == 21_584_912
    assert len(model.blocks) == 40
    assert model.blocks[36].ff.video.up_proj.weight.shape == (2 * 13652, 5120)
    assert model.blocks[0].ff.text.up_proj.weight.shape == (20480, 5120)
    attn = model.blocks[4].attn
    assert attn.to_q.weight.shape == (5120, 5120) and attn.to_k.weight.shape == (1024, 5120)
    assert attn.to_v.weight.shape == (1024, 5120) and attn.to_gate.weight.shape == (40, 5120)
    assert attn.to_out[0].weight.shape == (5120, 5120)


def test_experts_are_real_linears_and_norms():
    model = tiny_model()
    mm_attn, shared_attn = model.blocks[0].attn, model.blocks[1].attn
    experts = tm.experts_of(mm_attn, "to_q")
    assert experts == (mm_attn.video.to_q, mm_attn.audio.to_q, mm_attn.text.to_q)
    assert not hasattr(mm_attn, "to_q")
    assert all(type(m) is nn.Linear for m in experts) and type(shared_attn.to_q) is nn.Linear
    assert isinstance(model.blocks[0].audio.norm1, tm.MagiHumanRMSNorm)
    # PEFT-style suffix targets hit only plain Linears, in shared and expert layers alike.
    for target in ("to_q", "to_k", "to_v", "to_gate", "to_out.0", "up_proj", "down_proj"):
        hits = [n for n, _ in model.named_modules() if n.endswith("." + target)]
        assert len(hits) == 4 + 2 * 2 and all(type(model.get_submodule(n)) is nn.Linear for n in hits), target
    assert model.blocks[1].attn.is_local and not model.blocks[2].attn.is_local
    # Experts really are separate: changing the text expert changes text-conditioned outputs only through text rows.
    video, audio, text = tiny_inputs()
    with torch.no_grad():
        ref = model(video, audio, text).sample
        model.blocks[3].ff.text.down_proj.weight.zero_()  # last layer: text rows do not feed the video output
        assert torch.equal(model(video, audio, text).sample, ref)
        model.blocks[3].ff.video.down_proj.weight.zero_()
        assert not torch.equal(model(video, audio, text).sample, ref)


def test_keep_in_fp32_and_save_load_round_trip(tmp_path):
    model = tiny_model()
    model.save_pretrained(tmp_path)
    loaded = MagiHumanTransformer3DModel.from_pretrained(tmp_path, dtype=torch.bfloat16)
    for name, param in loaded.named_parameters():
        atoms = name.split(".")
        keep = any(m in atoms for m in MagiHumanTransformer3DModel._keep_in_fp32_modules)
        assert param.dtype == (torch.float32 if keep else torch.bfloat16), name
    assert loaded.rope.bands.dtype == torch.float32
    video, audio, text = tiny_inputs()
    with torch.no_grad():
        ref = model(video, audio, text).sample
        assert torch.equal(loaded(video, audio, text).sample, ref)
        # Without a dtype diffusers loads into the model's own dtype (fp32); the weights decide the compute dtype, so
        # this model computes in fp32: close to the bf16 one (bf16 rounding noise), not equal.
        as_fp32 = MagiHumanTransformer3DModel.from_pretrained(tmp_path)
        assert {p.dtype for p in as_fp32.parameters()} == {torch.float32}
        out = as_fp32(video, audio, text).sample
        assert 0 < rel_l2(out, ref) < 3e-2


def test_gradient_checkpointing_matches():
    model = tiny_model(num_layers=2, mm_layers=[0], gelu7_layers=[0], local_attn_layers=[1]).train()
    video, audio, text = tiny_inputs(frames=3, height=2, width=4, audio_len=5, text_len=3)

    def grads():
        model.zero_grad()
        out = model(video, audio, text)
        (out.sample.square().mean() + out.audio_sample.square().mean()).backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    plain = grads()
    model.enable_gradient_checkpointing()
    assert model.is_gradient_checkpointing
    checkpointed = grads()
    assert set(plain) == set(checkpointed) and len(plain) > 10
    assert all(torch.equal(plain[n], checkpointed[n]) for n in plain)


def test_layerwise_casting_and_first_block_cache():
    from diffusers.hooks import FirstBlockCacheConfig
    from diffusers.hooks._helpers import TransformerBlockRegistry

    assert TransformerBlockRegistry.get(MagiHumanTransformerBlock).return_hidden_states_index == 0
    video, audio, text = tiny_inputs()
    model = tiny_model()
    with torch.no_grad():
        ref = model(video, audio, text).sample
    model.enable_layerwise_casting(storage_dtype=torch.float8_e4m3fn, compute_dtype=torch.bfloat16)
    assert model.blocks[1].attn.to_q.weight.dtype == torch.float8_e4m3fn
    assert model.video_embedder.weight.dtype == torch.float32 and model.blocks[1].norm1.weight.dtype == torch.float32
    with torch.no_grad():
        out = model(video, audio, text).sample
    assert torch.isfinite(out).all() and 0 < rel_l2(out, ref) < 0.5  # fp8 weights: close, not equal

    model = tiny_model()
    model.enable_cache(FirstBlockCacheConfig(threshold=10.0))  # huge threshold: second call reuses the cache
    with torch.no_grad():
        with model.cache_context("cond"):
            first = model(video, audio, text).sample
        with model.cache_context("cond"):
            second = model(video, audio + 1e-3, text).sample
    assert torch.allclose(first, ref, atol=1e-6) and torch.isfinite(second).all()
    model.disable_cache()


def test_pad_swiglu_config():
    model = tiny_model(pad_swiglu_to_multiple_of=16)  # swiglu width 168 -> 176
    assert model.blocks[1].ff.intermediate_size == 176 and model.blocks[1].ff.up_proj.weight.shape[0] == 352
    assert model.blocks[0].ff.intermediate_size == 256  # gelu7 layers are not padded


# ---------------------------------------------------------------------------------------------------------------------
# GPU-only
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("backend", ["_native_flash", "_native_cudnn", "_native_efficient", "flash", "flex"])
def test_gpu_backends_match_native(backend):
    if backend == "flash":
        pytest.importorskip("flash_attn")
    model = tiny_model().cuda()
    video, audio, text = (x.cuda() for x in tiny_inputs(batch_size=2))
    mask = torch.ones(text.shape[:2], dtype=torch.bool, device="cuda")
    mask[1, 2:] = False
    with torch.no_grad():
        ref = model(video, audio, text, encoder_attention_mask=mask).sample
        model.set_attention_backend(backend)
        out = model(video, audio, text, encoder_attention_mask=mask).sample
    # bf16 kernels with different tiling: bf16-level noise only.
    assert rel_l2(out, ref) < 3e-2


def test_pad_swiglu_in_place_is_exact_and_round_trips(tmp_path):
    """`pad_swiglu_(8)` zero-pads every swiglu7 width (340 -> 344 here; 13652 -> 13656 at full size) without
    changing outputs, and the padded model saves and reloads."""
    from diffusers_magihuman.testing_utils import make_tiny_transformer

    model = make_tiny_transformer(seed=3, hidden_size=32, swiglu7_intermediate_size=84, num_layers=3)
    video, audio, text = torch.randn(1, 48, 2, 4, 4), torch.randn(1, 5, 64), torch.randn(1, 7, 16)
    with torch.no_grad():
        before = model(video, audio, text, return_dict=False)
        model.pad_swiglu_(8)
        after = model(video, audio, text, return_dict=False)
    widths = {b.ff.intermediate_size for b in model.blocks if b.ff.activation == "swiglu7"}
    assert widths == {88} and model.config.pad_swiglu_to_multiple_of == 8
    # The padded gate rows are zero, so their products add exact zeros; in this fp32 model only the fp32 GEMM's
    # blocking over the longer reduction (84 -> 88) may reorder the sum: fp32 noise (~1e-7 relative), nothing more.
    torch.testing.assert_close(after[0], before[0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(after[1], before[1], rtol=1e-5, atol=1e-6)
    model.save_pretrained(tmp_path / "padded")
    reloaded = type(model).from_pretrained(tmp_path / "padded").eval()
    with torch.no_grad():
        again = reloaded(video, audio, text, return_dict=False)
    torch.testing.assert_close(again[0], after[0], rtol=0, atol=0)



def test_local_attention_flex_kernel_option_matches_per_frame():
    """`local_attn_kernel="flex"` (one block-sparse flex call) computes the same single softmax as the default
    per-frame kernel. On CPU both attend in fp32 from the same bf16 q/k/v, so they agree to fp32 rounding (1e-5)."""
    from diffusers_magihuman.models.transformer_magihuman import MagiHumanAttnProcessor
    from diffusers_magihuman.testing_utils import make_tiny_transformer

    model = make_tiny_transformer(local_attn_layers=[0, 1], frame_receptive_field=1, coords_style="v1")
    g = torch.Generator().manual_seed(0)
    x, a, e = torch.randn(1, 48, 5, 4, 4, generator=g), torch.randn(1, 17, 64, generator=g), torch.randn(1, 9, 16, generator=g)
    with torch.no_grad():
        loop = model(x, a, e, return_dict=False)
        model.set_attn_processor(MagiHumanAttnProcessor(local_attn_kernel="flex"))
        flex = model(x, a, e, return_dict=False)
    torch.testing.assert_close(flex[0], loop[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(flex[1], loop[1], rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="local_attn_kernel"):
        MagiHumanAttnProcessor(local_attn_kernel="bogus")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_long_sequence_activation_chunks_are_bit_identical(dtype):
    """Eager inference over long sequences (1080p) activates the MLP a chunk of tokens at a time to bound its fp32
    temporaries. The activation is element-wise and each chunk is written in the down-projection's dtype, exactly as
    the whole tensor would be, so the outputs must be bit-identical (both the gelu7 expert layer and the swiglu7
    layer are chunked here: 3 tokens per chunk)."""
    from diffusers_magihuman.models.transformer_magihuman import MagiHumanFeedForward
    from diffusers_magihuman.testing_utils import make_tiny_transformer

    model = make_tiny_transformer(seed=5).to(dtype)
    g = torch.Generator().manual_seed(1)
    video, audio, text = torch.randn(1, 48, 3, 4, 4, generator=g), torch.randn(1, 9, 64, generator=g), torch.randn(1, 6, 16, generator=g)
    with torch.no_grad():
        whole = model(video.to(dtype), audio.to(dtype), text.to(dtype), return_dict=False)
        calls = []
        for block in model.blocks:
            block.ff._activation_chunk_elements = 3 * max(block.ff.intermediate_size * 2, 1)
            original = block.ff._activate_in_chunks
            block.ff._activate_in_chunks = lambda *a, _f=original, **k: calls.append(1) or _f(*a, **k)
        chunked = model(video.to(dtype), audio.to(dtype), text.to(dtype), return_dict=False)
    assert len(calls) == len(model.blocks)
    assert isinstance(model.blocks[0].ff, MagiHumanFeedForward)
    if dtype == torch.bfloat16:
        # Each activation value is rounded to bf16 before the down projection, which hides the last-ulp differences
        # below: bit-identical.
        assert torch.equal(chunked[0], whole[0]) and torch.equal(chunked[1], whole[1])
    else:
        # fp32: CPU element-wise kernels compute a vector's tail elements with the scalar routine, and chunking moves
        # which elements fall in the tail, so an activation value may differ by 1 ulp (6e-8 relative). Through the
        # down projection that stays at a few fp32 ulps of outputs of magnitude ~2: 2e-6 absolute is ~10 ulps.
        torch.testing.assert_close(chunked[0], whole[0], rtol=0, atol=2e-6)
        torch.testing.assert_close(chunked[1], whole[1], rtol=0, atol=2e-6)
