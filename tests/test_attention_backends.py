"""The MagiHuman attention backends, selected by name through diffusers' dispatcher (CPU).

`import diffusers_magihuman` registers `magihuman_flash_4`, `magihuman_local_flex` and `magihuman_sdpa` with diffusers
(`register_magihuman_extensions`). Here: they are listed and selectable by name, every kernel is reached through
`dispatch_attention_fn`, each gives the outputs of the default path, the registration is idempotent, guarded, and
leaves diffusers' active backend alone. FlashAttention-4 runs only on Hopper/Blackwell GPUs, so a stand-in with its
call signature and layout replaces `flash_attn.cute` where its path is checked.

Tolerances: on CPU the processor attends on fp32 copies of q/k/v whatever the backend. `magihuman_sdpa` makes the very
SDPA calls of the default (`native`) path in the same order, so its outputs are bit-identical. The flex kernel and the
FA4 stand-in compute the same softmax with another fp32 summation order: 1e-5 covers fp32 rounding through the tiny
model's few layers (values of order 1, observed differences ~1e-7).
"""

import os
import subprocess
import sys
import types

import pytest
import torch
import torch.nn.functional as F
from diffusers.models.attention_dispatch import AttentionBackendName, _AttentionBackendRegistry, attention_backend

import diffusers_magihuman._diffusers_compat as compat
from diffusers_magihuman.models import attention_flash4, attention_magihuman
from diffusers_magihuman.models import transformer_magihuman as tm
from diffusers_magihuman.models.attention_magihuman import MAGIHUMAN_ATTENTION_BACKENDS, MAGIHUMAN_BACKEND_FUNCTIONS
from diffusers_magihuman.testing_utils import make_tiny_transformer


FP32_REORDER = dict(rtol=1e-5, atol=1e-5)  # see the module docstring


@pytest.fixture(autouse=True)
def restore_attention_backend():
    # `set_attention_backend` also sets diffusers' process-global active backend.
    saved = _AttentionBackendRegistry._active_backend
    yield
    _AttentionBackendRegistry.set_active_backend(saved)


def _inputs(batch=1, frames=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randn(batch, 48, frames, 4, 4, generator=g),
        torch.randn(batch, 17, 64, generator=g),
        torch.randn(batch, 9, 16, generator=g),
    )


def _local_model():
    # Layers 0 and 1 local with a +-1 frame window over 5 latent frames, so the window really restricts attention.
    return make_tiny_transformer(local_attn_layers=[0, 1], frame_receptive_field=1, coords_style="v1")


def _run(model, inputs, **kwargs):
    with torch.no_grad():
        return model(*inputs, return_dict=False, **kwargs)


@pytest.fixture
def spy_backends(monkeypatch):
    """Counts the calls diffusers' dispatcher makes to each of our registered backend functions."""
    calls = []
    for name, function in MAGIHUMAN_BACKEND_FUNCTIONS.items():
        member = AttentionBackendName(name)

        def spy(*args, _name=name, _function=function, **kwargs):
            calls.append((_name, type(kwargs.get("attn_mask")).__name__))
            return _function(*args, **kwargs)

        monkeypatch.setitem(_AttentionBackendRegistry._backends, member, spy)
    return calls


def _fake_fa4(calls):
    def sdpa(q, k, v, scale):  # (S, H, D) / (S, Hkv, D) -> (S, H, D)
        q, k, v = (x.transpose(0, 1).unsqueeze(0) for x in (q, k, v))
        out = F.scaled_dot_product_attention(q, k, v, scale=scale, enable_gqa=k.shape[1] != q.shape[1])
        return out[0].transpose(0, 1)

    def flash_attn_func(q, k, v, softmax_scale=None, causal=False):
        calls.append("dense")
        return torch.stack([sdpa(q[b], k[b], v[b], softmax_scale) for b in range(q.shape[0])]), None

    def flash_attn_varlen_func(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, softmax_scale, causal):
        calls.append("varlen")
        cq, ck = cu_seqlens_q.tolist(), cu_seqlens_k.tolist()
        pieces = [sdpa(q[a:b], k[c:d], v[c:d], softmax_scale) for a, b, c, d in zip(cq, cq[1:], ck, ck[1:])]
        return torch.cat(pieces), None

    return types.SimpleNamespace(flash_attn_func=flash_attn_func, flash_attn_varlen_func=flash_attn_varlen_func)


