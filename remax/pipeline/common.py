"""The supervised steps of the pipeline (`remax sft`, `remax rm`) on the trainer's own
infrastructure, not a copy of it:

    one output_dir, one run at a time          remax.trainer.lock.run_lock
    fresh / --overwrite / --resume auto|PATH   remax.trainer.phases.persist.start (checks, restore)
    checkpoints/step-N, atomic, keep_last      remax.trainer.phases.persist.save_checkpoint
    AdamW groups and the lr schedule           remax.trainer.optim
    seeded epoch-shuffled batches (resumable)  remax.data.PromptSampler
    several processes (accelerate, DDP)        remax.trainer.distributed (Dist seams)
    mixed precision (bf16 / fp16 + scaler)     remax.trainer.precision.Precision
    metrics.jsonl                              remax.trainer.metrics.MetricsWriter
    a first Ctrl-C: stop with a checkpoint     remax.trainer.guards.SignalGuard

A command supplies a `Task`: its examples (already tokenized and checked), how many
units (tokens, pairs) a batch normalises by, the loss SUM of a micro-batch, and a
held-out evaluation. The loss of a step is that sum over the global batch divided by the
global unit count, so it is the same however the batch is split into micro-batches or
ranks (DDP averages gradients over W ranks, hence each rank divides by count / W).
"""

from __future__ import annotations

import dataclasses
import math
import signal
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Literal, Optional, Protocol

import torch

from remax.config import ConfigError, save_config
from remax.data import DataError, PromptSampler
from remax.trainer.checkpoint import RunState, atomic_dir, save_pretrained_dir, seed_everything
from remax.trainer.distributed import AccelerateDist, Dist, launched_world
from remax.trainer.guards import SignalGuard
from remax.trainer.lock import run_lock
from remax.trainer.loggers import open_loggers, parse_report_to
from remax.trainer.metrics import MetricsWriter, peak_mem_mb
from remax.trainer.optim import build_optimizer, build_scheduler
from remax.trainer.phases import persist
from remax.trainer.precision import Precision, resolve_mode
from remax.teardown import running


@dataclass
class ReportConfig:
    """Logging backends beyond metrics.jsonl, as in `remax train` (remax.trainer.loggers)."""

    report_to: list[str] = field(default_factory=lambda: ["jsonl"])
    """Logging backends (a list, or comma-separated): jsonl (always on: metrics.jsonl), tensorboard (output_dir/tensorboard), wandb."""
    wandb_project: str = "remax"
    """wandb project name."""
    wandb_mode: Literal["offline", "online"] = "offline"
    """wandb mode: offline needs no account (upload later with `wandb sync`); online needs `wandb login`."""


