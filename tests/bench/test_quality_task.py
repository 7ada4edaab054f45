"""`remax bench quality --task arithmetic | rm`: the figures' arithmetic by hand, the offset
test's invariance, and both tasks end to end on tiny models."""

from __future__ import annotations

import json
import math

import pytest

from remax.bench import main as bench_main
from remax.bench import quality

PNG = b"\x89PNG"


def test_matched_tokens_first_reach_and_zero_advantage_share_by_hand():
    curve = [{"reward": 0.2, "gen_tokens": 0.0, "wall_s": 0.0}, {"reward": 0.4, "gen_tokens": 100.0, "wall_s": 10.0},
             {"reward": 0.8, "gen_tokens": 300.0, "wall_s": 30.0}]
    # 200 tokens: halfway from 100 to 300 -> 0.4 + 0.5 * 0.4 = 0.6
    assert quality.matched_kl_reward(curve, 200.0, x="gen_tokens") == pytest.approx(0.6)
    assert math.isnan(quality.matched_kl_reward(curve, 400.0, x="gen_tokens"))
    # reward 0.5 first reached a quarter of the way from 10 s to 30 s -> 15 s
    assert quality.first_reach(curve, "reward", 0.5) == pytest.approx(15.0)
    assert quality.first_reach(curve, "reward", 0.1) == 0.0 and math.isnan(quality.first_reach(curve, "reward", 0.9))
    hist = [{"step": 1, "right_frac": 0.5, "right_tied_frac": 0.25}, {"step": 2, "right_frac": 0.25, "right_tied_frac": 0.25},
            {"step": 3, "right_frac": 0.25, "right_tied_frac": 0.0}]
    z = quality.zero_adv_share([{"history": hist}])
    # (0.25 + 0.25 + 0) / (0.5 + 0.25 + 0.25) = 0.5; first third: step 1 -> 0.5; last third: step 3 -> 0
    assert (z["all"], z["first_third"], z["last_third"], z["right_frac"]) == (0.5, 0.5, 0.0, pytest.approx(1 / 3))
    assert quality.zero_adv_share([{"history": [{"step": 1}]}]) is None


def test_offset_reward_and_task_defaults():
    r = quality.OffsetReward(lambda p, rs, **c: [float(len(x)) for x in rs], 5.0)
    assert r(["a", "b"], ["xy", ""]).tolist() == [7.0, 5.0]
    cfg = quality.QualityConfig(task="arithmetic", steps=7)
    quality.apply_task_defaults(cfg)
    assert cfg.steps == 7  # given: kept
    assert cfg.algos == ("remax", "rloo", "grpo", "batch_mean") and cfg.max_new_tokens == 4  # defaults: the task's
    vader = quality.QualityConfig()
    quality.apply_task_defaults(vader)
    assert vader == quality.QualityConfig()


def test_a_constant_offset_leaves_remax_gradients_and_grows_reinforce_variance(varying_reward_task):
    task, snapshots, cfg = varying_reward_task
    plain = {r["algo"]: r["trace_cov"] for r in quality.gradient_variance(task, snapshots, cfg)}
    shifted = {r["algo"]: r for r in quality.gradient_variance(task, snapshots, cfg, offset=10.0)}
    assert shifted["remax"]["offset"] == 10.0
    # same seeds, same samples: r + c - (b + c) = r - b, so ReMax's estimates are the same ones
    assert shifted["remax"]["trace_cov"] == pytest.approx(plain["remax"], rel=1e-4)
    assert shifted["reinforce"]["trace_cov"] > 2 * plain["reinforce"]  # measured ~100x at c = 10


