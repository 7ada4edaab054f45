"""Weighted reward mixes: hand-computed sums, per-source metrics, errors that name the
source, the YAML shape of reward.sources, and a training run that logs reward/NAME."""

from __future__ import annotations

import json
import math
import textwrap

import pytest
import torch

from remax.config import ConfigError, RewardSource, load_config
from remax.rewards import MixReward, PythonReward, build_reward, source_metrics
from remax.rewards.base import RewardValueError
from remax.trainer.guards import RewardFailure, call_reward


def length(prompts, responses):
    return [float(len(r)) for r in responses]


def one(prompts, responses):
    return [1.0] * len(responses)


def test_weighted_sum_by_hand():
    mix = MixReward([("len", 0.5, PythonReward(length)), ("one", -2.0, PythonReward(one))])
    out = mix(["p", "q", "r"], ["ab", "abcd", ""])
    # 0.5 * [2, 4, 0] - 2 * [1, 1, 1] = [-1, 0, -2]
    assert out.tolist() == [-1.0, 0.0, -2.0]
    assert mix.last_components["len"].tolist() == [2.0, 4.0, 0.0]
    assert mix.name == "mix(0.5*len + -2*one)"
    # the first n rows are the sampled ones: their unweighted means, one metric per source
    assert source_metrics(mix, 2) == {"reward/len": 3.0, "reward/one": 1.0}
    assert source_metrics(PythonReward(length), 2) == {}  # a single reward adds nothing


def test_a_failing_source_is_named_with_its_row():
    def nan_second(prompts, responses):
        return [0.0, math.nan]

    mix = MixReward([("len", 1.0, PythonReward(length)), ("judge", 1.0, PythonReward(nan_second))])
    with pytest.raises(RewardValueError) as err:
        mix(["p", "q"], ["a", "b"])
    assert err.value.index == 1 and "source 'judge'" in str(err.value)
    with pytest.raises(RewardFailure, match=r"reward 'mix\(1\*len \+ 1\*judge\)' at step 4: source 'judge' returned "
                                           r"1 non-finite value.*row 1: prompt 'q'"):
        call_reward(mix, ["p", "q"], ["a", "b"], {}, step=4)


@pytest.mark.parametrize("sources, message", [
    ([], "needs reward.sources"),
    ([("a", 1.0, one), ("a", 2.0, one)], "'a' is used twice"),
    ([("a b", 1.0, one)], "must be letters, digits"),
    ([("skipped_batches", 1.0, one)], "not skipped_batches"),
    ([("a", math.inf, one)], "finite weight"),
])
def test_bad_mixes(sources, message):
    with pytest.raises(ValueError, match=message):
        MixReward(sources)


def test_build_reward_mix_from_config_items(tmp_path):
    (tmp_path / "r.py").write_text("def short(prompts, responses):\n    return [-len(r) / 10 for r in responses]\n")
    mix = build_reward("mix", sources=[
        RewardSource(name="brevity", kind="python", weight=2.0, function=f"{tmp_path / 'r.py'}:short"),
        {"name": "sentiment", "kind": "vader"},  # weight defaults to 1
    ])
    out = mix(["p", "p"], ["good", "bad day"])
    vader = build_reward("vader")(["p", "p"], ["good", "bad day"])
    assert torch.allclose(out, 2.0 * torch.tensor([-0.4, -0.7]) + vader)
    with pytest.raises(ValueError, match=r"reward source 'x': reward kind 'python' needs --reward.function"):
        build_reward("mix", sources=[{"name": "x", "kind": "python"}])
    with pytest.raises(ValueError, match="a mix cannot hold another mix"):
        build_reward("mix", sources=[{"name": "x", "kind": "mix"}])


def test_sources_in_yaml_and_on_the_command_line(tmp_path):
    from remax.cli import parse_train_args

    cfg = tmp_path / "run.yaml"
    cfg.write_text(textwrap.dedent("""\
        reward:
          kind: mix
          sources:
            - {name: rm, kind: model, model: path/to/rm, weight: 1.0}
            - name: brevity
              kind: python
              function: rewards.py:short
              weight: "5e-1"
        """))
    sources = load_config(cfg).reward.sources
    assert sources == [RewardSource(name="rm", kind="model", model="path/to/rm"),
                       RewardSource(name="brevity", function="rewards.py:short", weight=0.5)]
    assert parse_train_args(["--config", str(cfg), "--reward.sources.1.weight", "2"]).reward.sources[1].weight == 2.0
    cfg.write_text("reward:\n  sources:\n    - {name: rm, wieght: 1}\n")
    with pytest.raises(ConfigError, match=r"unknown config key 'reward.sources\[0\].wieght'; did you mean 'reward.sources\[0\].weight'"):
        load_config(cfg)
    cfg.write_text("reward:\n  sources: rm\n")
    with pytest.raises(ConfigError, match=r"reward.sources: expected a list of mappings"):
        load_config(cfg)


def test_training_with_a_reward_model_plus_a_length_penalty_logs_each(assets_dir, reward_model_dir, tmp_path):
    """The issue's example: a reward model plus a Python length penalty, each as reward/NAME."""
    from remax.cli import main

    (tmp_path / "pen.py").write_text("def penalty(prompts, responses):\n    return [-len(r) / 10 for r in responses]\n")
    (tmp_path / "run.yaml").write_text(textwrap.dedent(f"""\
        reward:
          kind: mix
          sources:
            - {{name: rm, kind: model, model: {reward_model_dir}, weight: 1.0}}
            - {{name: length, kind: python, function: "{tmp_path / 'pen.py'}:penalty", weight: 0.5}}
        """))
    out = tmp_path / "run"
    argv = ["train", "--config", str(tmp_path / "run.yaml"), "--output_dir", str(out),
            "--model.policy", str(assets_dir / "policy"), "--data.train_file", str(assets_dir / "prompts.jsonl"),
            "--rollout.max_new_tokens", "4", "--train.steps", "2", "--train.batch_size", "2",
            "--log.progress", "False", "--log.plot", "False"]
    assert main(argv) == 0
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(lines) == 2
    for m in lines:
        # the mean of a weighted sum is the weighted sum of the means
        assert m["rollout/reward_mean"] == pytest.approx(m["reward/rm"] + 0.5 * m["reward/length"], abs=1e-5)
        assert m["reward/length"] <= 0