@dataclass
class SupervisedConfig:
    """Options `remax sft` and `remax rm` share (each adds its columns)."""

    model: str = ""
    """The model to start from: a hub name or a local directory written by save_pretrained."""
    tokenizer: Optional[str] = None
    """Tokenizer name or path; defaults to the model's."""
    train_file: str = ""
    """Training rows: a .jsonl / .json / .parquet / .csv file, a save_to_disk folder or a Hub dataset name."""
    split: str = "train"
    """Split to read when train_file is a Hub name or a saved DatasetDict."""
    subset: Optional[str] = None
    """Hub dataset configuration (subset) name."""
    output_dir: str = "runs/supervised"
    """Where config.yaml, metrics.jsonl, checkpoints/ and final/ go."""
    overwrite: bool = False
    """Replace a finished or stopped run already in output_dir."""
    resume: Optional[str] = None
    """'auto' continues from the latest complete checkpoint in output_dir; a path names one checkpoint directory."""
    steps: int = 0
    """Optimizer steps; 0 runs `epochs` passes over the training rows (a short last batch is dropped)."""
    epochs: int = 1
    """Passes over the training rows when steps is 0."""
    batch_size: int = 8
    """Rows (pairs for rm) per optimizer step, over all processes."""
    micro_batch_size: int = 8
    """Rows per forward/backward; gradients accumulate to the same result as one full batch."""
    lr: float = 2e-5
    """Peak learning rate (TRL's default 2e-5 suits pretrained models; tiny random ones want ~1e-3)."""
    weight_decay: float = 0.0
    """AdamW weight decay (TRL: 0); biases and normalisation weights are never decayed."""
    adam_betas: tuple[float, float] = (0.9, 0.999)
    """AdamW betas."""
    grad_clip: float = 1.0
    """Max global gradient norm; 0 turns clipping off."""
    lr_schedule: Literal["cosine", "linear", "constant"] = "linear"
    """Decay after warmup (TRL: linear)."""
    warmup_steps: int = 0
    """Linear warmup steps."""
    max_length: int = 1024
    """Longest training sequence in tokens (capped at the model's context)."""
    eval_fraction: float = 0.0
    """Hold out this seeded share of the rows for evaluation (eval/* metrics); 0 holds out nothing."""
    eval_every: int = 0
    """Evaluate the held-out rows every this many steps (always at the end when any are held out); 0: at the end only."""
    seed: int = 0
    """Seeds torch, python's random, numpy, the held-out split and the row order."""
    shuffle: bool = True
    """Reshuffle the rows every epoch (seeded)."""
    disable_dropout: bool = False
    """Switch the model's dropout off while training."""
    dtype: Literal["float32", "bfloat16", "float16", "auto"] = "float32"
    """Weights' dtype when loading from a path."""
    device: str = "auto"
    """'auto' (cuda if available, else cpu), 'cpu', 'cuda', 'cuda:1', ..."""
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = "auto"
    """Compute precision with float32 master weights: bf16, fp16 (with a loss scaler) or no; auto: bf16 on CUDA, no on CPU."""
    gradient_checkpointing: bool = False
    """Recompute activations in backward: less memory, about a third more compute."""
    trust_remote_code: bool = False
    """Passed to from_pretrained for models with custom code."""
    save_every: int = 0
    """Write checkpoints/step-N every this many steps; 0 only writes final/."""
    keep_last: int = 0
    """Keep only the newest this-many checkpoints; 0 keeps all."""
    progress: bool = True
    """Show a progress bar."""
    log: ReportConfig = field(default_factory=ReportConfig)
    """Logging backends (--log.report_to tensorboard ...); may change on resume."""


class Task(Protocol):
    """What a supervised command trains: examples are whatever its own functions read."""

    name: str  # the command: metric names loss/<name>
    unit: str  # what the loss averages over: 'tokens' or 'pairs'

    def count(self, examples: list[Any]) -> float:
        """Units (completion tokens, pairs) in `examples`: the loss's normaliser."""

    def loss(self, model: Any, examples: list[Any]) -> tuple[torch.Tensor, dict[str, float]]:
        """(the loss SUMMED over the micro-batch's units, metric sums over the same units)."""

    def evaluate(self, model: Any, examples: list[Any]) -> dict[str, float]:
        """Held-out metrics (means), under no_grad, the model in eval mode."""


def check_config(c: SupervisedConfig) -> None:
    """One line for a setting that cannot work (before anything is loaded)."""
    positive = {"--batch_size": c.batch_size, "--micro_batch_size": c.micro_batch_size, "--max_length": c.max_length,
                "--epochs": c.epochs}
    for flag, value in positive.items():
        if value < 1:
            raise ConfigError(f"{flag} must be >= 1, got {value}")
    for flag, value in {"--steps": c.steps, "--save_every": c.save_every, "--keep_last": c.keep_last,
                        "--eval_every": c.eval_every, "--warmup_steps": c.warmup_steps}.items():
        if value < 0:
            raise ConfigError(f"{flag} must be >= 0, got {value}")
    if not (c.lr > 0 and math.isfinite(c.lr)):
        raise ConfigError(f"--lr must be a positive number, got {c.lr}")
    if not 0 <= c.eval_fraction < 1:
        raise ConfigError(f"--eval_fraction must be in [0, 1), got {c.eval_fraction}")
    parse_report_to(c.log.report_to)  # an unknown or uninstalled backend: one line, now
    if c.resume not in (None, "auto") and not Path(c.resume).expanduser().is_dir():
        raise ConfigError(f"--resume {c.resume!r}: no such checkpoint directory; pass 'auto' or a checkpoints/step-N path")


