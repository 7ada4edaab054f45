"""`remax bench speed --backend vllm_server --async_steps 1`: the command end to end on the
tiny size (a server started by the worker on its own core), figures written."""

from __future__ import annotations

import json

import pytest


@pytest.mark.slow
def test_bench_speed_with_a_rollout_server_overlapped(tmp_path):
    from remax.cli import main

    code = main(["bench", "speed", "--size", "tiny", "--algos", "remax", "--backend", "vllm_server", "--async_steps",
                 "1", "--repeats", "1", "--warmup", "1", "--steps", "3", "--threads", "1", "--out", str(tmp_path),
                 "--work_dir", str(tmp_path / "models")])
    assert code == 0
    raw = json.loads((tmp_path / "speed-tiny.json").read_text())
    steps = raw["runs"]["remax"][0]["steps"]
    assert len(steps) == 3 and all(s["perf/step_s"] > 0 and "perf/sync_s" in s for s in steps)
    assert "rollout backend vllm_server, async_steps 1" in (tmp_path / "speed-tiny.md").read_text()


def test_bench_speed_refuses_async_without_a_server(capsys):
    from remax.cli import main

    assert main(["bench", "speed", "--size", "tiny", "--backend", "vllm", "--async_steps", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--async_steps 1: 0, or 1 with --backend vllm_server" in err[0]
