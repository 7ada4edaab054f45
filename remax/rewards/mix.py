"""A weighted sum of reward sources: r(x, a) = sum_i w_i * r_i(x, a), e.g. a reward model
plus a Python length penalty. Each source is any `RewardFunction`; all see the same
batch (sampled and greedy responses together, as ReMax scores them), so the greedy
baseline b is the same weighted sum of the sources' greedy scores.

The per-source scores of the last call stay on the mix as `last_components`
(name -> (N,) tensor, unweighted); the trainer logs them through `source_metrics`, one
`reward/NAME` per source, without knowing what a mix is.
"""

from __future__ import annotations

import math
import re
from typing import Any, Sequence

import torch

from remax.rewards.base import RewardFunction, RewardValueError, as_reward_tensor, check_batch

_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")
RESERVED = ("skipped_batches", "rm_truncated")  # reward/NAME metrics the trainer and the reward model log


class MixReward:
    """`sources`: (name, weight, reward) triples; the call returns the (N,) weighted sum."""

    def __init__(self, sources: Sequence[tuple[str, float, RewardFunction]]):
        if not sources:
            raise ValueError("reward kind 'mix' needs reward.sources: a list of {name, kind, weight, ...}")
        names = [name for name, _, _ in sources]
        for name, weight, fn in sources:
            if not isinstance(name, str) or not _NAME.match(name) or name in RESERVED:
                raise ValueError(f"reward source name {name!r} must be letters, digits, '_', '.' or '-' "
                                 f"(logged as reward/NAME) and not {', '.join(RESERVED)}")
            if names.count(name) > 1:
                raise ValueError(f"reward source name {name!r} is used twice; give each source its own name")
            if not isinstance(weight, (int, float)) or not math.isfinite(weight):
                raise ValueError(f"reward source {name!r} needs a finite weight, got {weight!r}")
            if not callable(fn):
                raise ValueError(f"reward source {name!r} is a {type(fn).__name__}, not a reward function")
        self.sources = [(name, float(weight), fn) for name, weight, fn in sources]
        self.name = "mix(" + " + ".join(f"{w:g}*{n}" for n, w, _ in self.sources) + ")"
        self.last_components: dict[str, torch.Tensor] = {}

    def __call__(self, prompts: list[Any], responses: list[str], **row: list[Any]) -> torch.Tensor:
        check_batch(prompts, responses, row, self.name)
        n = len(prompts)
        components = {}
        for name, _, fn in self.sources:
            try:
                components[name] = as_reward_tensor(fn(prompts, responses, **row), n, name)
            except RewardValueError as err:  # name the source; keep the offending row for the guard
                raise RewardValueError(self.name, f"source {name!r} {err.detail}", err.index) from None
        total = torch.zeros(n, dtype=torch.float32)
        for name, weight, _ in self.sources:
            total += weight * components[name]  # (N,)
        self.last_components = components
        return total

    def __repr__(self) -> str:
        return f"MixReward({self.name})"


def source_metrics(reward_fn: Any, n_sampled: int) -> dict[str, float]:
    """`reward/NAME`: each source's unweighted mean over the first `n_sampled` rows (the
    sampled responses) of the reward's last call; {} for a reward without sources. Plus the
    counters a scorer keeps of its last call (`last_metrics`, e.g. the reward model's
    `reward/rm_truncated`), summed over a mix's sources."""
    components = getattr(reward_fn, "last_components", None) or {}
    metrics = {
        f"reward/{name}": float(scores[:n_sampled].mean())
        for name, scores in components.items()
        if len(scores) >= n_sampled > 0
    }
    for fn in [reward_fn] + [fn for _, _, fn in getattr(reward_fn, "sources", [])]:
        for key, value in (getattr(fn, "last_metrics", None) or {}).items():
            metrics[key] = metrics.get(key, 0.0) + float(value)
    return metrics