def make_dist(c: SupervisedConfig) -> Dist:
    """The trainer's `Dist`: one process, or accelerate's DDP under a launcher. AccelerateDist
    checks a `remax train` Config's sections; the equivalent fields are handed over."""
    if launched_world() <= 1:
        return Dist()
    view = SimpleNamespace(model=SimpleNamespace(device=c.device), resume=c.resume,
                           train=SimpleNamespace(batch_size=c.batch_size, micro_batch_size=c.micro_batch_size),
                           rollout=SimpleNamespace(n_samples=1), log=SimpleNamespace(save_every=c.save_every))
    try:
        return AccelerateDist(view)
    except ConfigError as err:
        raise ConfigError(str(err).replace("--train.", "--").replace("--log.", "--")) from None


def total_steps(c: SupervisedConfig, n_train: int) -> int:
    if c.batch_size > n_train:
        raise DataError(f"--batch_size {c.batch_size} is larger than the training set ({n_train} rows); lower it")
    return c.steps or c.epochs * (n_train // c.batch_size)


# Fields a resumed run may change (besides output_dir / overwrite / resume): they do not
# change what a step computes. steps too, under a constant schedule (its horizon is steps).
RESUMABLE = ("micro_batch_size", "save_every", "keep_last", "progress", "eval_every", "device")


def resumable_view(c: SupervisedConfig) -> SupervisedConfig:
    """`c` for `remax.trainer.resume.check_same_run` (which knows `remax train`'s sections):
    when resuming, the RESUMABLE fields are set back to the checkpoint's values, so any
    other changed field is refused, naming it. `c` itself when starting fresh."""
    import yaml

    from remax.trainer.resume import find_checkpoint

    checkpoint = find_checkpoint(c)
    saved_file = checkpoint / "config.yaml" if checkpoint is not None else None
    if saved_file is None or not saved_file.is_file():
        return c
    saved = yaml.safe_load(saved_file.read_text()) or {}
    keys = RESUMABLE + (("steps",) if c.lr_schedule == "constant" else ())
    return dataclasses.replace(c, **{k: saved[k] for k in keys if k in saved})


def disable_dropout(model: torch.nn.Module) -> None:
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0


@dataclass
class Run:
    """A supervised run: the config, the model being trained, its tokenizer and examples."""

    config: SupervisedConfig
    model: Any
    tokenizer: Any
    task: Task
    train: list[Any]
    held_out: Optional[list[Any]] = None
    dist: Dist = field(default_factory=Dist)
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    def __post_init__(self) -> None:
        c = self.config
        self.out = Path(c.output_dir)
        self.dist.set_precision(Precision(resolve_mode(c.mixed_precision, self.device), self.device.type))
        self.steps = total_steps(c, len(self.train))
        self.sampler = PromptSampler(self.train, c.batch_size, c.seed, c.shuffle)
        optimizer = build_optimizer(self.model, c.lr, c.weight_decay, c.adam_betas)
        self.trained, self.optimizers = self.dist.wrap({"policy": self.model}, {"policy": optimizer})
        self.schedulers = {"policy": build_scheduler(self.optimizers["policy"], self.steps, c.warmup_steps,
                                                     c.lr_schedule)}
        self.metrics = MetricsWriter(self.dist.output_path(self.out / "metrics.jsonl"))
        self.state = RunState()

    # ------------------------------------------------------------------ loop
    def run(self) -> list[dict[str, float]]:
        """Run, or continue, to the last step; write metrics, checkpoints and final/."""
        parts = persist.Parts(self.model, self.tokenizer, None, self.optimizers, self.schedulers, self.dist.precision)
        with running(), run_lock(self.out, self.dist):  # running(): a failed run skips the exit barrier
            probe = resumable_view(self.config)  # the trainer's same-run check, with this command's free fields
            resumed = persist.start(probe, self.out, parts, self.sampler, dist=self.dist, metrics=self.metrics)
            if probe is not self.config:
                self.dist.main_only(save_config, self.config, self.out / "config.yaml")
            self.state = resumed or self.state
            self.loggers = open_loggers(self.config, self.out, self.state.step, main=self.dist.is_main)
            bar = _progress(self.steps, self.config.progress and self.dist.is_main, self.state.step, self.task.name)
            try:
                with SignalGuard() as signals:
                    while self.state.step < self.steps and not signals.requested:
                        self._after_step(self.step(), bar, parts)
            finally:
                bar.close()
                self.loggers.close()
            if signals.requested:
                name = signal.Signals(signals.requested).name
                persist.stop(f"stopped by {name} after step {self.state.step}", 128 + signals.requested,
                             persist.snapshot(self.state, self.sampler), out=self.out, dist=self.dist,
                             save=lambda s: self._checkpoint(s, parts))
            self._final()
        return self.metrics.history

    def step(self) -> dict[str, float]:
        """One optimizer step on this rank's share of the next global batch."""
        c, start = self.config, time.perf_counter()
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        examples = self.dist.shard(self.sampler.next_batch())
        count = self._global([float(self.task.count(examples))])[0]
        norm = max(count / self.dist.world, 1e-12)  # DDP averages over ranks: count / W gives the global mean
        self.trained["policy"].train()
        opt = self.optimizers["policy"]
        opt.zero_grad(set_to_none=True)
        sums: dict[str, float] = {}
        finite = True
        micros = [examples[i : i + c.micro_batch_size] for i in range(0, len(examples), c.micro_batch_size)]
        for i, micro in enumerate(micros):
            with self.dist.accumulate(sync=i == len(micros) - 1):
                with self.dist.forward_context():
                    loss_sum, stats = self.task.loss(self.trained["policy"], micro)
                finite = finite and bool(torch.isfinite(loss_sum))
                self.dist.backward(loss_sum / norm)
            for k, v in {f"loss/{self.task.name}": float(loss_sum.detach()), **stats}.items():
                sums[k] = sums.get(k, 0.0) + v
        lr = self.schedulers["policy"].get_last_lr()[0]
        grad_norm = self._clip_and_step(opt, finite)
        self.state.step += 1
        with warnings.catch_warnings():  # a skipped first update (NaN) is not the misuse torch warns of
            warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler")
            self.schedulers["policy"].step()
        keys = sorted(sums)
        totals = self._global([sums[k] for k in keys])
        metrics: dict[str, float] = {"step": self.state.step}
        metrics.update({k: v / max(count, 1e-12) for k, v in zip(keys, totals)})
        step_s = time.perf_counter() - start
        metrics.update({"lr": lr, "grad/norm": grad_norm, f"train/{self.task.unit}": count,
                        "train/nonfinite_steps": self.state.nonfinite_steps, "perf/step_s": step_s,
                        f"perf/{self.task.unit}_per_s": count / step_s, "perf/peak_mem_mb": peak_mem_mb(self.device)})
        if self.held_out and c.eval_every and self.state.step % c.eval_every == 0 and self.state.step < self.steps:
            metrics.update(self.evaluate())
        return metrics

    def _clip_and_step(self, opt: Any, finite: bool) -> float:
        """Unscale (fp16), clip, step; a NaN / inf loss or gradient skips the step (counted)."""
        precision = self.dist.precision
        precision.unscale_(opt)
        params = [p for g in opt.param_groups for p in g["params"]]
        norm = self.dist.clip_grad_norm(params, self.config.grad_clip or math.inf)
        if finite and bool(torch.isfinite(norm)):
            precision.step(opt)
            self.state.nonfinite_streak = 0
        else:
            opt.zero_grad(set_to_none=True)
            self.state.nonfinite_steps += 1
            self.state.nonfinite_streak += 1
        precision.update()
        return float(norm)

    def _after_step(self, metrics: dict[str, float], bar: Any, parts: persist.Parts) -> None:
        if self.state.step == self.steps and self.held_out:
            metrics.update(self.evaluate())  # the final model's held-out figures, in the last step's line
        self.metrics.write(metrics)
        self.loggers.log(metrics, self.state.step)
        bar.update(1)
        bar.set_postfix(loss=f"{metrics[f'loss/{self.task.name}']:.4f}")
        if self.config.save_every and self.state.step % self.config.save_every == 0:
            self._checkpoint(persist.snapshot(self.state, self.sampler), parts)
        if self.state.nonfinite_streak >= 3:
            persist.stop(f"the loss or gradients were NaN/inf in 3 steps in a row (up to step {self.state.step}; "
                         "those updates were skipped); lower --lr", 1, persist.snapshot(self.state, self.sampler),
                         out=self.out, dist=self.dist, save=lambda s: self._checkpoint(s, parts))

    def _checkpoint(self, state: RunState, parts: persist.Parts) -> Path:
        return persist.save_checkpoint(state, parts, out=self.out, dist=self.dist, keep_last=self.config.keep_last)

    def _global(self, values: list[float]) -> list[float]:
        """Sums over ranks (the identity in one process)."""
        if self.dist.world == 1:
            return values
        return self.dist.all_reduce_sum(torch.tensor(values, dtype=torch.float64)).tolist()

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """The task's held-out metrics with the model in eval mode (every rank computes all of them)."""
        self.model.eval()
        with self.dist.forward_context():
            return {f"eval/{k}": v for k, v in self.task.evaluate(self.model, self.held_out).items()}

    def _final(self) -> None:
        """final/, atomically, rank 0 writing (`save_final_dir`)."""
        state_dict = self.dist.full_state_dict("policy")
        if self.dist.is_main:
            with atomic_dir(self.out / "final") as tmp:
                save_final_dir(tmp, self.model, self.tokenizer, state_dict)
        self.dist.barrier()


def save_final_dir(path: Path, model: Any, tokenizer: Any, state_dict: Optional[dict[str, Any]] = None) -> None:
    """A plain Hugging Face directory, model + tokenizer, that from_pretrained loads: with
    LoRA the adapters merged in (remax.models.lora.merged_copy), and the adapter alone in
    path/adapter/ (for peft.PeftModel.from_pretrained)."""
    from remax.models.lora import is_peft_model, merged_copy

    if is_peft_model(model):
        save_pretrained_dir(merged_copy(model), tokenizer, path)
        save_pretrained_dir(model, None, path / "adapter")
    else:
        save_pretrained_dir(model, tokenizer, path, state_dict=state_dict)


def checkpoint_layers(model: torch.nn.Module) -> None:
    """--gradient_checkpointing: the trainer's switch (remax.trainer.memory), its error renamed."""
    from remax.trainer.memory import checkpoint_layers as enable

    try:
        enable(model)
    except ConfigError as err:
        raise ConfigError(str(err).replace("--train.gradient_checkpointing", "--gradient_checkpointing")) from None


def load_tokenizer_of(c: SupervisedConfig) -> Any:
    """--tokenizer, else the one saved beside --model (left padding, pad = EOS if none)."""
    from remax.models import load_tokenizer

    name = c.tokenizer or c.model
    if not name:
        raise DataError("no tokenizer; pass --tokenizer PATH (or --model with its tokenizer saved beside it)")
    return load_tokenizer(name, trust_remote_code=c.trust_remote_code, flag="--tokenizer" if c.tokenizer else "--model")


def _progress(total: int, enabled: bool, initial: int, name: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, disable=not enabled, desc=name, dynamic_ncols=True)


def setup(c: SupervisedConfig) -> tuple[Dist, torch.device]:
    """Seeds, the process group and the device, in the trainer's order."""
    from remax.models import resolve_device

    check_config(c)
    seed_everything(c.seed)
    dist = make_dist(c)
    return dist, dist.device(resolve_device(c.device))


__all__ = ["Run", "SupervisedConfig", "Task", "check_config", "disable_dropout", "load_tokenizer_of", "make_dist",
           "resumable_view", "setup", "total_steps"]
