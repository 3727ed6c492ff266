"""`magihuman generate` on tiny random folders: the SR chain (base -> SR -> decode -> mp4), a prompts file with
several videos per prompt, every bad input refused before any weights load, and no lost work after sampling."""

from __future__ import annotations

import pytest

from diffusers_magihuman.cli import main
from diffusers_magihuman.utils.video import read_video_info


PROMPT = 'A man waves. Dialogue: <Man, English>: "Hi!"'
SMALL = ["--seconds", "0.2", "--height", "32", "--width", "32", "--steps", "2", "--quiet"]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    from diffusers_magihuman import MagiHumanSRPipeline
    from diffusers_magihuman.schedulers.scheduling_magihuman import MagiHumanScheduler
    from diffusers_magihuman.testing_utils import make_tiny_pipeline, make_tiny_transformer

    root = tmp_path_factory.mktemp("cli")
    make_tiny_pipeline(seed=0, distilled=True).save_pretrained(root / "base")
    for name, local in (("sr540", []), ("sr1080", [1])):
        sr = MagiHumanSRPipeline(
            transformer=make_tiny_transformer(1, coords_style="v1", local_attn_layers=local),
            scheduler=MagiHumanScheduler(sampler="unipc"),
            vae=None, audio_vae=None, text_encoder=None, tokenizer=None,
        )  # fmt: skip
        sr.save_pretrained(root / name)
    return root


def test_sr_chain_writes_the_sr_size_with_audio(folders, tmp_path, capsys):
    out, lat = tmp_path / "sr.mp4", tmp_path / "sr.latents.safetensors"
    rc = main(["generate", "--model", str(folders / "base"), "--prompt", PROMPT, *SMALL, "--sr", "540p",
               "--sr-model", str(folders / "sr540"), "--sr-height", "64", "--sr-width", "64", "--sr-steps", "2",
               "--output", str(out), "--latents-out", str(lat)])  # fmt: skip
    assert rc == 0, capsys.readouterr().err
    info = read_video_info(out)
    assert (info.num_frames, info.width, info.height) == (5, 64, 64) and info.audio_channels == 2
    stdout = capsys.readouterr().out
    for stage in ("loading", "base stage 1/1", "540p super-resolution 1/1", "decoding 1/1", "done"):
        assert stage in stdout, stage
    from diffusers_magihuman.cli import read_latents

    video, audio, meta = read_latents(str(lat))
    assert video.shape[-2:] == (4, 4) and meta["stage"] == "540p"


def test_prompts_file_and_num_videos(folders, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text(f"# two prompts\n{PROMPT}\nA woman nods. Dialogue: <Woman, English>: \"Yes.\"\n")
    out = tmp_path / "clip.mp4"
    rc = main(["generate", "--model", str(folders / "base"), "--prompts-file", str(prompts), *SMALL,
               "--num-videos", "2", "--output", str(out)])  # fmt: skip
    assert rc == 0
    names = sorted(p.name for p in tmp_path.glob("clip_*.mp4"))
    assert names == ["clip_000_v0.mp4", "clip_000_v1.mp4", "clip_001_v0.mp4", "clip_001_v1.mp4"]


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--output", "{tmp}/missing/x.mp4"], "does not exist"),
        (["--output", "{tmp}"], "is a folder"),
        (["--output", "{tmp}/x"], "no extension"),
        (["--output", "{tmp}/x.avi"], "extension '.avi'"),
        (["--output", "{tmp}/exists.mp4"], "already exists"),
        (["--steps", "5000"], "use at most"),
        (["--sr", "1080p", "--sr-model", "{sr540}"], "holds the 540p"),
        (["--sr", "540p"], "needs --sr-model"),
        (["--image", "{tmp}/face.png"], "does not exist"),
        (["--audio", "{tmp}/exists.mp4"], "cannot be decoded as audio"),
        (["--prompt-file", "{tmp}/p.txt", "--prompt", "x"], "exactly one of"),
        (["--height", "250"], "multiple of 32 (e.g. 224 or 256)"),
        (["--seconds", "120"], "--seconds must be in (0, 60]"),
        (["--guidance-scale", "5"], "without guidance"),
        (["--latents-in", "{tmp}/none.safetensors"], "does not exist"),
        (["--decoder", "vae", "--model", "{sr540}"], "MagiHumanPipeline"),
        (["--first-block-cache", "-1"], "--first-block-cache must be a positive number"),
        (["--first-block-cache", "nan"], "--first-block-cache must be a positive number"),
        (["--fp8", "--device", "cpu"], "--fp8 needs a CUDA GPU"),
        (["--fp8", "--dtype", "fp32"], "drop --dtype fp32"),
        (["--fp8", "--offload", "model"], "use --offload auto or none"),
    ],
)
def test_bad_input_refused_before_loading(folders, tmp_path, capsys, monkeypatch, extra, message):
    from diffusers_magihuman import MagiHumanPipeline

    def no_load(*args, **kwargs):
        raise AssertionError("weights were loaded before the inputs were checked")

    monkeypatch.setattr(MagiHumanPipeline, "from_pretrained", no_load)
    (tmp_path / "exists.mp4").write_bytes(b"mine")
    extra = [x.format(tmp=tmp_path, sr540=folders / "sr540") for x in extra]
    args = ["generate", "--model", str(folders / "base"), "--prompt", PROMPT, "--output", str(tmp_path / "o.mp4")]
    rc = main(args + extra)
    err = capsys.readouterr().err
    assert rc == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert (tmp_path / "exists.mp4").read_bytes() == b"mine"
    assert not (tmp_path / "o.mp4").exists()


