"""diffusers pipeline conventions on the tiny pipeline: stock flow schedulers, custom sigmas, names registered with
diffusers, no process-wide side effects, encode_prompt in isolation, determinism, batch vs single, callbacks."""

from __future__ import annotations

import pytest
import torch

import diffusers
from diffusers import FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler
from diffusers_magihuman import MagiHumanPipeline, MagiHumanScheduler, MagiHumanSRPipeline
from diffusers_magihuman.testing_utils import make_tiny_pipeline


PROMPT = 'A man waves. Dialogue: <Man, English>: "Hi!"'
KW = dict(height=32, width=32, num_frames=5, output_type="latent")


@pytest.fixture(scope="module")
def base_pipe():
    return make_tiny_pipeline(seed=0, distilled=False)


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("stock", ["unipc_flow", "flow_match_euler"])
def test_stock_flow_schedulers_drive_the_pipeline(base_pipe, stock):
    pipe = MagiHumanPipeline(**{**base_pipe.components})
    pipe.set_progress_bar_config(disable=True)
    if stock == "unipc_flow":
        pipe.scheduler = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=5.0)
    else:
        pipe.scheduler = FlowMatchEulerDiscreteScheduler(shift=5.0)
    out = pipe(PROMPT, num_inference_steps=3, generator=_gen(), **KW)
    assert out.frames.shape == (1, 48, 2, 2, 2) and torch.isfinite(out.frames).all()
    with pytest.raises(ValueError, match="renoise_driving_audio"):
        pipe(PROMPT, num_inference_steps=3, renoise_driving_audio=True, **KW)  # the DMD quirk needs our scheduler


def test_custom_sigmas_match_the_equivalent_step_count(base_pipe):
    """MagiHumanScheduler takes unshifted sigmas: linspace(0.999, 0, N+1)[:-1] is its own N-step grid."""
    import numpy as np

    a = base_pipe(PROMPT, num_inference_steps=3, generator=_gen(), **KW)
    sigmas = np.linspace(np.float32(0.999), 0, 4)[:-1]
    b = base_pipe(PROMPT, sigmas=sigmas, generator=_gen(), **KW)
    torch.testing.assert_close(a.frames, b.frames, rtol=0, atol=0)


def test_names_are_registered_and_no_global_state_changes():
    assert diffusers.pipelines.MagiHumanPipeline is MagiHumanPipeline
    assert diffusers.pipelines.MagiHumanSRPipeline is MagiHumanSRPipeline
    assert diffusers.MagiHumanScheduler is MagiHumanScheduler
    limit = torch._dynamo.config.recompile_limit
    pipe = make_tiny_pipeline(seed=0)
    pipe(PROMPT, num_inference_steps=1, **KW)
    assert torch._dynamo.config.recompile_limit == limit


def test_encode_prompt_in_isolation_feeds_call(base_pipe):
    embeds, mask, neg, neg_mask = base_pipe.encode_prompt(PROMPT, do_classifier_free_guidance=True, device=torch.device("cpu"))
    a = base_pipe(PROMPT, num_inference_steps=2, generator=_gen(), **KW)
    b = base_pipe(
        prompt_embeds=embeds, prompt_attention_mask=mask, negative_prompt_embeds=neg,
        negative_prompt_attention_mask=neg_mask, num_inference_steps=2, generator=_gen(), **KW,
    )  # fmt: skip
    torch.testing.assert_close(a.frames, b.frames, rtol=0, atol=0)


def test_determinism_batch_and_callbacks(base_pipe):
    a = base_pipe(PROMPT, num_inference_steps=2, generator=_gen(3), **KW)
    b = base_pipe(PROMPT, num_inference_steps=2, generator=_gen(3), **KW)
    torch.testing.assert_close(a.frames, b.frames, rtol=0, atol=0)
    batched = base_pipe([PROMPT, PROMPT], num_inference_steps=2, generator=[_gen(3), _gen(4)], **KW)
    # Sample 0 of a batch equals the single run; batched matmuls may sum in another order (fp32, ~1e-6).
    torch.testing.assert_close(batched.frames[:1], a.frames, rtol=1e-4, atol=1e-4)
    n = base_pipe(PROMPT, num_inference_steps=1, num_videos_per_prompt=3, **KW)
    assert n.frames.shape[0] == 3 and n.audio.shape[0] == 3
    seen = []

    def cb(pipe, i, t, kw):
        seen.append((i, sorted(kw)))
        return {"latents": kw["latents"] * 0}

    out = base_pipe(
        PROMPT, num_inference_steps=2, callback_on_step_end=cb,
        callback_on_step_end_tensor_inputs=["latents", "audio_latents"], **KW,
    )  # fmt: skip
    assert seen == [(0, ["audio_latents", "latents"]), (1, ["audio_latents", "latents"])]
    assert out.frames.abs().max() == 0  # the callback's latents replaced the loop's


def test_lora_saved_by_either_route_loads_through_the_other(tmp_path):
    peft = pytest.importorskip("peft")
    from peft.utils import get_peft_model_state_dict

    pipe = make_tiny_pipeline(seed=0)
    ref = pipe(PROMPT, num_inference_steps=1, generator=_gen(), **KW).frames
    trained = make_tiny_pipeline(seed=0).transformer
    trained.add_adapter(peft.LoraConfig(r=4, lora_alpha=4, init_lora_weights=False, target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    trained.save_lora_adapter(tmp_path / "model_route")
    MagiHumanPipeline.save_lora_weights(tmp_path / "pipe_route", transformer_lora_layers=get_peft_model_state_dict(trained))

    pipe.load_lora_weights(tmp_path / "model_route", adapter_name="a")  # model-level file -> pipeline loader
    with_a = pipe(PROMPT, num_inference_steps=1, generator=_gen(), **KW).frames
    assert (with_a - ref).abs().max() > 1e-4  # the adapter is active
    pipe.set_adapters(["a"], [1.0])
    pipe.unload_lora_weights()

    fresh = make_tiny_pipeline(seed=0)
    fresh.transformer.load_lora_adapter(
        tmp_path / "pipe_route", weight_name="pytorch_lora_weights.safetensors", prefix="transformer", adapter_name="b"
    )
    with_b = fresh(PROMPT, num_inference_steps=1, generator=_gen(), **KW).frames
    torch.testing.assert_close(with_b, with_a, rtol=0, atol=1e-6)  # same adapter, same numbers either way
