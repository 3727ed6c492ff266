"""What diffusers' shared pipeline tests check, on the tiny pipelines: save/load (variants, optional components, the
generic loader, folders saved before), dtype moves, determinism, batch vs single, callbacks, `num_videos_per_prompt`,
`encode_prompt` in isolation, `from_pipe`, components a call needs refused before any model runs, stock flow
schedulers and custom sigmas, LoRA routes, and no process-wide side effects beyond registering our names."""

from __future__ import annotations

import ast
import inspect
import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

import diffusers
from diffusers import FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler
from diffusers_magihuman import MagiHumanPipeline, MagiHumanScheduler, MagiHumanSRPipeline
from diffusers_magihuman.testing_utils import make_tiny_pipeline, make_tiny_transformer


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


def _return_names(function) -> list[str]:
    """The names in `function`'s return statements, read from its source as diffusers' shared pipeline test does."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(function)))
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Return) and node.value is not None:
            values = node.value.elts if isinstance(node.value, ast.Tuple) else [node.value]
            names += [v.id if isinstance(v, ast.Name) else ast.unparse(v) for v in values]
    return names


def test_encode_prompt_in_isolation_feeds_call(base_pipe):
    """diffusers' recipe: a pipeline holding only the text components encodes; one without them generates from the
    embeddings; the result equals the prompt path's exactly (the same float32 embeddings reach the same DiT)."""
    names = _return_names(MagiHumanPipeline.encode_prompt)
    assert names == ["prompt_embeds", "prompt_attention_mask", "negative_prompt_embeds", "negative_prompt_attention_mask"]
    assert set(names) <= set(inspect.signature(MagiHumanPipeline.__call__).parameters)
    assert set(names) <= set(inspect.signature(MagiHumanSRPipeline.__call__).parameters)

    text = ("text_encoder", "tokenizer")
    components = base_pipe.components
    text_only = MagiHumanPipeline(**{k: (v if k in text else None) for k, v in components.items()})
    embeds = dict(zip(names, text_only.encode_prompt(PROMPT)))
    assert embeds["prompt_embeds"].shape == (1, 640, 16) and embeds["prompt_embeds"].dtype == torch.float32
    assert embeds["prompt_attention_mask"].dtype == torch.bool and embeds["negative_prompt_embeds"].shape == (1, 640, 16)
    no_text = MagiHumanPipeline(**{k: (None if k in text else v) for k, v in components.items()})
    no_text.set_progress_bar_config(disable=True)
    b = no_text(**embeds, num_inference_steps=2, generator=_gen(), **KW)
    a = base_pipe(PROMPT, num_inference_steps=2, generator=_gen(), **KW)
    torch.testing.assert_close(b.frames, a.frames, rtol=0, atol=0)
    torch.testing.assert_close(b.audio, a.audio, rtol=0, atol=0)

    # Precomputed values pass through; `num_videos_per_prompt` repeats each row.
    again = text_only.encode_prompt(None, num_videos_per_prompt=2, **embeds)
    for name, value in zip(names, again):
        assert value.shape[0] == 2
        torch.testing.assert_close(value, embeds[name].expand_as(value), rtol=0, atol=0)
    assert text_only.encode_prompt(PROMPT, do_classifier_free_guidance=False)[2:] == (None, None)


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


# ---------------------------------------------------------------------------------------------- save / load
def _weights(folder, component):
    return sorted(f for f in os.listdir(os.path.join(folder, component)) if f.endswith(".safetensors"))


def test_model_index_names_the_package_and_both_loaders_read_it(base_pipe, tmp_path):
    base_pipe.save_pretrained(tmp_path / "p")
    index = json.loads((tmp_path / "p" / "model_index.json").read_text())
    for name, cls in (("transformer", "MagiHumanTransformer3DModel"), ("scheduler", "MagiHumanScheduler"),
                      ("turbo_vae", "AutoencoderTurboVAED")):  # fmt: skip
        assert index[name] == ["diffusers_magihuman", cls]
    a = base_pipe(PROMPT, num_inference_steps=2, generator=_gen(), **KW)
    for loader in (MagiHumanPipeline, diffusers.DiffusionPipeline):
        loaded = loader.from_pretrained(tmp_path / "p")
        assert type(loaded) is MagiHumanPipeline and dict(loaded.config)["transformer"][0] == "diffusers_magihuman"
        loaded.set_progress_bar_config(disable=True)
        b = loaded(PROMPT, num_inference_steps=2, generator=_gen(), **KW)
        torch.testing.assert_close(b.frames, a.frames, rtol=0, atol=0)  # same weights, same computation