@pytest.mark.slow
def test_quality_task_arithmetic_on_tiny(tmp_path):
    from remax.tasks.arithmetic import pretrain_arithmetic_model, problems

    model_dir = tmp_path / "arith"
    pretrain_arithmetic_model(str(model_dir), problems(), max_steps=10, target=1.01, log=lambda m: None,
                              model_kwargs=dict(n_layer=1, n_embd=16, n_head=2))
    out = tmp_path / "results"
    argv = ["quality", "--task", "arithmetic", "--model", str(model_dir), "--algos", "remax", "rloo", "batch_mean",
            "--seeds", "1", "--steps", "2", "--batch_size", "4", "--n_eval", "8", "--evals", "0", "--out", str(out)]
    assert bench_main(argv) == 0
    raw = json.loads((out / "quality.json").read_text())
    per = raw["summary"]["per_algo"]
    assert set(per) == {"remax", "rloo", "batch_mean"} and raw["label"] == "accuracy"
    for algo, p in per.items():
        assert 0.0 <= p["reward"][0] <= 1.0 and 0.0 <= p["greedy_reward"][0] <= 1.0  # accuracies
        assert [e["step"] for e in p["curve"]] == [0, 2] and p["curve"][-1]["gen_tokens"] > 0
    hist = raw["runs"]["remax"][0]["history"]
    assert all(0.0 <= h["right_tied_frac"] <= h["right_frac"] <= 1.0 for h in hist)
    # the share is reported where some sample was right (a 10-step model may get none right)
    assert ("zero_adv_share" in per["remax"]) == any(h["right_frac"] > 0 for h in hist)
    assert "zero_adv_share" not in per["rloo"]  # no greedy baseline
    # ReMax decodes a greedy row per prompt on top: more tokens for the same sampled rows (4 per step)
    assert per["remax"]["curve"][-1]["gen_tokens"] > per["batch_mean"]["curve"][-1]["gen_tokens"] / 4
    for name in ("quality_curves.png", "quality_heldout.png"):
        assert (out / name).read_bytes().startswith(PNG)
    assert "gen. tokens" in (out / "quality.md").read_text()


@pytest.mark.slow
def test_quality_task_rm_on_tiny(tiny_dir, tmp_path):
    out = tmp_path / "results"
    argv = ["quality", "--task", "rm", "--model", str(tiny_dir), "--cache_dir", str(tmp_path / "cache"),
            "--pair_prompts", "128", "--algos", "remax", "ppo", "--seeds", "2", "--grad_seeds", "2", "--steps", "2",
            "--batch_size", "4",
            "--n_eval", "6", "--evals", "0", "--max_new_tokens", "6", "--grad_samples", "2", "--offsets", "0", "3",
            "--out", str(out)]
    assert bench_main(argv) == 0
    raw = json.loads((out / "quality.json").read_text())
    per = raw["summary"]["per_algo"]
    for p in per.values():
        assert -1.0 <= p["gold_reward"][0] <= 1.0 and "gold_at_matched_kl" in p
    assert set(raw["summary"]["time_to_ppo_gold"]) == {"ppo_final_gold", "ppo_wall_s", "remax_wall_s"}
    snapshot_rows = [r for r in raw["gradvar"] if r.get("series") != "offset"]
    # every (run seed, snapshot, estimator) once; ratios against the same run's ReMax
    assert sorted((r["run_seed"], r["step"], r["algo"]) for r in snapshot_rows) == sorted(
        (s, t, a) for s in (0, 1) for t in (0, 1, 2) for a in ("remax", "reinforce"))
    assert all(r["vs_remax"] == 1.0 for r in snapshot_rows if r["algo"] == "remax" and r["trace_cov"] > 0)
    rows = {(r["algo"], r["step"], r["offset"]) for r in raw["gradvar"]}
    assert {("remax", 1, 3.0), ("reinforce", 1, 3.0), ("remax", 0, 0.0), ("reinforce", 2, 0.0)} <= rows
    series = {r["offset"]: r for r in raw["gradvar"] if r.get("series") == "offset" and r["algo"] == "remax"}
    # offsets 0 and 3 on the same samples: ReMax's gradient estimates are the same ones
    assert series[3.0]["trace_cov"] == pytest.approx(series[0.0]["trace_cov"], rel=1e-4)
    assert "zero_adv_share" not in per["remax"]  # a reward model's scores are not 0/1
    assert (out / "quality_overopt.png").read_bytes().startswith(PNG)
    assert (tmp_path / "demo-proxy-rm" / "proxy.json").is_file()  # the proxy, cached beside --cache_dir
