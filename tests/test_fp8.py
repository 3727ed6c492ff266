"""The opt-in FP8 route (`diffusers_magihuman.utils.fp8`): which linears it selects, and its refusals. The float8
GEMMs themselves need torchao and an SM 8.9+ GPU (measured by benchmarks/benchmark_speedups.py --sections fp8);
here torchao is replaced by a stub that records what would be quantized."""

import sys
import types

import pytest
import torch

from diffusers_magihuman.testing_utils import make_tiny_transformer
from diffusers_magihuman.utils.fp8 import enable_fp8_compute, fp8_block_linear_filter


@pytest.fixture
def fake_torchao(monkeypatch):
    class Calls(list):  # the selected names of each quantize_ call; `.configs`: the configs it was given
        configs: list

    calls = Calls()
    calls.configs = []
    quantization = types.ModuleType("torchao.quantization")

    class PerRow:
        pass

    class Float8DynamicActivationFloat8WeightConfig:
        def __init__(self, granularity=None, set_inductor_config=True):
            self.granularity = granularity
            self.set_inductor_config = set_inductor_config  # torchao's default: True

    def quantize_(model, config, filter_fn=None):
        # torchao's default rewrites process-wide inductor settings (coordinate-descent tuning of every Triton kernel:
        # a compile of minutes); the port must turn that off.
        calls.append([name for name, module in model.named_modules() if filter_fn(module, name)])
        calls.configs.append(config)

    quantization.PerRow = PerRow
    quantization.Float8DynamicActivationFloat8WeightConfig = Float8DynamicActivationFloat8WeightConfig
    quantization.quantize_ = quantize_
    torchao = types.ModuleType("torchao")
    torchao.quantization = quantization
    monkeypatch.setitem(sys.modules, "torchao", torchao)
    monkeypatch.setitem(sys.modules, "torchao.quantization", quantization)
    return calls


def _bf16_tiny(**overrides):
    # block linears in bf16, as `from_pretrained(torch_dtype=torch.bfloat16)` gives; sizes multiples of 16
    model = make_tiny_transformer(hidden_size=32, swiglu7_intermediate_size=84, **overrides)
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and name.startswith("blocks."):
            module.to(torch.bfloat16)
    return model


def test_filter_selects_block_linears_with_aligned_sizes():
    model = make_tiny_transformer(hidden_size=32, num_attention_heads=4, head_dim=8)
    selected = [name for name, module in model.named_modules() if fp8_block_linear_filter()(module, name)]
    assert selected and all(name.startswith("blocks.") for name in selected)
    # the embedders and output heads are never selected; the gate (4 outputs) is not a multiple of 16
    assert not any(".to_gate" in name for name in selected)
    assert "blocks.0.attn.video.to_q" in selected and "blocks.1.attn.to_out.0" in selected
    skipped = [name for name, module in model.named_modules() if fp8_block_linear_filter([0])(module, name)]
    assert skipped and not any(name.startswith("blocks.0.") for name in skipped)


def test_missing_torchao_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "torchao", None)
    monkeypatch.setitem(sys.modules, "torchao.quantization", None)
    with pytest.raises(ImportError, match="pip install torchao"):
        enable_fp8_compute(_bf16_tiny())


