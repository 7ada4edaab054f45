"""`remax bench speed | memory | quality` end to end on the tiny size: the figures are
produced and sane (not fast). Each measured run is a real worker subprocess, as in use."""

from __future__ import annotations

import importlib.util
import json
import math

import pytest

from remax.bench import main as bench_main
from remax.errors import InputError

PNG = b"\x89PNG\r\n\x1a\n"
HAVE_TRL = importlib.util.find_spec("trl") is not None


@pytest.mark.slow
@pytest.mark.skipif(not HAVE_TRL, reason="TRL is not installed: pip install 'remax[bench]'")
def test_speed_with_trl_race_on_tiny_in_fp32_and_bf16(bench_root, tmp_path, capsys):
    out = tmp_path / "results"
    # remax at 2 x 2 serves as both a main run and the race's remax run; each side at each
    # precision: 4 worker processes
    argv = ["speed", "--size", "tiny", "--algos", "remax", "--prompts", "2", "--n", "2",
            "--max_new_tokens", "4", "--repeats", "1", "--warmup", "0", "--steps", "1", "--trl", "True",
            "--trl_prompts", "2", "--trl_n", "2", "--trl_algos", "remax", "--mixed_precision", "no", "bf16",
            "--out", str(out), "--work_dir", str(bench_root)]
    assert bench_main(argv) == 0
    assert "| remax@bf16 | 2x2 |" in capsys.readouterr().out
    raw = json.loads((out / "speed-tiny.json").read_text())
    assert set(raw["runs"]) == {"remax@no", "remax@bf16", "race/trl-grpo@no", "race/trl-grpo@bf16"}
    # the precision reached each side (what the run resolved: remax's Precision, TRL's accelerator)
    for run, runs in raw["runs"].items():
        assert runs[0]["mixed_precision"] == run.rsplit("@", 1)[1], run
    for algo, s in raw["summary"].items():
        parts = sum(s[f"{p}_s"] for p in ("rollout", "score", "prepare", "update"))
        assert 0 < parts <= s["step_s"] * 1.001, algo
        assert s["peak_mem_mb"] > s["base_rss_mb"] > 0
        assert s["generated_tok_per_s"] > 0 and s["steps_timed"] == 1
        for phase in ("rollout", "prepare", "update"):  # a phase cannot beat matmul speed by much
            assert s[f"{phase}_floor_s"] > 0 and s[f"{phase}_x_floor"] > 0.5, (algo, phase)
    assert "step_vs_ppo" not in raw["summary"]["remax@no"]  # no PPO run, no ratio to it
    race = raw["race"]
    for mode in ("no", "bf16"):  # each precision raced against TRL at the same precision
        mine, trl = race[f"race/remax@{mode}"], race[f"race/trl-grpo@{mode}"]
        assert mine["sampled_tokens"] > 0 and trl["sampled_tokens"] > 0
        ratio = trl["s_per_1k_sampled"] / mine["s_per_1k_sampled"]
        assert mine["trl_over_this"] == pytest.approx(ratio)
        assert mine["trl_over_this_range"] == pytest.approx([ratio, ratio])  # one repetition
    rows = {(r["run"], r["precision"]): r for r in raw["precision"]}
    assert set(rows) == {(run, mode) for run in ("remax", "race/trl-grpo") for mode in ("no", "bf16")}
    assert rows[("remax", "no")]["speedup"] == pytest.approx(1.0)
    bf16 = rows[("remax", "bf16")]
    assert bf16["speedup"] == pytest.approx(rows[("remax", "no")]["s_per_1k_sampled"] / bf16["s_per_1k_sampled"])
    text = (out / "speed-tiny.md").read_text()
    assert "Race against TRL" in text and "against the same run at no" in text


def test_speed_refuses_bad_precisions():
    from remax.bench.speed import check_precisions

    check_precisions(["no", "bf16"], "cpu", trl=True)
    with pytest.raises(InputError, match="not one of no, bf16, fp16"):
        check_precisions(["fp8"], "cpu", trl=False)
    with pytest.raises(InputError, match="named twice"):
        check_precisions(["bf16", "bf16"], "cpu", trl=False)
    with pytest.raises(InputError, match="use no or bf16 on CPU"):
        check_precisions(["fp16"], "cpu", trl=True)


