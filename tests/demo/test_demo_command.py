"""`remax demo` end to end, shrunk: a few pretraining steps, two ReMax steps."""

from __future__ import annotations

import json

from remax.cli import main


def test_remax_demo_runs_and_reuses_its_cache(tmp_path, capsys):
    args = [
        "demo", "--cache_dir", str(tmp_path / "cache"), "--output_dir", str(tmp_path / "run"),
        "--pretrain_steps", "2", "--steps", "2", "--batch_size", "4", "--n_eval", "6",
        "--max_new_tokens", "6", "--show", "3",
    ]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "held-out mean reward" in out and out.count(" | ") >= 4  # header + 3 rows
    assert "held-out win rate of the trained policy" in out and "95% Wilson" in out
    scores = json.loads((tmp_path / "run" / "eval" / "eval.json").read_text())
    side = [json.loads(x) for x in (tmp_path / "run" / "eval" / "samples.jsonl").read_text().splitlines()]
    assert scores["n_prompts"] == len(side) == 6
    assert scores["win_rate/sampled_wins"] + scores["win_rate/sampled_ties"] + scores["win_rate/sampled_losses"] == 6
    assert f"[{scores['win_rate/sampled_ci_low']:.3f}, {scores['win_rate/sampled_ci_high']:.3f}]" in out
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 2 and "rollout/baseline_reward_mean" in json.loads(lines[0])
    assert (tmp_path / "run" / "final" / "config.json").is_file()
    info = json.loads((tmp_path / "cache" / "info.json").read_text())
    assert info["steps"] == 2

    assert main(args) == 0  # second run: pretrained model comes from the cache
    assert "(loaded from cache)" in capsys.readouterr().out