def test_refusals_come_before_any_change(fake_torchao, monkeypatch):
    model = _bf16_tiny()
    with pytest.raises(ValueError, match="skip_layers"):
        enable_fp8_compute(model, skip_layers=[5], check_device=False)
    fp32 = make_tiny_transformer(hidden_size=32, swiglu7_intermediate_size=84)
    with pytest.raises(ValueError, match="bf16 block linears"):
        enable_fp8_compute(fp32, check_device=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(RuntimeError, match="compute capability 8.9"):
        enable_fp8_compute(model)
    assert fake_torchao == [] and model.config.pad_swiglu_to_multiple_of is None


def test_pads_swiglu_to_16_and_quantizes_the_selected_linears(fake_torchao):
    model = _bf16_tiny()
    count = enable_fp8_compute(model, check_device=False)
    # 84 -> 96: the swiglu layer's up (192 outputs) and down (96 inputs) projections now qualify
    assert model.config.pad_swiglu_to_multiple_of == 16
    assert {b.ff.intermediate_size for b in model.blocks if b.ff.activation == "swiglu7"} == {96}
    assert len(fake_torchao) == 1 and count == len(fake_torchao[0])
    assert "blocks.1.ff.down_proj" in fake_torchao[0] and "blocks.1.ff.up_proj" in fake_torchao[0]
    # no process-wide side effect: torchao's inductor-config rewrite is switched off
    assert [c.set_inductor_config for c in fake_torchao.configs] == [False]


def test_padded_rows_get_a_positive_scale_and_the_output_stays_exact(fake_torchao):
    # Padding adds all-zero up_proj rows; a zero row has a zero per-row float8 scale and torchao then makes the whole
    # up_proj output NaN (seen on an H100). Their down_proj columns are zero, so the rows may hold any finite value:
    # enable_fp8_compute fills them, and the (here unquantized) model must give bit-identical outputs, since every
    # padded channel is still multiplied by an exact zero.
    model = make_tiny_transformer(hidden_size=32, swiglu7_intermediate_size=84)
    g = torch.Generator().manual_seed(0)
    inputs = (torch.randn(1, 48, 2, 4, 4, generator=g), torch.randn(1, 5, 64, generator=g), torch.randn(1, 7, 16, generator=g))
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and name.startswith("blocks."):
            module.to(torch.bfloat16)
    with torch.no_grad():
        ref = model(*inputs, return_dict=False)
    enable_fp8_compute(model, check_device=False)
    selected = set(fake_torchao[0])
    modules = dict(model.named_modules())
    for name in selected:
        assert not (modules[name].weight == 0).all(dim=1).any(), f"{name} keeps a zero row"
    assert "blocks.1.ff.up_proj" in selected
    with torch.no_grad():
        out = model(*inputs, return_dict=False)
    for a, b in zip(out, ref):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_a_linear_with_a_used_zero_row_stays_in_bf16_with_a_warning(fake_torchao, caplog, monkeypatch):
    model = _bf16_tiny()
    with torch.no_grad():
        model.blocks[1].attn.to_q.weight[3] = 0  # a zero row whose output is used: it cannot be filled
    import logging

    from diffusers.utils import logging as diffusers_logging

    monkeypatch.setattr(diffusers_logging.get_logger("diffusers_magihuman.utils.fp8"), "propagate", True)
    with caplog.at_level(logging.WARNING):
        enable_fp8_compute(model, check_device=False)
    assert "blocks.1.attn.to_q" not in fake_torchao[0]
    assert "blocks.1.ff.up_proj" in fake_torchao[0]
    assert "all-zero weight row" in caplog.text and "blocks.1.attn.to_q" in caplog.text


def test_quantized_weights_with_a_zero_scale_are_refused_before_any_step():
    """diffusers' `TorchAoConfig` (float8, per row) on a folder with a zero-padded SwiGLU width quantizes the zero
    `up_proj` rows with a zero scale: every output would be NaN. The pipeline refuses before the first DiT call and
    names the layer; positive scales pass. (The real torchao `Float8Tensor` exposes its per-row scales as `.scale`.)"""
    from diffusers_magihuman.testing_utils import make_tiny_pipeline

    pipe = make_tiny_pipeline(seed=0)
    up = next(b.ff.up_proj for b in pipe.transformer.blocks if b.ff.activation == "swiglu7")
    calls = []
    pipe.transformer.register_forward_pre_hook(lambda *args: calls.append(1))
    kw = dict(prompt="A woman says hello.", height=32, width=32, num_frames=5, num_inference_steps=1, output_type="latent")

    up.weight.scale = torch.ones(up.out_features)
    up.weight.scale[3] = 0.0
    with pytest.raises(ValueError, match="zero float8 weight scale.*ff.up_proj.*enable_fp8_compute"):
        pipe(**kw)
    assert calls == []

    up.weight.scale = torch.ones(up.out_features)
    pipe(**kw)
    assert calls


def _quantize_like_torchao_per_row(weight: torch.Tensor):
    """A float8 per-row quantization as torchao's (scale = row amax / 448, values = weight / scale in e4m3), attached to
    a plain tensor as `.qdata` / `.scale`: an all-zero row gets a zero scale and NaN values (0 / 0)."""
    w = weight.detach().float()
    scale = w.abs().amax(dim=1, keepdim=True) / torch.finfo(torch.float8_e4m3fn).max
    qdata = (w / scale).to(torch.float8_e4m3fn)
    stub = torch.nn.Parameter(weight.detach().clone(), requires_grad=False)
    stub.qdata, stub.scale = qdata, scale
    return stub


def _padded_model_quantized_at_load():
    """A tiny model padded like a converted folder (84 -> 96: 12 dead channels), whose swiglu up_proj weights look
    like what `TorchAoConfig` float8 per-row quantization leaves: zero scales and NaN values on the padded rows."""
    model = make_tiny_transformer(hidden_size=32, swiglu7_intermediate_size=84).pad_swiglu_(16)
    up = next(b.ff.up_proj for b in model.blocks if b.ff.activation == "swiglu7")
    quantized = _quantize_like_torchao_per_row(up.weight)
    assert (quantized.scale == 0).sum() == 24 and quantized.qdata.float().isnan().any()
    return model, up, quantized


def test_zero_scale_rows_of_padded_swiglu_channels_are_repaired_exactly():
    from diffusers_magihuman.utils.fp8 import check_float8_scales, linears_with_zero_float8_scales

    model, up, quantized = _padded_model_quantized_at_load()
    dead_rows = quantized.scale.reshape(-1) == 0
    live_qdata, live_scale = quantized.qdata[~dead_rows].clone(), quantized.scale[~dead_rows].clone()
    up.weight = quantized
    assert linears_with_zero_float8_scales(model) == ["blocks.1.ff.up_proj"]
    check_float8_scales(model)  # repairs instead of refusing
    assert linears_with_zero_float8_scales(model) == []
    # dead rows: float8 +0 with a unit scale, so their outputs are exactly 0, as the padded checkpoint's zero rows give
    assert (quantized.qdata[dead_rows].view(torch.uint8) == 0).all() and (quantized.scale[dead_rows] == 1).all()
    # live rows untouched, bit for bit
    assert torch.equal(quantized.qdata[~dead_rows].view(torch.uint8), live_qdata.view(torch.uint8))
    assert torch.equal(quantized.scale[~dead_rows], live_scale)


def test_a_zero_scale_on_a_live_channel_is_still_refused():
    from diffusers_magihuman.utils.fp8 import check_float8_scales

    model, up, _ = _padded_model_quantized_at_load()
    with torch.no_grad():
        up.weight[5] = 0  # gate row of live channel 5: its down_proj column is not zero
    quantized = _quantize_like_torchao_per_row(up.weight)
    up.weight = quantized
    with pytest.raises(ValueError, match="zero float8 weight scale.*blocks.1.ff.up_proj"):
        check_float8_scales(model)
    assert (quantized.scale == 0).sum() == 25  # nothing was changed: the padded rows are not repaired one by one


def test_torchao_config_load_of_a_padded_folder_runs_and_matches_enable_fp8_compute(tmp_path, monkeypatch):
    """The real route: diffusers' `TorchAoConfig` float8 per-row quantization while loading a padded folder (NaN
    outputs before the repair), on the CPU (torchao's hardware check patched out; needs torchao, so skipped in CI)."""
    torchao = pytest.importorskip("torchao")
    from diffusers import TorchAoConfig
    from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerRow
    from torchao.quantization import quant_api

    from diffusers_magihuman import MagiHumanTransformer3DModel
    from diffusers_magihuman.utils.fp8 import check_float8_scales

    monkeypatch.setattr(quant_api, "_check_hardware_support", lambda *args, **kwargs: None)
    model = make_tiny_transformer(hidden_size=32, swiglu7_intermediate_size=84).pad_swiglu_(16)
    model.to(torch.bfloat16).save_pretrained(tmp_path)
    config = TorchAoConfig(Float8DynamicActivationFloat8WeightConfig(granularity=PerRow()))
    loaded = MagiHumanTransformer3DModel.from_pretrained(tmp_path, torch_dtype=torch.bfloat16, quantization_config=config)
    ours = MagiHumanTransformer3DModel.from_pretrained(tmp_path, torch_dtype=torch.bfloat16)
    enable_fp8_compute(ours, check_device=False)
    g = torch.Generator().manual_seed(0)
    inputs = [torch.randn(*s, generator=g).to(torch.bfloat16) for s in ((1, 48, 2, 4, 4), (1, 5, 64), (1, 7, 16))]
    with torch.no_grad():
        assert loaded(*inputs, return_dict=False)[0].isnan().any()  # the bug the repair fixes
        check_float8_scales(loaded)
        out, expected = loaded(*inputs, return_dict=False), ours(*inputs, return_dict=False)
    # the same float8 linears with the same values on both routes (dead rows: zeros vs a tiny constant, both
    # multiplied by zero down_proj columns), so the same GEMMs: identical outputs
    for a, b in zip(out, expected):
        assert not a.isnan().any()
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert torchao is not None
