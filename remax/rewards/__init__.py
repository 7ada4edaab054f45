"""Rewards: the protocol `(prompts, responses, **row) -> Tensor (B,) float32` and the
scorers that follow it: VADER sentiment, Python callables, Hugging Face reward models,
a remote `remax serve-reward` server (HTTP) and weighted mixes of these.
`build_reward` turns the `reward.*` config options into one of them.

Importing this package does not import transformers: `RewardModelReward` does, when
it is built.
"""

from __future__ import annotations

from typing import Any, Sequence

from remax.rewards.base import RewardFunction, as_reward_tensor, check_batch
from remax.rewards.http import HttpReward, RewardServerError
from remax.rewards.mix import MixReward, source_metrics
from remax.rewards.model import RewardModelReward
from remax.rewards.python import PythonReward, load_callable
from remax.rewards.vader import VaderReward

KINDS = ("vader", "python", "model", "http", "mix")

__all__ = [
    "KINDS",
    "HttpReward",
    "MixReward",
    "PythonReward",
    "RewardFunction",
    "RewardModelReward",
    "RewardServerError",
    "VaderReward",
    "as_reward_tensor",
    "build_reward",
    "check_batch",
    "load_callable",
    "reward_from_config",
    "source_metrics",
]


def build_reward(
    kind: str,
    *,
    function: str | None = None,
    model: str | None = None,
    url: str | None = None,
    sources: Sequence[Any] = (),
    device: str = "cpu",
    batch_size: int = 32,
    max_length: int = 1024,
    http: dict[str, Any] | None = None,
) -> RewardFunction:
    """Build the reward named by `kind`: "vader", "python" (needs `function`, a
    "module:function" or "file.py:function" spec), "model" (needs `model`, a hub name
    or local path of a sequence-classification reward model), "http" (needs `url`, a
    `remax serve-reward` server; `http` holds HttpReward's options) or "mix" (needs
    `sources`: items with name, kind, weight and that kind's field, as RewardSource)."""
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
    if kind == "http":
        if not url:
            raise ValueError("reward kind 'http' needs --reward.url http://HOST:PORT (start the server with remax serve-reward)")
        return HttpReward(url, **(http or {}))
    if kind == "mix":
        return MixReward([_source(s, device, batch_size, max_length, http) for s in sources])
    raise ValueError(f"unknown reward kind {kind!r}; expected one of {KINDS}")


def _source(source: Any, device: str, batch_size: int, max_length: int, http: dict[str, Any] | None):
    """(name, weight, reward) of one mix source (a RewardSource or a mapping)."""
    get = source.get if isinstance(source, dict) else lambda key, default=None: getattr(source, key, default)
    name, kind = get("name"), get("kind", "python")
    if kind == "mix":
        raise ValueError(f"reward source {name!r}: a mix cannot hold another mix; list its sources directly")
    try:
        fn = build_reward(kind, function=get("function"), model=get("model"), url=get("url"), device=device,
                          batch_size=batch_size, max_length=max_length, http=http)
    except ValueError as err:
        raise ValueError(f"reward source {name!r}: {err}") from None
    return name, get("weight", 1.0), fn


def reward_from_config(reward: Any, device: str = "cpu") -> RewardFunction:
    """`build_reward` from a `remax.config.RewardConfig`."""
    http = dict(token_env=reward.token_env, timeout_s=reward.request_timeout_s,
                retries=reward.retries, backoff_s=reward.retry_backoff_s)
    return build_reward(reward.kind, function=reward.function, model=reward.model, url=reward.url,
                        sources=reward.sources, device=device, batch_size=reward.batch_size,
                        max_length=reward.max_length, http=http)
