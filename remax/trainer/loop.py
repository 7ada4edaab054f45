"""The one training loop for every registered algorithm (`remax.algos.list_algorithms()`).

One step, each phase a function in `remax/trainer/phases/`:

    source.next(rows)                          the generator takes the last update's weights, then
    rollout   phases.rollout.generate          n samples per prompt (+ greedy baseline), one generate call
                                               (rollout.async_steps 1: the batch generated while the
                                               last step trained; phases.rollout.Prefetching)
    score     phases.score.score               sampled and greedy rows, one reward call
    fill      remax.trainer.batch_fill         group filter with refill (DAPO), reward shaping
    prepare   phases.prepare.prepare           reference log-probs, advantages (old log-probs, critic targets)
    update    phases.update.update             epochs x minibatches x micro-batches, clip, step
    log / checkpoint   phases.persist          metrics, snapshots, checkpoints, final/

`Trainer` sets up the models, optimizers and run state, runs the steps under the run's
failure policies (`guarded_step`: a failing reward, an engine out of sync, NaN / inf
updates) and keeps thin methods (`rollout`, `score`, `fill`, `prepare`, `update`,
`save_checkpoint`, `save_final`) over the phase functions.

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
import signal
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Optional

import torch

from remax.algos import get_algorithm
from remax.config import Config, ConfigError, check_algo
from remax.data import PromptSampler, load_splits, validate_prompts
from remax.models import ValueModel, load_causal_lm, load_tokenizer, make_reference, resolve_device
from remax.models.loading import eos_token_ids, max_positions
from remax.models.lora import apply_lora
from remax.rewards import reward_from_config, source_metrics
from remax.rollout import Rollout
from remax.rollout.backend import build_backend
from remax.rollout.types import EngineOutOfSync
from remax.trainer.batch_fill import Filled, fill_batch, real_rows, shape_rewards
from remax.trainer.checkpoint import RunState, seed_everything
from remax.trainer.distributed import make_dist
from remax.trainer.guards import RewardFailure, SignalGuard, nonfinite_guard, prepare_reward
from remax.trainer.lock import run_lock
from remax.teardown import running
from remax.models.checks import check_vocab
from remax.trainer.loggers import LoggerGroup, open_loggers, parse_report_to, rollout_samples, samples_due
from remax.trainer.memory import checkpoint_layers, prepare_reference
from remax.trainer.metrics import MetricsWriter, Stopwatch, peak_mem_mb, plot_reward_curve
from remax.trainer.optim import build_optimizer, build_scheduler
from remax.trainer.phases import persist
from remax.trainer.phases.prepare import Batch, Recipe, prepare, token_advantages
from remax.trainer.phases.rollout import generate, make_source, peek_batch, rollout_stream, submit
from remax.trainer.phases.score import rollout_metrics, score
from remax.trainer.phases.update import update
from remax.trainer.precision import Precision
from remax.trainer.resume import notice
from remax.trainer.validate import fit_context, overlong_buffer_tokens, resolve_kl, resolve_loss, validate_config


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
        kl_placement, kl_estimator = resolve_kl(config, self.spec)
        policy_loss, loss_params = resolve_loss(config, self.spec)  # a PolicyLoss and its scalars
        self.recipe = Recipe(self.spec, policy_loss, loss_params, kl_placement, kl_estimator)  # what the phases run
        seed_everything(config.train.seed)  # python's random, numpy and torch
        self.dist = make_dist(config)  # one process: a no-op; several (accelerate launch): DDP / FSDP / DeepSpeed
        self.device = self.dist.device(resolve_device(config.model.device))  # a missing GPU: one line, now
        # train.mixed_precision: the autocast of every forward and fp16's loss scaler, behind dist's seams
        self.dist.set_precision(Precision.from_config(config, self.device))
        d = config.data
        if rows is None:  # any data format; held-out prompts (data.eval_*) are never trained on
            rows = load_splits(d, config.train.seed).train
        self._load_models(policy, tokenizer)
        # Every prompt is checked and tokenized once, so a bad row (with its file:line) or a
        # prompt + response longer than the model's context stops the run before anything is written.
        longest, where = validate_prompts(rows, self.tokenizer, d.prompt_column, d.chat_template)
        fit_context(config, max_positions(self.policy, self.reference), longest, where)
        self.reward_fn = prepare_reward(reward_fn or self._build_reward(), rows, d.prompt_column, self.tokenizer)
        self.dist.precision.attach(self.reward_fn)  # a reward model's forward in the run's precision
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
        self.backend = backend or build_backend(config, self.policy, self.tokenizer, self.eos_token_id,
                                                forward_context=self.dist.forward_context)
        self.source = self._rollout_source()  # where each step's batch comes from (rollout.async_steps)

    # ----------------------------------------------------------------- set-up
    def _rollout_source(self) -> Any:
        """On-policy, or (rollout.async_steps 1) prefetching the next step's batch; nothing is
        prefetched across a checkpoint or past the last step, so resume stays exact."""
        t, c = self.config.train, self.config

        def start(rows):
            return submit(rows, backend=self.backend, tokenizer=self.tokenizer, data=c.data, n=c.rollout.n_samples,
                          greedy=self.spec.needs_greedy, device=self.device)

        # self.rollout looked up at each call, not bound now: remax.bench wraps the phase methods on the instance
        return make_source(c.rollout.async_steps, self.backend, lambda rows: self.rollout(rows),
                           lambda step: rollout_stream(self.dist, t.seed, step), start=start,
                           peek=lambda: self.dist.shard(peek_batch(self.sampler)),
                           drain=lambda step: step >= t.steps or bool(c.log.save_every and step % c.log.save_every == 0))

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
        self.dist.precision.check_trained(self.policy.parameters())  # pure bf16 / fp16 trained weights: a warning
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
        if self.tokenizer.eos_token_id is None:
            raise ConfigError("the tokenizer has no eos_token; set one so responses can end")
        self.eos_token_id = eos_token_ids(self.tokenizer, self.policy)  # every stop id: tokenizer + generation_config
        check_vocab(self.tokenizer, self.policy, {"--model.reference": self.reference if m.reference else None,
                                                  "--model.critic": self.critic if m.critic else None})
        self.reference = self.dist.frozen("reference", self.reference)  # FSDP: sharded too (after the checks' shapes)

    def _build_reward(self) -> Callable[..., Any]:
        r = self.config.reward
        try:
            return reward_from_config(r, device=str(self.device))
        except ValueError as err:  # a bad spec or path: report it as a config error, one line
            raise ConfigError(str(err)) from None

    def _build_optimizers(self) -> None:
        t = self.config.train
        self.optimizers = {"policy": build_optimizer(self.policy, t.lr, t.weight_decay, t.adam_betas, t.decay_norm_and_bias)}
        if self.critic is not None:
            self.optimizers["critic"] = build_optimizer(self.critic, t.critic_lr, t.weight_decay, t.adam_betas,
                                                        t.decay_norm_and_bias)
        # name -> the module that runs the training forward: the model itself, or its DDP / FSDP / DeepSpeed wrapper
        self.trained, self.optimizers = self.dist.wrap({"policy": self.policy, "critic": self.critic}, self.optimizers)
        self.schedulers = {
            k: build_scheduler(o, t.steps, t.warmup_steps, t.lr_schedule) for k, o in self.optimizers.items()
        }

    # ------------------------------------------------------------------ loop
    def train(self) -> list[dict[str, float]]:
        """Run, or continue, to config.train.steps steps; write metrics, checkpoints, final/
        and the plot. A first SIGINT / SIGTERM stops after the current step with a checkpoint."""
        # running(): a run that raises skips the exit barrier (remax/teardown.py)
        with running(), run_lock(self.out, self.dist):  # one run per output_dir at a time (remax/trainer/lock.py)
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
            self.source.close()
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
            with nonfinite_guard(self.state.step, self.out, self.config.train.lr):  # diverged weights / logits
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
        # sync + generate (async_steps 1: the batch generated while the last step trained)
        rollout, synced = self.source.next(rows, self.state.step, self.policy, sw)
        with sw("score"):
            rewards, greedy_rewards = self.score(rows, rollout)
        with sw("fill"):  # the spec's group filter with refill (DAPO) and reward shaping; else a pass-through
            filled = self.fill(rollout, rewards, greedy_rewards)
        self.samples = self._samples(rows, rollout, rewards, greedy_rewards)
        with sw("prepare"):
            batch = self.prepare(filled.samples, filled.rewards, filled.greedy_rewards, filled.valid)
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
        real = real_rows(filled, batch.seq_adv)  # without the zero-weight padding rows
        metrics.update(rollout_metrics(*real, self.eos_token_id, gather=self.dist.gather_rows))  # global batch stats
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
        return generate(rows, backend=self.backend, tokenizer=self.tokenizer, data=c.data, n=c.rollout.n_samples,
                        greedy=self.spec.needs_greedy, device=self.device)

    def score(self, rows: list[dict[str, Any]], rollout: Rollout) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """Sampled and greedy responses in ONE reward call, so both take the same reward path.
        A failure on any rank raises RewardFailure on every rank (one all-reduced flag), so
        all ranks skip the batch, or all stop, together."""
        failure, scores = None, None
        try:
            scores = score(rows, rollout, reward_fn=self.reward_fn, tokenizer=self.tokenizer,
                           prompt_column=self.config.data.prompt_column, step=self.state.step + 1,
                           timeout_s=self.config.reward.timeout_s, device=self.device,
                           eos_token_id=self.eos_token_id)
        except RewardFailure as err:
            failure = str(err)
        failure = self.dist.first_failure(failure)
        if failure is not None:
            raise RewardFailure(failure)
        return scores

    def fill(self, rollout: Rollout, rewards: torch.Tensor, greedy_rewards: Optional[torch.Tensor]) -> Filled:
        """The sampled rows to train on (remax.trainer.batch_fill): with a spec's group filter,
        groups of equal rewards are dropped and more prompts drawn; overlong shaping if set."""
        c = self.config
        max_len, buffer = c.rollout.max_new_tokens, overlong_buffer_tokens(c, self.spec)

        def draw(k: int):  # the k-th extra prompt batch of this step, with a rollout RNG stream of its own
            rows = self.dist.shard(self.sampler.next_batch())
            with rollout_stream(self.dist, c.train.seed, self.state.step + k * 1_000_003):
                more = self.rollout(rows)
            return (more, *self.score(rows, more))

        return fill_batch((rollout, rewards, greedy_rewards), draw, group_filter=self.spec.group_filter,
                          max_extra=c.loss.refill_max_batches, pad_token_id=self.tokenizer.pad_token_id,
                          shape=lambda r, rw, g: shape_rewards(r, rw, g, max_len, buffer),
                          gather_counts=self.dist.gather_counts, rank=self.dist.rank,
                          mask_truncated_eos=self.eos_token_id if c.loss.mask_truncated else None)

    def prepare(self, samples: Rollout, rewards: torch.Tensor, greedy_rewards: Optional[torch.Tensor],
                valid: Optional[torch.Tensor] = None) -> Batch:
        """Reference log-probs and advantages; old log-probs / values only where the update needs them."""
        return prepare(samples, rewards, greedy_rewards, config=self.config, recipe=self.recipe,
                       reference=self.reference, policy=self.policy, critic=self.critic, dist=self.dist, valid=valid)

    def token_advantages(self, seq_adv, logprobs, ref_logprobs, mask) -> torch.Tensor:
        """(N,) sequence advantages -> (N, R) per-token returns with the KL placement chosen."""
        return token_advantages(seq_adv, logprobs, ref_logprobs, mask, loss=self.config.loss, recipe=self.recipe)

    def update(self, batch: Batch) -> dict[str, float]:
        """Epochs x minibatches of optimizer steps (1 x 1 for on-policy algorithms)."""
        return update(batch, step=self.state.step, config=self.config, recipe=self.recipe, trained=self.trained,
                      optimizers=self.optimizers, dist=self.dist)

    def _samples(self, rows, rollout, rewards, greedy_rewards) -> Optional[list[dict[str, Any]]]:
        """The samples table (prompts, sampled / greedy responses, rewards) if this step logs one."""
        log, step = self.config.log, self.state.step + 1
        if not samples_due(log.samples_every, step):
            return None
        prompts = [r[self.config.data.prompt_column] for r in rows]
        return rollout_samples(step, prompts, rollout, rewards, greedy_rewards, self.tokenizer, log.samples_rows)

    # ----------------------------------------------------------- persistence
    def _parts(self) -> persist.Parts:
        return persist.Parts(self.policy, self.tokenizer, self.critic, self.optimizers, self.schedulers,
                             self.dist.precision)

    def _snapshot(self) -> RunState:
        return persist.snapshot(self.state, self.sampler)

    def save_checkpoint(self, state: Optional[RunState] = None) -> Path:
        """checkpoints/step-N for `state` (default: now), atomically; returns its path."""
        return persist.save_checkpoint(state or self._snapshot(), self._parts(), out=self.out, dist=self.dist,
                                       keep_last=self.config.log.keep_last)

    def _start(self) -> None:
        """Fresh, overwritten or resumed output_dir, then the loggers (rank 0 logs)."""
        resumed = persist.start(self.config, self.out, self._parts(), self.sampler, dist=self.dist, metrics=self.metrics)
        if resumed is not None:
            self.state = resumed
        self.loggers = open_loggers(self.config, self.out, self.state.step, main=self.dist.is_main)

    def _stop(self, reason: str, exit_code: int = 1, state: Optional[RunState] = None) -> None:
        """Save the state (unless step 0, or already saved) and raise RunStopped with one line."""
        persist.stop(reason, exit_code, state or self._snapshot(), out=self.out, dist=self.dist,
                     save=self.save_checkpoint)

    def save_final(self, path: Path) -> None:
        """final/: the policy and its tokenizer, loadable with from_pretrained (with LoRA: the
        adapter, for peft.PeftModel.from_pretrained; --lora.save_merged adds final/merged/)."""
        persist.save_final(path, policy=self.policy, tokenizer=self.tokenizer, dist=self.dist,
                           save_merged=self.config.lora.save_merged)

    # ------------------------------------------------------ failure policies
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
        """A step whose updates were all skipped for NaN / inf extends the streak (fp16
        loss-scaler overflows are skips too, counted in train/scaler_skips, not here)."""
        nonfinite = stats["train/nonfinite_updates"]
        if nonfinite > 0:
            self.state.nonfinite_steps += 1
        self.state.nonfinite_streak = self.state.nonfinite_streak + 1 if nonfinite == 1 else 0


def _progress(total: int, enabled: bool, initial: int = 0):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, disable=not enabled, desc="train", dynamic_ncols=True)


def train(config: Config, **objects: Any) -> list[dict[str, float]]:
    """Build a Trainer from `config` (and any ready objects) and run it."""
    return Trainer(config, **objects).train()


__all__ = ["Batch", "Trainer", "train"]
