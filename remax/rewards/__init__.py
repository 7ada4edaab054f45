"""Rewards: the protocol `(prompts, responses, **row) -> Tensor (B,) float32` and the
scorers that follow it: VADER sentiment, Python callables and Hugging Face reward
models. `build_reward` turns the `reward.*` config options into one of them.

Importing this package does not import transformers: `RewardModelReward` does, when
it is built.
"""

from __future__ import annotations

from remax.rewards.base import RewardFunction, as_reward_tensor, check_batch
from remax.rewards.model import RewardModelReward
from remax.rewards.python import PythonReward, load_callable
from remax.rewards.vader import VaderReward

KINDS = ("vader", "python", "model")

__all__ = [
    "KINDS",
    "PythonReward",
    "RewardFunction",
    "RewardModelReward",
    "VaderReward",
    "as_reward_tensor",
    "build_reward",
    "check_batch",
    "load_callable",
]


def build_reward(
    kind: str,
    *,
    function: str | None = None,
    model: str | None = None,
    device: str = "cpu",
    batch_size: int = 32,
    max_length: int = 1024,
) -> RewardFunction:
    """Build the reward named by `kind`: "vader", "python" (needs `function`, a
    "module:function" or "file.py:function" spec) or "model" (needs `model`, a hub name
    or local path of a sequence-classification reward model)."""
    if kind == "vader":
        return VaderReward()
    if kind == "python":
        if not function:
            raise ValueError(
                "reward kind 'python' needs --reward.function module:function (or path/to/file.py:function)"
            )
        return PythonReward(load_callable(function), name=function)
    if kind == "model":
        if not model:
            raise ValueError("reward kind 'model' needs --reward.model NAME_OR_PATH")
        return RewardModelReward(model, device=device, batch_size=batch_size, max_length=max_length)
    raise ValueError(f"unknown reward kind {kind!r}; expected one of {KINDS}")
