"""build_reward: config options -> a reward, with errors that name the missing option."""

from __future__ import annotations

import subprocess
import sys

import pytest

from remax.rewards import PythonReward, RewardModelReward, VaderReward, build_reward


def test_vader():
    reward = build_reward("vader")
    assert isinstance(reward, VaderReward)
    assert reward(["p"], ["What a lovely day!"]).item() > 0


def test_python(tmp_path):
    path = tmp_path / "my_reward.py"
    path.write_text("def f(prompts, responses, answer):\n    return [float(r == a) for r, a in zip(responses, answer)]\n")
    reward = build_reward("python", function=f"{path}:f")
    assert isinstance(reward, PythonReward)
    assert reward(["p", "q"], ["4", "5"], answer=["4", "4"]).tolist() == [1.0, 0.0]


def test_model(reward_model_dir):
    reward = build_reward("model", model=str(reward_model_dir), batch_size=2, max_length=16)
    assert isinstance(reward, RewardModelReward)
    assert reward.batch_size == 2 and reward.max_length == 16
    assert reward(["a", "b", "c"], ["x", "y", "z"]).shape == (3,)


@pytest.mark.parametrize(
    "kind, kwargs, match",
    [
        ("python", {}, r"reward kind 'python' needs --reward\.function module:function"),
        ("python", {"function": ""}, r"needs --reward\.function"),
        ("model", {}, r"reward kind 'model' needs --reward\.model"),
        ("sentiment", {}, r"unknown reward kind 'sentiment'; expected one of \('vader', 'python', 'model', 'http', 'mix'\)"),
        ("python", {"function": "nocolon"}, r"must look like"),
    ],
)
def test_errors(kind, kwargs, match):
    with pytest.raises(ValueError, match=match):
        build_reward(kind, **kwargs)


def test_import_is_light():
    code = "import sys, remax.rewards; sys.exit('transformers' in sys.modules or 'vaderSentiment' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
