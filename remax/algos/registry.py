"""Algorithm specs: ReMax (Li et al., arXiv 2310.10505) and the algorithms users
compare it with, each described by data and small hooks so that the trainer never
branches on an algorithm's name.

The trainer asks a spec what to do: roll out greedily too (`needs_greedy`), keep a
critic (`needs_critic`), how many samples per prompt are allowed (`check_samples`),
which policy loss to use (`loss`, a key of `policy_losses.POLICY_LOSSES`; whether the
update is one on-policy pass follows from it), where the KL goes by default, the
default aggregation and clip range, and four optional hooks: `advantage` maps
((B*n,) rewards, (B,) greedy rewards or None, n) -> (B*n,) advantages (None for PPO,
whose advantages come from `returns.gae` with a learned critic); `token_postprocess`
maps the whole batch's (N, T) token advantages to new ones (REINFORCE++'s global
whitening); `group_filter` maps ((B*n,) rewards, n) -> (B,) bool groups to keep, and
the trainer refills the batch from the sampler (DAPO's dynamic sampling);
`overlong_buffer` turns on DAPO's length penalty.

Notation: r_i the reward of sample i, b the greedy response's reward, groups of n
samples per prompt, kl_t per-token KL to the reference, rho_t = pi(a_t) / pi_old(a_t).

- remax (Li et al. 2023, arXiv 2310.10505, Algorithm 1): A_i = r_i - b(x_i), loss
  -sum_t G_t log pi with G_t = -beta kl_t + gamma^(T-t+1) A_i (the authors' code).
- reinforce (Williams 1992; the ReMax paper's ablation): A_i = r_i.
- rloo (Ahmadian et al. 2024, arXiv 2402.14740, eq. 7): A_i = r_i - mean_{j != i} r_j.
- grpo (Shao et al. 2024, arXiv 2402.03300, eq. 3): A_i = (r_i - mean_g r) / std_g r,
  PPO clip loss, k3 KL loss term.
- ppo (Schulman et al. 2017, arXiv 1707.06347; Ouyang et al. 2022): GAE advantages
  from a learned critic, clipped surrogate and clipped value loss.
- reinforce_pp (Hu et al. 2025, arXiv 2501.03262, sec. 3): the k1 KL in the reward,
  G_t = r_i - beta sum_{s>=t} kl_s, then A_t = (G_t - mean_batch G) / std_batch G over
  every token of the global batch; PPO clip loss.
- reinforce_pp_baseline (same paper, sec. 3.3): A_i = (r_i - mean_g r) /
  std_batch(r - mean_g r); PPO clip loss; the KL a separate k2 loss term.
- dr_grpo (Liu et al. 2025, arXiv 2503.20783, eq. 3): A_i = r_i - mean_g r (no std),
  PPO clip, loss sum_{i,t} / (N * max_new_tokens) (`seq_mean_token_sum_norm`).
- dapo (Yu et al. 2025, arXiv 2503.14476, eq. 8-13): GRPO's advantages; clip-higher
  rho clipped to [1 - 0.2, 1 + 0.28]; token-level mean over the global batch; dynamic
  sampling keeps groups whose rewards are not all equal and refills the batch; the
  soft overlong penalty over the last 20% of max_new_tokens; no KL term.
- gspo (Zheng et al. 2025, arXiv 2507.18071, eq. 5-7): GRPO's advantages; sequence
  ratio s_i = exp(mean_t log rho_t) clipped to [1 - 3e-4, 1 + 4e-4].
- batch_mean (OpenRLHF 0.11.2, PR #1339, the estimator of "FlashREINFORCE"): A_i = r_i -
  mean of the whole (global, all-reduced) batch's rewards, mean including r_i; n >= 1,
  meant for n = 1: one sample per prompt and no greedy decode. Only the estimator is the
  same: FlashREINFORCE also gates a truncated-IS correction against vLLM's log-probs on a
  per-sequence binary KL and averages the loss per sequence; here it is remax's plain
  policy gradient (one on-policy pass, token_mean, per-token KL) like reinforce and rloo,
  and `--loss.tis sequence` / `--loss.agg seq_mean_token_mean` add similar parts where wanted
  (a capped IS weight, not a KL gate).
- cispo (MiniMax 2025, arXiv 2506.13585, eq. 4): GRPO's advantages; loss
  -sg(clip(rho_t, 0, 1 + 0.28)) A_i log pi, token-level.

Departures: the KL stays a GRPO-style k3 loss term for dr_grpo, gspo and cispo (those
papers train with little or no KL; `--loss.kl_coef 0` removes it); DAPO's filter sees
the raw reward, before the overlong penalty (the paper filters on accuracy).
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
from .aggregation import AGGREGATIONS
from .kl import KL_ESTIMATORS
from .policy_losses import POLICY_LOSSES
from .returns import KL_PLACEMENTS
from .variants import (
    batch_mean_advantages,
    group_mean_advantages,
    reinforce_pp_baseline_advantages,
    varied_groups,
)

# (rewards (B*n,), greedy rewards (B,) or None, n[, reduce=...]) -> (B*n,); with the spec's
# `batch_advantage`, the hook also takes `reduce` (see Algorithm.batch_advantage).
AdvantageFn = Callable[..., torch.Tensor]
# (token advantages (N, T), mask (N, T), whiten) -> (N, T); `whiten(values, mask)` is the
# trainer's batch whitening (global over ranks when training on several)
TokenHook = Callable[[torch.Tensor, torch.Tensor, Callable[..., torch.Tensor]], torch.Tensor]
GroupFilter = Callable[[torch.Tensor, int], torch.Tensor]

BASELINES = ("greedy", "none", "batch_mean", "leave_one_out", "group_mean", "group_mean_std", "group_mean_batch_std", "critic")


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
    """A key of policy_losses.POLICY_LOSSES."""
    default_kl_placement: str
    """One of returns.KL_PLACEMENTS, used unless the config overrides it."""
    advantage: Optional[AdvantageFn]
    """(rewards (B*n,), greedy_rewards (B,) or None, n) -> (B*n,); None: from GAE."""
    description: str = ""
    """One line for `--help` and docs."""
    paper: str = ""
    """Where it comes from, e.g. "Li et al. 2023, arXiv 2310.10505"."""
    default_kl_estimator: Optional[str] = None
    """KL estimator unless the config sets one; None: k3 for a KL loss term, else k1."""
    default_agg: str = "token_mean"
    """Aggregation mode unless the config sets one."""
    clip_eps: float = 0.2
    """Default lower clip of the ratio (or IS weight): >= 1 - clip_eps."""
    clip_eps_high: Optional[float] = None
    """Default upper clip: <= 1 + clip_eps_high; None: the same as the lower one."""
    token_postprocess: Optional[TokenHook] = None
    """((N, T) token advantages of the whole batch, (N, T) mask, whiten) -> (N, T), before the update."""
    group_filter: Optional[GroupFilter] = None
    """((B*n,) rewards, n) -> (B,) bool, the groups to train on; the batch is refilled."""
    overlong_buffer: float = 0.0
    """Share of max_new_tokens over which DAPO's overlong penalty ramps to -1; 0: off."""
    batch_advantage: bool = False
    """The advantage hook takes a statistic of the whole batch (not only of a prompt's group)
    and accepts the keyword `reduce`, a sum over every rank holding a part of the batch, to
    take it globally (REINFORCE++-baseline's batch std). Groups never cross ranks."""

    def __post_init__(self) -> None:
        # catch a mistyped spec when it is registered, not mid-training
        for field, value, choices in (
            ("baseline", self.baseline, BASELINES),
            ("loss", self.loss, POLICY_LOSSES.names()),
            ("default_kl_placement", self.default_kl_placement, KL_PLACEMENTS),
            ("default_agg", self.default_agg, AGGREGATIONS.names()),
            ("default_kl_estimator", self.default_kl_estimator, [None, *KL_ESTIMATORS]),
        ):
            if value not in choices:
                raise ValueError(f"{self.name}: {field} {value!r} is not one of {tuple(choices)}")
        lo, hi = self.min_samples, self.max_samples
        if lo < 1 or (hi is not None and hi < lo):
            raise ValueError(f"{self.name}: bad sample range [{lo}, {hi}]")
        if self.advantage is None and not self.needs_critic:
            raise ValueError(
                f"{self.name}: an algorithm without a critic needs an advantage function"
            )
        if not 0.0 <= self.overlong_buffer <= 1.0:
            raise ValueError(f"{self.name}: overlong_buffer must be in [0, 1], got {self.overlong_buffer}")

    def advantages(self, rewards: torch.Tensor, greedy_rewards: Optional[torch.Tensor], n: int,
                   reduce: Optional[Callable[[torch.Tensor], torch.Tensor]] = None) -> torch.Tensor:
        """(B*n,) advantages of this rank's rows: `advantage`, handed `reduce` (a sum over
        ranks, for a batch statistic) when the spec says it takes one (`batch_advantage`)."""
        if self.advantage is None:
            raise ValueError(f"{self.name} has no advantage function (its advantages come from a critic)")
        if reduce is not None and self.batch_advantage:
            return self.advantage(rewards, greedy_rewards, n, reduce=reduce)
        return self.advantage(rewards, greedy_rewards, n)

    @property
    def on_policy(self) -> bool:
        """One update per rollout batch, no ratio: log-probs with grad are reused detached.
        Follows from the loss: one without an importance ratio is only correct on-policy."""
        return not POLICY_LOSSES.get(self.loss).uses_ratio

    def help_line(self) -> str:
        """`name  description (paper)`, as `remax train --help` and the README list it."""
        paper = f" ({self.paper})" if self.paper else ""
        return f"{self.name}: {self.description}{paper}"

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


