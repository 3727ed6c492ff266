"""Context parallelism (diffusers' `enable_parallelism` + `_cp_plan`, Ulysses) on CPU: two `gloo` processes.

Each rank runs the tiny DiT once alone and once with `ContextParallelConfig(ulysses_degree=2)`, on a padded batch whose
packed length (45 real tokens) is odd, so the sequence is padded to split evenly. The model has a modality-expert
layer (per-token routing must follow each rank's shard) and local-attention layers with a +-1 frame window over 5
latent frames (the window must stay exact after Ulysses' all-to-all). It runs with the default backend,
`magihuman_sdpa` (compiled blocks) and `magihuman_flash_4` (a stand-in for the FA4 kernels).

Tolerance: on CPU attention runs in fp32 on both paths; the split changes only which rows each GEMM computes and how
many heads each SDPA call holds, i.e. fp32 blocking / summation order. 1e-5 absolute and relative covers fp32 rounding
through the tiny model's few layers (values of order 1; observed differences are ~1e-7).
"""

import os
import socket

import pytest
import torch
import torch.distributed as dist


pytestmark = pytest.mark.skipif(
    not (dist.is_available() and dist.is_gloo_available()), reason="needs torch.distributed with gloo"
)

FP32_ORDER = dict(rtol=1e-5, atol=1e-5)  # see the module docstring


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _inputs():
    g = torch.Generator().manual_seed(0)
    video = torch.randn(2, 48, 5, 4, 4, generator=g)  # 5 frames x 2 x 2 patches = 20 video tokens
    audio = torch.randn(2, 16, 64, generator=g)
    text = torch.randn(2, 9, 16, generator=g)
    text_mask = torch.ones(2, 9, dtype=torch.bool)
    text_mask[1, 6:] = False  # sample 1: 20 + 16 + 6 = 42 tokens, sample 0: 45 (odd)
    return video, audio, text, text_mask


def _worker(rank: int, world_size: int, port: int) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        # diffusers 0.42 picks the rank's device as `rank % torch.accelerator.device_count()`, which is 0 on a CPU-only
        # torch (ZeroDivisionError); this child process has no accelerator, so report one "device" (the CPU).
        torch.accelerator.device_count = lambda: 1
        from diffusers import ContextParallelConfig

        from diffusers_magihuman.testing_utils import make_tiny_transformer

        video, audio, text, text_mask = _inputs()
        # FlashAttention-4 runs only on Hopper/Blackwell GPUs: a stand-in with its signature checks the plumbing of
        # `magihuman_flash_4` under Ulysses (dense calls and the local layers' varlen call after the all-to-all).
        from test_attention_backends import _fake_fa4

        from diffusers_magihuman.models import attention_flash4

        fa4_calls = []
        attention_flash4._flash_attn_cute = lambda: _fake_fa4(fa4_calls)

        # The default backend (the processor routes padded / local calls to `magihuman_sdpa` under Ulysses) and
        # explicitly selected ones.
        for backend in (None, "magihuman_sdpa", "magihuman_flash_4"):
            model = make_tiny_transformer(
                num_layers=3, mm_layers=[0], gelu7_layers=[0], local_attn_layers=[1, 2], frame_receptive_field=1,
                coords_style="v1",
            )
            rows_seen = []
            # Rows entering the blocks (the output of the split point, after diffusers' split hook).
            model.context_parallel_split.register_forward_hook(lambda module, args, out: rows_seen.append(out.shape[1]))
            # One unpadded sample of even length (20 + 16 + 10 = 46 tokens): the global layer's attention needs no
            # pattern, so with the default backend it runs on diffusers' own Ulysses path (`native`, K/V repeated).
            even = (video[:1], audio[:1], torch.cat([text[:1], text[:1, :1]], dim=1))
            with torch.no_grad():
                alone = model(video, audio, text, encoder_attention_mask=text_mask, return_dict=False)
                alone_even = model(*even, return_dict=False)
                if backend is not None:
                    model.set_attention_backend(backend)
                model.enable_parallelism(config=ContextParallelConfig(ulysses_degree=world_size))
                if backend == "magihuman_sdpa":
                    # The blocks compile without a graph break (fullgraph raises on any): no CP hook sits on a block,
                    # and the Ulysses all-to-all + MagiHuman backend trace.
                    model.compile_repeated_blocks(backend="eager", fullgraph=True)
                split = model(video, audio, text, encoder_attention_mask=text_mask, return_dict=False)
                split_even = model(*even, return_dict=False)
            # Alone the blocks see the padded batch's 45 rows; split, this rank's half of 46 (padded to split evenly).
            assert rows_seen == [45, 46, 23, 23], rows_seen
            torch.testing.assert_close(split_even[0], alone_even[0], **FP32_ORDER)
            torch.testing.assert_close(split[0], alone[0], **FP32_ORDER)
            torch.testing.assert_close(split[1], alone[1], **FP32_ORDER)
        assert "varlen" in fa4_calls and "dense" in fa4_calls

        # `set_attention_backend` also sets diffusers' process-wide active backend: back to the default.
        from diffusers.models.attention_dispatch import AttentionBackendName, _AttentionBackendRegistry

        _AttentionBackendRegistry.set_active_backend(AttentionBackendName.NATIVE)
        # A whole pipeline through the helper the CLI should call: the same latents as one process.
        from diffusers_magihuman.testing_utils import make_tiny_pipeline
        from diffusers_magihuman.utils.distributed import enable_context_parallel, is_main_process

        pipe = make_tiny_pipeline()
        kwargs = dict(prompt="a person talks", height=32, width=48, num_frames=5, num_inference_steps=2)
        kwargs.update(output_type="latent")
        alone = pipe(**kwargs, generator=torch.Generator().manual_seed(0))
        assert enable_context_parallel(pipe) == torch.device("cpu")
        assert pipe.transformer._context_parallel_rank() == (rank, world_size)
        split = pipe(**kwargs, generator=torch.Generator().manual_seed(0))
        assert is_main_process() == (rank == 0)
        torch.testing.assert_close(split.frames, alone.frames, **FP32_ORDER)
        torch.testing.assert_close(split.audio, alone.audio, **FP32_ORDER)
    finally:
        dist.destroy_process_group()


