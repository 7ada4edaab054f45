"""Preparation phase: the sampled rows to train on and their rewards -> a `Batch`.

Always the reference log-probs and (when the spec has an estimator) the (N,) sequence
advantages. The policy's own "old" log-probs only when the update cannot take them from
its first forward (several epochs or minibatches, a critic, or a whole-batch
token-advantage hook): ReMax and the other single-pass algorithms do no extra forward.
Then either the batch's (N, R) token advantages (with the spec's `token_postprocess`,
e.g. REINFORCE++'s whitening over the whole batch) or, with a critic, PPO's GAE
advantages and returns. Every forward here runs without grad, in micro-batches, under
`dist.forward_context()` (the same precision context as the update's forward)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch

from remax.algos import Algorithm, LossParams, PolicyLoss, gae, kl_penalty, ppo_token_rewards, token_returns
from remax.config import Config, LossConfig
from remax.models import response_logprobs, response_values
from remax.rollout import Rollout
from remax.rollout.types import engine_support


@dataclass
class Batch:
    """One step's sampled responses, scored and ready for the update. N = B * n rows."""

    rollout: Rollout  # sampled rows only
    rewards: torch.Tensor  # (N,)
    ref_logprobs: torch.Tensor  # (N, R)
    seq_adv: Optional[torch.Tensor] = None  # (N,) from the spec's advantage estimator
    old_logprobs: Optional[torch.Tensor] = None  # (N, R) only when the update is not one on-policy pass
    old_log_mass: Optional[torch.Tensor] = None  # (N, R) with old_logprobs and engine log-probs under top-k / top-p
    old_values: Optional[torch.Tensor] = None  # (N, R) critic
    token_adv: Optional[torch.Tensor] = None  # (N, R) precomputed (PPO's GAE); else built per micro-batch
    returns: Optional[torch.Tensor] = None  # (N, R) critic targets
    valid: Optional[torch.Tensor] = None  # (N,) bool, False on zero-weight padding rows (batch_fill); None: all real

    def seq_count(self, rows: torch.Tensor) -> int:
        """How many of `rows` are real sequences (padding rows count for no sequence mean)."""
        return len(rows) if self.valid is None else int(self.valid[rows].sum())


@dataclass(frozen=True)
class Recipe:
    """The algorithm as the phases run it: its spec, and the policy loss and KL that the
    config resolved for it (`remax.trainer.validate.resolve_loss` / `resolve_kl`)."""

    spec: Algorithm
    policy_loss: PolicyLoss
    loss_params: LossParams
    kl_placement: str
    kl_estimator: str

    def passes(self, loss: LossConfig) -> tuple[int, int]:
        """(epochs, minibatches) of one update: a loss without an importance ratio is only
        right on-policy, so it gets one update per rollout."""
        return (loss.epochs, loss.num_minibatches) if self.policy_loss.uses_ratio else (1, 1)

    def single_pass(self, loss: LossConfig, has_critic: bool) -> bool:
        """True when the update's own forward can serve as the 'old' log-probs."""
        if self.spec.token_postprocess is not None:
            return False  # it needs the whole batch's token advantages before the update
        epochs, n_mb = self.passes(loss)
        return epochs * n_mb == 1 and not has_critic


def prepare(samples: Rollout, rewards: torch.Tensor, greedy_rewards: Optional[torch.Tensor], *, config: Config,
            recipe: Recipe, reference: Any, policy: Any, critic: Any, dist: Any,
            valid: Optional[torch.Tensor] = None) -> Batch:
    """Reference log-probs and advantages; old log-probs / values only where the update needs them.
    `valid`: (N,) False on zero-weight padding rows (their response mask is 0)."""
    logprobs = _LogProbs(config, dist)
    batch = Batch(samples, rewards, ref_logprobs=logprobs(reference, samples), valid=valid)
    spec = recipe.spec
    if spec.advantage is not None:
        batch.seq_adv = spec.advantages(rewards, greedy_rewards, samples.n, reduce=dist.all_reduce_sum)  # (N,), batch statistics global
    if recipe.single_pass(config.loss, critic is not None):
        return batch  # old log-probs = the update's own forward, detached
    # with engine log-probs under top-k / top-p, also the sampler's support's log-mass (TIS, mismatch)
    batch.old_logprobs, batch.old_log_mass = logprobs(
        policy, samples, support=engine_support(config.rollout, samples.engine_logprobs) or (0, 1.0))
    mask = samples.response_mask
    if critic is None:
        token_adv = token_advantages(batch.seq_adv, batch.old_logprobs, batch.ref_logprobs, mask,
                                     loss=config.loss, recipe=recipe)
        post = spec.token_postprocess  # e.g. REINFORCE++'s whitening over the whole batch
        batch.token_adv = token_adv if post is None else post(token_adv, mask, dist.whiten)
        return batch
    _critic_targets(batch, critic, config, recipe, dist)
    return batch


