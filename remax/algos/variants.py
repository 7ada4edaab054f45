"""The 2025-26 variants users arrive with, as pure tensor math.

Layout as in `advantages`: n consecutive samples per prompt, (B*n,) rewards; per-token
tensors are (N, T) with a response mask that is 1 on a prefix of each row.

- REINFORCE++ (Hu et al., arXiv 2501.03262, sec. 3): the token-level KL goes into the
  reward, G_t = sum_{s>=t} (-beta*kl_s) + r (reward-to-go, `returns.token_returns`
  with kl_placement "reward_to_go"), and the token advantages are whitened over the
  whole (global) batch: A_t = (G_t - mean(G)) / std(G)  (`masked_whiten`).
- REINFORCE++-baseline (same paper, sec. 3.3): A_i = (r_i - mean_group(r)) / std_batch(r - mean_group(r)),
  the group mean subtracted first, then scaled by the std over the whole batch
  (`reinforce_pp_baseline_advantages`); the KL is a separate k2 loss term.
- Dr. GRPO (Liu et al., arXiv 2503.20783, eq. 3): A_i = r_i - mean_group(r) with no
  division by the group std (`group_mean_advantages`), and a length-unbiased
  normaliser: the token sum divided by (sequences x max response length), a constant
  (`aggregation` mode "seq_mean_token_sum_norm").
- DAPO (Yu et al., arXiv 2503.14476): clip-higher, ratio clipped to [1-eps_low,
  1+eps_high] with eps_high > eps_low (eq. 10; `ppo_clip_loss(clip_eps_high=...)`);
  token-level loss over the global batch (token_mean); dynamic sampling, which keeps
  only groups whose rewards are not all equal (`varied_groups`) and refills the batch;
  overlong reward shaping (eq. 13, `overlong_penalty`).
- GSPO (Zheng et al., arXiv 2507.18071, eq. 5-7): a sequence-level, length-normalised
  ratio s_i = exp(mean_t(log pi - log pi_old)) clipped to [1-eps_low, 1+eps_high]
  (`gspo_loss`); per-token advantages (a token-placed KL, truncated-IS weights) enter as
  their masked mean over the response (`sequence_advantage`).
- CISPO (MiniMax, arXiv 2506.13585, eq. 4): REINFORCE with the importance weight
  clipped and detached, -sg(clip(ratio, 1-eps_low, 1+eps_high)) * A * log pi
  (`cispo_loss`), so every token keeps a gradient.
- Batch-mean baseline at one sample per prompt (the estimator of OpenRLHF 0.11.2's
  "FlashREINFORCE", PR #1339, `--algo.advantage.estimator flash_reinforce`):
  A_i = r_i - mean of every reward in the (global) rollout batch, no group, no std
  (`batch_mean_advantages`). ReMax's niche, n = 1, without the greedy decode.
- Truncated importance sampling (Yao et al., "Your efficient RL framework secretly
  brings you off-policy RL training", 2025): when the rollout engine's log-probs differ
  from the trainer's (vLLM, bf16), weight each token by min(pi_trainer / pi_engine, cap)
  (`truncated_is_weights`).
"""

from __future__ import annotations

from typing import Callable, Optional

import torch

from .advantages import _grouped
from .aggregation import Count, aggregate, masked_mean


# ------------------------------------------------------------ advantages
def group_mean_advantages(rewards: torch.Tensor, n: int) -> torch.Tensor:
    """Dr. GRPO: (B*n,) -> (B*n,) r - group mean (no std division)."""
    grouped = _grouped(rewards, n, min_n=2)  # (B, n)
    return (grouped - grouped.mean(-1, keepdim=True)).reshape(-1)


def reinforce_pp_baseline_advantages(rewards: torch.Tensor, n: int, eps: float = 1e-6,
                                     reduce: Optional[Callable[[torch.Tensor], torch.Tensor]] = None) -> torch.Tensor:
    """REINFORCE++-baseline: (B*n,) -> (B*n,) (r - group mean) / (std over the batch of
    those differences + eps), unbiased std. All-equal rewards give zeros.

    `reduce` sums a tensor over every rank holding a part of the batch (the trainer's
    `dist.all_reduce_sum`); None: this tensor is the whole batch. The std is then the
    global batch's, from all-reduced count, sum and sum of squares (float64)."""
    centred = group_mean_advantages(rewards, n)  # (B*n,)
    std = batch_std(centred, reduce)
    return centred / (std + eps)