def test_two_gloo_ranks_give_the_single_process_output():
    mp = pytest.importorskip("torch.multiprocessing")
    try:
        mp.spawn(_worker, args=(2, _free_port()), nprocs=2, join=True)
    except mp.ProcessRaisedException as error:  # re-raise the rank's assertion with its traceback
        pytest.fail(str(error))


def test_layout_shards_route_every_token_once():
    """The shards of a padded layout cover every token exactly once, with the whole sequence's modality per token."""
    from diffusers_magihuman.models.magihuman_packing import MagiHumanTokenLayout

    layout = MagiHumanTokenLayout.build([16, 16], [9, 6], (5, 2, 2), 1, torch.device("cpu"), pad_to_multiple_of=4)
    assert layout.seq_len == 48 and layout.seq_lens == [45, 42] and layout.has_padding
    ids = layout.modality_ids()
    total = [0, 0, 0, 0]
    for rank in range(4):
        shard = layout.shard(rank, 4)
        assert shard.seq_len == 12 and shard.attention_layout is layout
        local = ids[:, rank * 12 : (rank + 1) * 12].reshape(-1)
        order = local if shard.permutation is None else local[shard.permutation]
        assert bool((order[1:] >= order[:-1]).all())  # routed sorted by modality
        assert shard.group_sizes == [int((local == m).sum()) for m in range(4)]
        total = [a + b for a, b in zip(total, shard.group_sizes)]
    assert total == layout.group_sizes
    with pytest.raises(ValueError, match="does not split evenly"):
        layout.shard(0, 5)


def test_helper_refuses_bad_degrees_before_joining_a_process_group(monkeypatch):
    from diffusers_magihuman.testing_utils import make_tiny_transformer
    from diffusers_magihuman.utils.distributed import enable_context_parallel

    model = make_tiny_transformer()
    monkeypatch.delenv("RANK", raising=False)
    assert enable_context_parallel(model, degree=1) == torch.device("cpu")  # nothing to split, no process group
    with pytest.raises(ValueError, match="ulysses_degree=3"):
        enable_context_parallel(model, degree=3)
    with pytest.raises(RuntimeError, match="torchrun --nproc-per-node"):
        enable_context_parallel(model, degree=2)
    with pytest.raises(TypeError, match="MagiHuman pipeline"):
        enable_context_parallel(object())
    assert model._parallel_config is None and not dist.is_initialized()


def test_bad_degrees_are_refused_before_anything_changes(monkeypatch):
    from diffusers import ContextParallelConfig

    from diffusers_magihuman.testing_utils import make_tiny_transformer

    model = make_tiny_transformer()  # 4 attention heads, 2 key/value heads
    with pytest.raises(ValueError, match=r"ulysses_degree=4.*4 attention heads and the 2 key/value heads.*\[2\]"):
        model.enable_parallelism(config=ContextParallelConfig(ulysses_degree=4))
    with pytest.raises(ValueError, match="Ulysses context parallelism only"):
        model.enable_parallelism(config=ContextParallelConfig(ring_degree=2))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    with pytest.raises(ValueError, match="2 ranks on this host needs as many GPUs, but only 1"):
        model.enable_parallelism(config=ContextParallelConfig(ulysses_degree=2))
    assert model._parallel_config is None