@pytest.mark.slow
def test_memory_on_tiny(bench_root, tmp_path):
    out = tmp_path / "results"
    # one worker (remax); the PPO count is checked in-process in test_figures.py
    argv = ["memory", "--sizes", "tiny", "--algos", "remax", "--prompts", "2", "--max_new_tokens", "4",
            "--out", str(out), "--work_dir", str(bench_root)]
    assert bench_main(argv) == 0
    rows = {r["algo"]: r for r in json.loads((out / "memory.json").read_text())["rows"]}
    assert rows["remax"]["count_per_param"] == pytest.approx(20.0)
    assert math.isnan(rows["remax"]["count_mb_vs_ppo"])  # no PPO run
    # tiny's peak can be reached before the model loads (see benchmarks/README.md), hence >=
    assert rows["remax"]["peak_mb"] >= rows["remax"]["base_mb"] > 0
    assert (out / "memory.png").read_bytes().startswith(PNG)
    assert "| tiny |" in (out / "memory.md").read_text()


@pytest.mark.slow
def test_quality_on_tiny(tiny_dir, tmp_path):
    out = tmp_path / "results"
    argv = ["quality", "--model", str(tiny_dir), "--algos", "remax", "reinforce", "--seeds", "2", "--steps", "2",
            "--batch_size", "4", "--n_eval", "4", "--evals", "1", "--max_new_tokens", "4", "--kl_sweep", "0.5",
            "--sweep_algos", "remax", "--grad_algos", "remax", "reinforce", "--grad_samples", "2",
            "--out", str(out)]
    assert bench_main(argv) == 0
    raw = json.loads((out / "quality.json").read_text())
    per = raw["summary"]["per_algo"]
    assert set(per) == {"remax", "reinforce"}
    for algo, p in per.items():
        assert -1.0 <= p["reward"][0] <= 1.0 and math.isfinite(p["kl"][0])  # VADER compound is in [-1, 1]
        assert [e["step"] for e in p["curve"]] == [0, 1, 2]
        assert p["step_s"] > 0
    for runs in raw["runs"].values():
        assert len(runs) == 2 and all(len(r["history"]) == 2 for r in runs)
        assert runs[0]["evals"][0]["kl"] == pytest.approx(0.0, abs=1e-6)  # the policy starts at the reference
    assert [(r["algo"], r["kl_coef"]) for r in raw["sweep"]] == [("remax", 0.5)]
    grad = raw["gradvar"]
    assert sorted((r["algo"], r["step"]) for r in grad) == [(a, s) for a in ("reinforce", "remax") for s in (0, 1, 2)]
    # a random tiny model's responses rarely carry sentiment: all-zero rewards give zero gradients,
    # so only sanity here (test_gradient_variance_with_a_varying_reward checks the figures themselves)
    assert all(r["trace_cov"] >= 0 and math.isfinite(r["mean_norm2"]) for r in grad)
    assert all(r["vs_remax"] == 1.0 for r in grad if r["algo"] == "remax" and r["trace_cov"] > 0)
    for name in ("quality_curves.png", "quality_frontier.png", "quality_gradvar.png"):
        assert (out / name).read_bytes().startswith(PNG)
    assert "Gradient variance" in (out / "quality.md").read_text()


def test_gradient_variance_with_a_varying_reward(varying_reward_task):
    """Repeated gradient estimates at one snapshot differ (fresh samples each time), and the
    weights are restored after each, so every estimate is taken at the snapshot."""
    from remax.bench import quality

    rows = quality.gradient_variance(*varying_reward_task)
    assert [(r["algo"], r["step"]) for r in rows] == [("remax", 0), ("reinforce", 0)]
    assert all(r["trace_cov"] > 0 and r["mean_norm2"] > 0 for r in rows)
    assert rows[0]["vs_remax"] == 1.0 and rows[1]["vs_remax"] == rows[1]["trace_cov"] / rows[0]["trace_cov"]


@pytest.mark.parametrize("argv, message", [
    (["nope"], "unknown bench 'nope'"),
    (["speed", "--size", "0.5b", "--device", "cpu"], "runs only on a CUDA GPU"),
    (["speed", "--algos", "nope"], "unknown algorithm 'nope'"),
    (["memory", "--steps", "1"], "--steps must be >= 2"),
    (["quality", "--model", "/no/such/dir"], "no such directory"),
    (["quality", "--grad_samples", "1"], "--grad_samples must be >= 2"),
])
def test_bad_options_are_one_line_input_errors(argv, message):
    with pytest.raises(InputError, match=message.replace("(", r"\(")):
        bench_main(argv)


def test_cli_prints_one_line_and_exits_2(capsys):
    from remax.cli import main

    assert main(["bench", "memory", "--steps", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--steps must be >= 2" in err and len(err.splitlines()) == 1
