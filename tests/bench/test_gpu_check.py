"""benchmarks/gpu/check.sh where no GPU is: it says so in one line and exits 0, having built
nothing; its driver runs end to end on CPU with --tiny (a 2-layer Qwen2), so the flags it
passes to `remax train` and the metrics it reads are checked here. The GPU run itself is not."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "gpu" / "check.sh"


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    env.update(PYTHON=sys.executable, OMP_NUM_THREADS="1", **extra)
    return env


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is here: the check would run")
def test_no_cuda_device_is_one_line_and_exit_0(tmp_path):
    work = tmp_path / "work"
    done = subprocess.run(["bash", str(SCRIPT), "--workdir", str(work)], env=_env(CUDA_VISIBLE_DEVICES=""),
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "benchmarks/gpu/check: no CUDA device (torch.cuda.is_available() is False); nothing was run\n"
    assert done.stderr == "" and not work.exists()  # nothing built


def test_no_torch_is_one_line(tmp_path):
    bare = tmp_path / "python"  # this python without site-packages: no torch
    bare.write_text(f'#!/bin/sh\nexec {sys.executable} -S "$@"\n')
    bare.chmod(0o755)
    done = subprocess.run(["bash", str(SCRIPT)], env=dict(_env(), PYTHON=str(bare)), capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 2 and "torch is not installed" in done.stdout, done.stdout + done.stderr


def test_summarise_reads_perf_metrics():
    sys.path.insert(0, str(ROOT / "benchmarks" / "gpu"))
    try:
        from check import summarise, table
    finally:
        sys.path.pop(0)
    lines = [json.dumps({"step": i, "perf/step_s": s, "perf/tokens_per_s": t, "perf/peak_mem_mb": m})
             for i, (s, t, m) in enumerate([(9.0, 1.0, 1024), (2.0, 30.0, 2048), (4.0, 10.0, 1536)], 1)]
    lines.append(json.dumps({"step": 4, "perf/step_s": 3.0, "perf/tokens_per_s": 20.0, "perf/peak_mem_mb": 100,
                             "rollout/engine_probe_diff": 0.01}))
    row = summarise("remax", lines)
    assert row["step_s"] == 3.0 and row["tokens_per_s"] == 20.0  # medians without the first step
    assert row["peak_gib"] == 2.0 and row["probe_diff"] == 0.01 and row["steps"] == 4
    assert "| remax | 4 | 3.000 | 2.00 | 20.0 | 1.00e-02 |" in table([row], "h")


@pytest.mark.slow
def test_driver_runs_on_cpu_with_a_tiny_qwen2(tmp_path):
    work = tmp_path / "work"
    done = subprocess.run(["bash", str(SCRIPT), "--device", "cpu", "--tiny", "--steps", "2", "--batch", "2",
                           "--max-new", "8", "--workdir", str(work)], env=_env(), capture_output=True, text=True,
                          timeout=180)
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    rows = {r["run"]: r for r in json.loads((work / "results.json").read_text())["rows"]}
    for name in ("remax", "ppo"):
        assert rows[name]["status"] == "ok" and rows[name]["steps"] == 2
        assert rows[name]["step_s"] > 0 and rows[name]["tokens_per_s"] > 0 and rows[name]["peak_gib"] > 0
    assert rows["remax-vllm"]["status"] == "not run"  # no vLLM run off CUDA
    assert "| ppo | 2 |" in done.stdout and (work / "table.md").is_file()
    config = json.loads((work / "model" / "config.json").read_text())
    assert config["model_type"] == "qwen2" and config["num_key_value_heads"] == 2
