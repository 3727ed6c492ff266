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
"""The checks of diffusers' shared model tester mixins (`ModelTesterMixin`, `AttentionTesterMixin`,
`AttentionBackendTesterMixin`, `LoraTesterMixin`, `TrainingTesterMixin`, `LayerwiseCastingTesterMixin` and the cache
mixins) that apply to `MagiHumanTransformer3DModel`, written here for a tiny random model on CPU.

Complements `test_transformer.py` and `test_transformer_conventions.py` (dtypes decided by the weights, layerwise
casting with any compute dtype, standard LoRA targets, fused projections), which are not repeated here.
"""

from __future__ import annotations

import json
import logging as py_logging

import pytest
import torch
from diffusers.hooks import (
    FirstBlockCacheConfig,
    MagCacheConfig,
    PyramidAttentionBroadcastConfig,
    TaylorSeerCacheConfig,
)
from diffusers.models.attention_dispatch import _AttentionBackendRegistry, attention_backend
from diffusers.utils import logging

from diffusers_magihuman import MagiHumanTransformer3DModel
from diffusers_magihuman.testing_utils import tiny_transformer_config


# Two layers: layer 0 with per-modality experts, layer 1 shared; small channel counts.
CONFIG = tiny_transformer_config(num_layers=2, in_channels=4, audio_in_channels=8, text_in_channels=12)
WEIGHTS = "diffusion_pytorch_model"


@pytest.fixture(autouse=True)
def restore_attention_backend():
    # `set_attention_backend` also sets diffusers' process-global active backend.
    saved = _AttentionBackendRegistry._active_backend
    yield
    _AttentionBackendRegistry.set_active_backend(saved)


def make_model(seed: int = 0) -> MagiHumanTransformer3DModel:
    torch.manual_seed(seed)
    model = MagiHumanTransformer3DModel(**CONFIG)
    with torch.no_grad():
        for param in model.parameters():  # fresh norms are the identity: perturb everything
            param.add_(torch.randn_like(param) * 0.05)
    return model.eval()


def make_inputs(batch_size: int = 1, seed: int = 1) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {
        "hidden_states": torch.randn(batch_size, 4, 2, 4, 4, generator=g),
        "audio_hidden_states": torch.randn(batch_size, 5, 8, generator=g),
        "encoder_hidden_states": torch.randn(batch_size, 6, 12, generator=g),
    }


def run(model, inputs=None, **kwargs):
    with torch.no_grad():
        return model(**(inputs or make_inputs()), **kwargs)


def rel_l2(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return ((actual.double() - expected.double()).norm() / expected.double().norm()).item()


def config_fields(model) -> dict:
    # As written to config.json (tuples become lists), without diffusers' private `_name_or_path`-style keys.
    return json.loads(json.dumps({k: v for k, v in model.config.items() if not k.startswith("_")}))


def attention_module_count(model) -> int:
    return sum(1 for m in model.modules() if hasattr(m, "set_processor") and hasattr(m, "processor"))


# ---------------------------------------------------------------------------------------------------------------------
# Save / load
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("safe_serialization", [True, False], ids=["safetensors", "pickle"])
def test_save_load_round_trip_is_exact(tmp_path, safe_serialization):
    model = make_model()
    model.save_pretrained(tmp_path, safe_serialization=safe_serialization)
    suffix = "safetensors" if safe_serialization else "bin"
    assert (tmp_path / f"{WEIGHTS}.{suffix}").is_file()
    loaded = MagiHumanTransformer3DModel.from_pretrained(tmp_path)
    assert config_fields(loaded) == config_fields(model)
    # The same fp32 weights and the same ops: identical numbers.
    assert torch.equal(run(loaded).sample, run(model).sample)
    assert torch.equal(run(loaded).audio_sample, run(model).audio_sample)


def test_variant_is_written_and_required_to_load(tmp_path):
    model = make_model()
    model.save_pretrained(tmp_path, variant="fp16")
    assert (tmp_path / f"{WEIGHTS}.fp16.safetensors").is_file() and not (tmp_path / f"{WEIGHTS}.safetensors").exists()
    with pytest.raises(OSError, match="no file named"):
        MagiHumanTransformer3DModel.from_pretrained(tmp_path)
    loaded = MagiHumanTransformer3DModel.from_pretrained(tmp_path, variant="fp16")
    assert torch.equal(run(loaded).sample, run(model).sample)


def test_sharded_checkpoint_with_variant(tmp_path):
    model = make_model()
    size_kb = sum(p.numel() * p.element_size() for p in model.parameters()) / 1024
    model.save_pretrained(tmp_path, max_shard_size=f"{int(size_kb // 4)}KB", variant="fp16")
    index = json.loads((tmp_path / f"{WEIGHTS}.safetensors.index.fp16.json").read_text())
    shards = set(index["weight_map"].values())
    assert len(shards) > 1 and all(s.startswith(f"{WEIGHTS}.fp16-") and s.endswith(".safetensors") for s in shards)
    assert all((tmp_path / s).is_file() for s in shards)
    loaded = MagiHumanTransformer3DModel.from_pretrained(tmp_path, variant="fp16")
    assert torch.equal(run(loaded).sample, run(model).sample)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=["fp32", "fp16", "bf16"])
