"""Measures how far every checked deviation moves across CPU configurations (not a test; pytest does not collect it).

    PYTHONPATH=src python3 tests/measure_tolerances.py [--out DIR] [--configs NAME ...] [-- pytest args]

Runs the parity tests once per configuration below with `MAGIHUMAN_MEASURE` set (tests/_tolerances.py: every
`check` records its value and its limit instead of asserting), then prints one markdown row per check: the worst
value over its steps / layers in each configuration, the limit, and worst / limit. tests/README.md quotes the table.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from collections import defaultdict
from pathlib import Path


CONFIGS = {
    "default": {},
    "aten=default": {"ATEN_CPU_CAPABILITY": "default"},
    "aten=avx2": {"ATEN_CPU_CAPABILITY": "avx2"},
    "omp=1": {"OMP_NUM_THREADS": "1"},
    "omp=2": {"OMP_NUM_THREADS": "2"},
    "omp=8": {"OMP_NUM_THREADS": "8"},
    "dnnl=AVX2": {"ONEDNN_MAX_CPU_ISA": "AVX2"},
    "dnnl=SSE41": {"ONEDNN_MAX_CPU_ISA": "SSE41"},
    "aten=default,omp=1": {"ATEN_CPU_CAPABILITY": "default", "OMP_NUM_THREADS": "1"},
    "aten=avx2,dnnl=AVX2": {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"},
    "fpmath=bf16": {"ONEDNN_DEFAULT_FPMATH_MODE": "BF16", "DNNL_DEFAULT_FPMATH_MODE": "BF16"},
}

DEFAULT_TESTS = ["-m", "parity", "tests"]


def _key(record: dict) -> tuple[str, str]:
    test = record["test"].replace("tests/", "").replace(".py::", "::")
    what = re.sub(r"\b(step|layer|pred) \d+", r"\1 *", record["what"])  # worst over steps / layers
    return test, what


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=None, help="folder for the raw .jsonl files (default: a temp dir)")
    parser.add_argument("--configs", nargs="*", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("pytest_args", nargs="*", default=DEFAULT_TESTS)
    args = parser.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="magihuman-measure-"))
    out.mkdir(parents=True, exist_ok=True)

    worst: dict[tuple[str, str], dict[str, float]] = defaultdict(dict)
    limits: dict[tuple[str, str], float] = {}
    for name in args.configs:
        path = out / f"{re.sub(r'[^A-Za-z0-9]+', '_', name)}.jsonl"
        path.unlink(missing_ok=True)
        env = {**os.environ, **CONFIGS[name], "MAGIHUMAN_MEASURE": str(path)}
        cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args.pytest_args]
        result = subprocess.run(cmd, env=env, capture_output=True, text=True)
        print(f"# {name}: {result.stdout.strip().splitlines()[-1] if result.stdout.strip() else result.stderr[-500:]}",
              file=sys.stderr)  # fmt: skip
        if not path.exists():
            continue
        for line in path.read_text().splitlines():
            record = json.loads(line)
            key = _key(record)
            worst[key][name] = max(worst[key].get(name, 0.0), record["value"])
            limits[key] = max(limits.get(key, 0.0), record["limit"])

    print("| test | check | " + " | ".join(args.configs) + " | limit | worst/limit |")
    print("|---|---|" + "---|" * (len(args.configs) + 2))
    for key in sorted(worst):
        values = [worst[key].get(name) for name in args.configs]
        cells = ["-" if v is None else f"{v:.3g}" for v in values]
        top = max(v for v in values if v is not None)
        ratio = "-" if limits[key] == 0 and top == 0 else ("inf" if limits[key] == 0 else f"{top / limits[key]:.2g}")
        print(f"| {key[0]} | {key[1]} | " + " | ".join(cells) + f" | {limits[key]:.3g} | {ratio} |")
    print(f"raw records: {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
