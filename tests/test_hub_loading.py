"""Loading by repo id through the Hub code path, offline: a simulated Hub cache (snapshot + refs + tree listing)
read with HF_HUB_OFFLINE=1, so diffusers' `download()` runs its file-list checks (spec diffusers.md §0.3-0.4: an
unregistered out-of-tree package fails there even though local folders load). Nothing touches the network."""

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


def _fake_hub(root) -> str:
    from huggingface_hub._tree_cache import TreeCacheEntry, write_tree_cache

    src = os.path.join(root, "src")
    make_tiny_pipeline().save_pretrained(src)
    repo = os.path.join(root, "hub", "models--" + REPO_ID.replace("/", "--"))
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
