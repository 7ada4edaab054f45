"""Algorithm specs: ReMax (Li et al., arXiv 2310.10505) and its comparison points,
each described by data so that the trainer never branches on an algorithm's name.

The trainer asks a spec what to do: roll out greedily too (`needs_greedy`), keep a
critic (`needs_critic`), how many samples per prompt are allowed (`check_samples`),
which loss to use, where the KL goes by default, and whether the update is on-policy
(one update per rollout, no ratio: the log-probs computed with grad are reused,
detached, for the KL penalty, so no extra forward pass). `advantage` maps
((B*n,) rewards, (B,) greedy rewards or None, n) -> (B*n,) advantages; it is None
for PPO, whose advantages come from `returns.gae` with a learned critic.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch

from ._registry import Registry
from .advantages import (
    greedy_baseline_advantages,
    grpo_advantages,
    reinforce_advantages,
    rloo_advantages,
)
from .returns import KL_PLACEMENTS

AdvantageFn = Callable[[torch.Tensor, Optional[torch.Tensor], int], torch.Tensor]

BASELINES = ("greedy", "none", "leave_one_out", "group_mean_std", "critic")
LOSSES = ("policy_gradient", "ppo_clip")


@dataclass(frozen=True)
class Algorithm:
    name: str
    """Registry key, e.g. "remax"."""
    baseline: str
    """One of BASELINES: what is subtracted from the reward."""
    min_samples: int
    """Fewest samples per prompt that the baseline works with."""
    max_samples: Optional[int]
    """Most samples per prompt (None: no limit)."""
    needs_greedy: bool
    """Roll out a greedy response per prompt and score it (ReMax's baseline)."""
    needs_critic: bool
    """Keep a value model and its optimizer (PPO)."""
    loss: str
    """One of LOSSES."""
    default_kl_placement: str
    """One of returns.KL_PLACEMENTS, used unless the config overrides it."""
    on_policy: bool
    """One update per rollout batch, no ratio: log-probs with grad are reused detached."""
    advantage: Optional[AdvantageFn]
    """(rewards (B*n,), greedy_rewards (B,) or None, n) -> (B*n,); None: from GAE."""
    description: str = ""
    """One line for `--help` and docs."""

    def __post_init__(self) -> None:
        # catch a mistyped spec when it is registered, not mid-training
        for field, value, choices in (
            ("baseline", self.baseline, BASELINES),
            ("loss", self.loss, LOSSES),
            ("default_kl_placement", self.default_kl_placement, KL_PLACEMENTS),
        ):
            if value not in choices:
                raise ValueError(f"{self.name}: {field} {value!r} is not one of {choices}")
        lo, hi = self.min_samples, self.max_samples
        if lo < 1 or (hi is not None and hi < lo):
            raise ValueError(f"{self.name}: bad sample range [{lo}, {hi}]")
        if self.advantage is None and not self.needs_critic:
            raise ValueError(
                f"{self.name}: an algorithm without a critic needs an advantage function"
            )

    def check_samples(self, n: int) -> None:
        """Raise ValueError, naming the fix, if n samples per prompt do not fit."""
        if n < self.min_samples:
            raise ValueError(
                f"{self.name} needs n_samples >= {self.min_samples}, got {n}; "
                f"pass --rollout.n_samples {self.min_samples}"
            )
        if self.max_samples is not None and n > self.max_samples:
            limit = "==" if self.max_samples == self.min_samples else "<="
            raise ValueError(
                f"{self.name} needs n_samples {limit} {self.max_samples}, got {n}; "
                f"pass --rollout.n_samples {self.max_samples}"
            )


ALGORITHMS: Registry[Algorithm] = Registry("algorithm")


def register_algorithm(spec: Algorithm) -> Algorithm:
    """Add `spec` under `spec.name`; ValueError if the name is taken."""
    return ALGORITHMS.register(spec.name, spec)


def get_algorithm(name: str) -> Algorithm:
    """The spec registered as `name`; ValueError listing the known names otherwise."""
    return ALGORITHMS.get(name)


def list_algorithms() -> list[str]:
    """Registered algorithm names, in registration order."""
    return ALGORITHMS.names()


# adapters to the common (rewards, greedy_rewards, n) signature


def _remax_advantage(rewards, greedy_rewards, n):
    if greedy_rewards is None:
        raise ValueError("remax needs the greedy responses' rewards (greedy_rewards is None)")
    return greedy_baseline_advantages(rewards, greedy_rewards, n)


def _reinforce_advantage(rewards, greedy_rewards, n):
    return reinforce_advantages(rewards, n)


def _rloo_advantage(rewards, greedy_rewards, n):
    return rloo_advantages(rewards, n)


def _grpo_advantage(rewards, greedy_rewards, n):
    return grpo_advantages(rewards, n)


register_algorithm(Algorithm(
    name="remax", baseline="greedy", min_samples=1, max_samples=None,
    needs_greedy=True, needs_critic=False, loss="policy_gradient",
    default_kl_placement="token", on_policy=True, advantage=_remax_advantage,
    description="ReMax: REINFORCE with the greedy response's reward as baseline (the default)",
))
register_algorithm(Algorithm(
    name="reinforce", baseline="none", min_samples=1, max_samples=None,
    needs_greedy=False, needs_critic=False, loss="policy_gradient",
    default_kl_placement="token", on_policy=True, advantage=_reinforce_advantage,
    description="REINFORCE without a baseline (the ReMax paper's ablation)",
))
register_algorithm(Algorithm(
    name="rloo", baseline="leave_one_out", min_samples=2, max_samples=None,
    needs_greedy=False, needs_critic=False, loss="policy_gradient",
    default_kl_placement="token", on_policy=True, advantage=_rloo_advantage,
    description="REINFORCE leave-one-out: baseline is the mean reward of the other n-1 samples",
))
register_algorithm(Algorithm(
    name="grpo", baseline="group_mean_std", min_samples=2, max_samples=None,
    needs_greedy=False, needs_critic=False, loss="ppo_clip",
    default_kl_placement="loss", on_policy=False, advantage=_grpo_advantage,
    description="GRPO: group-normalised rewards, PPO clip loss and a separate k3 KL loss",
))
register_algorithm(Algorithm(
    name="ppo", baseline="critic", min_samples=1, max_samples=1,
    needs_greedy=False, needs_critic=True, loss="ppo_clip",
    default_kl_placement="token", on_policy=False, advantage=None,
    description="PPO with a learned value model and GAE (the paper's comparison point)",
))
