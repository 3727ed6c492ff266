"""LoRA through diffusers' PeftAdapterMixin: every projection, each modality expert included, is a real nn.Linear."""

from __future__ import annotations

import pytest
import torch

from diffusers_magihuman import MagiHumanTransformer3DModel
from diffusers_magihuman.testing_utils import make_tiny_transformer


peft = pytest.importorskip("peft")


def _inputs():
    g = torch.Generator().manual_seed(0)
    return torch.randn(1, 48, 2, 4, 4, generator=g), torch.randn(1, 5, 64, generator=g), torch.randn(1, 7, 16, generator=g)


def test_lora_targets_experts_scales_and_round_trips(tmp_path):
    model = make_tiny_transformer()
    x, a, e = _inputs()
    with torch.no_grad():
        ref = model(x, a, e, return_dict=False)
    config = peft.LoraConfig(
        r=4, lora_alpha=4, init_lora_weights=False, target_modules=["to_q", "to_k", "to_v", "to_gate", "to_out.0", "up_proj", "down_proj"]
    )
    model.add_adapter(config)
    names = {n for n, _ in model.named_modules() if n.endswith("lora_A")}
    assert "blocks.0.attn.video.to_q.lora_A" in names and "blocks.1.ff.down_proj.lora_A" in names
    assert "blocks.0.attn.text.to_out.0.lora_A" in names and "blocks.0.ff.audio.up_proj.lora_A" in names
    with torch.no_grad():
        lora = model(x, a, e, return_dict=False)
        off = model(x, a, e, attention_kwargs={"scale": 0.0}, return_dict=False)
    assert (lora[0] - ref[0]).abs().max() > 1e-3  # the adapter changes the output...
    torch.testing.assert_close(off[0], ref[0], rtol=0, atol=0)  # ...and scale 0 turns it off exactly
    model.save_lora_adapter(tmp_path / "lora")

    fresh = make_tiny_transformer()
    assert isinstance(fresh, MagiHumanTransformer3DModel)
    fresh.load_lora_adapter(
        str(tmp_path / "lora"), weight_name="pytorch_lora_weights.safetensors", prefix=None, adapter_name="default"
    )
    with torch.no_grad():
        again = fresh(x, a, e, return_dict=False)
    torch.testing.assert_close(again[0], lora[0], rtol=1e-5, atol=1e-5)


def test_pipeline_lora_weights_load_scale_and_unload(tmp_path):
    from peft.utils import get_peft_model_state_dict

    from diffusers_magihuman import MagiHumanPipeline
    from diffusers_magihuman.testing_utils import make_tiny_pipeline

    trained = make_tiny_transformer()
    trained.add_adapter(peft.LoraConfig(r=4, lora_alpha=4, init_lora_weights=False, target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    MagiHumanPipeline.save_lora_weights(tmp_path / "lora", transformer_lora_layers=get_peft_model_state_dict(trained))

    pipe = make_tiny_pipeline()
    kw = dict(prompt="A man waves.", height=32, width=32, num_frames=5, num_inference_steps=1, output_type="latent")

    def run():
        return pipe(**kw, generator=torch.Generator().manual_seed(0)).frames

    base = run()
    pipe.load_lora_weights(tmp_path / "lora", adapter_name="wave")
    assert pipe.get_active_adapters() == ["wave"]
    with_lora = run()
    assert (with_lora - base).abs().max() > 1e-3
    pipe.set_adapters(["wave"], [0.0])
    torch.testing.assert_close(run(), base, rtol=0, atol=0)
    pipe.unload_lora_weights()
    torch.testing.assert_close(run(), base, rtol=0, atol=0)
