"""Per-token returns: what multiplies log pi(a_t) in the policy-gradient loss.

ReMax (Li et al., arXiv 2310.10505) gives one scalar advantage A = r - b per response.
The authors' code spreads it over the response tokens together with a per-token KL
penalty; verl's ReMax does it differently. Both are offered (`kl_placement`):

- "token" (authors' code): G_t = -beta*kl_t + gamma^(T-t+1) * A. The KL term is per
  token, not summed to the end, and the authors' backward loop multiplies by gamma
  before adding, so even the last token is discounted once. The paper itself has no
  discount; with gamma = 1 the detail vanishes.
- "reward_to_go" (verl): G_t = sum_{s>=t} (-beta*kl_s) + A. No discount (gamma must
  be 1). verl does not clip; the default clip=None reproduces it.
- "none" / "loss": G_t = gamma^(T-t+1) * A; the KL is absent or a separate loss term
  (`losses.kl_loss`, as GRPO does).

Tokens are numbered t = 1..T over the masked-in tokens of a row (T = mask row sum);
masks are 1 on a prefix of each row (`masks.response_mask`).

Also here, for the PPO comparison point: `ppo_token_rewards` (reward on the last
token, KL on every token) and `gae` (Schulman et al., arXiv 1506.02438).
All outputs are zero outside the mask and carry no gradient: they are targets.
"""

from __future__ import annotations

from typing import Optional

import torch

from .kl import kl_penalty

KL_PLACEMENTS = ("token", "reward_to_go", "loss", "none")


def _discount(mask: torch.Tensor, gamma: float) -> torch.Tensor:
    """(B, T) mask -> (B, T) gamma^(T_i - t + 1) on the masked tokens, 0 elsewhere."""
    t = torch.cumsum(mask, dim=-1)  # (B, T) 1-based index of each masked token
    length = mask.sum(-1, keepdim=True)  # (B, 1) T_i
    return torch.pow(gamma, length - t + 1) * mask  # (B, T)


def _reverse_cumsum(x: torch.Tensor) -> torch.Tensor:
    """(B, T) -> (B, T) sum_{s >= t} x_s."""
    return torch.flip(torch.cumsum(torch.flip(x, [-1]), -1), [-1])


@torch.no_grad()
def token_returns(
    advantages: torch.Tensor,
    kl: torch.Tensor,
    response_mask: torch.Tensor,
    *,
    kl_coef: float,
    gamma: float = 1.0,
    clip: Optional[float] = None,
    kl_placement: str = "token",
) -> torch.Tensor:
    """(B,) sequence-level advantages, (B, T) per-token KL estimate, (B, T) mask ->
    (B, T) returns G, zero outside the mask. See the module docstring for each
    `kl_placement`. `clip` bounds A to [-clip, clip] (authors: 5; off by default)."""
    if kl_placement not in KL_PLACEMENTS:
        raise ValueError(
            f"unknown kl_placement {kl_placement!r}; choose one of: {', '.join(KL_PLACEMENTS)}"
        )
    if clip is not None and clip <= 0:
        raise ValueError(f"clip must be positive or None, got {clip}")
    dtype = torch.promote_types(kl.dtype, advantages.dtype)  # bf16 KL must not round A
    mask = response_mask.to(dtype)  # (B, T)
    kl = kl.to(dtype)
    adv = advantages.to(dtype)  # (B,)
    if clip is not None:
        adv = adv.clamp(-clip, clip)
    adv = adv.unsqueeze(-1)  # (B, 1)
    penalty = -kl_coef * kl * mask  # (B, T)

    if kl_placement == "reward_to_go":
        if gamma != 1.0:
            raise ValueError(
                f"kl_placement='reward_to_go' (verl's ReMax) has no discount, got gamma={gamma}; "
                "set gamma=1.0 or use kl_placement='token'"
            )
        return (_reverse_cumsum(penalty) + adv) * mask

    discounted = _discount(mask, gamma) * adv  # (B, T)
    if kl_placement == "token":
        return penalty + discounted
    return discounted  # "none" / "loss": KL handled outside the returns


def remax_returns(
    rewards: torch.Tensor,
    baseline_rewards: torch.Tensor,
    logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    response_mask: torch.Tensor,
    *,
    kl_coef: float,
    gamma: float = 1.0,
    clip: Optional[float] = None,
    kl_placement: str = "token",
    kl_estimator: str = "k1",
) -> torch.Tensor:
    """ReMax returns: (B,) rewards of the sampled responses, (B,) baseline rewards
    (greedy responses' rewards; zeros give plain REINFORCE), (B, T) log-probs of the
    sampled tokens under the policy and the reference, (B, T) mask -> (B, T) G."""
    kl = kl_penalty(logprobs.detach(), ref_logprobs.detach(), kl_estimator)  # (B, T)
    return token_returns(
        rewards - baseline_rewards,
        kl,
        response_mask,
        kl_coef=kl_coef,
        gamma=gamma,
        clip=clip,
        kl_placement=kl_placement,
    )


def _last_token(mask: torch.Tensor) -> torch.Tensor:
    """(B, T) mask -> (B, T) 1.0 at the last masked token of each row (none if empty)."""
    t = torch.cumsum(mask, dim=-1)  # (B, T)
    return ((t == mask.sum(-1, keepdim=True)) & (mask > 0)).to(mask.dtype)


@torch.no_grad()
def ppo_token_rewards(
    rewards: torch.Tensor, kl: torch.Tensor, response_mask: torch.Tensor, kl_coef: float
) -> torch.Tensor:
    """PPO's per-token rewards (Ziegler et al. 2019, as TRL lays them out): (B,)
    scalar rewards, (B, T) KL -> (B, T) -kl_coef*kl_t on every masked token, plus the
    scalar reward on the last masked token."""
    dtype = torch.promote_types(kl.dtype, rewards.dtype)
    mask = response_mask.to(dtype)  # (B, T)
    return -kl_coef * kl.to(dtype) * mask + rewards.to(dtype).unsqueeze(-1) * _last_token(mask)


@torch.no_grad()
def gae(
    token_rewards: torch.Tensor,
    values: torch.Tensor,
    response_mask: torch.Tensor,
    gamma: float,
    lam: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation: (B, T) rewards, values, mask ->
    (advantages, returns), both (B, T), zero outside the mask.

    delta_t = r_t + gamma*V_{t+1} - V_t, with V = 0 beyond the last masked token (the
    episode ends there); A_t = delta_t + gamma*lam*A_{t+1}; returns = A + V."""
    mask = response_mask.to(values.dtype)  # (B, T)
    # zeroing rewards and values after the response makes every delta there 0, so
    # the recursion carries 0 into the last masked token: V_{T+1} = A_{T+1} = 0
    rewards = token_rewards * mask  # (B, T)
    values = values * mask  # (B, T)
    B, T = values.shape
    adv = torch.zeros_like(values)  # (B, T)
    next_value = values.new_zeros(B)  # (B,)
    next_adv = values.new_zeros(B)  # (B,)
    for t in reversed(range(T)):
        delta = rewards[:, t] + gamma * next_value - values[:, t]  # (B,)
        next_adv = delta + gamma * lam * next_adv
        adv[:, t] = next_adv
        next_value = values[:, t]
    adv = adv * mask
    return adv, (adv + values) * mask
