"""The policy-loss table: every loss the trainer can use, looked up by name.

An `Algorithm` spec names its loss (`spec.loss`); a run may override it
(`loss.policy_loss`, e.g. verl's ReMax uses PPO's clip). Each entry takes the same
arguments, so the trainer calls `POLICY_LOSSES.get(name).fn(...)` and never branches
on which loss it is:

    fn(logprobs (N, T) with grad, old_logprobs (N, T), advantages (N, T), mask (N, T),
       params: LossParams, num_tokens, num_seqs, max_len) -> scalar

- "policy_gradient": aggregate(-A * log pi), no ratio (ReMax, Li et al., arXiv
  2310.10505, Algorithm 1; REINFORCE; RLOO).
- "ppo_clip": max(-A r, -A clip(r, 1-eps_low, 1+eps_high)), r = pi / pi_old (Schulman
  et al., arXiv 1707.06347, eq. 7; DAPO's clip-higher when eps_high > eps_low,
  Yu et al., arXiv 2503.14476, eq. 10).
- "gspo": the same clip on the length-normalised sequence ratio (Zheng et al., arXiv
  2507.18071, eq. 5-7); a sequence-level loss, normalised by the sequence count
  whatever `agg` says; its per-sequence advantage is the masked mean of the token
  advantages (a token-placed KL and truncated-IS weights count on every token).
- "cispo": -sg(clip(r, 1-eps_low, 1+eps_high)) * A * log pi (MiniMax, arXiv
  2506.13585, eq. 4).

`uses_ratio`: the loss compares the policy with the rollout-time policy, so the
trainer may take several epochs / minibatches per rollout. A loss without a ratio
is only correct on-policy: the trainer then takes exactly one update per rollout.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch

from ._registry import Registry
from .losses import policy_gradient_loss, ppo_clip_fraction, ppo_clip_loss
from .variants import cispo_loss, gspo_loss


@dataclass(frozen=True)
class LossParams:
    """The plain scalars a policy loss reads, resolved from the run's config and spec."""

    clip_eps: float = 0.2
    """Lower clip: the ratio (or weight) is kept >= 1 - clip_eps."""
    clip_eps_high: Optional[float] = None
    """Upper clip: <= 1 + clip_eps_high; None: the same as clip_eps."""
    agg: str = "token_mean"
    """Aggregation mode (`aggregation.AGGREGATIONS`)."""


LossFn = Callable[..., torch.Tensor]


@dataclass(frozen=True)
class PolicyLoss:
    fn: LossFn
    """(logp, old_logp, adv, mask, params, num_tokens, num_seqs, max_len) -> scalar."""
    uses_ratio: bool
    """True: correct for several updates per rollout (an importance ratio); False: on-policy only."""
    clip_fraction: Optional[Callable[..., torch.Tensor]] = None
    """(logp, old_logp, adv, mask, params) -> scalar share of clipped tokens, for `ppo/clip_frac`."""


POLICY_LOSSES: Registry[PolicyLoss] = Registry("policy loss")


def register_policy_loss(name: str, loss: PolicyLoss) -> PolicyLoss:
    """Add a loss under `name`; ValueError if the name is taken."""
    return POLICY_LOSSES.register(name, loss)


def _pg(logp, old, adv, mask, p: LossParams, num_tokens=None, num_seqs=None, max_len=None):
    return policy_gradient_loss(logp, adv, mask, p.agg, num_tokens=num_tokens, num_seqs=num_seqs, max_len=max_len)


def _ppo(logp, old, adv, mask, p: LossParams, num_tokens=None, num_seqs=None, max_len=None):
    return ppo_clip_loss(logp, old, adv, mask, p.clip_eps, p.agg, num_tokens=num_tokens, num_seqs=num_seqs,
                         clip_eps_high=p.clip_eps_high, max_len=max_len)


def _ppo_frac(logp, old, adv, mask, p: LossParams):
    return ppo_clip_fraction(logp, old, adv, mask, p.clip_eps, p.clip_eps_high)


def _gspo(logp, old, adv, mask, p: LossParams, num_tokens=None, num_seqs=None, max_len=None):
    return gspo_loss(logp, old, adv, mask, p.clip_eps, p.clip_eps_high, num_seqs=num_seqs)


def _cispo(logp, old, adv, mask, p: LossParams, num_tokens=None, num_seqs=None, max_len=None):
    return cispo_loss(logp, old, adv, mask, p.clip_eps, p.clip_eps_high, p.agg,
                      num_tokens=num_tokens, num_seqs=num_seqs, max_len=max_len)


register_policy_loss("policy_gradient", PolicyLoss(_pg, uses_ratio=False))
register_policy_loss("ppo_clip", PolicyLoss(_ppo, uses_ratio=True, clip_fraction=_ppo_frac))
register_policy_loss("gspo", PolicyLoss(_gspo, uses_ratio=True))
register_policy_loss("cispo", PolicyLoss(_cispo, uses_ratio=True))
