"""`magihuman generate --gpus N` / under torchrun: bad degrees and conflicting flags are refused before anything loads,
`--gpus N` relaunches the same command under torchrun, and (two gloo processes on the CPU) rank 0 alone writes the
outputs, with the same latents as one process."""

from __future__ import annotations

import os
import socket
import sys

import pytest
import torch

from diffusers_magihuman.cli import main


PROMPT = 'A man waves. Dialogue: <Man, English>: "Hi!"'
SMALL = ["--seconds", "0.2", "--height", "32", "--width", "32", "--steps", "2", "--quiet", "--device", "cpu"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    from diffusers_magihuman.testing_utils import make_tiny_pipeline

    root = tmp_path_factory.mktemp("cli_gpus")
    make_tiny_pipeline(seed=0, distilled=True).save_pretrained(root / "base")  # tiny DiT: 4 heads, 2 KV heads
    return root / "base"


@pytest.mark.parametrize(
    "extra, env, message",
    [
        (["--gpus", "0"], {}, "--gpus must be >= 1"),
        (["--gpus", "4"], {}, "cannot split the DiT"),  # 4 does not divide the tiny DiT's 2 key/value heads
        (["--gpus", "2"], {}, "with --device cpu run one process"),
        (["--gpus", "2", "--offload", "model"], {}, "--offload model cannot be combined"),
        (["--gpus", "3"], {"WORLD_SIZE": "2"}, "torchrun started 2 processes"),
    ],
)
def test_bad_parallel_settings_refused_before_loading(folder, tmp_path, capsys, monkeypatch, extra, env, message):
    from diffusers_magihuman import MagiHumanPipeline

    monkeypatch.setattr(MagiHumanPipeline, "from_pretrained", lambda *a, **k: pytest.fail("weights loaded first"))
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    rc = main(["generate", "--model", str(folder), "--prompt", PROMPT, *SMALL, "--output", str(tmp_path / "o.mp4"), *extra])
    err = capsys.readouterr().err
    assert rc == 2 and message in err, err
    assert not (tmp_path / "o.mp4").exists()


def test_gpus_relaunches_the_same_command_under_torchrun(folder, tmp_path, monkeypatch):
    import subprocess

    from diffusers_magihuman import MagiHumanPipeline, cli

    monkeypatch.setattr(MagiHumanPipeline, "from_pretrained", lambda *a, **k: pytest.fail("the launcher loaded weights"))
    monkeypatch.setattr(cli, "_check_parallel_degree", lambda *a: None)  # no GPUs here
    seen = {}

    def fake_run(command, *args, **kwargs):
        seen["command"] = command
        return subprocess.CompletedProcess(command, 0)

    monkeypatch.setattr(subprocess, "run", fake_run)
    argv = ["generate", "--model", str(folder), "--prompt", PROMPT, "--output", str(tmp_path / "o.mp4"), "--gpus", "2"]
    assert main(argv) == 0
    command = seen["command"]
    assert command[:3] == [sys.executable, "-m", "torch.distributed.run"]
    assert "--nproc-per-node=2" in command and command[-len(argv) :] == argv


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _rank_main(rank: int, world: int, port: int, argv: list[str]) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE=str(world))  # fmt: skip
    # diffusers picks a rank's device as `rank % device_count()`; a CPU-only torch reports 0 devices
    torch.accelerator.device_count = lambda: 1
    rc = main(argv + ["--latents-out", argv[argv.index("--output") + 1] + f".rank{rank}.safetensors"])
    if rc != 0:
        raise SystemExit(rc)


@pytest.mark.skipif(
    not (torch.distributed.is_available() and torch.distributed.is_gloo_available()), reason="needs gloo"
)
def test_two_processes_rank0_writes_same_latents_as_one(folder, tmp_path):
    pytest.importorskip("av")
    import torch.multiprocessing as mp

    from diffusers_magihuman.cli import read_latents

    single = tmp_path / "single.mp4"
    assert main(["generate", "--model", str(folder), "--prompt", PROMPT, *SMALL, "--output", str(single),
                 "--latents-out", str(tmp_path / "single.safetensors")]) == 0  # fmt: skip
    out = tmp_path / "two.mp4"
    argv = ["generate", "--model", str(folder), "--prompt", PROMPT, *SMALL, "--output", str(out)]
    mp.spawn(_rank_main, args=(2, _free_port(), argv), nprocs=2, join=True)
    assert out.exists() and (tmp_path / "two.mp4.rank0.safetensors").exists()
    assert not (tmp_path / "two.mp4.rank1.safetensors").exists()  # rank 1 writes nothing
    ref_video, ref_audio, _ = read_latents(str(tmp_path / "single.safetensors"))
    video, audio, _ = read_latents(str(tmp_path / "two.mp4.rank0.safetensors"))
    # fp32 on the CPU: the ranks compute the same attention per head and the same GEMM rows, in another blocking
    # order; two sampling steps of the tiny model keep that at fp32 rounding (values of order 1): 1e-4.
    torch.testing.assert_close(video, ref_video, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(audio, ref_audio, rtol=1e-4, atol=1e-4)
