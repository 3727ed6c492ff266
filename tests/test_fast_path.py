"""The default fast path (regional compile on CUDA) and the partly resident group offload, on CPU.

Speed is measured by `benchmarks/`; these tests check the behaviour that makes it safe to turn on by default: which
layers get compiled or offloaded, that outputs do not change, and that a compiled pipeline compiles each layer kind
once and never again across steps or calls.
"""

import pytest
import torch

from diffusers_magihuman.testing_utils import make_tiny_pipeline, make_tiny_transformer


PROMPT = "A woman says hello."


def _inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(1, 48, 2, 4, 4, generator=g), torch.randn(1, 5, 64, generator=g), torch.randn(1, 7, 16, generator=g)


def _is_compiled(block):
    return getattr(block, "_compiled_call_impl", None) is not None


def _has_group_hook(block):
    from diffusers_magihuman.models.transformer_magihuman import _has_group_offload_hook

    return _has_group_offload_hook(block)


@pytest.fixture(autouse=True)
def _reset_dynamo():
    yield
    torch._dynamo.reset()


def test_partly_resident_group_offload_keeps_outputs_and_compiles_only_resident_layers():
    model = make_tiny_transformer(seed=1, num_layers=5)
    x, a, e = _inputs()
    with torch.no_grad():
        ref = model(x, a, e, return_dict=False)
    model.enable_group_offload(
        onload_device=torch.device("cpu"), offload_type="block_level", num_blocks_per_group=1, num_resident_blocks=2
    )
    hooked = [_has_group_hook(block) for block in model.blocks]
    # 3 of 5 offloaded, spread out; the first layer stays resident.
    assert hooked == [False, True, True, False, True] or (sum(hooked) == 3 and not hooked[0])
    with torch.no_grad():
        out = model(x, a, e, return_dict=False)
    torch.testing.assert_close(out[0], ref[0], rtol=0, atol=0)

    model.compile_repeated_blocks(fullgraph=True, backend="eager")
    assert [_is_compiled(block) for block in model.blocks] == [not h for h in hooked]
    with torch.no_grad():
        out = model(x, a, e, return_dict=False)
    torch.testing.assert_close(out[0], ref[0], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(out[1], ref[1], rtol=1e-6, atol=1e-6)


def test_partly_resident_group_offload_rejects_bad_arguments():
    model = make_tiny_transformer(num_layers=3)
    with pytest.raises(ValueError, match="between 0 and 2"):
        model.enable_group_offload(onload_device=torch.device("cpu"), num_blocks_per_group=1, num_resident_blocks=3)
    with pytest.raises(ValueError, match="block_level"):
        model.enable_group_offload(onload_device=torch.device("cpu"), offload_type="leaf_level", num_resident_blocks=1)
    assert not any(_has_group_hook(block) for block in model.blocks)  # nothing half-applied


def test_auto_compile_only_on_cuda_and_only_once(monkeypatch):
    from diffusers_magihuman.pipelines import pipeline_magihuman_base

    monkeypatch.setattr(pipeline_magihuman_base, "_has_triton", lambda: False)
    no_triton = make_tiny_pipeline(seed=0)
    no_triton._maybe_auto_compile(torch.device("cuda"))  # inductor needs Triton on CUDA: stay eager, warn
    assert not any(_is_compiled(b) for b in no_triton.transformer.blocks)

    monkeypatch.setattr(pipeline_magihuman_base, "_has_triton", lambda: True)
    limit = torch._dynamo.config.cache_size_limit
    pipe = make_tiny_pipeline(seed=0)
    pipe._maybe_auto_compile(torch.device("cpu"))
    assert not any(_is_compiled(b) for b in pipe.transformer.blocks)
    # Default policy: the first CUDA call of a process stays eager, every forward of it (a one-shot run pays no
    # compile) ...
    pipe._begin_call()
    for _ in range(8):
        pipe._maybe_auto_compile(torch.device("cuda"))
    assert not any(_is_compiled(b) for b in pipe.transformer.blocks)
    # ... the second call compiles at its first forward (compilation is lazy: nothing runs on a GPU here).
    pipe._begin_call()
    pipe._maybe_auto_compile(torch.device("cuda"))
    assert all(_is_compiled(b) for b in pipe.transformer.blocks)
    assert torch._dynamo.config.cache_size_limit == limit  # raised only around the DiT call, never process-wide

    first = make_tiny_pipeline(seed=0)
    first.enable_auto_compile("always")
    first._maybe_auto_compile(torch.device("cuda"))
    assert all(_is_compiled(b) for b in first.transformer.blocks)
    with pytest.raises(ValueError, match="always"):
        first.enable_auto_compile("sometimes")
    pipe.transformer._magihuman_compile_checked = False  # asked again: already compiled, so nothing changes
    compiled = [b._compiled_call_impl for b in pipe.transformer.blocks]
    pipe._maybe_auto_compile(torch.device("cuda"))
    assert [b._compiled_call_impl for b in pipe.transformer.blocks] == compiled

    # ... except for long sequences (1080p SR), where eager is slower and needs more memory: compiled at once.
    long = make_tiny_pipeline(seed=0)
    long._maybe_auto_compile(torch.device("cuda"), num_video_tokens=long._EAGER_FIRST_CALL_MAX_TOKENS - 1)
    assert not any(_is_compiled(b) for b in long.transformer.blocks)
    long2 = make_tiny_pipeline(seed=0)
    long2._maybe_auto_compile(torch.device("cuda"), num_video_tokens=long2._EAGER_FIRST_CALL_MAX_TOKENS)
    assert all(_is_compiled(b) for b in long2.transformer.blocks)

    off = make_tiny_pipeline(seed=0)
    off.enable_auto_compile(False)
    off._maybe_auto_compile(torch.device("cuda"))
    assert not any(_is_compiled(b) for b in off.transformer.blocks)

    monkeypatch.setenv("MAGIHUMAN_AUTO_COMPILE", "0")
    env_off = make_tiny_pipeline(seed=0)
    env_off._maybe_auto_compile(torch.device("cuda"))
    assert not any(_is_compiled(b) for b in env_off.transformer.blocks)


def test_compiled_pipeline_compiles_each_layer_kind_once_and_never_again():
    """Base model with CFG: the cond and uncond passes have different text lengths. Compiled with a counting backend
    (fullgraph, so a graph break would raise), a second call with more steps adds no graph, and the output equals the
    eager one."""
    graphs = []

    def counting_backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    pipe = make_tiny_pipeline(seed=0, distilled=False, with_turbo_vae=False)
    kw = dict(prompt=PROMPT, height=32, width=32, num_frames=5, output_type="latent")
    ref = pipe(**kw, num_inference_steps=2, generator=torch.Generator().manual_seed(0)).frames
    pipe.enable_auto_compile("always", backend=counting_backend, fullgraph=True)
    pipe._maybe_auto_compile(torch.device("cuda"))
    out = pipe(**kw, num_inference_steps=2, generator=torch.Generator().manual_seed(0)).frames
    first = len(graphs)
    kinds = {(b.attn.is_local, b.attn.num_experts) for b in pipe.transformer.blocks}
    assert 0 < first <= 2 * len(kinds)  # at most one static + one dynamic graph per layer kind
    pipe(**kw, num_inference_steps=3, generator=torch.Generator().manual_seed(1))
    assert len(graphs) == first
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


def test_pipeline_group_offload_with_resident_layers_matches_and_validates_first():
    kw = dict(prompt=PROMPT, height=32, width=32, num_frames=5, num_inference_steps=2, output_type="latent")
    ref = make_tiny_pipeline(seed=0)(**kw, generator=torch.Generator().manual_seed(0)).frames
    pipe = make_tiny_pipeline(seed=0)
    with pytest.raises(ValueError, match="between 0 and"):
        pipe.enable_group_offload(onload_device=torch.device("cpu"), num_blocks_per_group=1, num_resident_blocks=99)
    assert not any(_has_group_hook(m) for m in pipe.components.values() if isinstance(m, torch.nn.Module))
    with pytest.raises(ValueError, match="do not exclude"):
        pipe.enable_group_offload(
            onload_device=torch.device("cpu"), num_resident_blocks=1, exclude_modules=["transformer"]
        )
    pipe.enable_group_offload(
        onload_device=torch.device("cpu"),
        offload_type="block_level",
        num_blocks_per_group=1,
        exclude_modules=["audio_vae"],
        num_resident_blocks=1,
    )
    assert _has_group_hook(pipe.text_encoder) and _has_group_hook(pipe.vae) and not _has_group_hook(pipe.audio_vae)
    assert not _has_group_hook(pipe.transformer.blocks[0]) and _has_group_hook(pipe.transformer.blocks[1])
    out = pipe(**kw, generator=torch.Generator().manual_seed(0)).frames
    torch.testing.assert_close(out, ref, rtol=0, atol=0)


def test_auto_compile_skips_sequential_offload(monkeypatch):
    """accelerate's sequential offload hooks the leaf modules inside the blocks; compiling would trace its hooks."""
    from diffusers_magihuman.pipelines import pipeline_magihuman_base

    monkeypatch.setattr(pipeline_magihuman_base, "_has_triton", lambda: True)
    pipe = make_tiny_pipeline(seed=0)
    leaf = next(m for m in pipe.transformer.blocks[0].modules() if isinstance(m, torch.nn.Linear))
    leaf._hf_hook = object()  # what `enable_sequential_cpu_offload` leaves on every leaf
    pipe._maybe_auto_compile(torch.device("cuda"))
    assert not any(_is_compiled(b) for b in pipe.transformer.blocks)


def test_auto_compile_steps_aside_for_a_step_cache(monkeypatch):
    """The step caches' hooks cannot be traced by a `fullgraph=True` compile. A cache enabled after the automatic
    compile ran undoes that compile (a fullgraph-compiled block with FirstBlockCache raises `Unsupported` otherwise),
    no compile happens while it is on, and compiling resumes after `disable_cache()`."""
    from diffusers.hooks import FirstBlockCacheConfig

    from diffusers_magihuman.pipelines import pipeline_magihuman_base

    monkeypatch.setattr(pipeline_magihuman_base, "_has_triton", lambda: True)
    kw = dict(prompt=PROMPT, height=32, width=32, num_frames=5, num_inference_steps=2, output_type="latent")
    pipe = make_tiny_pipeline(seed=0)
    pipe.enable_auto_compile("always", backend="eager", fullgraph=True)
    pipe._maybe_auto_compile(torch.device("cuda"))
    assert all(_is_compiled(b) for b in pipe.transformer.blocks)

    pipe.transformer.enable_cache(FirstBlockCacheConfig(threshold=0.05))
    out = pipe(**kw, generator=torch.Generator().manual_seed(0)).frames  # raised before the fix
    assert torch.isfinite(out).all()
    assert not any(_is_compiled(b) for b in pipe.transformer.blocks)
    pipe._maybe_auto_compile(torch.device("cuda"))  # a CUDA call while the cache is on: still eager
    assert not any(_is_compiled(b) for b in pipe.transformer.blocks)

    pipe.transformer.disable_cache()
    pipe._maybe_auto_compile(torch.device("cuda"))
    assert all(_is_compiled(b) for b in pipe.transformer.blocks)

    # Blocks the user compiled are theirs: left compiled.
    user = make_tiny_pipeline(seed=0)
    user.transformer.compile_repeated_blocks(fullgraph=False, backend="eager")
    user.transformer.enable_cache(FirstBlockCacheConfig(threshold=0.05))
    user._maybe_auto_compile(torch.device("cuda"))
    assert all(_is_compiled(b) for b in user.transformer.blocks)