@pytest.fixture
def fake_fa4(monkeypatch):
    calls = []
    monkeypatch.setattr(attention_flash4, "_flash_attn_cute", lambda: _fake_fa4(calls))
    return calls


# ---------------------------------------------------------------------------------------------------------------------


def test_backend_names_are_registered_with_diffusers():
    names = {member.value for member in AttentionBackendName}
    assert set(MAGIHUMAN_ATTENTION_BACKENDS) == {"magihuman_flash_4", "magihuman_local_flex", "magihuman_sdpa"}
    for name, function in MAGIHUMAN_BACKEND_FUNCTIONS.items():
        member = AttentionBackendName(name)
        assert name in names and member == name and AttentionBackendName[name.upper()] is member
        assert _AttentionBackendRegistry._backends[member] is function
        assert _AttentionBackendRegistry._is_context_parallel_available(member)
        assert attention_magihuman.magihuman_backend_member(name) is member
    # diffusers' own members are untouched and still first, in their order.
    assert list(AttentionBackendName)[: len(AttentionBackendName) - 3][0] is AttentionBackendName.FLASH
    assert AttentionBackendName("native") is AttentionBackendName.NATIVE


def test_set_attention_backend_by_name_reaches_our_function_through_dispatch(spy_backends):
    model = _local_model()
    inputs = _inputs()
    reference = _run(model, inputs)
    model.set_attention_backend("magihuman_sdpa")
    assert {p._attention_backend.value for p in model.attn_processors.values()} == {"magihuman_sdpa"}
    out = _run(model, inputs)
    # One call per layer: the local layers get the local pattern as `attn_mask`, the others plain attention.
    assert spy_backends == [("magihuman_sdpa", "MagiHumanAttentionMask")] * 2
    # magihuman_sdpa makes the default path's SDPA calls in the same order: bit-identical.
    torch.testing.assert_close(out[0], reference[0], rtol=0, atol=0)
    torch.testing.assert_close(out[1], reference[1], rtol=0, atol=0)


def test_local_flex_backend_matches_the_default_path(spy_backends):
    model = _local_model()
    inputs = _inputs()
    reference = _run(model, inputs)
    with attention_backend("magihuman_local_flex"):
        out = _run(model, inputs)
    assert [name for name, _ in spy_backends] == ["magihuman_local_flex"] * 2
    torch.testing.assert_close(out[0], reference[0], **FP32_REORDER)
    torch.testing.assert_close(out[1], reference[1], **FP32_REORDER)


@pytest.mark.parametrize("backend", ["magihuman_sdpa", "magihuman_local_flex"])
def test_padded_batch_in_one_backend_call_equals_single_runs(backend, spy_backends):
    """Our backends take the padded batch in one call per layer and attend each sample on its real tokens."""
    model = make_tiny_transformer(local_attn_layers=[1], frame_receptive_field=1, coords_style="v1")
    x, a, e = _inputs(batch=2, seed=1)
    text_mask = torch.ones(2, 9, dtype=torch.bool)
    text_mask[1, 6:] = False
    default_both = _run(model, (x, a, e), encoder_attention_mask=text_mask)
    model.set_attention_backend(backend)
    both = _run(model, (x, a, e), encoder_attention_mask=text_mask)
    second = _run(model, (x[1:], a[1:], e[1:, :6]))
    assert len(spy_backends) == 2 * model.config.num_layers
    assert all(mask == "MagiHumanAttentionMask" for _, mask in spy_backends[: model.config.num_layers])
    torch.testing.assert_close(both[0][1:], second[0], **FP32_REORDER)
    torch.testing.assert_close(both[1][1:], second[1], **FP32_REORDER)
    torch.testing.assert_close(both[0], default_both[0], **FP32_REORDER)


def test_flash_4_by_name_and_automatic_both_go_through_dispatch(fake_fa4, spy_backends, monkeypatch):
    model = _local_model()
    inputs = _inputs()
    reference = _run(model, inputs)
    model.set_attention_backend("magihuman_flash_4")
    chosen = _run(model, inputs)
    assert [name for name, _ in spy_backends] == ["magihuman_flash_4"] * 2
    assert fake_fa4 == ["varlen", "varlen"]  # the local layers as one FA4 varlen call each
    torch.testing.assert_close(chosen[0], reference[0], **FP32_REORDER)

    # The automatic choice (nothing selected, FA4 usable on the device) also dispatches to the registered backend.
    spy_backends.clear()
    monkeypatch.setattr(tm, "flash_attention_4_supported", lambda device: True)
    model.set_attention_backend("native")
    for processor in model.attn_processors.values():
        processor._attention_backend = None
        processor.upcast = False
    auto = _run(model, inputs)
    assert [name for name, _ in spy_backends] == ["magihuman_flash_4"] * 2
    torch.testing.assert_close(auto[0], reference[0], **FP32_REORDER)


