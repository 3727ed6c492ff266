import os

import pytest
import torch


def pytest_collection_modifyitems(config, items):
    """Skips, with the reason, what this machine or this run does not cover.

    * `@pytest.mark.gpu` tests need CUDA; they are skipped everywhere else, CI included.
    * `@pytest.mark.strict` tests demand bit-exact agreement with the original code's fixtures, which holds only on
      a CPU configuration like the one that produced them (tests/README.md, "Tolerances"); they run only with
      `MAGIHUMAN_STRICT=1`.
    """
    skip_gpu = None if torch.cuda.is_available() else pytest.mark.skip(reason="needs a CUDA device")
    skip_strict = (
        None
        if os.environ.get("MAGIHUMAN_STRICT") == "1"
        else pytest.mark.skip(reason="bit-exact on the fixtures' machine only; set MAGIHUMAN_STRICT=1 to run")
    )
    for item in items:
        if skip_gpu is not None and "gpu" in item.keywords:
            item.add_marker(skip_gpu)
        if skip_strict is not None and "strict" in item.keywords:
            item.add_marker(skip_strict)