def token_advantages(seq_adv: torch.Tensor, logprobs: torch.Tensor, ref_logprobs: torch.Tensor, mask: torch.Tensor,
                     *, loss: LossConfig, recipe: Recipe) -> torch.Tensor:
    """(N,) sequence advantages -> (N, R) per-token returns with the KL placement chosen."""
    kl = kl_penalty(logprobs.detach(), ref_logprobs, recipe.kl_estimator)  # (N, R), no grad
    return token_returns(seq_adv, kl, mask, kl_coef=loss.kl_coef, gamma=loss.gamma, clip=loss.advantage_clip,
                         kl_placement=recipe.kl_placement)


def values(critic: Any, s: Rollout) -> torch.Tensor:
    """(n, R) the critic's values of the response tokens (with grad if enabled)."""
    return response_values(critic, s.prompt_ids, s.prompt_mask, s.response_ids, s.response_mask)


def micro_batches(n_rows: int, size: int) -> list[torch.Tensor]:
    return list(torch.arange(n_rows).split(size))


class _LogProbs:
    """(N, R) response log-probs of a model without grad, micro-batch by micro-batch."""

    def __init__(self, config: Config, dist: Any) -> None:
        self.temperature, self.micro, self.dist = config.rollout.temperature, config.train.micro_batch_size, dist

    @torch.no_grad()
    def __call__(self, model: Any, samples: Rollout, support: Optional[tuple[int, float]] = None):
        """(N, R) log-probs; with `support`, (log-probs, log-mass of the sampler's support or None)."""
        parts = []
        for rows in micro_batches(samples.response_ids.shape[0], self.micro):
            s = samples.select(rows)
            with self.dist.forward_context():
                parts.append(response_logprobs(model, s.prompt_ids, s.prompt_mask, s.response_ids, s.response_mask,
                                               temperature=self.temperature, support=support or (0, 1.0)))
        logprobs, masses = torch.cat([p for p, _ in parts]), [m for _, m in parts]  # (N, R)
        if support is None:
            return logprobs
        return logprobs, (None if masses[0] is None else torch.cat(masses))


def _critic_targets(batch: Batch, critic: Any, config: Config, recipe: Recipe, dist: Any) -> None:
    """PPO: per-token rewards (KL on every token, r on the last), GAE, whitening."""
    L, mask = config.loss, batch.rollout.response_mask
    with torch.no_grad():
        parts = []
        for rows in micro_batches(len(mask), config.train.micro_batch_size):
            with dist.forward_context():
                parts.append(values(critic, batch.rollout.select(rows)))
        batch.old_values = torch.cat(parts)
    kl = kl_penalty(batch.old_logprobs, batch.ref_logprobs, recipe.kl_estimator)
    kl_coef = L.kl_coef if recipe.kl_placement in ("token", "reward_to_go") else 0.0
    token_rewards = ppo_token_rewards(batch.rewards, kl, mask, kl_coef)  # (N, R)
    adv, batch.returns = gae(token_rewards, batch.old_values, mask, L.gamma, L.lam)
    batch.token_adv = dist.whiten(adv, mask) if L.whiten_advantages else adv  # global mean / std


__all__ = ["Batch", "Recipe", "micro_batches", "prepare", "token_advantages", "values"]
