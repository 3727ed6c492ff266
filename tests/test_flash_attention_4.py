"""FlashAttention-4 path of the attention processor, on CPU, with a stand-in for `flash_attn.cute`.

FA4 runs only on Hopper/Blackwell GPUs (its speed is measured by `benchmarks/`), so here a reference module with FA4's
call signature and layout (`(B, S, H, D)` / packed `(T, H, D)`, GQA by fewer K/V heads, `(out, lse)` tuples) stands in
for it. That checks what is ours: the custom-op wrappers, which calls the processor makes (dense and varlen), the
varlen plan of the 1080p local layers, the automatic choice, and that `torch.compile` traces the ops without a graph
break. Stand-in and processor both attend in fp32 on CPU, so outputs agree to fp32 rounding (1e-5).
"""

import types

import pytest
import torch
import torch.nn.functional as F

from diffusers_magihuman.models import attention_flash4
from diffusers_magihuman.models import transformer_magihuman as tm
from diffusers_magihuman.models.transformer_magihuman import MagiHumanAttnProcessor
from diffusers_magihuman.testing_utils import make_tiny_transformer


def _sdpa(q, k, v, scale):  # (S, H, D) / (S, Hkv, D) -> (S, H, D)
    q, k, v = (x.transpose(0, 1).unsqueeze(0) for x in (q, k, v))
    out = F.scaled_dot_product_attention(q, k, v, scale=scale, enable_gqa=k.shape[1] != q.shape[1])
    return out[0].transpose(0, 1)


def make_fake_fa4(calls):
    def flash_attn_func(q, k, v, softmax_scale=None, causal=False):
        assert not causal and q.ndim == 4
        calls.append("dense")
        out = torch.stack([_sdpa(q[b], k[b], v[b], softmax_scale) for b in range(q.shape[0])])
        return out, None  # FA4 returns (out, lse)

    def flash_attn_varlen_func(
        q, k, v, cu_seqlens_q=None, cu_seqlens_k=None, max_seqlen_q=None, max_seqlen_k=None, softmax_scale=None,
        causal=False,
    ):
        assert not causal and q.ndim == 3 and cu_seqlens_q.dtype == torch.int32
        calls.append("varlen")
        cq, ck = cu_seqlens_q.tolist(), cu_seqlens_k.tolist()
        assert cq[-1] == q.shape[0] and ck[-1] == k.shape[0] and len(cq) == len(ck)
        assert max_seqlen_q == max(b - a for a, b in zip(cq, cq[1:]))
        out = torch.cat(
            [_sdpa(q[a:b], k[c:d], v[c:d], softmax_scale) for a, b, c, d in zip(cq, cq[1:], ck, ck[1:])]
        )
        return out, None

    return types.SimpleNamespace(flash_attn_func=flash_attn_func, flash_attn_varlen_func=flash_attn_varlen_func)


@pytest.fixture
def fake_fa4(monkeypatch):
    calls = []
    monkeypatch.setattr(attention_flash4, "_flash_attn_cute", lambda: make_fake_fa4(calls))
    return calls


def _inputs(batch=1, frames=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randn(batch, 48, frames, 4, 4, generator=g),
        torch.randn(batch, 17, 64, generator=g),
        torch.randn(batch, 9, 16, generator=g),
    )