@pytest.mark.parametrize("component", ["models", "scheduler"])
def test_folders_saved_with_module_paths_still_load(base_pipe, tmp_path, component):
    """Folders written before the package was registered with diffusers name the defining module. diffusers then looks
    the base class (`ModelMixin` / `SchedulerMixin`) up in that module to find the loading method."""
    import importlib

    base_pipe.save_pretrained(tmp_path / "old")
    path = tmp_path / "old" / "model_index.json"
    index = json.loads(path.read_text())
    if component == "models":
        index["transformer"][0] = "diffusers_magihuman.models.transformer_magihuman"
        index["turbo_vae"][0] = "diffusers_magihuman.models.autoencoder_turbo_vaed"
    else:
        index["scheduler"][0] = module = "diffusers_magihuman.schedulers.scheduling_magihuman"
        if not hasattr(importlib.import_module(module), "SchedulerMixin"):
            pytest.xfail(f"diffusers looks `SchedulerMixin` up in {module}, which does not import it")
    path.write_text(json.dumps(index))
    for loader in (MagiHumanPipeline, diffusers.DiffusionPipeline):
        loaded = loader.from_pretrained(tmp_path / "old")
        assert type(loaded.transformer).__name__ == "MagiHumanTransformer3DModel"
        assert type(loaded.turbo_vae).__name__ == "AutoencoderTurboVAED"
    loaded.save_pretrained(tmp_path / "new")  # re-saved: the short library name
    assert json.loads((tmp_path / "new" / "model_index.json").read_text())["transformer"][0] == "diffusers_magihuman"


def test_variant_save_and_load(base_pipe, tmp_path):
    base_pipe.save_pretrained(tmp_path / "v", variant="fp16")
    for component in ("transformer", "vae", "audio_vae", "turbo_vae", "text_encoder"):
        files = _weights(tmp_path / "v", component)
        assert files and all(".fp16." in f for f in files), (component, files)
    a = base_pipe(PROMPT, num_inference_steps=1, generator=_gen(), **KW)
    loaded = MagiHumanPipeline.from_pretrained(tmp_path / "v", variant="fp16")
    loaded.set_progress_bar_config(disable=True)
    torch.testing.assert_close(loaded(PROMPT, num_inference_steps=1, generator=_gen(), **KW).frames, a.frames, rtol=0, atol=0)
    base_pipe.save_pretrained(tmp_path / "plain")
    with pytest.raises(ValueError, match="variant=fp16"):
        MagiHumanPipeline.from_pretrained(tmp_path / "plain", variant="fp16")


def test_optional_components_save_and_load_as_none(tmp_path):
    # Only the Turbo-VAE: the default call (prompt in, decoded video and audio out) needs every other component.
    assert MagiHumanPipeline._optional_components == MagiHumanSRPipeline._optional_components == ["turbo_vae"]
    pipe = make_tiny_pipeline(seed=0, distilled=False)
    for name in MagiHumanPipeline._optional_components:
        setattr(pipe, name, None)
    kw = dict(KW, output_type="pt")  # the default call decodes: it must work without the optional components
    a = pipe(PROMPT, num_inference_steps=1, generator=_gen(), **kw)
    pipe.save_pretrained(tmp_path / "p")
    index = json.loads((tmp_path / "p" / "model_index.json").read_text())
    loaded = MagiHumanPipeline.from_pretrained(tmp_path / "p")
    loaded.set_progress_bar_config(disable=True)
    for name in MagiHumanPipeline._optional_components:
        assert index[name] == [None, None] and getattr(loaded, name) is None
    b = loaded(PROMPT, num_inference_steps=1, generator=_gen(), **kw)
    torch.testing.assert_close(b.frames, a.frames, rtol=0, atol=0)
    torch.testing.assert_close(b.audio, a.audio, rtol=0, atol=0)