def batch_mean_advantages(rewards: torch.Tensor, n: int = 1,
                          reduce: Optional[Callable[[torch.Tensor], torch.Tensor]] = None) -> torch.Tensor:
    """(B*n,) -> (B*n,) r_i - mean of all N rewards of the batch (every prompt, every sample).

    The mean includes r_i itself, as OpenRLHF's estimator does: E[A_i grad log pi_i] is
    then (1 - 1/N) times REINFORCE's gradient (a constant shrink, i.e. a learning-rate
    factor, not a direction change); the leave-one-out form r_i - mean_{j != i} r_j is the
    same vector times N / (N - 1), so the choice only rescales. `reduce` sums over every
    rank holding a part of the batch (the trainer's `dist.all_reduce_sum`): the mean is
    then the global batch's, from all-reduced (count, sum) in float64. n only checks the
    layout: the baseline never looks at groups."""
    _grouped(rewards, n)
    x = rewards.detach().double()
    s = torch.stack([x.new_tensor(float(x.numel())), x.sum()])  # (2,) count, sum
    if reduce is not None:
        s = reduce(s)
    mean = (s[1] / s[0]).to(rewards.dtype)
    return rewards - mean


def batch_std(values: torch.Tensor, reduce: Optional[Callable[[torch.Tensor], torch.Tensor]] = None) -> torch.Tensor:
    """Unbiased std of every entry of `values` over the whole batch: with `reduce` (a sum
    over ranks) the count, sum and sum of squared deviations are all-reduced, so W ranks
    holding parts of a batch get the std one process holding all of it gets. Fewer than
    2 entries in all: 0."""
    if reduce is None:
        return values.std() if values.numel() > 1 else values.new_zeros(())
    x = values.detach().double().flatten()
    s = reduce(torch.stack([x.new_tensor(float(x.numel())), x.sum()]))
    count = float(s[0])
    if count < 2:
        return values.new_zeros(())
    mean = s[1] / count
    sq = reduce(((x - mean) ** 2).sum().reshape(1))[0]
    return torch.sqrt(sq / (count - 1)).to(values.dtype)


# --------------------------------------------------------- DAPO helpers
def varied_groups(rewards: torch.Tensor, n: int) -> torch.Tensor:
    """DAPO's dynamic-sampling filter: (B*n,) -> (B,) bool, True where a prompt's n
    rewards are not all equal (an all-equal group has zero advantage, no signal)."""
    grouped = _grouped(rewards, n)  # (B, n)
    return grouped.amax(-1) > grouped.amin(-1)


def overlong_penalty(lengths: torch.Tensor, max_len: int, cache_len: int) -> torch.Tensor:
    """DAPO's soft overlong punishment, (N,) response lengths -> (N,) added to the reward:
    0 up to max_len - cache_len, then falling linearly to -1 at max_len, -1 beyond."""
    if not 0 < cache_len <= max_len:
        raise ValueError(f"cache_len must be in (0, max_len={max_len}], got {cache_len}")
    start = max_len - cache_len
    ramp = (start - lengths.float()) / cache_len  # (N,) <= 0 past start
    return torch.where(lengths <= start, torch.zeros_like(ramp), ramp.clamp(min=-1.0))


# ---------------------------------------------------------------- losses
def sequence_advantage(advantages: torch.Tensor, response_mask: torch.Tensor) -> torch.Tensor:
    """(N,) stays; (N, T) token advantages -> (N,) their masked mean over the response
    (0 for an empty one). How a sequence-level loss reads per-token advantages."""
    if advantages.dim() == 1:
        return advantages
    mask = response_mask.to(advantages.dtype)
    return (advantages * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)


def gspo_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    response_mask: torch.Tensor,
    clip_eps: float = 3e-4,
    clip_eps_high: Optional[float] = None,
    *,
    num_seqs: Optional[Count] = None,
) -> torch.Tensor:
    """GSPO: mean over sequences of max(-A_i s_i, -A_i clip(s_i, 1-eps_low, 1+eps_high)),
    s_i = exp(mean over the response of (logp - old_logp)). (N, T) log-probs, (N,) or
    (N, T) advantages. GSPO's advantage is per sequence; a per-token tensor (a per-token
    KL `-beta kl_t` in it, truncated-IS weights on it, a discount) becomes A_i = the
    masked MEAN of its token advantages (`sequence_advantage`), so every token's term
    counts; for a sequence advantage broadcast to the tokens that is the same A_i. The
    gradient is s_i * mean_t grad log pi, as in the paper's eq. 10."""
    mask = response_mask.to(logprobs.dtype)
    adv = sequence_advantage(advantages, mask).detach()  # (N,)
    log_ratio = ((logprobs - old_logprobs.detach()) * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)  # (N,)
    ratio = torch.exp(log_ratio)
    high = clip_eps if clip_eps_high is None else clip_eps_high
    per_seq = torch.maximum(-adv * ratio, -adv * ratio.clamp(1.0 - clip_eps, 1.0 + high))  # (N,)
    per_seq = per_seq * (mask.sum(-1) > 0)  # an empty response contributes 0
    return per_seq.sum() / (per_seq.shape[0] if num_seqs is None else num_seqs)


