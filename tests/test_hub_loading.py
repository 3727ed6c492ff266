"""Loading by repo id through the Hub code path, offline: a simulated Hub cache (snapshot + refs + tree listing)
read with HF_HUB_OFFLINE=1, so diffusers' `download()` runs its file-list checks (an unregistered out-of-tree
package fails there even though local folders load). Nothing touches the network."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import textwrap

from diffusers_magihuman.testing_utils import make_tiny_pipeline


SHA = "0123456789abcdef0123456789abcdef01234567"
REPO_ID = "org/tiny-magihuman"  # exists only in the simulated cache below


def _fake_hub(root, src: str | None = None, repo_id: str = REPO_ID) -> str:
    from huggingface_hub._tree_cache import TreeCacheEntry, write_tree_cache

    if src is None:
        src = os.path.join(root, "src")
        make_tiny_pipeline().save_pretrained(src)
    repo = os.path.join(root, "hub", "models--" + repo_id.replace("/", "--"))
    snap = os.path.join(repo, "snapshots", SHA)
    shutil.copytree(src, snap)
    os.makedirs(os.path.join(repo, "refs"))
    with open(os.path.join(repo, "refs", "main"), "w") as handle:
        handle.write(SHA)
    entries = {}
    for folder, _, files in os.walk(snap):
        for name in files:
            path = os.path.join(folder, name)
            with open(path, "rb") as handle:
                blob = hashlib.sha1(handle.read()).hexdigest()
            entries[os.path.relpath(path, snap)] = TreeCacheEntry(size=os.path.getsize(path), blob_id=blob)
    write_tree_cache(repo, SHA, entries)
    return os.path.join(root, "hub")


def test_repo_id_loads_through_hub_code_path(tmp_path):
    cache = _fake_hub(str(tmp_path))
    script = f"REPO_ID = {REPO_ID!r}\n" + textwrap.dedent(
        """
        import diffusers, diffusers_magihuman
        a = diffusers_magihuman.MagiHumanPipeline.from_pretrained(REPO_ID)
        b = diffusers.DiffusionPipeline.from_pretrained(REPO_ID)
        print(type(a).__name__, type(b).__name__, type(b.transformer).__name__, b.scheduler.config.sampler)
        """
    )
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HUB_CACHE=cache, HF_HOME=str(tmp_path / "home"))
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "MagiHumanPipeline MagiHumanPipeline MagiHumanTransformer3DModel dmd" in result.stdout


def test_converted_folder_with_model_card_loads_by_repo_id(tmp_path):
    """A folder written by the converter, uploaded as it is (model card included), loads by repo id with
    `DiffusionPipeline.from_pretrained(repo_id)` after `import diffusers_magihuman` (from a Hub cache made on disk
    here, offline); the card's metadata is what
    the Hub reads."""
    from pathlib import Path

    from diffusers_magihuman.conversion.convert_magihuman_to_diffusers import main as convert_main

    dit = Path(__file__).parent / "fixtures" / "upstream_dit" / "tiny_a_seed0"
    src = tmp_path / "magihuman-distill"
    convert_main(["--checkpoint", str(dit / "checkpoint"), "--config", str(dit / "config.json"), "--variant", "distill",
                  "--output", str(src)])  # fmt: skip
    card = (src / "README.md").read_text()
    assert card.startswith("---\nlicense: apache-2.0\nlibrary_name: diffusers\npipeline_tag: text-to-video\n")
    repo_id = "org/magihuman-distill"
    cache = _fake_hub(str(tmp_path), str(src), repo_id)
    script = f"REPO_ID = {repo_id!r}\n" + textwrap.dedent(
        """
        import diffusers, diffusers_magihuman
        # converted from the DiT checkpoint alone: the other components are passed (here as None)
        pipe = diffusers.DiffusionPipeline.from_pretrained(
            REPO_ID, vae=None, audio_vae=None, text_encoder=None, tokenizer=None
        )
        print(type(pipe).__name__, type(pipe.transformer).__name__, pipe.scheduler.config.sampler)
        """
    )
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HUB_CACHE=cache, HF_HOME=str(tmp_path / "home"))
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "MagiHumanPipeline MagiHumanTransformer3DModel dmd" in result.stdout