# ---------------------------------------------------------------------------------------------- dtype / device
def test_to_dtype_and_device_move_every_model_component():
    pipe = make_tiny_pipeline(seed=0)
    modules = {n: m for n, m in pipe.components.items() if isinstance(m, torch.nn.Module)}
    assert set(modules) == {"transformer", "vae", "audio_vae", "text_encoder", "turbo_vae"}
    pipe.to(torch.bfloat16)  # as for any diffusers pipeline: every parameter, the DiT's fp32 modules included
    assert {p.dtype for m in modules.values() for p in m.parameters()} == {torch.bfloat16}
    assert pipe.dtype == torch.bfloat16
    pipe.to("cpu", torch.float32)
    assert {p.dtype for m in modules.values() for p in m.parameters()} == {torch.float32}
    assert pipe.device.type == "cpu" and {m.device.type for m in modules.values()} == {"cpu"}


# ---------------------------------------------------------------------------------------------- from_pipe
def test_from_pipe_round_trip_shares_components_and_casts_like_diffusers():
    pipe = make_tiny_pipeline(seed=0, distilled=False)
    sr_dit = make_tiny_transformer(seed=1, coords_style="v1")
    sr = MagiHumanSRPipeline.from_pipe(pipe, transformer=sr_dit)
    for name in ("vae", "audio_vae", "text_encoder", "tokenizer", "turbo_vae", "scheduler"):
        assert getattr(sr, name) is getattr(pipe, name)
    assert sr.transformer is sr_dit and dict(sr.config)["transformer"] == ("diffusers_magihuman", "MagiHumanTransformer3DModel")
    back = MagiHumanPipeline.from_pipe(sr, transformer=pipe.transformer)
    assert all(back.components[n] is c for n, c in pipe.components.items())
    a = pipe(PROMPT, num_inference_steps=1, generator=_gen(), **KW)
    torch.testing.assert_close(back(PROMPT, num_inference_steps=1, generator=_gen(), **KW).frames, a.frames, rtol=0, atol=0)

    # dtypes: `from_pipe` ends with `.to(dtype)`, float32 unless given, as for every diffusers pipeline ...
    pipe.to(torch.bfloat16)
    kept = MagiHumanSRPipeline.from_pipe(pipe, transformer=sr_dit, dtype=torch.bfloat16)
    assert kept.text_encoder.dtype == torch.bfloat16 and kept.transformer.dtype == torch.bfloat16
    MagiHumanSRPipeline.from_pipe(pipe, transformer=sr_dit)
    assert pipe.text_encoder.dtype == torch.float32  # the shared modules were up-cast, in the source pipeline too
    # ... while building from the components shares them without any cast.
    pipe.to(torch.bfloat16)
    shared = MagiHumanSRPipeline(**{**pipe.components, "transformer": sr_dit})
    assert shared.text_encoder.dtype == torch.bfloat16 and shared.transformer.dtype == torch.float32
    with pytest.raises(ValueError, match="super-resolution transformer"):
        MagiHumanSRPipeline.from_pipe(pipe)  # the base DiT is not an SR model


# ---------------------------------------------------------------------------------------------- batches and callbacks
def test_num_videos_per_prompt_with_a_generator_per_video(base_pipe):
    """Video k of a batch is drawn from generator k, so it equals the single run with that generator."""
    out = base_pipe(PROMPT, num_inference_steps=1, num_videos_per_prompt=2, generator=[_gen(5), _gen(6)], **KW)
    assert out.frames.shape[0] == 2 and out.audio.shape[0] == 2
    assert (out.frames[0] - out.frames[1]).abs().max() > 1e-3  # different noise, different videos
    for k, seed in enumerate((5, 6)):
        single = base_pipe(PROMPT, num_inference_steps=1, generator=_gen(seed), **KW)
        # Batched matmuls may sum in another order (fp32 rounding, ~1e-6 on these values).
        torch.testing.assert_close(out.frames[k : k + 1], single.frames, rtol=1e-4, atol=1e-4)


