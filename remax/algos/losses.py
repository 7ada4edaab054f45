"""Losses: per-token terms reduced by `aggregation.aggregate`.

- `policy_gradient_loss`: ReMax (Li et al., arXiv 2310.10505, Algorithm 1),
  REINFORCE and RLOO. One update per rollout batch, on-policy, so no importance
  ratio: loss = aggregate(-G_t * log pi(a_t)).
- `ppo_clip_loss` / `ppo_clip_fraction` / `value_loss`: PPO (Schulman et al.,
  arXiv 1707.06347) and GRPO, which reuse a rollout for several updates.
- `kl_loss`: GRPO's separate KL term (k3 by default), gradient through the policy.

Every loss takes the global normalisers `num_tokens` / `num_seqs` so that micro-batch
losses add up to the full-batch loss (see `aggregation`). Advantages, returns, old
log-probs and old values are detached here: they are targets, never differentiated.
"""

from __future__ import annotations

from typing import Optional

import torch

from .aggregation import Count, aggregate, masked_mean
from .kl import kl_penalty


def _per_token(advantages: torch.Tensor) -> torch.Tensor:
    """(B, T) stays as is; (B,) sequence-level advantages broadcast to (B, 1)."""
    return advantages.unsqueeze(-1) if advantages.dim() == 1 else advantages


def policy_gradient_loss(
    logprobs: torch.Tensor,
    advantages: torch.Tensor,
    response_mask: torch.Tensor,
    agg: str = "token_mean",
    *,
    num_tokens: Optional[Count] = None,
    num_seqs: Optional[Count] = None,
    max_len: Optional[int] = None,
) -> torch.Tensor:
    """(B, T) log-probs of the sampled tokens (with grad), (B, T) returns or (B,)
    advantages -> scalar aggregate(-A * logp)."""
    adv = _per_token(advantages).detach()
    return aggregate(-adv * logprobs, response_mask, agg, num_tokens=num_tokens, num_seqs=num_seqs, max_len=max_len)


def _ppo_branches(logprobs, old_logprobs, advantages, clip_eps, clip_eps_high=None):
    """-> (unclipped, clipped) per-token losses, each (B, T). The ratio is clipped to
    [1 - clip_eps, 1 + (clip_eps_high or clip_eps)] (DAPO's clip-higher when larger)."""
    adv = _per_token(advantages).detach()
    ratio = torch.exp(logprobs - old_logprobs.detach())  # (B, T)
    high = clip_eps if clip_eps_high is None else clip_eps_high
    unclipped = -adv * ratio
    clipped = -adv * ratio.clamp(1.0 - clip_eps, 1.0 + high)
    return unclipped, clipped


def ppo_clip_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    response_mask: torch.Tensor,
    clip_eps: float = 0.2,
    agg: str = "token_mean",
    *,
    num_tokens: Optional[Count] = None,
    num_seqs: Optional[Count] = None,
    clip_eps_high: Optional[float] = None,
    max_len: Optional[int] = None,
) -> torch.Tensor:
    """PPO's clipped surrogate: aggregate(max(-A*ratio, -A*clamp(ratio, 1-eps, 1+eps)))
    with ratio = exp(logp - old_logp). The max (pessimistic bound) removes the
    incentive to move the ratio outside [1-eps, 1+eps] in the advantage's direction."""
    unclipped, clipped = _ppo_branches(logprobs, old_logprobs, advantages, clip_eps, clip_eps_high)
    per_token = torch.maximum(unclipped, clipped)  # (B, T)
    return aggregate(per_token, response_mask, agg, num_tokens=num_tokens, num_seqs=num_seqs, max_len=max_len)


@torch.no_grad()
def ppo_clip_fraction(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    response_mask: torch.Tensor,
    clip_eps: float = 0.2,
    clip_eps_high: Optional[float] = None,
) -> torch.Tensor:
    """Scalar fraction of masked tokens where the clipped branch is active (strictly
    larger, hence the one with zero gradient): a metric, no grad."""
    unclipped, clipped = _ppo_branches(logprobs, old_logprobs, advantages, clip_eps, clip_eps_high)
    return masked_mean((clipped > unclipped).to(unclipped.dtype), response_mask)


def value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    response_mask: torch.Tensor,
    clip_eps: float = 0.2,
    *,
    num_tokens: Optional[Count] = None,
) -> torch.Tensor:
    """PPO's clipped value loss: 0.5 * token-mean of max((V - R)^2, (V_clip - R)^2),
    V_clip = old + clamp(V - old, -eps, eps). The max keeps the critic from moving
    far from its rollout-time values in one update."""
    old = old_values.detach()
    target = returns.detach()
    clipped = old + (values - old).clamp(-clip_eps, clip_eps)  # (B, T)
    per_token = torch.maximum((values - target).square(), (clipped - target).square())
    return 0.5 * aggregate(per_token, response_mask, "token_mean", num_tokens=num_tokens)


def kl_loss(
    logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    response_mask: torch.Tensor,
    estimator: str = "k3",
    agg: str = "token_mean",
    *,
    num_tokens: Optional[Count] = None,
    num_seqs: Optional[Count] = None,
    max_len: Optional[int] = None,
) -> torch.Tensor:
    """GRPO's KL term: aggregate(kl_penalty(logp, ref_logp, estimator)), gradient
    through `logprobs` (the reference is frozen)."""
    kl = kl_penalty(logprobs, ref_logprobs.detach(), estimator)  # (B, T)
    return aggregate(kl, response_mask, agg, num_tokens=num_tokens, num_seqs=num_seqs, max_len=max_len)