@pytest.mark.parametrize("keyword", ["torch_dtype", "dtype"])
def test_from_pretrained_dtype_and_its_alias(tmp_path, dtype, keyword):
    make_model().save_pretrained(tmp_path)
    loaded = MagiHumanTransformer3DModel.from_pretrained(tmp_path, **{keyword: dtype})
    assert loaded.dtype == dtype
    fp32_modules = MagiHumanTransformer3DModel._keep_in_fp32_modules
    for name, param in loaded.named_parameters():
        keep = dtype != torch.float32 and any(m in name.split(".") for m in fp32_modules)
        assert param.dtype == (torch.float32 if keep else dtype), name
    out = run(loaded)
    assert out.sample.dtype == torch.float32 and torch.isfinite(out.sample).all()


def test_to_dtype_warns_about_the_fp32_modules(caplog):
    model = make_model()
    logging.enable_propagation()
    try:
        with caplog.at_level(py_logging.WARNING, logger="diffusers.models.modeling_utils"):
            model.to(torch.float16)
    finally:
        logging.disable_propagation()
    assert "should be kept in float32" in caplog.text and "from_pretrained" in caplog.text


def test_keep_in_fp32_modules_declared_as_a_string(tmp_path, monkeypatch):
    """`from_pretrained` also accepts `_keep_in_fp32_modules` as a bare string (ModelTesterMixin)."""
    make_model().save_pretrained(tmp_path)
    monkeypatch.setattr(MagiHumanTransformer3DModel, "_keep_in_fp32_modules", "video_embedder")
    loaded = MagiHumanTransformer3DModel.from_pretrained(tmp_path, torch_dtype=torch.float16)
    for name, param in loaded.named_parameters():
        expected = torch.float32 if "video_embedder" in name.split(".") else torch.float16
        assert param.dtype == expected, name


def test_layerwise_casting_keeps_every_fp32_module():
    model = make_model()
    model.enable_layerwise_casting(storage_dtype=torch.float16, compute_dtype=torch.float32)
    fp32_modules = MagiHumanTransformer3DModel._keep_in_fp32_modules
    for name, param in model.named_parameters():
        if any(m in name.split(".") for m in fp32_modules):
            assert param.dtype == torch.float32, name
    assert any(p.dtype == torch.float16 for p in model.parameters())  # something was cast
    assert torch.isfinite(run(model).sample).all()


