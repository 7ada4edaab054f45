"""Scoring phase: sampled and greedy responses -> rewards, in ONE reward call, so a
baseline and its samples take the same reward path (the same batch, the same failure
policy, the same timeout). Also the rollout's metrics (reward, length, EOS share, and
whether the greedy baseline is working)."""

from __future__ import annotations

from typing import Any, Callable, Optional

import torch

from remax.algos.masks import is_eos
from remax.rollout import Rollout
from remax.trainer.diagnostics import baseline_diagnostics
from remax.trainer.evaluate import decode_responses
from remax.trainer.guards import call_reward


def score(rows: list[dict[str, Any]], rollout: Rollout, *, reward_fn: Callable[..., Any], tokenizer: Any,
          prompt_column: str, step: int, timeout_s: Optional[float], device: torch.device,
          eos_token_id: Optional[int | list[int]] = None) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """((B*n,) sampled rewards, (B,) greedy rewards or None) for `rollout` of `rows`;
    `step` is the 1-based step the reward function is told; `eos_token_id`: the run's stop
    ids, so each response tells the reward whether it ended. Raises RewardFailure."""
    n, b = rollout.n, rollout.num_prompts
    order = [i for i in range(b) for _ in range(n)] + (list(range(b)) if rollout.has_greedy else [])
    prompts = [rows[i][prompt_column] for i in order]
    extra = {k: [rows[i].get(k) for i in order] for k in rows[0] if k != prompt_column}
    responses = decode_responses(tokenizer, rollout.response_ids, rollout.response_mask, eos_token_id)
    scores = call_reward(reward_fn, prompts, responses, extra, step=step, timeout_s=timeout_s,
                         greedy=b if rollout.has_greedy else 0).to(device)  # a wrong count says sampled + greedy
    return scores[: b * n], (scores[b * n :] if rollout.has_greedy else None)


def rollout_metrics(rollout: Rollout, rewards: torch.Tensor, greedy_rewards: Optional[torch.Tensor],
                    seq_adv: Optional[torch.Tensor], eos_token_id: int | list[int],
                    gather: Callable[[torch.Tensor], torch.Tensor] = lambda t: t) -> dict[str, float]:
    """rollout/* (and adv/* when there are sequence advantages) of the batch trained on.
    `gather` (the trainer's `dist.gather_rows`) joins every rank's rows first, so a std or
    a correlation is the global batch's, alike on every rank."""
    samples = rollout.sampled()
    ended = is_eos(samples.response_ids, eos_token_id) & samples.response_mask.bool()
    # one gather for every per-row column: (N, k) -> (N_global, k), rows in rank order
    cols = {"length": samples.response_mask.sum(-1), "ended": ended.any(-1), "reward": rewards}
    if greedy_rewards is not None:
        cols["baseline"] = greedy_rewards.repeat_interleave(rollout.n)  # row i's prompt's greedy reward
    if seq_adv is not None:
        cols["adv"] = seq_adv
    table = gather(torch.stack([c.double().cpu() for c in cols.values()], 1).flatten()).view(-1, len(cols))
    col = {name: table[:, i] for i, name in enumerate(cols)}
    rewards = col["reward"]  # (N,)
    m = {
        "rollout/reward_mean": float(rewards.mean()),
        "rollout/reward_std": float(rewards.std()) if len(rewards) > 1 else 0.0,
        "rollout/response_len_mean": float(col["length"].mean()),
        "rollout/eos_frac": float(col["ended"].mean()),
    }
    if greedy_rewards is not None:
        m["rollout/baseline_reward_mean"] = float(col["baseline"].mean())  # n rows per prompt: the same mean
        # is the greedy baseline working? win rate, corr(r, b), var(r - b) / var(r)
        m.update(baseline_diagnostics(rewards, col["baseline"]))
    if seq_adv is not None:
        seq_adv = col["adv"]
        m["adv/mean"] = float(seq_adv.mean())
        m["adv/std"] = float(seq_adv.std()) if len(seq_adv) > 1 else 0.0
    return m