def _whiten_globally(token_adv, mask, whiten):
    # REINFORCE++: A_t = (G_t - mean(G)) / std(G) over every response token of the batch
    return whiten(token_adv, mask)


def _dr_grpo_advantage(rewards, greedy_rewards, n):
    return group_mean_advantages(rewards, n)


def _reinforce_pp_baseline_advantage(rewards, greedy_rewards, n, reduce=None):
    # the std is the whole (global) batch's: `reduce` sums over ranks
    return reinforce_pp_baseline_advantages(rewards, n, reduce=reduce)


register_algorithm(Algorithm(
    name="remax", baseline="greedy", min_samples=1, max_samples=None,
    needs_greedy=True, needs_critic=False, loss="policy_gradient",
    default_kl_placement="token", advantage=_remax_advantage,
    description="REINFORCE with the greedy response's reward as baseline (the default)",
    paper="Li et al. 2023, arXiv 2310.10505",
))
register_algorithm(Algorithm(
    name="reinforce", baseline="none", min_samples=1, max_samples=None,
    needs_greedy=False, needs_critic=False, loss="policy_gradient",
    default_kl_placement="token", advantage=_reinforce_advantage,
    description="REINFORCE without a baseline (the ReMax paper's ablation)",
    paper="Williams 1992",
))
register_algorithm(Algorithm(
    name="rloo", baseline="leave_one_out", min_samples=2, max_samples=None,
    needs_greedy=False, needs_critic=False, loss="policy_gradient",
    default_kl_placement="token", advantage=_rloo_advantage,
    description="REINFORCE leave-one-out: baseline is the mean reward of the other n-1 samples",
    paper="Ahmadian et al. 2024, arXiv 2402.14740",
))
register_algorithm(Algorithm(
    name="grpo", baseline="group_mean_std", min_samples=2, max_samples=None,
    needs_greedy=False, needs_critic=False, loss="ppo_clip",
    default_kl_placement="loss", advantage=_grpo_advantage,
    description="group-normalised rewards, PPO clip loss and a separate k3 KL loss",
    paper="Shao et al. 2024, arXiv 2402.03300",
))
register_algorithm(Algorithm(
    name="ppo", baseline="critic", min_samples=1, max_samples=1,
    needs_greedy=False, needs_critic=True, loss="ppo_clip",
    default_kl_placement="token", advantage=None,
    description="a learned value model, GAE and the clipped surrogate (the paper's comparison point)",
    paper="Schulman et al. 2017, arXiv 1707.06347",
))
register_algorithm(Algorithm(
    name="reinforce_pp", baseline="none", min_samples=1, max_samples=None,
    needs_greedy=False, needs_critic=False, loss="ppo_clip",
    default_kl_placement="reward_to_go", advantage=_reinforce_advantage,
    token_postprocess=_whiten_globally,
    description="k1 KL in the reward-to-go, token advantages whitened over the batch, PPO clip",
    paper="Hu et al. 2025, arXiv 2501.03262",
))
register_algorithm(Algorithm(
    name="reinforce_pp_baseline", baseline="group_mean_batch_std", min_samples=2, max_samples=None,
    needs_greedy=False, needs_critic=False, loss="ppo_clip",
    default_kl_placement="loss", default_kl_estimator="k2", advantage=_reinforce_pp_baseline_advantage,
    batch_advantage=True,
    description="group mean subtracted, batch std divided, PPO clip, k2 KL loss",
    paper="Hu et al. 2025, arXiv 2501.03262",
))
register_algorithm(Algorithm(
    name="dr_grpo", baseline="group_mean", min_samples=2, max_samples=None,
    needs_greedy=False, needs_critic=False, loss="ppo_clip",
    default_kl_placement="loss", default_agg="seq_mean_token_sum_norm", advantage=_dr_grpo_advantage,
    description="GRPO without the std division, a constant length normaliser",
    paper="Liu et al. 2025, arXiv 2503.20783",
))
register_algorithm(Algorithm(
    name="dapo", baseline="group_mean_std", min_samples=2, max_samples=None,
    needs_greedy=False, needs_critic=False, loss="ppo_clip",
    default_kl_placement="none", advantage=_grpo_advantage, clip_eps=0.2, clip_eps_high=0.28,
    group_filter=varied_groups, overlong_buffer=0.2,
    description="clip-higher, token-level loss, dynamic sampling with refill, overlong penalty, no KL",
    paper="Yu et al. 2025, arXiv 2503.14476",
))
register_algorithm(Algorithm(
    name="gspo", baseline="group_mean_std", min_samples=2, max_samples=None,
    needs_greedy=False, needs_critic=False, loss="gspo",
    default_kl_placement="loss", advantage=_grpo_advantage, clip_eps=3e-4, clip_eps_high=4e-4,
    description="length-normalised sequence-level importance ratio and its clip",
    paper="Zheng et al. 2025, arXiv 2507.18071",
))
def _batch_mean_advantage(rewards, greedy_rewards, n, reduce=None):
    # the mean is the whole (global) batch's: `reduce` sums over ranks
    return batch_mean_advantages(rewards, n, reduce=reduce)


register_algorithm(Algorithm(
    name="cispo", baseline="group_mean_std", min_samples=2, max_samples=None,
    needs_greedy=False, needs_critic=False, loss="cispo",
    default_kl_placement="loss", advantage=_grpo_advantage, clip_eps=1.0, clip_eps_high=0.28,
    description="REINFORCE weighted by the clipped, stop-gradient importance ratio",
    paper="MiniMax 2025, arXiv 2506.13585",
))
register_algorithm(Algorithm(
    name="batch_mean", baseline="batch_mean", min_samples=1, max_samples=None,
    needs_greedy=False, needs_critic=False, loss="policy_gradient",
    default_kl_placement="token", advantage=_batch_mean_advantage, batch_advantage=True,
    description="REINFORCE with the mean reward of the whole batch as baseline, for one sample per prompt",
    paper="OpenRLHF 0.11.2, PR #1339 (FlashREINFORCE's estimator)",
))
