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
"""The model conventions diffusers' `ModelTesterMixin` checks, on a tiny random `MagiHumanTransformer3DModel` (CPU):
dtypes decided by the weights, save/load and variants, dtype moves, determinism, attention backends, layerwise
casting and LoRA with the standard target names."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from diffusers.models.attention_dispatch import _AttentionBackendRegistry

from diffusers_magihuman import MagiHumanTransformer3DModel
from diffusers_magihuman.testing_utils import tiny_transformer_config


# The package's tiny config with three layers (the last local) and small channel counts.
CONFIG = tiny_transformer_config(
    num_layers=3, in_channels=4, audio_in_channels=8, text_in_channels=12, local_attn_layers=[2], frame_receptive_field=1
)


@pytest.fixture(autouse=True)
def restore_attention_backend():
    # `set_attention_backend` also sets diffusers' process-global active backend.
    saved = _AttentionBackendRegistry._active_backend
    yield
    _AttentionBackendRegistry.set_active_backend(saved)


def make_model(seed: int = 0, **overrides) -> MagiHumanTransformer3DModel:
    torch.manual_seed(seed)
    model = MagiHumanTransformer3DModel(**{**CONFIG, **overrides})
    with torch.no_grad():
        for param in model.parameters():  # fresh norms are the identity: perturb everything
            param.add_(torch.randn_like(param) * 0.05)
    return model.eval()


def make_inputs(batch_size: int = 1, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randn(batch_size, 4, 3, 4, 4, generator=g),
        torch.randn(batch_size, 5, 8, generator=g),
        torch.randn(batch_size, 4, 12, generator=g),
    )


def rel_l2(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return ((actual.double() - expected.double()).norm() / expected.double().norm()).item()


def run(model, inputs=None, **kwargs):
    with torch.no_grad():
        return model(*(inputs or make_inputs()), **kwargs)


# ---------------------------------------------------------------------------------------------------------------------
# Dtypes: the weights decide
# ---------------------------------------------------------------------------------------------------------------------


def test_fresh_model_is_uniform_fp32():
    model = make_model()
    assert {p.dtype for p in model.parameters()} == {torch.float32} and model.dtype == torch.float32
    out = run(model)
    assert out.sample.dtype == torch.float32 and torch.isfinite(out.sample).all()


def test_from_pretrained_dtype_keeps_fp32_modules(tmp_path):
    model = make_model()
    model.save_pretrained(tmp_path)
    loaded = MagiHumanTransformer3DModel.from_pretrained(tmp_path, dtype=torch.bfloat16)
    assert loaded.blocks[0].attn.video.to_out[0].weight.dtype == torch.bfloat16
    assert loaded.blocks[0].video.norm1.weight.dtype == torch.float32 and loaded.rope.bands.dtype == torch.float32
    assert loaded.video_embedder.weight.dtype == torch.float32 and loaded.proj_out_audio.weight.dtype == torch.float32
    assert loaded.dtype == torch.bfloat16  # diffusers' `dtype` skips `_keep_in_fp32_modules`
    # bf16 block matmuls vs fp32 ones: bf16 rounding noise (2^-8 relative per rounding, a few roundings per layer).
    assert 0 < rel_l2(run(loaded).sample, run(model).sample) < 3e-2


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_whole_model_in_one_dtype_runs(dtype):
    reference = run(make_model()).sample
    model = make_model().to(dtype)
    assert {p.dtype for p in model.parameters()} == {dtype}
    out = run(model)
    assert out.sample.dtype == torch.float32 and torch.isfinite(out.sample).all()
    # Every op in `dtype` (norms, embedders and heads too): a few roundings of 2^-8 (bf16) or 2^-11 (fp16).
    assert rel_l2(out.sample, reference) < (5e-2 if dtype == torch.bfloat16 else 1e-2)


@pytest.mark.parametrize("compute_dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_layerwise_casting_with_any_compute_dtype(compute_dtype):
    reference = run(make_model()).sample
    model = make_model()
    model.enable_layerwise_casting(storage_dtype=torch.float8_e4m3fn, compute_dtype=compute_dtype)
    assert model.blocks[1].attn.to_q.weight.dtype == torch.float8_e4m3fn
    assert model.video_embedder.weight.dtype == torch.float32 and model.blocks[1].norm1.weight.dtype == torch.float32
    assert model.dtype == compute_dtype
    out = run(model).sample
    # fp8-e4m3 weights (3 mantissa bits, 2^-4 relative rounding) on a 3-layer model: close, not equal.
    assert torch.isfinite(out).all() and 0 < rel_l2(out, reference) < 0.3


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_peft_adapter_on_any_storage_dtype(dtype):
    peft = pytest.importorskip("peft")
    model = make_model().to(dtype)
    before = run(model).sample
    model.add_adapter(
        peft.LoraConfig(r=2, lora_alpha=2, init_lora_weights=False, target_modules=["to_q", "to_k", "to_v", "to_out.0"])
    )
    after = run(model).sample
    assert torch.isfinite(after).all() and (after - before).abs().max() > 1e-3


# ---------------------------------------------------------------------------------------------------------------------
# Projection names, fusion, legacy folders
# ---------------------------------------------------------------------------------------------------------------------


def test_standard_lora_targets_reach_every_attention_projection():
    peft = pytest.importorskip("peft")
    model = make_model()
    model.add_adapter(
        peft.LoraConfig(r=2, lora_alpha=2, init_lora_weights=False, target_modules=["to_q", "to_k", "to_v", "to_out.0"])
    )
    adapted = {name.rsplit(".lora_A", 1)[0] for name, _ in model.named_modules() if name.endswith("lora_A")}
    expected = set()
    for i, block in enumerate(model.blocks):
        prefixes = [f"blocks.{i}.attn"] if block.attn.num_experts == 1 else [f"blocks.{i}.attn.{m}" for m in ("video", "audio", "text")]
        expected |= {f"{p}.{name}" for p in prefixes for name in ("to_q", "to_k", "to_v", "to_out.0")}
    assert adapted == expected and len(expected) == 4 * (2 + 3)


def test_fused_projections_match_and_unfuse():
    model = make_model()
    inputs = make_inputs(batch_size=2)
    ref = run(model, inputs).sample
    model.fuse_qkv_projections()
    assert all(b.attn.fused_projections for b in model.blocks)
    assert model.blocks[0].attn.video.to_qkv.weight.shape == (4 * 8 + 2 * 2 * 8 + 4, 32)
    fused = run(model, inputs).sample
    # The same dot products in one GEMM of 68 rows instead of four: fp32 blocking may reorder sums (~1e-7).
    torch.testing.assert_close(fused, ref, rtol=1e-5, atol=1e-6)
    model.unfuse_qkv_projections()
    assert not any(b.attn.fused_projections for b in model.blocks) and not hasattr(model.blocks[1].attn, "to_qkv")
    assert torch.equal(run(model, inputs).sample, ref)


def _write_legacy_folder(model, folder):
    # The layout written before the projections were split: fused `to_qkv` (q | k | v | gate rows), bare `to_out`,
    # experts as name suffixes.
    import json
    import re

    from safetensors.torch import save_file

    legacy = {}
    state_dict = model.state_dict()
    for key, tensor in state_dict.items():
        match = re.match(r"^(blocks\.\d+\.)(?:(attn|ff)\.)?(?:(video|audio|text)\.)?(.+)\.weight$", key)
        if match is None:
            legacy[key] = tensor
            continue
        prefix, parent, modality, leaf = match.groups()
        if leaf in ("to_k", "to_v", "to_gate"):
            continue
        if leaf == "to_q":
            owner = key[: -len(".to_q.weight")]
            tensor = torch.cat([state_dict[f"{owner}.{n}.weight"] for n in ("to_q", "to_k", "to_v", "to_gate")])
            leaf = "to_qkv"
        leaf = "to_out" if leaf == "to_out.0" else leaf
        name = prefix + (f"{parent}." if parent else "") + leaf + (f"_{modality}" if modality else "")
        legacy[name + ".weight"] = tensor
    folder.mkdir()
    save_file({k: v.contiguous() for k, v in legacy.items()}, folder / "diffusion_pytorch_model.safetensors")
    (folder / "config.json").write_text(json.dumps(dict(model.config)))
    return legacy


def test_legacy_folder_is_refused_before_loading_and_can_be_upgraded(tmp_path):
    from diffusers_magihuman.models.magihuman_legacy_keys import upgrade_legacy_folder

    model = make_model()
    legacy = _write_legacy_folder(model, tmp_path / "old")
    assert "blocks.0.attn.to_qkv_video.weight" in legacy and "blocks.1.attn.to_out.weight" in legacy
    with pytest.raises(ValueError, match="re-convert|Re-convert") as error:
        MagiHumanTransformer3DModel.from_pretrained(tmp_path / "old")
    assert "upgrade_legacy_folder" in str(error.value)
    # Upgrading only splits rows and renames: the same numbers, exactly.
    upgrade_legacy_folder(tmp_path / "old", tmp_path / "new")
    upgraded = MagiHumanTransformer3DModel.from_pretrained(tmp_path / "new")
    inputs = make_inputs()
    assert torch.equal(run(upgraded, inputs).sample, run(model, inputs).sample)
    with pytest.raises(FileExistsError):
        upgrade_legacy_folder(tmp_path / "old", tmp_path / "new")
