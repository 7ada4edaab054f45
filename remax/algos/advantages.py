"""Sequence-level advantage estimators: one scalar per sampled response.

Layout: rewards come as n consecutive samples per prompt, so rows i*n .. i*n+n-1
belong to prompt i (what `torch.repeat_interleave(prompts, n)` produces).

- ReMax (Li et al., arXiv 2310.10505, Algorithm 1): r - r(greedy response). The
  greedy response depends only on the prompt, not on the sampled response, so the
  gradient stays unbiased; one greedy rollout is shared by the n samples of a prompt.
- REINFORCE: r, no baseline (the paper's ablation).
- RLOO (Ahmadian et al., arXiv 2402.14740): r minus the mean of the other n-1.
- GRPO (Shao et al., arXiv 2402.03300): (r - group mean) / (group std + eps), with
  the *unbiased* std (torch.std's default), as TRL and verl compute it.
"""

from __future__ import annotations

import torch


def _grouped(rewards: torch.Tensor, n: int, min_n: int = 1) -> torch.Tensor:
    """(B*n,) -> (B, n), with the checks every estimator shares."""
    if rewards.dim() != 1:
        raise ValueError(f"rewards must be 1-D (B*n,), got shape {tuple(rewards.shape)}")
    if n < min_n:
        raise ValueError(f"this estimator needs n >= {min_n} samples per prompt, got n={n}")
    if rewards.shape[0] % n != 0:
        raise ValueError(
            f"len(rewards)={rewards.shape[0]} is not divisible by n={n}: rewards must hold "
            f"n consecutive samples for each prompt"
        )
    return rewards.view(-1, n)  # (B, n)


def greedy_baseline_advantages(
    rewards: torch.Tensor, greedy_rewards: torch.Tensor, n: int
) -> torch.Tensor:
    """ReMax: (B*n,) sampled rewards, (B,) greedy rewards -> (B*n,) r - b, where each
    prompt's greedy reward is the baseline of its n samples."""
    grouped = _grouped(rewards, n)  # (B, n)
    if greedy_rewards.shape != (grouped.shape[0],):
        raise ValueError(
            f"greedy_rewards must have shape ({grouped.shape[0]},) (one per prompt for "
            f"{rewards.shape[0]} rewards with n={n}), got {tuple(greedy_rewards.shape)}"
        )
    return rewards - greedy_rewards.repeat_interleave(n)  # (B*n,)


def reinforce_advantages(rewards: torch.Tensor, n: int) -> torch.Tensor:
    """REINFORCE without a baseline: the rewards themselves, (B*n,)."""
    _grouped(rewards, n)
    return rewards.clone()


def rloo_advantages(rewards: torch.Tensor, n: int) -> torch.Tensor:
    """(B*n,) -> (B*n,) r_i - mean of the other n-1 rewards of the same prompt."""
    grouped = _grouped(rewards, n, min_n=2)  # (B, n)
    others_mean = (grouped.sum(-1, keepdim=True) - grouped) / (n - 1)  # (B, n)
    return (grouped - others_mean).reshape(-1)


def grpo_advantages(rewards: torch.Tensor, n: int, eps: float = 1e-6) -> torch.Tensor:
    """(B*n,) -> (B*n,) (r - group mean) / (unbiased group std + eps).
    A group whose rewards are all equal gets advantages 0."""
    grouped = _grouped(rewards, n, min_n=2)  # (B, n)
    mean = grouped.mean(-1, keepdim=True)  # (B, 1)
    std = grouped.std(-1, keepdim=True)  # (B, 1), unbiased: divides by n-1
    return ((grouped - mean) / (std + eps)).reshape(-1)
