"""`remax train` end to end on a tiny model saved to disk, for every algorithm."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from remax.cli import main

COMMON_METRICS = {
    "step", "rollout/reward_mean", "kl/mean", "loss/policy", "perf/step_s", "perf/peak_mem_mb",
    "perf/rollout_s", "perf/score_s", "perf/prepare_s", "perf/update_s", "perf/tokens_per_s", "lr",
}


@pytest.mark.parametrize("algo", ["remax", "reinforce", "rloo", "grpo", "ppo", "batch_mean"])
def test_train_every_algorithm(algo, tmp_path, make_args, policy_dir):
    out = tmp_path / "run"
    args = make_args(out, algo) + ["--log.save_every", "1"]
    if algo in ("grpo", "ppo"):
        args += ["--loss.epochs", "2", "--loss.num_minibatches", "2"]
    assert main(["train", *args]) == 0

    lines = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in lines] == [1, 2]
    for m in lines:
        assert COMMON_METRICS <= set(m), COMMON_METRICS - set(m)
        assert all(v == v for v in m.values())  # no NaN
    assert ("rollout/baseline_reward_mean" in lines[0]) == (algo == "remax")
    assert ("loss/value" in lines[0]) == (algo == "ppo")
    assert ("loss/kl" in lines[0]) == (algo == "grpo")  # grpo's default KL placement is a loss term

    for d in ["final", "checkpoints/step-1/policy", "checkpoints/step-2/policy"]:
        assert (out / d / "config.json").is_file(), d
    assert (out / "checkpoints/step-2/trainer_state.pt").is_file()
    assert (out / "config.yaml").is_file() and (out / "reward_curve.png").stat().st_size > 1000
    if algo == "ppo":
        assert (out / "checkpoints/step-2/critic/value_head.safetensors").is_file()

    # final/ reloads with the stock Auto classes and differs from the starting weights
    trained = AutoModelForCausalLM.from_pretrained(out / "final")
    start = AutoModelForCausalLM.from_pretrained(policy_dir)
    tok = AutoTokenizer.from_pretrained(out / "final")
    assert tok.padding_side == "left"
    changed = [not torch.equal(a, b) for a, b in zip(trained.parameters(), start.parameters())]
    assert sum(changed) > len(changed) // 2


def test_yaml_config_with_dotted_overrides(tmp_path):
    import yaml

    from remax.cli import parse_train_args

    cfg = tmp_path / "run.yaml"
    cfg.write_text(yaml.safe_dump({"algo": "rloo", "rollout": {"temperature": 0.5, "n_samples": 4},
                                   "train": {"adam_betas": [0.8, 0.9]}}))
    c = parse_train_args(["--config", str(cfg), "--rollout.temperature", "0.7", "--algo", "grpo"])
    assert c.algo == "grpo" and c.rollout.temperature == 0.7 and c.rollout.n_samples == 4
    assert c.train.adam_betas == (0.8, 0.9) and c.train.lr == 1e-6  # untouched default


def test_resolved_config_is_written_and_reloads(tmp_path, make_args):
    from remax.config import load_config

    out = tmp_path / "run"
    assert main(["train", *make_args(out, steps=1),
                 "--loss.kl_coef", "0.3"]) == 0
    c = load_config(out / "config.yaml")
    assert c.loss.kl_coef == 0.3 and c.model.policy.endswith("policy")


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--algo", "rloo", "--rollout.n_samples", "1"], "n_samples"),
        (["--rollout.temperature", "0"], "temperature"),
        (["--loss.kl_placement", "reward_to_go", "--loss.gamma", "0.9"], "gamma"),
        (["--data.train_file", "/nonexistent.jsonl"], "not found"),
        (["--reward.function", "nosuchmodule_xyz:f"], "nosuchmodule_xyz"),
    ],
)
def test_bad_input_is_one_clear_line(extra, message, tmp_path, make_args, capsys):
    out = tmp_path / "run"
    assert main(["train", *make_args(out), *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err


def test_existing_run_is_not_overwritten(tmp_path, make_args, capsys):
    out = tmp_path / "run"
    args = make_args(out, steps=1)
    assert main(["train", *args]) == 0
    before = (out / "metrics.jsonl").read_text()
    assert main(["train", *args]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert (out / "metrics.jsonl").read_text() == before and (out / "final").is_dir()


def test_unknown_yaml_key_is_reported(tmp_path):
    from remax.cli import parse_train_args
    from remax.config import ConfigError

    cfg = tmp_path / "run.yaml"
    cfg.write_text("rollout:\n  temprature: 0.5\n")
    with pytest.raises(ConfigError, match="rollout.temprature"):
        parse_train_args(["--config", str(cfg)])