@pytest.mark.parametrize("offload_type", ["block_level", "leaf_level"])
@pytest.mark.parametrize("to_disk", [False, True], ids=["memory", "disk"])
def test_group_offloading_on_cpu_gives_the_same_numbers(tmp_path, offload_type, to_disk):
    """MemoryTesterMixin's group offloading (accelerator-gated there) with CPU as the onload device: the hooks move
    nothing between devices, so the output must be bit-identical."""
    ref = run(make_model()).sample
    model = make_model()
    kwargs = {"num_blocks_per_group": 1} if offload_type == "block_level" else {}
    if to_disk:
        kwargs["offload_to_disk_path"] = str(tmp_path)
    model.enable_group_offload(
        onload_device=torch.device("cpu"), offload_device=torch.device("cpu"), offload_type=offload_type,
        use_stream=False, **kwargs,
    )  # fmt: skip
    assert torch.equal(run(model).sample, ref)
    if to_disk:
        assert any(tmp_path.glob("*.safetensors"))  # the groups really went through files


# ---------------------------------------------------------------------------------------------------------------------
# Forward conventions
# ---------------------------------------------------------------------------------------------------------------------


def test_determinism_and_output_shapes():
    model = make_model()
    inputs = make_inputs(batch_size=2)
    first, second = run(model, inputs), run(model, inputs)
    # The same ops on the same CPU: bit-identical.
    assert torch.equal(first.sample, second.sample) and torch.equal(first.audio_sample, second.audio_sample)
    assert first.sample.shape == inputs["hidden_states"].shape
    assert first.audio_sample.shape == inputs["audio_hidden_states"].shape
    as_tuple = run(model, inputs, return_dict=False)
    assert isinstance(as_tuple, tuple) and len(as_tuple) == 2 and torch.equal(as_tuple[0], first.sample)


def test_getattr_conventions():
    model = make_model()
    model.dummy_attribute = 5
    assert model.dummy_attribute == 5
    # A config field read as a model attribute works with diffusers' FutureWarning.
    with pytest.warns(FutureWarning):
        assert model.num_layers == CONFIG["num_layers"]
    with pytest.raises(AttributeError, match="has no attribute 'does_not_exist'"):
        model.does_not_exist


# ---------------------------------------------------------------------------------------------------------------------
# Attention processors and backends
# ---------------------------------------------------------------------------------------------------------------------


def test_attn_processors_get_and_set():
    model = make_model()
    ref = run(model).sample
    processors = model.attn_processors
    assert len(processors) == attention_module_count(model) > 0
    assert all(k.endswith(".processor") for k in processors)
    model.set_attn_processor(dict(processors))  # the same processors back, by name
    assert torch.equal(run(model).sample, ref)
    one = type(next(iter(processors.values())))()
    model.set_attn_processor(one)  # one instance for every module
    assert all(p is one for p in model.attn_processors.values())
    assert torch.equal(run(model).sample, ref)
    with pytest.raises(ValueError, match="number of processors"):
        model.set_attn_processor({"blocks.0.attn.processor": one})


def test_attention_backend_context_manager_matches_set_attention_backend_and_restores():
    model = make_model()
    before, _ = _AttentionBackendRegistry.get_active_backend()
    with attention_backend("_native_math"):
        in_context = run(model).sample
    assert _AttentionBackendRegistry.get_active_backend()[0] == before
    model.set_attention_backend("_native_math")
    assert torch.equal(run(model).sample, in_context)
    model.set_attention_backend("native")
    assert {p._attention_backend.value for p in model.attn_processors.values()} == {"native"}
    # The same fp32 softmax attention through two kernels: only the summation order differs (measured 1.8e-7
    # relative); 1e-5 leaves room for other CPUs' vector widths.
    assert rel_l2(run(model).sample, in_context) < 1e-5


# ---------------------------------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------------------------------


def test_gradient_checkpointing_is_applied_to_the_model():
    model = make_model()
    assert not model.is_gradient_checkpointing
    model.enable_gradient_checkpointing()
    applied = {type(m).__name__ for m in model.modules() if getattr(m, "gradient_checkpointing", False)}
    assert applied == {"MagiHumanTransformer3DModel"}
    model.disable_gradient_checkpointing()
    assert not model.is_gradient_checkpointing


