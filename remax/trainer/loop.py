"""The one training loop for every registered algorithm (`remax.algos.list_algorithms()`).

    rollout -> score -> fill (group filter, shaping) -> prepare (reference log-probs,
    advantages) -> update -> log / checkpoint

The loop reads the algorithm's spec (`remax.algos.get_algorithm`) and never branches on
its name: whether to decode a greedy baseline, whether there is a critic, which policy
loss (looked up in `remax.algos.POLICY_LOSSES`; one without a ratio means a single
on-policy pass), a whole-batch token-advantage hook, and a group filter that refills the
batch (`remax.trainer.batch_fill`) all come from the spec. Truncated importance sampling
on a rollout engine's log-probs (`loss.tis`) weights the advantages when they are present.

ReMax (Li et al., arXiv 2310.10505, Algorithm 1): for each prompt, a sampled and a greedy
response come from ONE generate call; both are scored by the same reward call; the
loss is -(r - b) * log pi summed over response tokens with a per-token KL penalty
(the authors' code). On-policy algorithms take one optimizer step per rollout batch,
so the log-probs computed with grad for the loss are reused, detached, for the KL:
no extra forward pass. Departures from the paper: the discount gamma defaults to 1 (the
authors' code uses 0.99) and the KL placement / estimator / aggregation are options.
"""

from __future__ import annotations

import dataclasses
import math
import signal
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import torch

from remax.algos import (
    gae,
    get_algorithm,
    kl_loss,
    kl_penalty,
    ppo_token_rewards,
    token_returns,
    value_loss,
)
from remax.algos.variants import apply_truncated_is
from remax.config import Config, ConfigError, check_algo, save_config
from remax.errors import RunStopped
from remax.data import PromptSampler, encode_prompts, load_splits, validate_prompts
from remax.models import (
    ValueModel,
    load_causal_lm,
    load_tokenizer,
    make_reference,
    resolve_device,
    response_logprobs,
    response_values,
)
from remax.models.critic import VALUE_HEAD_FILE
from remax.models.loading import max_positions
from remax.models.lora import apply_lora, merged_copy
from remax.rewards import reward_from_config, source_metrics
from remax.rollout import Rollout
from remax.rollout.backend import EngineOutOfSync, add_logprob_mismatch, build_backend, logprob_mismatch_metrics
from remax.trainer.evaluate import decode_responses
from remax.trainer.diagnostics import baseline_diagnostics
from remax.trainer.distributed import make_dist
from remax.trainer.memory import checkpoint_layers, prepare_reference
from remax.trainer.checkpoint import (
    RunState,
    atomic_dir,
    capture_rng,
    load_policy_into,
    load_safetensors_into,
    load_trainer_state,
    restore_rng,
    save_checkpoint,
    save_pretrained_dir,
    step_dir,
)
from remax.trainer.guards import RewardFailure, SignalGuard, call_reward
from remax.trainer.loggers import LoggerGroup, open_loggers, parse_report_to, rollout_samples, samples_due
from remax.trainer.metrics import MetricsWriter, Stopwatch, peak_mem_mb, plot_reward_curve
from remax.trainer.resume import check_same_run, find_checkpoint, notice, prepare_fresh, prepare_resumed
from remax.trainer.optim import build_optimizer, build_scheduler
from remax.trainer.batch_fill import fill_batch, shape_rewards
from remax.trainer.validate import fit_context, overlong_buffer_tokens, resolve_kl, resolve_loss, validate_config


@dataclass
class Batch:
    """One step's sampled responses, scored and ready for the update. N = B * n rows."""

    rollout: Rollout  # sampled rows only
    rewards: torch.Tensor  # (N,)
    ref_logprobs: torch.Tensor  # (N, R)
    seq_adv: Optional[torch.Tensor] = None  # (N,) from the spec's advantage estimator
    old_logprobs: Optional[torch.Tensor] = None  # (N, R) only when the update is not one on-policy pass
    old_values: Optional[torch.Tensor] = None  # (N, R) critic
    token_adv: Optional[torch.Tensor] = None  # (N, R) precomputed (PPO's GAE); else built per micro-batch
    returns: Optional[torch.Tensor] = None  # (N, R) critic targets


