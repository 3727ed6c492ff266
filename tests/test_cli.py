"""The `magihuman` command: the offline demo and `generate` on a saved (tiny) pipeline folder."""

from __future__ import annotations

import pytest

from diffusers_magihuman.cli import main
from diffusers_magihuman.testing_utils import make_tiny_pipeline
from diffusers_magihuman.utils.video import read_video_info


def test_demo_writes_mp4_with_audio(tmp_path, capsys):
    path = tmp_path / "demo.mp4"
    assert main(["demo", "--output", str(path), "--seconds", "0.4", "--height", "32", "--width", "64"]) == 0
    info = read_video_info(str(path))
    assert info.num_frames == 9 and info.width == 64 and info.height == 32 and info.fps == pytest.approx(25)
    assert info.audio_sample_rate == 44100 and info.audio_channels == 2
    assert "RANDOM weights" in capsys.readouterr().out


def test_generate_from_folder_and_bad_input(tmp_path, capsys):
    folder = tmp_path / "tiny"
    make_tiny_pipeline(seed=0, distilled=True).save_pretrained(folder)
    out = tmp_path / "gen.mp4"
    rc = main(["generate", "--model", str(folder), "--prompt", "A man waves.", "--seconds", "0.2", "--height", "32",
               "--width", "32", "--steps", "2", "--output", str(out)])  # fmt: skip
    assert rc == 0 and read_video_info(str(out)).num_frames == 5
    out = tmp_path / "group.mp4"  # group offload with one resident DiT layer (CPU -> CPU here)
    rc = main(["generate", "--model", str(folder), "--prompt", "A man waves.", "--seconds", "0.2", "--height", "32",
               "--width", "32", "--steps", "2", "--offload", "group", "--resident-blocks", "1", "--no-compile",
               "--output", str(out)])  # fmt: skip
    assert rc == 0 and read_video_info(str(out)).num_frames == 5
    rc = main(["generate", "--model", str(folder), "--prompt", "  ", "--output", str(tmp_path / "x.mp4")])
    assert rc == 2 and "empty" in capsys.readouterr().err
    assert not (tmp_path / "x.mp4").exists()


def test_demo_refuses_to_replace_a_file_without_overwrite(tmp_path, capsys):
    path = tmp_path / "demo.mp4"
    path.write_bytes(b"mine")
    small = ["--seconds", "0.2", "--height", "32", "--width", "32"]
    assert main(["demo", "--output", str(path), *small]) == 2
    assert "--overwrite" in capsys.readouterr().err and path.read_bytes() == b"mine"
    assert main(["demo", "--output", str(path), *small, "--overwrite"]) == 0
    assert read_video_info(str(path)).num_frames == 5


def test_every_flag_has_a_help_line():
    from diffusers_magihuman.cli import build_parser

    parser = build_parser()
    subparsers = next(a for a in parser._actions if a.dest == "command").choices
    for name, sub in subparsers.items():
        for action in sub._actions:
            if action.dest == "help":
                continue
            assert action.help and len(action.help) > 10, (name, action.dest)
            if action.default not in (None, False) and name == "generate":
                assert "default" in action.help, (name, action.dest)