def test_fa4_dense_and_varlen_local_match_the_default_path(fake_fa4):
    model = make_tiny_transformer(local_attn_layers=[0, 1], frame_receptive_field=1, coords_style="v1")
    x, a, e = _inputs()
    with torch.no_grad():
        ref = model(x, a, e, return_dict=False)
        model.set_attn_processor(MagiHumanAttnProcessor(use_flash_attention_4=True))
        out = model(x, a, e, return_dict=False)
    # 2 local layers -> one varlen call each; the other layers -> one dense call each.
    assert fake_fa4.count("varlen") == 2 and fake_fa4.count("dense") == model.config.num_layers - 2
    torch.testing.assert_close(out[0], ref[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out[1], ref[1], rtol=1e-5, atol=1e-5)


def test_fa4_varlen_plan_covers_exactly_the_local_rule():
    """Each (query, key) pair the varlen plan forms is allowed by the local rule, and every allowed pair is formed
    once, for a batch of two flattened samples."""
    from diffusers_magihuman.models.transformer_magihuman import MagiHumanTokenLayout

    layout = MagiHumanTokenLayout.build([3, 3], [2, 2], (5, 2, 2), frame_receptive_field=1, device=torch.device("cpu"))
    plan = layout.local_varlen_plan(2, layout.seq_len, torch.device("cpu"))
    cq, ck, idx = plan["cu_seqlens_q"].tolist(), plan["cu_seqlens_k"].tolist(), plan["kv_index"]
    seen = torch.zeros(2 * layout.seq_len, 2 * layout.seq_len, dtype=torch.int64)
    for a, b, c, d in zip(cq, cq[1:], ck, ck[1:]):
        for q in range(a, b):
            seen[q, idx[c:d]] += 1
    allowed = layout.local_attention_mask(layout.seq_len)
    expected = torch.block_diag(allowed, allowed).long()  # no attention across samples
    assert torch.equal(seen, expected)


def test_fa4_padded_batch_equals_single_runs(fake_fa4):
    model = make_tiny_transformer(local_attn_layers=[1], frame_receptive_field=1, coords_style="v1")
    model.set_attn_processor(MagiHumanAttnProcessor(use_flash_attention_4=True))
    x, a, e = _inputs(batch=2, seed=1)
    text_mask = torch.ones(2, 9, dtype=torch.bool)
    text_mask[1, 6:] = False
    with torch.no_grad():
        both = model(x, a, e, encoder_attention_mask=text_mask, return_dict=False)
        second = model(x[1:], a[1:], e[1:, :6], return_dict=False)
    assert "varlen" in fake_fa4
    torch.testing.assert_close(both[0][1:], second[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(both[1][1:], second[1], rtol=1e-5, atol=1e-5)


def test_fa4_ops_compile_without_graph_breaks(fake_fa4):
    """`compile_repeated_blocks(fullgraph=True)` raises on any graph break; the custom ops are opaque to dynamo."""
    model = make_tiny_transformer(local_attn_layers=[0], frame_receptive_field=1, coords_style="v1")
    x, a, e = _inputs()
    with torch.no_grad():
        ref = model(x, a, e, return_dict=False)
        model.set_attn_processor(MagiHumanAttnProcessor(use_flash_attention_4=True))
        model.compile_repeated_blocks(fullgraph=True, backend="eager")
        out = model(x, a, e, return_dict=False)
    torch._dynamo.reset()
    assert "varlen" in fake_fa4 and "dense" in fake_fa4
    torch.testing.assert_close(out[0], ref[0], rtol=1e-5, atol=1e-5)


def test_fa4_is_chosen_automatically_only_when_nothing_else_was_asked(monkeypatch):
    cuda = torch.device("cuda")
    monkeypatch.setattr(tm, "flash_attention_4_supported", lambda device: device.type == "cuda")
    auto = MagiHumanAttnProcessor()
    assert auto.uses_flash_attention_4(cuda) and auto.local_kernel(cuda) == "varlen"
    assert not auto.uses_flash_attention_4(torch.device("cpu")) and auto.local_kernel(torch.device("cpu")) == "per_frame"
    assert not MagiHumanAttnProcessor(use_flash_attention_4=False).uses_flash_attention_4(cuda)
    assert not MagiHumanAttnProcessor(upcast=True).uses_flash_attention_4(cuda)
    assert MagiHumanAttnProcessor(local_attn_kernel="per_frame").local_kernel(cuda) == "per_frame"

    chosen = MagiHumanAttnProcessor()
    chosen._attention_backend = "native"  # what `set_attention_backend("native")` does
    assert not chosen.uses_flash_attention_4(cuda)

    from diffusers.models.attention_dispatch import attention_backend

    with attention_backend("_native_math"):
        assert not MagiHumanAttnProcessor().uses_flash_attention_4(cuda)

    monkeypatch.setattr(tm, "flash_attention_4_supported", lambda device: False)
    assert not MagiHumanAttnProcessor().uses_flash_attention_4(cuda)


def test_forcing_fa4_without_it_installed_says_what_to_do(monkeypatch):
    monkeypatch.setattr(attention_flash4, "_flash_attn_cute", lambda: None)
    assert not attention_flash4.is_flash_attention_4_available()
    assert not attention_flash4.flash_attention_4_supported(torch.device("cuda"))
    with pytest.raises(ValueError, match="use_flash_attention_4"):
        MagiHumanAttnProcessor(local_attn_kernel="varlen", use_flash_attention_4=False)
    model = make_tiny_transformer(num_layers=2)
    model.set_attn_processor(MagiHumanAttnProcessor(use_flash_attention_4=True))
    with pytest.raises(RuntimeError, match="flash4"):
        with torch.no_grad():
            model(*_inputs(frames=2))


def test_fa4_is_inference_only_and_auto_falls_back_when_gradients_flow(fake_fa4, monkeypatch):
    monkeypatch.setattr(tm, "flash_attention_4_supported", lambda device: True)  # "auto" picks FA4 even on CPU
    model = make_tiny_transformer(local_attn_layers=[0], frame_receptive_field=1, coords_style="v1").train()
    model.requires_grad_(True)
    x, a, e = _inputs()
    out = model(x, a, e, return_dict=False)
    (out[0].square().mean() + out[1].square().mean()).backward()
    assert fake_fa4 == [] and model.blocks[0].attn.video.to_out[0].weight.grad is not None  # SDPA took it
    with torch.no_grad():
        model(x, a, e, return_dict=False)
    assert "varlen" in fake_fa4 and "dense" in fake_fa4  # inference: FA4
    model.set_attn_processor(MagiHumanAttnProcessor(use_flash_attention_4=True))
    with pytest.raises(RuntimeError, match="inference-only"):
        model(x, a, e, return_dict=False)