def test_callback_gets_every_tensor_input_and_sees_guidance(base_pipe):
    """diffusers' callback checks: every name in `_callback_tensor_inputs` can be requested, returned tensors replace
    the loop's, and a change to `pipe._guidance_scale` is visible through the `guidance_scale` property."""
    seen = []

    def cb(pipe, i, t, kwargs):
        seen.append(sorted(kwargs))
        pipe._guidance_scale += 1.0
        if i == pipe.num_timesteps - 1:
            kwargs["latents"] = torch.zeros_like(kwargs["latents"])
        return kwargs

    out = base_pipe(
        PROMPT, num_inference_steps=2, guidance_scale=3.0, callback_on_step_end=cb,
        callback_on_step_end_tensor_inputs=base_pipe._callback_tensor_inputs, **KW,
    )  # fmt: skip
    assert seen == [sorted(base_pipe._callback_tensor_inputs)] * 2
    assert base_pipe.guidance_scale == 3.0 + 2 and base_pipe.num_timesteps == 2
    assert out.frames.abs().max() == 0
    with pytest.raises(ValueError, match="callback_on_step_end_tensor_inputs"):
        base_pipe(PROMPT, num_inference_steps=1, callback_on_step_end_tensor_inputs=["not_a_tensor"], **KW)


# ---------------------------------------------------------------------------------------------- missing components
class _CountCalls:
    def __init__(self, module):
        self.calls = 0
        self.handle = module.register_forward_pre_hook(self)

    def __call__(self, module, args):
        self.calls += 1


@pytest.mark.parametrize(
    "missing, call, match",
    [
        ("text_encoder", dict(), "text_encoder"),
        ("tokenizer", dict(), "tokenizer"),
        ("vae", dict(image="IMAGE"), "vae"),
        ("audio_vae", dict(output_type="np"), "audio_vae"),
        ("turbo_vae", dict(output_type="np", decode_with="turbo"), "turbo_vae"),
        (("vae", "turbo_vae"), dict(output_type="np"), "video decoder"),
    ],
)
def test_a_call_needing_a_missing_component_is_refused_before_the_dit_runs(base_pipe, missing, call, match):
    import numpy as np

    missing = (missing,) if isinstance(missing, str) else missing
    pipe = MagiHumanPipeline(**{**base_pipe.components, **{name: None for name in missing}})
    if call.get("image") == "IMAGE":
        call = dict(call, image=np.zeros((32, 32, 3), dtype=np.uint8))
    counter = _CountCalls(pipe.transformer)
    try:
        with pytest.raises(ValueError, match=match):
            pipe(PROMPT, num_inference_steps=1, **{**KW, **call})
        assert counter.calls == 0
    finally:
        counter.handle.remove()


def test_prompt_embeds_without_text_encoder_need_the_negative_embeds_under_guidance(base_pipe):
    embeds = base_pipe.encode_prompt(PROMPT, do_classifier_free_guidance=False)
    pipe = MagiHumanPipeline(**{**base_pipe.components, "text_encoder": None, "tokenizer": None})
    with pytest.raises(ValueError, match="negative prompt"):
        pipe(prompt_embeds=embeds[0], prompt_attention_mask=embeds[1], num_inference_steps=1, **KW)
    out = pipe(prompt_embeds=embeds[0], prompt_attention_mask=embeds[1], guidance_scale=1.0, num_inference_steps=1, **KW)
    assert out.frames.shape == (1, 48, 2, 2, 2)


def test_sr_refuses_a_missing_vae_before_the_dit_runs(base_pipe):
    import numpy as np

    sr = MagiHumanSRPipeline(**{**base_pipe.components, "vae": None, "transformer": make_tiny_transformer(seed=1, coords_style="v1")})
    counter = _CountCalls(sr.transformer)
    video = np.zeros((1, 5, 32, 32, 3), dtype=np.float32)
    with pytest.raises(ValueError, match="Re-encoding the decoded base frames"):
        sr(PROMPT, video=video, audio_latents=torch.zeros(1, 5, 64), height=64, width=64, output_type="latent")
    assert counter.calls == 0