def test_training_step_updates_weights_and_ema():
    from diffusers.training_utils import EMAModel

    model = make_model().train()
    ema = EMAModel(model.parameters())
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    before = model.blocks[1].attn.to_q.weight.detach().clone()
    out = model(**make_inputs())
    loss = out.sample.square().mean() + out.audio_sample.square().mean()
    loss.backward()
    optimizer.step()
    ema.step(model.parameters())
    assert not torch.equal(model.blocks[1].attn.to_q.weight, before)
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_layerwise_casting_backward_with_fp32_compute():
    model = make_model().train()
    model.enable_layerwise_casting(storage_dtype=torch.float8_e4m3fn, compute_dtype=torch.float32)
    out = model(**make_inputs())
    (out.sample.square().mean() + out.audio_sample.square().mean()).backward()
    # fp8 storage weights get no gradient (frozen storage); the fp32 islands train.
    assert model.video_embedder.weight.grad is not None and torch.isfinite(model.video_embedder.weight.grad).all()


# ---------------------------------------------------------------------------------------------------------------------
# LoRA with the standard target names
# ---------------------------------------------------------------------------------------------------------------------


def test_lora_adapter_metadata_round_trip_and_wrong_name(tmp_path):
    peft = pytest.importorskip("peft")
    model = make_model()
    ref = run(model).sample
    config = peft.LoraConfig(
        r=4, lora_alpha=8, init_lora_weights=False, target_modules=["to_q", "to_k", "to_v", "to_out.0"]
    )
    model.add_adapter(config)
    adapted = run(model).sample
    assert (adapted - ref).abs().max() > 1e-3
    model.save_lora_adapter(tmp_path)
    with pytest.raises(ValueError, match="not found|wrong_name"):
        model.save_lora_adapter(tmp_path / "other", adapter_name="wrong_name")

    fresh = make_model()
    fresh.load_lora_adapter(tmp_path, prefix=None, adapter_name="loaded", use_safetensors=True)
    loaded_config = fresh.peft_config["loaded"]
    assert loaded_config.r == 4 and loaded_config.lora_alpha == 8
    assert set(loaded_config.target_modules) == {"to_q", "to_k", "to_v", "to_out.0"}
    # The same adapter weights and alpha/r scale: equal up to fp32 summation order of the LoRA product.
    torch.testing.assert_close(run(fresh).sample, adapted, rtol=1e-5, atol=1e-5)
    fresh.disable_adapters()
    assert torch.equal(run(fresh).sample, ref)


# ---------------------------------------------------------------------------------------------------------------------
# Step caches: state handling (inference is in test_caches.py)
# ---------------------------------------------------------------------------------------------------------------------


CACHE_CONFIGS = {
    "first_block": lambda: FirstBlockCacheConfig(threshold=0.1),
    "mag": lambda: MagCacheConfig(num_inference_steps=2, mag_ratios=[1.0, 1.0]),
    "taylor_seer": lambda: TaylorSeerCacheConfig(cache_interval=2),
    "pab": lambda: PyramidAttentionBroadcastConfig(
        spatial_attention_block_skip_range=2,
        spatial_attention_block_identifiers=[r"^blocks\.\d+\.attn$"],
        current_timestep_callback=lambda: 500,
    ),
}


@pytest.mark.parametrize("name", list(CACHE_CONFIGS))
def test_cache_enable_disable_and_double_enable(name):
    model = make_model()
    ref = run(model).sample
    assert not model.is_cache_enabled
    model.enable_cache(CACHE_CONFIGS[name]())
    assert model.is_cache_enabled
    with pytest.raises(ValueError):
        model.enable_cache(CACHE_CONFIGS[name]())
    with model.cache_context("cond"):
        out = run(model).sample
    assert torch.isfinite(out).all()
    model.disable_cache()
    assert not model.is_cache_enabled
    # No hook left behind: the uncached numbers again.
    assert torch.equal(run(model).sample, ref)