def cispo_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    response_mask: torch.Tensor,
    clip_eps: float = 1.0,
    clip_eps_high: Optional[float] = 0.28,
    agg: str = "token_mean",
    *,
    num_tokens: Optional[Count] = None,
    num_seqs: Optional[Count] = None,
    max_len: Optional[int] = None,
) -> torch.Tensor:
    """CISPO: aggregate(-sg(clamp(ratio, 1-eps_low, 1+eps_high)) * A * logp). The weight
    is detached, so a clipped token still has a gradient (unlike PPO's clip, which
    zeroes it). eps_low=1 leaves the lower side open, as MiniMax-M1 does."""
    adv = (advantages.unsqueeze(-1) if advantages.dim() == 1 else advantages).detach()
    high = clip_eps if clip_eps_high is None else clip_eps_high
    weight = torch.exp(logprobs.detach() - old_logprobs.detach()).clamp(1.0 - clip_eps, 1.0 + high)  # (N, T)
    return aggregate(-weight * adv * logprobs, response_mask, agg, num_tokens=num_tokens, num_seqs=num_seqs,
                     max_len=max_len)


# ------------------------------------------------ training-inference mismatch
@torch.no_grad()
def truncated_is_weights(
    logprobs: torch.Tensor,
    engine_logprobs: torch.Tensor,
    response_mask: torch.Tensor,
    level: str = "token",
    cap: float = 2.0,
) -> tuple[torch.Tensor, dict[str, float]]:
    """(N, T) trainer and rollout-engine log-probs of the sampled tokens -> ((N, T)
    weights min(pi_trainer / pi_engine, cap), zero outside the mask; stats).
    level "token": one ratio per token; "sequence": the product over the response,
    one weight per row broadcast to its tokens. Stats: `rollout/is_weight_mean` (before
    the cap, masked mean) and `rollout/is_capped_frac`."""
    mask = response_mask.to(logprobs.dtype)
    diff = (logprobs - engine_logprobs) * mask  # (N, T)
    if level == "token":
        raw = torch.exp(diff)
    elif level == "sequence":
        raw = torch.exp(diff.sum(-1, keepdim=True)).expand_as(diff)
    else:
        raise ValueError(f"importance-sampling level must be 'token' or 'sequence', got {level!r}")
    weights = raw.clamp(max=cap) * mask
    stats = {
        "rollout/is_weight_mean": float(masked_mean(raw, mask)),
        "rollout/is_capped_frac": float(masked_mean((raw > cap).to(raw.dtype), mask)),
    }
    return weights, stats


def sampler_logprobs(logprobs: torch.Tensor, log_mass: Optional[torch.Tensor]) -> torch.Tensor:
    """The trainer's log-probs in the sampler's convention, the one the rollout engine
    reports (remax/models/logprobs.py): log q = log pi_T - log pi_T(support). `log_mass`
    from `response_logprobs(..., support=(top_k, top_p))`; None: no top-k / top-p, q = pi_T."""
    return logprobs if log_mass is None else logprobs - log_mass.to(logprobs.device)


def apply_truncated_is(
    advantages: torch.Tensor,
    logprobs: torch.Tensor,
    engine_logprobs: Optional[torch.Tensor],
    response_mask: torch.Tensor,
    level: str = "auto",
    cap: float = 2.0,
    log_mass: Optional[torch.Tensor] = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """(N, T) token advantages -> (advantages * truncated IS weights, stats). Every policy
    loss here is linear in A per token with a positive factor, so weighting A is weighting
    the loss. level "off", or "auto" without engine log-probs: unchanged, no stats;
    "auto" with them is "token". The weights compare the engine's log-probs with the
    trainer's in ONE convention, the sampler's (`sampler_logprobs` with `log_mass`): with
    equal weights they are 1 under any top-k / top-p."""
    if level == "off" or (level == "auto" and engine_logprobs is None):
        return advantages, {}
    if engine_logprobs is None:
        raise ValueError(f"importance-sampling level {level!r} needs the rollout engine's log-probs, "
                         "and this rollout backend gives none; use level 'auto' or 'off'")
    weights, stats = truncated_is_weights(sampler_logprobs(logprobs, log_mass), engine_logprobs, response_mask,
                                          "token" if level == "auto" else level, cap)
    return advantages * weights, stats

