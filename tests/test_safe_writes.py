"""Safe writes: the mp4 writer and the converters never lose or half-write a user's file or model folder."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from diffusers_magihuman.utils import video as video_utils
from diffusers_magihuman.utils.video import check_output_path, export_to_video, read_video_info


def _frames(n=3, value=0):
    return np.full((n, 16, 16, 3), value, np.uint8)


def test_existing_file_refused_without_overwrite(tmp_path):
    path = tmp_path / "clip.mp4"
    export_to_video(_frames(3), path)
    before = path.read_bytes()
    with pytest.raises(FileExistsError, match="overwrite=True"):
        export_to_video(_frames(5, 200), path)
    assert path.read_bytes() == before  # untouched
    export_to_video(_frames(5, 200), path, overwrite=True)
    assert read_video_info(path).num_frames == 5
    assert [p.name for p in tmp_path.iterdir()] == ["clip.mp4"]  # no temporary left behind


def test_interrupted_write_keeps_the_good_file(tmp_path, monkeypatch):
    """An interruption inside the encoder (here a KeyboardInterrupt after the video stream started) leaves the
    existing file byte-identical, no partial file under the final name, and no temporary file."""
    path = tmp_path / "clip.mp4"
    export_to_video(_frames(3), path, audio=np.zeros((2, 4000), np.float32), audio_sample_rate=16000)
    before = path.read_bytes()
    real_encode = video_utils._encode

    def interrupted(av, tmp, *args):
        assert os.path.dirname(tmp) == str(tmp_path) and tmp != str(path)  # the temporary is next to the target
        real_encode(av, tmp, *args)
        raise KeyboardInterrupt

    monkeypatch.setattr(video_utils, "_encode", interrupted)
    with pytest.raises(KeyboardInterrupt):
        export_to_video(_frames(9, 255), path, overwrite=True)
    assert path.read_bytes() == before
    with pytest.raises(KeyboardInterrupt):
        export_to_video(_frames(9, 255), tmp_path / "new.mp4")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.mp4"]


@pytest.mark.parametrize(
    "name, error, match",
    [
        ("missing/clip.mp4", FileNotFoundError, "does not exist"),
        ("clip", ValueError, "no extension"),
        ("clip.gif", ValueError, "extension '.gif'"),
        (".", ValueError, "is a folder"),
    ],
)
def test_bad_output_paths(tmp_path, name, error, match):
    with pytest.raises(error, match=match):
        check_output_path(tmp_path / name, what="--output")
    with pytest.raises(error, match=match):
        export_to_video(_frames(), tmp_path / name)
    assert not (tmp_path / "missing").exists()


def test_mov_and_mkv_containers(tmp_path):
    for name in ("a.mov", "a.mkv"):
        assert read_video_info(export_to_video(_frames(2), tmp_path / name)).num_frames == 2


# --------------------------------------------------------------------------- converters
FIX = Path(__file__).parent / "fixtures"
DIT = FIX / "upstream_dit" / "tiny_a_seed0"
PIPE = FIX / "upstream_pipeline"


def _turbo_args(out):
    return ["--checkpoint", str(PIPE / "turbo_vae_real_structure.ckpt"), "--config",
            str(PIPE / "turbo_vae_real_structure_config.json"), "--output", str(out)]  # fmt: skip


def test_turbo_vae_converter_never_clobbers_a_model_folder(tmp_path):
    from diffusers_magihuman import AutoencoderTurboVAED
    from diffusers_magihuman.conversion.convert_turbo_vae_to_diffusers import main as turbo_main

    out = tmp_path / "turbo"
    assert turbo_main(_turbo_args(out)) == 0
    assert (out / "README.md").read_text().startswith("---\nlicense: apache-2.0")
    stamp = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    with pytest.raises(FileExistsError, match="--overwrite"):
        turbo_main(_turbo_args(out))
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == stamp
    assert turbo_main(_turbo_args(out) + ["--overwrite"]) == 0
    AutoencoderTurboVAED.from_pretrained(out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["turbo"]  # no staging or old folder left


def test_oobleck_converter_never_clobbers_a_model_folder(tmp_path):
    from diffusers_magihuman.conversion.convert_oobleck_to_diffusers import main as oobleck_main

    out = tmp_path / "audio_vae"
    out.mkdir()
    (out / "config.json").write_text("{}")
    with pytest.raises(FileExistsError, match="not empty"):
        oobleck_main(["--input", str(PIPE / "oobleck_tiny"), "--output", str(out)])
    assert (out / "config.json").read_text() == "{}"
    oobleck_main(["--input", str(PIPE / "oobleck_tiny"), "--output", str(out), "--overwrite"])
    assert (out / "config.json").read_text() != "{}"


def test_dit_converter_interrupted_leaves_no_half_folder(tmp_path, monkeypatch):
    """A failure (or Ctrl-C) while the pipeline folder is written leaves neither --output nor a staging folder."""
    from diffusers_magihuman.conversion import convert_magihuman_to_diffusers as conv

    def boom(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(conv, "write_pipeline_folder", boom)
    out = tmp_path / "pipe"
    with pytest.raises(KeyboardInterrupt):
        conv.main(["--checkpoint", str(DIT / "checkpoint"), "--config", str(DIT / "config.json"), "--variant", "base",
                   "--output", str(out)])  # fmt: skip
    assert list(tmp_path.iterdir()) == []


def _copy_checkpoint(tmp_path):
    import shutil

    ckpt = tmp_path / "ckpt"
    shutil.copytree(DIT / "checkpoint", ckpt)
    return ckpt


def test_corrupt_or_truncated_shard_and_index_name_the_file(tmp_path):
    from diffusers_magihuman.conversion._io import CorruptCheckpointError
    from diffusers_magihuman.conversion.convert_magihuman_to_diffusers import load_original_state_dict

    ckpt = _copy_checkpoint(tmp_path)
    shard = ckpt / "model-00002-of-00003.safetensors"
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2])  # an interrupted download
    with pytest.raises(CorruptCheckpointError, match=r"model-00002-of-00003\.safetensors.*download it again"):
        load_original_state_dict(ckpt)
    shard.unlink()
    with pytest.raises(FileNotFoundError, match="model-00002-of-00003.safetensors"):
        load_original_state_dict(ckpt)
    index = ckpt / "model.safetensors.index.json"
    index.write_text(index.read_text()[:40])
    with pytest.raises(CorruptCheckpointError, match=r"model\.safetensors\.index\.json"):
        load_original_state_dict(ckpt)


def test_corrupt_turbo_vae_ckpt_names_the_file(tmp_path):
    from diffusers_magihuman.conversion._io import CorruptCheckpointError
    from diffusers_magihuman.conversion.convert_turbo_vae_to_diffusers import load_turbo_vae_original

    bad = tmp_path / "checkpoint.ckpt"
    bad.write_bytes((PIPE / "turbo_vae_real_structure.ckpt").read_bytes()[:1000])
    with pytest.raises(CorruptCheckpointError, match="checkpoint.ckpt"):
        load_turbo_vae_original(bad, PIPE / "turbo_vae_real_structure_config.json")


@pytest.mark.parametrize("value", ["-8", "0", "eight"])
def test_bad_pad_multiple_is_a_clear_error(tmp_path, capsys, value):
    from diffusers_magihuman.conversion.convert_magihuman_to_diffusers import convert_transformer, main as conv_main

    with pytest.raises(SystemExit) as exc:
        conv_main(["--checkpoint", str(DIT / "checkpoint"), "--variant", "base", "--output", str(tmp_path / "o"),
                   "--pad-swiglu-to-multiple-of", value])  # fmt: skip
    assert exc.value.code == 2 and "--pad-swiglu-to-multiple-of must be" in capsys.readouterr().err
    if value != "eight":
        with pytest.raises(ValueError, match="pad_swiglu_to_multiple_of"):
            convert_transformer(DIT / "checkpoint", "base", config=DIT / "config.json", pad_swiglu_to_multiple_of=int(value))


def test_written_files_get_normal_permissions(tmp_path):
    """The temporary file / folder is private while written; what lands under the final name has the usual mode."""
    mask = os.umask(0)
    os.umask(mask)
    path = export_to_video(_frames(), tmp_path / "a.mp4")
    assert os.stat(path).st_mode & 0o777 == 0o666 & ~mask
    from diffusers_magihuman.conversion._io import atomic_output_folder

    with atomic_output_folder(tmp_path / "folder") as staging:
        Path(staging, "x.json").write_text("{}")
    assert os.stat(tmp_path / "folder").st_mode & 0o777 == 0o777 & ~mask