# ---------------------------------------------------------------------------------------------- process-wide state
_STATE_SCRIPT = """
import logging, os, types, warnings
import torch, torch._dynamo, diffusers, diffusers.pipelines, transformers
from diffusers.pipelines import pipeline_loading_utils

def snapshot():
    return dict(
        dynamo={k: repr(v) for k, v in torch._dynamo.config.get_config_copy().items()},
        torch=(torch.get_default_dtype(), torch.get_float32_matmul_precision(), torch.are_deterministic_algorithms_enabled(),
               torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark,
               torch.get_num_threads(), torch.is_grad_enabled()),
        env=dict(os.environ),
        warnings=[repr(f) for f in warnings.filters],
        logging=(diffusers.utils.logging.get_verbosity(), transformers.utils.logging.get_verbosity(), logging.getLogger().level),
        diffusers=dict(vars(diffusers)),
        pipelines=dict(vars(diffusers.pipelines)),
        loadable={k: repr(v) for k, v in pipeline_loading_utils.LOADABLE_CLASSES.items()},
    )

before = snapshot()
import diffusers_magihuman
from diffusers_magihuman.testing_utils import make_tiny_pipeline
make_tiny_pipeline()("A man waves.", height=32, width=32, num_frames=5, num_inference_steps=1, output_type="latent")
after = snapshot()
for key in ("dynamo", "torch", "env", "warnings", "logging"):
    assert after[key] == before[key], key
ours = set(diffusers_magihuman.__all__) | {"diffusers_magihuman"}
for key in ("diffusers", "pipelines"):
    for name, value in after[key].items():
        if name in before[key]:
            assert value is before[key][name], (key, name)  # nothing of diffusers' replaced
        elif name not in ours:  # diffusers' own lazily imported names and submodules
            origin = value.__name__ if isinstance(value, types.ModuleType) else getattr(value, "__module__", "")
            assert origin.startswith("diffusers"), (key, name, origin)
        else:
            assert value is getattr(diffusers_magihuman, name, diffusers_magihuman), (key, name)
assert {k: v for k, v in after["loadable"].items() if k in before["loadable"]} == before["loadable"]
assert set(after["loadable"]) - set(before["loadable"]) == {"diffusers_magihuman"}
print("OK")
"""


@pytest.mark.slow
def test_import_and_call_change_no_process_wide_state_beyond_our_names():
    """In a fresh process: importing the package and running a pipeline leaves dynamo's config, torch's global flags,
    the environment, warning filters and log levels as they were; diffusers gains only our names (its own entries
    unchanged) and one `LOADABLE_CLASSES` entry."""
    result = subprocess.run([sys.executable, "-c", _STATE_SCRIPT], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and result.stdout.strip().endswith("OK"), result.stderr[-3000:]


def test_required_components_left_out_of_a_folder_are_passed_as_none(base_pipe, tmp_path):
    """A DiT-only folder (what the converter writes without `--vae`, ...) loads when the missing components are passed
    explicitly, as `None` or as loaded models; calls that need a `None` one are refused before the DiT runs."""
    dit_only = MagiHumanPipeline(
        transformer=base_pipe.transformer, scheduler=base_pipe.scheduler, vae=None, audio_vae=None, text_encoder=None,
        tokenizer=None,
    )  # fmt: skip
    dit_only.save_pretrained(tmp_path / "dit")
    with pytest.raises(ValueError, match="expected"):
        MagiHumanPipeline.from_pretrained(tmp_path / "dit")  # diffusers names the expected components
    none = dict(vae=None, audio_vae=None, text_encoder=None, tokenizer=None)
    loaded = MagiHumanPipeline.from_pretrained(tmp_path / "dit", **none)
    with pytest.raises(ValueError, match="text_encoder"):
        loaded(PROMPT, num_inference_steps=1, **KW)
    full = MagiHumanPipeline.from_pretrained(tmp_path / "dit", **{n: getattr(base_pipe, n) for n in none})
    full.set_progress_bar_config(disable=True)
    a = base_pipe(PROMPT, num_inference_steps=1, generator=_gen(), **KW)
    torch.testing.assert_close(full(PROMPT, num_inference_steps=1, generator=_gen(), **KW).frames, a.frames, rtol=0, atol=0)