def test_flash_4_without_fa4_fails_clearly_at_selection_or_first_call(monkeypatch):
    monkeypatch.setattr(attention_flash4, "_flash_attn_cute", lambda: None)
    model = make_tiny_transformer(num_layers=2)
    with pytest.raises(RuntimeError, match="magihuman_flash_4.*FlashAttention-4"):
        model.set_attention_backend("magihuman_flash_4")
    with attention_backend("magihuman_flash_4"):
        with pytest.raises(RuntimeError, match="FlashAttention-4 is not installed"):
            _run(model, _inputs(frames=2))


def test_our_backends_refuse_tensor_masks_and_dropout():
    q = torch.randn(1, 6, 2, 8)
    with pytest.raises(ValueError, match="magihuman_sdpa.*attn_mask"):
        MAGIHUMAN_BACKEND_FUNCTIONS["magihuman_sdpa"](q, q, q, attn_mask=torch.ones(6, 6, dtype=torch.bool))
    with pytest.raises(ValueError, match="dropout"):
        MAGIHUMAN_BACKEND_FUNCTIONS["magihuman_sdpa"](q, q, q, dropout_p=0.1)
    # Plain attention with GQA (2 query heads per K/V head) equals torch's SDPA with enable_gqa.
    k = torch.randn(1, 6, 1, 8)
    out = MAGIHUMAN_BACKEND_FUNCTIONS["magihuman_sdpa"](q, k, k)
    expected = F.scaled_dot_product_attention(*(x.transpose(1, 2) for x in (q, k, k)), enable_gqa=True).transpose(1, 2)
    torch.testing.assert_close(out, expected, rtol=0, atol=0)


def test_registration_is_idempotent_and_keeps_the_active_backend():
    members_before = list(AttentionBackendName)
    functions_before = dict(_AttentionBackendRegistry._backends)
    saved = _AttentionBackendRegistry._active_backend
    _AttentionBackendRegistry.set_active_backend(AttentionBackendName._NATIVE_MATH)
    try:
        assert compat.register_magihuman_extensions()
        compat._extensions_registered = False  # force the registration to run again
        assert compat.register_magihuman_extensions()
        assert _AttentionBackendRegistry._active_backend is AttentionBackendName._NATIVE_MATH
    finally:
        _AttentionBackendRegistry.set_active_backend(saved)
    assert list(AttentionBackendName) == members_before
    assert len(AttentionBackendName._member_names_) == len(set(AttentionBackendName._member_names_))
    assert dict(_AttentionBackendRegistry._backends) == functions_before


@pytest.mark.slow  # a fresh interpreter imports diffusers (~10 s on 2 busy cores)
def test_importing_the_package_leaves_diffusers_active_backend_alone():
    code = (
        "from diffusers.models.attention_dispatch import _AttentionBackendRegistry as R\n"
        "before = R._active_backend\n"
        "import diffusers_magihuman\n"
        "assert R._active_backend is before, (before, R._active_backend)\n"
        "from diffusers.hooks._helpers import TransformerBlockRegistry\n"
        "from diffusers_magihuman.models.transformer_magihuman import MagiHumanTransformerBlock\n"
        "assert TransformerBlockRegistry.get(MagiHumanTransformerBlock).return_hidden_states_index == 0\n"
        "print(before.value)\n"
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == "native"


def test_a_diffusers_without_the_internals_only_warns(monkeypatch):
    def broken():
        raise AttributeError("no _AttentionBackendRegistry here")

    monkeypatch.setattr(compat, "_register_attention_backends", broken)
    monkeypatch.setattr(compat, "_extensions_registered", False)
    assert compat.register_magihuman_extensions() is False
    assert compat._extensions_registered is False  # tried again next time

    # Without registered names the processor still runs our kernels, calling the backend functions directly.
    monkeypatch.setattr(attention_magihuman, "_BACKEND_MEMBERS", {})
    model = _local_model()
    processor = tm.MagiHumanAttnProcessor(local_attn_kernel="flex")
    reference = _run(model, _inputs())
    model.set_attn_processor(processor)
    out = _run(model, _inputs())
    torch.testing.assert_close(out[0], reference[0], **FP32_REORDER)
