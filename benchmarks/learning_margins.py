"""The range of every learning test's asserted quantity over seeds and thread counts.

Runs the tests marked `learning` (pytest -m learning) under REMAX_TEST_SEED_OFFSET = 0..N-1
and OMP_NUM_THREADS = 1 and 2, collects the value each test asserts on (the `record_outcome`
fixture of tests/conftest.py) and prints, per test, the bound it asserts against and the
min / median / max seen. A bound should sit well below the minimum: the margins in the tests'
comments come from this script.

    .venv/bin/python benchmarks/learning_margins.py --offsets 10
    .venv-vllm/bin/python benchmarks/learning_margins.py tests/vllm --offsets 10
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(paths: list[str], offsets: range, threads: list[int]) -> list[dict]:
    with tempfile.TemporaryDirectory() as tmp:
        record = Path(tmp) / "outcomes.jsonl"
        for t in threads:
            for k in offsets:
                env = {**os.environ, "REMAX_TEST_SEED_OFFSET": str(k), "OMP_NUM_THREADS": str(t),
                       "REMAX_TEST_RECORD": str(record)}
                cmd = [sys.executable, "-m", "pytest", "-q", "-m", "learning", "-p", "no:cacheprovider", *paths]
                proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
                last = proc.stdout.strip().splitlines()[-1:] or ["(no output)"]
                print(f"threads {t} offset {k}: {last[0]}", flush=True)
        return [json.loads(line) for line in record.read_text().splitlines()] if record.is_file() else []


def summarise(rows: list[dict]) -> str:
    groups: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for r in rows:
        groups[(r["test"], r["name"])].append(r)
    out = ["| test | quantity | bound | runs | min | median | max | below bound |", "|---|---|---|---|---|---|---|---|"]
    for (test, name), rs in sorted(groups.items()):
        v = [r["value"] for r in rs]
        below = sum(x <= rs[0]["bound"] for x in v)
        out.append(f"| {test} | {name} | {rs[0]['bound']:g} | {len(v)} | {min(v):.3f} | "
                   f"{statistics.median(v):.3f} | {max(v):.3f} | {below} |")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("paths", nargs="*", default=[], help="test paths (default: the whole suite)")
    ap.add_argument("--offsets", type=int, default=10, help="seed offsets FIRST..FIRST+N-1")
    ap.add_argument("--first", type=int, default=0, help="the first seed offset")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    args = ap.parse_args()
    print(summarise(run(args.paths, range(args.first, args.first + args.offsets), args.threads)))


if __name__ == "__main__":
    main()
