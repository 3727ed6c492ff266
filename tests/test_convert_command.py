"""`magihuman convert` end to end on the tiny original-layout checkpoints: a fake release folder (base/, distill/,
540p_sr/, 1080p_sr/, turbo_vae/) plus tiny external components -> four pipeline folders with model cards that load;
the dry run, an interrupted run, and the already-exists case."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from diffusers_magihuman.cli import main


FIX = Path(__file__).parent / "fixtures"
DIT = FIX / "upstream_dit"
PIPE = FIX / "upstream_pipeline"
FOLDERS = ["magihuman-base", "magihuman-distill", "magihuman-sr-1080p", "magihuman-sr-540p"]


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    from diffusers_magihuman.testing_utils import make_tiny_text_encoder, make_tiny_tokenizer, make_tiny_vae

    root = tmp_path_factory.mktemp("release")
    rel = root / "daVinci-MagiHuman"
    rel.mkdir()
    for sub, fixture in (("base", "tiny_a_seed0"), ("distill", "tiny_a_seed0"), ("540p_sr", "tiny_a_seed0"),
                         ("1080p_sr", "tiny_local_seed0")):  # fmt: skip
        os.symlink(DIT / fixture / "checkpoint", rel / sub)
    (rel / "turbo_vae").mkdir()
    shutil.copy(PIPE / "turbo_vae_real_structure.ckpt", rel / "turbo_vae" / "checkpoint-340000.ckpt")
    shutil.copy(PIPE / "turbo_vae_real_structure_config.json", rel / "turbo_vae" / "TurboV3-Wan22-TinyShallow_7_7.json")
    make_tiny_vae().save_pretrained(root / "wan_vae")
    make_tiny_text_encoder().save_pretrained(root / "t5gemma")
    make_tiny_tokenizer().save_pretrained(root / "t5gemma")
    return root


def _args(root, out, *extra):
    return [
        "convert", "--release", str(root / "daVinci-MagiHuman"), "--output-dir", str(out),
        "--vae", str(root / "wan_vae"), "--audio-vae", str(PIPE / "oobleck_tiny"), "--text-encoder", str(root / "t5gemma"),
        "--config", str(DIT / "tiny_a_seed0" / "config.json"),
        "--config", f"sr_1080p={DIT / 'tiny_local_seed0' / 'config.json'}", "--quiet", *extra,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def converted(release):
    out = release / "converted"
    assert main(_args(release, out)) == 0
    return out


def test_release_converts_to_four_loadable_folders(converted):
    import diffusers

    from diffusers_magihuman import MagiHumanPipeline, MagiHumanSRPipeline

    assert sorted(p.name for p in converted.iterdir()) == FOLDERS  # no staging folder left
    distill = diffusers.DiffusionPipeline.from_pretrained(converted / "magihuman-distill")
    assert type(distill) is MagiHumanPipeline and distill.scheduler.is_distilled and distill.turbo_vae is not None
    base = MagiHumanPipeline.from_pretrained(converted / "magihuman-base")
    assert not base.scheduler.is_distilled and base.text_encoder is not None and base.audio_vae is not None
    shared = dict(vae=None, audio_vae=None, text_encoder=None, tokenizer=None)  # an SR folder holds DiT + scheduler
    sr = MagiHumanSRPipeline.from_pretrained(converted / "magihuman-sr-1080p", **shared)
    assert sr.transformer.config.local_attn_layers and sr.vae is None
    assert not MagiHumanSRPipeline.from_pretrained(converted / "magihuman-sr-540p", **shared).transformer.config.local_attn_layers
    # the second bundling folder shares the first one's component files (hard links) instead of a second copy
    a = converted / "magihuman-base" / "text_encoder"
    b = converted / "magihuman-distill" / "text_encoder"
    weights = sorted(p.name for p in a.iterdir() if p.suffix == ".safetensors")
    assert weights and all(os.path.samefile(a / w, b / w) for w in weights)


def test_each_folder_has_a_model_card(converted):
    cards = {name: (converted / name / "README.md").read_text() for name in FOLDERS}
    for name, card in cards.items():
        front = card.split("---")[1]
        assert "license: apache-2.0" in front and "library_name: diffusers" in front, name
        assert "base_model:\n  - GAIR/daVinci-MagiHuman" in front and "tags:" in front, name
    assert "pipeline_tag: text-to-video" in cards["magihuman-distill"]
    assert "pipeline_tag: video-to-video" in cards["magihuman-sr-1080p"]
    assert "--sr 1080p --sr-model your-org/magihuman-sr-1080p" in cards["magihuman-sr-1080p"]  # the SR chain
    assert "MagiHumanSRPipeline(**{**pipe.components" in cards["magihuman-sr-540p"]
    assert "Stability AI Community License" in cards["magihuman-base"]  # the bundled audio VAE's own licence
    assert "Gemma Terms of Use" in cards["magihuman-base"]
    assert "Stability AI" not in cards["magihuman-sr-540p"].split("## Components")[1].split("## Limitations")[0].split("|")[-2]


def test_dry_run_writes_nothing_and_catches_bad_inputs(release, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(_args(release, out, "--dry-run")) == 0
    assert not out.exists() and "nothing was written" in capsys.readouterr().out
    # a wrong architecture override is caught from the shard headers alone
    bad = tmp_path / "bad.json"
    config = json.loads((DIT / "tiny_a_seed0" / "config.json").read_text())
    config["model_config"]["hidden_size"] = 64
    bad.write_text(json.dumps(config))
    assert main(_args(release, out, "--dry-run", "--config", f"base={bad}")) == 2
    assert "does not match the requested architecture" in capsys.readouterr().err
    assert main(_args(release, out, "--variants", "base,sr_720p")) == 2
    assert "sr_720p" in capsys.readouterr().err
    assert main(_args(release, out, "--vae", str(tmp_path / "nope"))) == 2
    assert "--vae" in capsys.readouterr().err
    assert not out.exists()


def test_existing_folder_refused_without_overwrite(release, tmp_path, capsys):
    out = tmp_path / "out"
    (out / "magihuman-sr-540p").mkdir(parents=True)
    (out / "magihuman-sr-540p" / "keep.txt").write_text("mine")
    rc = main(_args(release, out, "--variants", "sr_540p"))
    assert rc == 2 and "--overwrite" in capsys.readouterr().err
    assert [p.name for p in (out / "magihuman-sr-540p").iterdir()] == ["keep.txt"]
    assert main(_args(release, out, "--variants", "sr_540p", "--overwrite")) == 0
    assert (out / "magihuman-sr-540p" / "model_index.json").is_file()
    assert not (out / "magihuman-sr-540p" / "keep.txt").exists()
    assert sorted(p.name for p in out.iterdir()) == ["magihuman-sr-540p"]


def test_interrupted_conversion_leaves_no_half_folder(release, tmp_path, monkeypatch):
    from diffusers_magihuman.conversion import model_card

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(model_card, "write_model_card", interrupted)  # fails after the transformer was written
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        main(_args(release, out, "--variants", "sr_540p"))
    assert list(out.iterdir()) == []