class Trainer:
    """Holds the models, optimizers and run state; `train()` runs the loop.

    Library users may pass ready objects (policy, tokenizer, reward_fn, rows, a rollout
    backend, which train() then leaves open) instead of paths in the config; the CLI
    passes none of them."""

    def __init__(
        self,
        config: Config,
        *,
        policy: Any = None,
        tokenizer: Any = None,
        reward_fn: Optional[Callable[..., Any]] = None,
        rows: Optional[list[dict[str, Any]]] = None,
        backend: Any = None,
    ) -> None:
        self.config = config
        self.spec = get_algorithm(check_algo(config.algo))
        validate_config(config, self.spec, have_policy=policy is not None, have_rows=rows is not None,
                        have_backend=backend is not None)
        self.kl_placement, self.kl_estimator = resolve_kl(config, self.spec)
        self.policy_loss, self.loss_params = resolve_loss(config, self.spec)  # a PolicyLoss and its scalars
        torch.manual_seed(config.train.seed)
        self.dist = make_dist(config)  # one process: a no-op; several (accelerate launch): DDP / FSDP / DeepSpeed
        self.device = self.dist.device(resolve_device(config.model.device))  # a missing GPU: one line, now
        d = config.data
        if rows is None:  # any data format; held-out prompts (data.eval_*) are never trained on
            rows = load_splits(d, config.train.seed).train
        self._load_models(policy, tokenizer)
        # Every prompt is checked and tokenized once, so a bad row (with its file:line) or a
        # prompt + response longer than the model's context stops the run before anything is written.
        longest, where = validate_prompts(rows, self.tokenizer, d.prompt_column, d.chat_template)
        fit_context(config, max_positions(self.policy, self.reference), longest, where)
        self.reward_fn = reward_fn or self._build_reward()
        self.sampler = PromptSampler(rows, config.train.batch_size, config.train.seed, d.shuffle)
        self._build_optimizers()
        self.state = RunState()
        self.out = Path(config.output_dir)
        self.metrics = MetricsWriter(self.dist.output_path(self.out / "metrics.jsonl"))  # rank 0 writes
        parse_report_to(config.log.report_to)  # an unknown or uninstalled backend: one line, before any output
        self.loggers: Optional[LoggerGroup] = None  # log.report_to's backends, opened by train()
        self.samples: Optional[list[dict[str, Any]]] = None  # this step's samples table, when one is due
        # what generates: HF generate on the policy (default) or a vLLM engine (rollout.backend)
        self._own_backend = backend is None
        self.backend = backend or build_backend(config, self.policy, self.tokenizer, self.eos_token_id)

    # ----------------------------------------------------------------- set-up
    def _load_models(self, policy: Any, tokenizer: Any) -> None:
        m = self.config.model
        # Custom model code runs only with --model.trust_remote_code True (off by default).
        load = dict(dtype=m.dtype, device=str(self.device), trust_remote_code=m.trust_remote_code)
        if policy is None:  # before the tokenizer, so a wrong path is reported as the policy's
            policy = load_causal_lm(m.policy, kind="policy", flag="--model.policy", **load)
        self.tokenizer = tokenizer or load_tokenizer(
            m.tokenizer or m.policy, trust_remote_code=m.trust_remote_code,
            flag="--model.tokenizer" if m.tokenizer else "--model.policy",
        )
        # Dropout off everywhere, as TRL and verl do: the log-probs of the loss must be the
        # sampler's, and the KL must not be noise. With --lora.r > 0 only adapters train,
        # and make_reference below returns the base with them switched off (no copy).
        self.policy = apply_lora(policy.to(self.device).eval(), self.config.lora)
        if m.reference:
            ref = load_causal_lm(m.reference, kind="reference model", flag="--model.reference", **load)
            self.reference = make_reference(ref)
        else:
            self.reference = make_reference(self.policy)
        self.critic = None
        if self.spec.needs_critic:
            # A separate trunk: PPO's extra memory is the point of the comparison.
            critic = ValueModel.from_pretrained(m.critic, **load) if m.critic else ValueModel.from_policy(self.policy)
            self.critic = critic.to(self.device).eval()
        # memory options (remax/trainer/memory.py): reference dtype / CPU offload, gradient checkpointing
        self.reference = prepare_reference(self.reference, self.policy, m.reference_dtype, m.reference_offload)
        if self.config.train.gradient_checkpointing:
            checkpoint_layers(self.policy, self.critic)
        eos = self.tokenizer.eos_token_id
        if eos is None:
            raise ConfigError("the tokenizer has no eos_token; set one so responses can end")
        self.eos_token_id = eos

    def _build_reward(self) -> Callable[..., Any]:
        r = self.config.reward
        try:
            return reward_from_config(r, device=str(self.device))
        except ValueError as err:  # a bad spec or path: report it as a config error, one line
            raise ConfigError(str(err)) from None

    def _build_optimizers(self) -> None:
        t = self.config.train
        self.optimizers = {"policy": build_optimizer(self.policy.parameters(), t.lr, t.weight_decay, t.adam_betas)}
        if self.critic is not None:
            self.optimizers["critic"] = build_optimizer(self.critic.parameters(), t.critic_lr, t.weight_decay, t.adam_betas)
        # name -> the module that runs the training forward: the model itself, or its DDP / FSDP / DeepSpeed wrapper
        self.trained, self.optimizers = self.dist.wrap({"policy": self.policy, "critic": self.critic}, self.optimizers)
        self.schedulers = {
            k: build_scheduler(o, t.steps, t.warmup_steps, t.lr_schedule) for k, o in self.optimizers.items()
        }

    # ------------------------------------------------------------------ loop
    def train(self) -> list[dict[str, float]]:
        """Run, or continue, to config.train.steps steps; write metrics, checkpoints, final/
        and the plot. A first SIGINT / SIGTERM stops after the current step with a checkpoint."""
        self._start()
        try:
            return self._train_loop()
        finally:
            self.loggers.close()

    def _train_loop(self) -> list[dict[str, float]]:
        bar = _progress(self.config.train.steps, self.config.log.progress, initial=self.state.step)
        try:
            with SignalGuard() as signals:
                while self.state.step < self.config.train.steps and not signals.requested:
                    metrics = self.guarded_step()
                    if metrics is not None:
                        self._after_step(metrics, bar)
        finally:
            bar.close()
            if self._own_backend:
                self.backend.close()
        if signals.requested:
            name = signal.Signals(signals.requested).name
            self._stop(f"stopped by {name} after step {self.state.step}", 128 + signals.requested)
        self.save_final(self.out / "final")
        if self.config.log.plot and self.metrics.history and self.dist.is_main:
            plot_reward_curve(self.metrics.history, self.out / "reward_curve.png", title=self.spec.name)
        return self.metrics.history

    def guarded_step(self) -> Optional[dict[str, float]]:
        """step() under the run's failure policies. A failing reward stops the run, saving the
        state from before the failed step, or (reward.on_error=skip_batch) drops the batch:
        then None is returned. Updates with NaN / inf were already skipped inside step()."""
        boundary = self._snapshot()  # the last good state, should this step fail
        try:
            metrics = self.step()
        except RewardFailure as err:
            self._reward_failed(err, boundary)
            return None
        except EngineOutOfSync as err:  # raised by the sync at the step's start: nothing changed yet
            self._stop(str(err), state=boundary)
        self.state.skip_streak = 0
        return metrics

    def _after_step(self, metrics: dict[str, float], bar: Any) -> None:
        self.metrics.write(metrics)
        self.loggers.log(metrics, self.state.step)
        if self.samples is not None:
            self.loggers.log_samples(self.samples, self.state.step)
        bar.update(1)
        bar.set_postfix(reward=f"{metrics['rollout/reward_mean']:.3f}", kl=f"{metrics['kl/mean']:.4f}")
        every = self.config.log.save_every
        if every and self.state.step % every == 0:
            self.save_checkpoint()
        limit = self.config.train.max_nonfinite_steps
        if self.state.nonfinite_streak >= limit:
            self._stop(f"loss or gradients were NaN/inf in {limit} steps in a row (up to step {self.state.step}; "
                       "those updates were skipped); lower --train.lr or check the reward's scale")

    def step(self) -> dict[str, float]:
        """One rollout batch and its update; returns the step's metrics."""
        sw = Stopwatch()
        start = time.perf_counter()
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        rows = self.dist.shard(self.sampler.next_batch())  # this rank's share of the global batch
        with sw("sync"):  # the generator takes the last update's weights (a no-op for hf)
            synced = self.backend.sync(self.policy, self.state.step)
        with sw("rollout"), self.dist.rollout_rng(self.config.train.seed, self.state.step), self.dist.generation("policy"):
            rollout = self.rollout(rows)
        with sw("score"):
            rewards, greedy_rewards = self.score(rows, rollout)
        with sw("fill"):  # the spec's group filter with refill (DAPO) and reward shaping; else a pass-through
            filled = self.fill(rollout, rewards, greedy_rewards)
        self.samples = self._samples(rows, rollout, rewards, greedy_rewards)
        with sw("prepare"):
            batch = self.prepare(filled.samples, filled.rewards, filled.greedy_rewards)
        lr = self.schedulers["policy"].get_last_lr()[0]  # the rate this step's update uses
        with sw("update"):
            stats = self.update(batch)
        self.state.step += 1
        self._count_nonfinite(stats)
        with warnings.catch_warnings():  # a skipped first update (NaN) is not the misuse torch warns of
            warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler")
            for s in self.schedulers.values():
                s.step()
        step_s = time.perf_counter() - start
        metrics = {"step": self.state.step}
        metrics.update(self._rollout_metrics(filled.samples, filled.rewards, filled.greedy_rewards, batch))
        metrics.update(filled.stats)
        metrics.update(source_metrics(self.reward_fn, len(rewards)))  # reward/NAME of a mix's sources
        metrics.update(synced)
        metrics.update(stats)
        metrics["lr"] = lr
        metrics["train/nonfinite_steps"] = self.state.nonfinite_steps
        metrics["reward/skipped_batches"] = self.state.skipped_batches
        metrics.update(sw.metrics())
        metrics["perf/step_s"] = step_s
        metrics["perf/tokens_per_s"] = float(rollout.response_mask.sum()) / step_s
        metrics["perf/peak_mem_mb"] = peak_mem_mb(self.device)
        return self.dist.gather_metrics(metrics)  # reduced over ranks

    # ------------------------------------------------------------ the phases
    def rollout(self, rows: list[dict[str, Any]]) -> Rollout:
        """The n samples per prompt and, if the spec asks, the greedy baseline: one generate call."""
        c = self.config
        prompts = [r[c.data.prompt_column] for r in rows]
        ids, mask = encode_prompts(self.tokenizer, prompts, c.data.max_prompt_tokens, c.data.chat_template)
        return self.backend.generate(ids.to(self.device), mask.to(self.device), n=c.rollout.n_samples,
                                     greedy=self.spec.needs_greedy)

    def score(self, rows: list[dict[str, Any]], rollout: Rollout) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """Sampled and greedy responses in ONE reward call, so both take the same reward path."""
        col = self.config.data.prompt_column
        n, b = rollout.n, rollout.num_prompts
        order = [i for i in range(b) for _ in range(n)] + (list(range(b)) if rollout.has_greedy else [])
        prompts = [rows[i][col] for i in order]
        extra = {k: [rows[i].get(k) for i in order] for k in rows[0] if k != col}
        responses = decode_responses(self.tokenizer, rollout.response_ids, rollout.response_mask)
        scores = call_reward(self.reward_fn, prompts, responses, extra,
                             step=self.state.step + 1, timeout_s=self.config.reward.timeout_s).to(self.device)
        return scores[: b * n], (scores[b * n :] if rollout.has_greedy else None)

    def fill(self, rollout: Rollout, rewards: torch.Tensor, greedy_rewards: Optional[torch.Tensor]):
        """The sampled rows to train on (remax.trainer.batch_fill): with a spec's group filter,
        groups of equal rewards are dropped and more prompts drawn; overlong shaping if set."""
        max_len = self.config.rollout.max_new_tokens
        buffer = overlong_buffer_tokens(self.config, self.spec)

        def draw(k: int):  # the k-th extra prompt batch of this step, with a rollout RNG stream of its own
            rows = self.dist.shard(self.sampler.next_batch())
            stream = self.state.step + k * 1_000_003
            with self.dist.rollout_rng(self.config.train.seed, stream), self.dist.generation("policy"):
                more = self.rollout(rows)
            return (more, *self.score(rows, more))

        return fill_batch((rollout, rewards, greedy_rewards), draw, group_filter=self.spec.group_filter,
                          max_extra=self.config.loss.refill_max_batches, pad_token_id=self.tokenizer.pad_token_id,
                          shape=lambda r, rw, g: shape_rewards(r, rw, g, max_len, buffer), decide=self.dist.from_main,
                          mask_truncated_eos=self.eos_token_id if self.config.loss.mask_truncated else None)

    def prepare(self, samples: Rollout, rewards: torch.Tensor, greedy_rewards: Optional[torch.Tensor]) -> Batch:
        """Reference log-probs and advantages; old log-probs / values only where the update needs them."""
        batch = Batch(samples, rewards, ref_logprobs=self._no_grad_logprobs(self.reference, samples))
        if self.spec.advantage is not None:
            batch.seq_adv = self.spec.advantage(rewards, greedy_rewards, samples.n)  # (N,)
        if self._single_pass():
            return batch  # old log-probs = the update's own forward, detached
        batch.old_logprobs = self._no_grad_logprobs(self.policy, samples)
        if self.critic is None:
            token_adv = self.token_advantages(batch.seq_adv, batch.old_logprobs, batch.ref_logprobs, samples.response_mask)
            post = self.spec.token_postprocess  # e.g. REINFORCE++'s whitening over the whole batch
            batch.token_adv = token_adv if post is None else post(token_adv, samples.response_mask, self.dist.whiten)
            return batch
        self._critic_targets(batch)
        return batch

    def _critic_targets(self, batch: Batch) -> None:
        """PPO: per-token rewards (KL on every token, r on the last), GAE, whitening."""
        L, mask = self.config.loss, batch.rollout.response_mask
        with torch.no_grad():
            batch.old_values = torch.cat([self._values(batch.rollout.select(r)) for r in self._micro(len(mask))])
        kl = kl_penalty(batch.old_logprobs, batch.ref_logprobs, self.kl_estimator)
        kl_coef = L.kl_coef if self.kl_placement in ("token", "reward_to_go") else 0.0
        token_rewards = ppo_token_rewards(batch.rewards, kl, mask, kl_coef)  # (N, R)
        adv, batch.returns = gae(token_rewards, batch.old_values, mask, L.gamma, L.lam)
        batch.token_adv = self.dist.whiten(adv, mask) if L.whiten_advantages else adv  # global mean / std

    def token_advantages(self, seq_adv, logprobs, ref_logprobs, mask) -> torch.Tensor:
        """(N,) sequence advantages -> (N, R) per-token returns with the KL placement chosen."""
        L = self.config.loss
        kl = kl_penalty(logprobs.detach(), ref_logprobs, self.kl_estimator)  # (N, R), no grad
        return token_returns(
            seq_adv, kl, mask, kl_coef=L.kl_coef, gamma=L.gamma, clip=L.advantage_clip, kl_placement=self.kl_placement
        )

    def update(self, batch: Batch) -> dict[str, float]:
        """Epochs x minibatches of optimizer steps (1 x 1 for on-policy algorithms)."""
        L = self.config.loss
        # a loss without an importance ratio is only right on-policy: one update per rollout
        epochs, n_mb = (L.epochs, L.num_minibatches) if self.policy_loss.uses_ratio else (1, 1)
        n_rows = len(batch.rewards)
        gen = torch.Generator().manual_seed(self.config.train.seed * 100_003 + self.state.step)
        acc: dict[str, float] = {}
        for epoch in range(epochs):
            order = torch.randperm(n_rows, generator=gen) if n_mb > 1 else torch.arange(n_rows)
            for rows in order.chunk(n_mb):
                self._optimizer_step(batch, rows, acc, first_pass=epoch == 0)
        n_steps = epochs * n_mb
        stats = {k: v / n_steps for k, v in acc.items() if not k.startswith("_")}
        stats["train/skipped_updates"] = acc.get("_skipped", 0) / acc["_opt_steps"]  # share of this step's updates
        stats["kl/mean"] = acc["_kl_sum"] / max(acc["_tokens"], 1.0)
        stats["kl/seq_mean"] = acc["_kl_sum"] / n_rows
        stats.update(logprob_mismatch_metrics(acc))  # engine vs trainer on the sampled tokens
        return stats

    def _optimizer_step(self, batch: Batch, rows: torch.Tensor, acc: dict[str, float], first_pass: bool) -> None:
        """Accumulate gradients over micro-batches of `rows`, then one optimizer step.

        The losses are normalised by the whole minibatch's token / sequence counts, so the
        accumulated gradient equals one full-batch backward however `rows` is split."""
        # global counts (all-reduced over ranks, divided by the world size that DDP averages over)
        norm = self.dist.loss_normalisers(batch.rollout.response_mask[rows].sum(), len(rows))
        for opt in self.optimizers.values():
            opt.zero_grad(set_to_none=True)
        finite = True
        for micro in rows.split(self.config.train.micro_batch_size):
            losses = self._micro_losses(batch, micro, norm, acc, first_pass)
            total = sum(losses.values())
            finite = finite and bool(torch.isfinite(total))
            self.dist.backward(total)
            for k, v in losses.items():
                acc[k] = acc.get(k, 0.0) + float(v.detach())
        self._clip_and_step(acc, finite)

    def _micro_losses(self, batch, micro, norm, acc, first_pass) -> dict[str, torch.Tensor]:
        L, sub = self.config.loss, batch.rollout.select(micro)
        mask = sub.response_mask
        logp = response_logprobs(self.trained["policy"], sub.prompt_ids, sub.prompt_mask, sub.response_ids, mask,
                                 temperature=self.config.rollout.temperature)  # (n, R), with grad
        old = batch.old_logprobs[micro] if batch.old_logprobs is not None else logp.detach()
        ref = batch.ref_logprobs[micro]
        if batch.token_adv is not None:
            adv = batch.token_adv[micro]
        else:
            adv = self.token_advantages(batch.seq_adv[micro], old, ref, mask)
        # training-inference mismatch: adv * min(pi_trainer / pi_engine, cap); off without engine log-probs
        adv, tis = apply_truncated_is(adv, old, sub.engine_logprobs, mask, L.tis, L.tis_cap)
        p, max_len = self.loss_params, self.config.rollout.max_new_tokens
        losses = {"loss/policy": self.policy_loss.fn(logp, old, adv, mask, p, **norm, max_len=max_len)}
        if self.kl_placement == "loss":
            losses["loss/kl"] = L.kl_coef * kl_loss(logp, ref, mask, self.kl_estimator, p.agg, **norm, max_len=max_len)
        if self.critic is not None:
            values = self._values(sub, self.trained["critic"])
            vl = value_loss(values, batch.old_values[micro], batch.returns[micro], mask, L.value_clip_eps,
                            num_tokens=norm["num_tokens"])
            losses["loss/value"] = L.vf_coef * vl
        share = len(micro) / norm["num_seqs"]  # this micro-batch's part of a minibatch mean
        if self.policy_loss.clip_fraction is not None:
            tis["ppo/clip_frac"] = float(self.policy_loss.clip_fraction(logp.detach(), old, adv, mask, p))
        for k, v in tis.items():
            acc[k] = acc.get(k, 0.0) + v * share
        if first_pass:
            add_logprob_mismatch(acc, sub.engine_logprobs, old, mask)  # old: the sampling weights' log-probs
            acc["_kl_sum"] = acc.get("_kl_sum", 0.0) + float(((old - ref) * mask).sum())
            acc["_tokens"] = acc.get("_tokens", 0.0) + float(mask.sum())
        return losses

    def _clip_and_step(self, acc: dict[str, float], finite_loss: bool) -> None:
        """Clip, then step every optimizer; if the loss or any gradient is NaN / inf, step
        none of them (weights and Adam moments stay as they were) and count the skip."""
        clip = self.config.train.grad_clip or math.inf
        norms = {}
        for name, opt in self.optimizers.items():
            params = [p for g in opt.param_groups for p in g["params"]]
            norms[name] = self.dist.clip_grad_norm(params, clip)
            acc[f"grad/{name}_norm"] = acc.get(f"grad/{name}_norm", 0.0) + float(norms[name])
        acc["_opt_steps"] = acc.get("_opt_steps", 0) + 1
        if not finite_loss or not all(bool(torch.isfinite(n)) for n in norms.values()):
            acc["_skipped"] = acc.get("_skipped", 0) + 1
            for opt in self.optimizers.values():
                opt.zero_grad(set_to_none=True)
            return
        for opt in self.optimizers.values():
            opt.step()

    # ---------------------------------------------------------------- helpers
    def _single_pass(self) -> bool:
        """True when the update's own forward can serve as the 'old' log-probs."""
        L = self.config.loss
        if self.spec.token_postprocess is not None:
            return False  # it needs the whole batch's token advantages before the update
        single = not self.policy_loss.uses_ratio or L.epochs * L.num_minibatches == 1
        return single and self.critic is None

    def _micro(self, n_rows: int) -> list[torch.Tensor]:
        return list(torch.arange(n_rows).split(self.config.train.micro_batch_size))

    @torch.no_grad()
    def _no_grad_logprobs(self, model: Any, samples: Rollout) -> torch.Tensor:
        T = self.config.rollout.temperature
        parts = []
        for rows in self._micro(samples.response_ids.shape[0]):
            s = samples.select(rows)
            parts.append(response_logprobs(model, s.prompt_ids, s.prompt_mask, s.response_ids, s.response_mask, temperature=T))
        return torch.cat(parts)  # (N, R)

    def _samples(self, rows, rollout, rewards, greedy_rewards) -> Optional[list[dict[str, Any]]]:
        """The samples table (prompts, sampled / greedy responses, rewards) if this step logs one."""
        log, step = self.config.log, self.state.step + 1
        if not samples_due(log.samples_every, step):
            return None
        prompts = [r[self.config.data.prompt_column] for r in rows]
        return rollout_samples(step, prompts, rollout, rewards, greedy_rewards, self.tokenizer, log.samples_rows)

    def _values(self, s: Rollout, critic: Any = None) -> torch.Tensor:
        critic = self.critic if critic is None else critic  # the training forward passes the wrapped critic
        return response_values(critic, s.prompt_ids, s.prompt_mask, s.response_ids, s.response_mask)

    def _rollout_metrics(self, rollout, rewards, greedy_rewards, batch) -> dict[str, float]:
        samples = rollout.sampled()
        lengths = samples.response_mask.sum(-1)  # (N,)
        ended = (samples.response_ids == self.eos_token_id) & samples.response_mask.bool()
        m = {
            "rollout/reward_mean": float(rewards.mean()),
            "rollout/reward_std": float(rewards.std()) if len(rewards) > 1 else 0.0,
            "rollout/response_len_mean": float(lengths.float().mean()),
            "rollout/eos_frac": float(ended.any(-1).float().mean()),
        }
        if greedy_rewards is not None:
            m["rollout/baseline_reward_mean"] = float(greedy_rewards.mean())
            # is the greedy baseline working? win rate, corr(r, b), var(r - b) / var(r)
            m.update(baseline_diagnostics(rewards, greedy_rewards.repeat_interleave(rollout.n)))
        if batch.seq_adv is not None:
            m["adv/mean"] = float(batch.seq_adv.mean())
            m["adv/std"] = float(batch.seq_adv.std()) if len(batch.seq_adv) > 1 else 0.0
        return m

    # ----------------------------------------------------------- persistence
    def _snapshot(self) -> RunState:
        """The run state at this step boundary: counters, sampler position, every RNG."""
        return dataclasses.replace(self.state, sampler=self.sampler.state_dict(), rng=capture_rng())

    def save_checkpoint(self, state: Optional[RunState] = None) -> Path:
        """checkpoints/step-N for `state` (default: now), atomically; returns its path."""
        state = state or self._snapshot()
        state = dataclasses.replace(state, rng=self.dist.gather_rng(state.rng))  # every rank's RNG streams
        path = step_dir(self.out / "checkpoints", state.step)
        metrics = self.out / "metrics.jsonl"
        if self.dist.is_main:
            self._write_checkpoint(path, state, metrics)
        self.dist.barrier()
        return path

    def _write_checkpoint(self, path: Path, state: RunState, metrics: Path) -> None:
        save_checkpoint(
            path,
            policy=self.policy,
            tokenizer=self.tokenizer,
            state=state,
            optimizers=self.optimizers,
            schedulers=self.schedulers,
            critic=self.critic,
            config_yaml=(self.out / "config.yaml").read_text(),
            metrics_jsonl=metrics.read_text() if metrics.is_file() else "",
            keep_last=self.config.log.keep_last,
        )

    def _start(self) -> None:
        """Fresh, overwritten or resumed output_dir. Everything that can fail (a missing or
        corrupt checkpoint, a changed config) is checked before the directory is touched."""
        checkpoint = find_checkpoint(self.config)
        if checkpoint is None:
            self.dist.main_only(prepare_fresh, self.config, self.out)  # only rank 0 writes
        else:
            saved = load_trainer_state(checkpoint)
            check_same_run(self.config, checkpoint)
            self._restore(checkpoint, saved)
            self.dist.main_only(prepare_resumed, self.out, checkpoint, self.state.step)
            self.metrics.reload()
        self.dist.main_only(save_config, self.config, self.out / "config.yaml")
        self.dist.barrier()
        self.loggers = open_loggers(self.config, self.out, self.state.step, main=self.dist.is_main)  # rank 0 logs

    def _restore(self, checkpoint: Path, saved: dict[str, Any]) -> None:
        """Weights, optimizer and scheduler states, counters, sampler position and RNGs."""
        load_policy_into(self.policy, checkpoint / "policy")  # with LoRA: the adapters
        if self.critic is not None:
            load_safetensors_into(self.critic.trunk, checkpoint / "critic", skip=VALUE_HEAD_FILE)
            load_safetensors_into(self.critic.head, checkpoint / "critic", only=VALUE_HEAD_FILE)
        for name, opt in self.optimizers.items():
            opt.load_state_dict(saved["optimizers"][name])
        for name, sched in self.schedulers.items():
            sched.load_state_dict(saved["schedulers"][name])
        self.state = RunState(**saved["run_state"])
        self.sampler.load_state_dict(self.state.sampler)
        restore_rng(self.dist.own_rng(self.state.rng))  # this rank's streams

    def _stop(self, reason: str, exit_code: int = 1, state: Optional[RunState] = None) -> None:
        """Save the state (unless step 0, or already saved) and raise RunStopped with one line."""
        state = state or self._snapshot()
        path = step_dir(self.out / "checkpoints", state.step)
        if state.step == 0:
            raise RunStopped(f"{reason}; no step had finished, so there is nothing to resume", exit_code)
        if not self.dist.from_main(path.is_dir()):  # every rank decides as rank 0 does
            self.save_checkpoint(state)
        raise RunStopped(f"{reason}; saved {path}; continue with the same command plus --resume auto", exit_code)

    def _reward_failed(self, err: RewardFailure, boundary: RunState) -> None:
        r = self.config.reward
        self.state.skipped_batches += 1
        self.state.skip_streak += 1
        if r.on_error == "stop":
            self._stop(str(err), state=boundary)
        if self.state.skip_streak >= r.max_consecutive_skips:
            self._stop(f"{err} ({self.state.skip_streak} failed batches in a row, reward.max_consecutive_skips)",
                       state=dataclasses.replace(boundary, skipped_batches=self.state.skipped_batches))
        notice(f"{err}; batch skipped ({self.state.skip_streak} in a row, limit {r.max_consecutive_skips})")

    def _count_nonfinite(self, stats: dict[str, float]) -> None:
        """A step whose updates were all skipped for NaN / inf extends the streak."""
        if stats["train/skipped_updates"] > 0:
            self.state.nonfinite_steps += 1
        self.state.nonfinite_streak = self.state.nonfinite_streak + 1 if stats["train/skipped_updates"] == 1 else 0

    def save_final(self, path: Path) -> None:
        """final/: the policy and its tokenizer, loadable with from_pretrained (with LoRA: the
        adapter, for peft.PeftModel.from_pretrained; --lora.save_merged adds final/merged/)."""
        state_dict = self.dist.full_state_dict("policy")  # consolidated FSDP / ZeRO-3 shards; None otherwise
        if self.dist.is_main:
            with atomic_dir(path) as tmp:
                save_pretrained_dir(self.policy, self.tokenizer, tmp, state_dict=state_dict)
                if self.config.lora.save_merged:
                    save_pretrained_dir(merged_copy(self.policy), self.tokenizer, tmp / "merged")
        self.dist.barrier()


def _progress(total: int, enabled: bool, initial: int = 0):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, disable=not enabled, desc="train", dynamic_ncols=True)


def train(config: Config, **objects: Any) -> list[dict[str, float]]:
    """Build a Trainer from `config` (and any ready objects) and run it."""
    return Trainer(config, **objects).train()


__all__ = ["Batch", "Trainer", "train"]