def test_argparse_errors_are_one_line(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["generate", "--model", "x", "--prompt", "p", "--steps", "many"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and len(err.strip().splitlines()) == 1 and "--steps" in err


def test_failure_after_sampling_keeps_the_latents(folders, tmp_path, capsys, monkeypatch):
    from diffusers_magihuman.utils import video as video_utils

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(video_utils, "export_to_video", broken)
    out = tmp_path / "x.mp4"
    rc = main(["generate", "--model", str(folders / "base"), "--prompt", PROMPT, *SMALL, "--output", str(out)])
    err = capsys.readouterr().err
    kept = tmp_path / "x.latents.safetensors"
    assert rc == 1 and not out.exists() and kept.is_file() and str(kept) in err and "--latents-in" in err
    monkeypatch.undo()
    rc = main(["generate", "--model", str(folders / "base"), "--prompt", PROMPT, "--latents-in", str(kept),
               "--quiet", "--output", str(out)])  # fmt: skip
    assert rc == 0 and read_video_info(out).num_frames == 5


def test_dry_run_and_prompt_note(folders, tmp_path, capsys):
    rc = main(["generate", "--model", str(folders / "base"), "--prompt", "A man waves.", "--dry-run",
               "--output", str(tmp_path / "a.mp4")])  # fmt: skip
    captured = capsys.readouterr()
    assert rc == 0 and "nothing was loaded" in captured.out and "no dialogue section" in captured.err
    assert not (tmp_path / "a.mp4").exists()


def test_first_block_cache_goes_on_the_base_dit_only(folders, tmp_path, capsys, monkeypatch):
    """`--first-block-cache T` enables diffusers' FirstBlockCache(threshold=T) on the base stage's DiT, not on the SR
    DiT, and the chain still writes its video."""
    from diffusers_magihuman import MagiHumanTransformer3DModel

    enabled = []
    original = MagiHumanTransformer3DModel.enable_cache

    def record(self, config):
        enabled.append((self.config.local_attn_layers, type(config).__name__, getattr(config, "threshold", None)))
        return original(self, config)

    monkeypatch.setattr(MagiHumanTransformer3DModel, "enable_cache", record)
    out = tmp_path / "cached.mp4"
    rc = main(["generate", "--model", str(folders / "base"), "--prompt", PROMPT, *SMALL, "--first-block-cache", "0.05",
               "--sr", "540p", "--sr-model", str(folders / "sr540"), "--sr-steps", "2", "--output", str(out)])  # fmt: skip
    assert rc == 0, capsys.readouterr().err
    assert len(enabled) == 1 and enabled[0][1:] == ("FirstBlockCacheConfig", 0.05)
    assert read_video_info(out).num_frames == 5
