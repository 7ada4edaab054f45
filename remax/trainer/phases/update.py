"""Update phase: a prepared `Batch` -> optimizer steps, and the step's loss / KL / grad metrics.

    for each of `epochs` passes (1 for a loss without an importance ratio):
        for each of `num_minibatches` minibatches (a seeded shuffle when more than one):
            micro-batches of `train.micro_batch_size` rows: forward, losses, backward
            clip every optimizer's gradients, then step them all (or none, on NaN / inf)

The losses are normalised by the whole minibatch's token / sequence counts (global over
ranks, `dist.loss_normalisers`), so the accumulated gradient equals one full-batch
backward however the rows are split. On the single on-policy pass the forward with grad
is also the 'old' log-probs, detached: no extra forward. The training forward runs
under `dist.forward_context()` (the run's precision: `train.mixed_precision`'s autocast),
backward and clipping go through `dist` (DDP / FSDP / DeepSpeed), and every micro-batch
but an optimizer step's last runs under `dist.accumulate(sync=False)` (DDP's `no_sync`:
one gradient all-reduce per optimizer step). With fp16 the loss is scaled
(`dist.precision`, a GradScaler): gradients are unscaled before clipping, and a step
whose scaled gradients overflowed is skipped and counted as a scaler skip, not as NaN / inf."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from remax.algos import kl_loss, value_loss
from remax.algos.variants import apply_truncated_is
from remax.config import Config
from remax.models import response_logprobs
from remax.rollout.types import add_logprob_mismatch, engine_support, logprob_mismatch_metrics
from remax.trainer.guards import check_finite_weights
from remax.trainer.phases.prepare import Batch, Recipe, token_advantages, values


def update(batch: Batch, *, step: int, config: Config, recipe: Recipe, trained: dict[str, Any],
           optimizers: dict[str, Any], dist: Any) -> dict[str, float]:
    """Epochs x minibatches of optimizer steps (1 x 1 for on-policy algorithms) on `batch`,
    the update of step `step` (0-based, seeds the minibatch shuffle). `trained`: name ->
    the module that runs the training forward (the model or its DDP / FSDP wrapper)."""
    return _Update(config, recipe, trained, optimizers, dist, step).run(batch)


def kl_metrics(kl_sum: float, tokens: float, seqs: float, all_reduce_sum) -> dict[str, float]:
    """kl/mean (per response token) and kl/seq_mean (per sequence) of the whole batch, from
    this rank's sums: the sums are all-reduced first, so every rank logs the global ratio (a
    mean of per-rank token means, which the metrics' mean over ranks would give, weighs a
    token by how few its rank has)."""
    kl, n_tokens, n_seqs = all_reduce_sum(torch.tensor([kl_sum, tokens, float(seqs)], dtype=torch.float64)).tolist()
    return {"kl/mean": kl / max(n_tokens, 1.0), "kl/seq_mean": kl / max(n_seqs, 1.0)}


@dataclass
class _Update:
    config: Config
    recipe: Recipe
    trained: dict[str, Any]
    optimizers: dict[str, Any]
    dist: Any
    step: int  # 0-based: seeds the minibatch shuffle; step + 1 names the step in a non-finite error

    def run(self, batch: Batch) -> dict[str, float]:
        epochs, n_mb = self.recipe.passes(self.config.loss)
        n_rows = len(batch.rewards)
        gen = torch.Generator().manual_seed(self.config.train.seed * 100_003 + self.step)
        acc: dict[str, float] = {}
        for epoch in range(epochs):
            for rows in minibatches(n_rows, n_mb, gen):
                self._optimizer_step(batch, rows, acc, first_pass=epoch == 0)
        n_steps = acc["_opt_steps"]  # the steps taken (epochs x minibatches, fewer only when rows < minibatches)
        stats = {k: v / n_steps for k, v in acc.items() if not k.startswith("_")}
        stats["train/skipped_updates"] = acc.get("_skipped", 0) / n_steps  # share of this step's updates
        # of which fp16 loss-scaler overflows (the scale coming down), which do not extend the NaN / inf streak
        stats["train/nonfinite_updates"] = (acc.get("_skipped", 0) - acc.get("_scaler_skips", 0)) / n_steps
        if self.dist.precision.scaler is not None:
            stats["train/scaler_skips"] = float(acc.get("_scaler_skips", 0))  # optimizer steps skipped in this step
            stats["train/loss_scale"] = float(self.dist.precision.scaler.get_scale())
        stats.update(kl_metrics(acc["_kl_sum"], acc["_tokens"], batch.seq_count(torch.arange(n_rows)),
                                self.dist.all_reduce_sum))
        stats.update(logprob_mismatch_metrics(acc))  # engine vs trainer on the sampled tokens
        return stats

    def _optimizer_step(self, batch: Batch, rows: torch.Tensor, acc: dict[str, float], first_pass: bool) -> None:
        """Accumulate gradients over micro-batches of `rows`, then one optimizer step."""
        # global counts (all-reduced over ranks, divided by the world size that DDP averages over)
        norm = self.dist.loss_normalisers(batch.rollout.response_mask[rows].sum(), batch.seq_count(rows))
        for opt in self.optimizers.values():
            opt.zero_grad(set_to_none=True)
        finite = True
        micros = rows.split(self.config.train.micro_batch_size)
        for i, micro in enumerate(micros):
            # DDP all-reduces the gradients in the last micro-batch's backward only
            with self.dist.accumulate(sync=i == len(micros) - 1):
                with self.dist.forward_context():
                    losses = self._micro_losses(batch, micro, norm, acc, first_pass)
                total = sum(losses.values())
                finite = finite and bool(torch.isfinite(total))
                self.dist.backward(total)
            for k, v in losses.items():
                acc[k] = acc.get(k, 0.0) + float(v.detach())
        self._clip_and_step(acc, finite)

    def _micro_losses(self, batch, micro, norm, acc, first_pass) -> dict[str, torch.Tensor]:
        L, r, sub = self.config.loss, self.recipe, batch.rollout.select(micro)
        mask = sub.response_mask
        # (n, R) with grad; log_mass: the sampler's support's log-mass, to compare with the engine in its
        # convention (None: no engine log-probs, or no top-k / top-p)
        logp, log_mass = response_logprobs(self.trained["policy"], sub.prompt_ids, sub.prompt_mask, sub.response_ids,
                                           mask, temperature=self.config.rollout.temperature,
                                           support=engine_support(self.config.rollout, sub.engine_logprobs) or (0, 1.0))
        old = batch.old_logprobs[micro] if batch.old_logprobs is not None else logp.detach()
        if batch.old_logprobs is not None:  # the rollout weights' support, as `old`
            log_mass = None if batch.old_log_mass is None else batch.old_log_mass[micro]
        ref = batch.ref_logprobs[micro]
        if batch.token_adv is not None:
            adv = batch.token_adv[micro]
        else:
            adv = token_advantages(batch.seq_adv[micro], old, ref, mask, loss=L, recipe=r)
        # training-inference mismatch: adv * min(pi_trainer / pi_engine, cap); off without engine log-probs
        adv, tis = apply_truncated_is(adv, old, sub.engine_logprobs, mask, L.tis, L.tis_cap, log_mass)
        p, max_len = r.loss_params, self.config.rollout.max_new_tokens
        losses = {"loss/policy": r.policy_loss.fn(logp, old, adv, mask, p, **norm, max_len=max_len)}
        if r.kl_placement == "loss":
            losses["loss/kl"] = L.kl_coef * kl_loss(logp, ref, mask, r.kl_estimator, p.agg, **norm, max_len=max_len)
        critic = self.trained.get("critic")
        if critic is not None:
            vl = value_loss(values(critic, sub), batch.old_values[micro], batch.returns[micro], mask, L.value_clip_eps,
                            num_tokens=norm["num_tokens"])
            losses["loss/value"] = L.vf_coef * vl
        share = batch.seq_count(micro) / max(norm["num_seqs"], 1e-12)  # this micro-batch's part of a minibatch mean
        if r.policy_loss.clip_fraction is not None:
            tis["ppo/clip_frac"] = float(r.policy_loss.clip_fraction(logp.detach(), old, adv, mask, p))
        for k, v in tis.items():
            acc[k] = acc.get(k, 0.0) + v * share
        if first_pass:
            add_logprob_mismatch(acc, sub.engine_logprobs, old, mask, log_mass)  # old: the sampling weights' log-probs
            acc["_kl_sum"] = acc.get("_kl_sum", 0.0) + float(((old - ref) * mask).sum())
            acc["_tokens"] = acc.get("_tokens", 0.0) + float(mask.sum())
        return losses

    def _clip_and_step(self, acc: dict[str, float], finite_loss: bool) -> None:
        """Unscale (fp16), clip, then step every optimizer; if the loss or any gradient is
        NaN / inf, step none of them (weights and Adam moments stay as they were) and count
        the skip (a scaler skip when the loss was finite and the fp16 scale overflowed)."""
        clip, precision = self.config.train.grad_clip or math.inf, self.dist.precision
        norms = {}
        for name, opt in self.optimizers.items():
            precision.unscale_(opt)  # clipping and the logged norm see the true gradients
            params = [p for g in opt.param_groups for p in g["params"]]
            norms[name] = self.dist.clip_grad_norm(params, clip)
            acc[f"grad/{name}_norm"] = acc.get(f"grad/{name}_norm", 0.0) + float(norms[name])
        acc["_opt_steps"] = acc.get("_opt_steps", 0) + 1
        if not finite_loss or not all(bool(torch.isfinite(n)) for n in norms.values()):
            acc["_skipped"] = acc.get("_skipped", 0) + 1
            if finite_loss and precision.overflow_is_scaler():
                acc["_scaler_skips"] = acc.get("_scaler_skips", 0) + 1
            for opt in self.optimizers.values():
                opt.zero_grad(set_to_none=True)
            precision.update()  # fp16: halve the scale
            return
        for opt in self.optimizers.values():
            precision.step(opt)
        precision.update()
        check_finite_weights(self.optimizers, self.step + 1)  # remax/trainer/guards.py


def minibatches(n_rows: int, n_mb: int, generator: torch.Generator) -> list[torch.Tensor]:
    """This rank's rows, shuffled by `generator` (seeded from (seed, step): the same
    permutation on every rank) when there are several, in `n_mb` minibatches of sizes that
    differ by at most one row, so that n_mb optimizer steps are taken whenever there are
    >= n_mb rows (`Tensor.chunk` gives fewer: 6 rows in 4 chunks are 3 chunks of 2).
    Empty ones (fewer rows than minibatches) are left out; every rank has the same row
    count, so every rank leaves out the same ones."""
    order = torch.randperm(n_rows, generator=generator) if n_mb > 1 else torch.arange(n_rows)
    return [rows for rows in order.tensor_split(n_mb) if len(rows)]


__all__ = ["minibatches", "update"]
