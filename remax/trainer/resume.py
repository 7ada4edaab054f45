"""Where a run starts: a fresh output_dir, an overwritten one, or a checkpoint.

The rule is that an output directory never mixes two runs:
- a plain start refuses a directory that already holds a run;
- `--overwrite True` removes the old run's files (and only those) before anything new
  is written;
- `--resume auto|PATH` continues from a checkpoint: metrics.jsonl is rewritten from
  the checkpoint's copy (so each step appears once), and checkpoints past it, final/
  and the plot, which belong to the abandoned continuation, are removed;
- the dot-named temporaries of a killed write are removed in every case.

A resumed run must be the same run: a changed config field that would make the
continuation a different experiment (model, algorithm, batch layout, seed, loss,
optimizer) is refused, naming the field; micro-batching, logging and the
reward's failure handling may change, and so may train.steps under a constant lr
schedule (a cosine or linear schedule's horizon is train.steps: changing it would move
the lr mid-run, so it is refused). The process count must stay the same
(`check_same_world`): each rank's rollout RNG stream, prompt shard and minibatch order
depend on it. (torch.distributed.checkpoint could reshard an FSDP checkpoint's weights to
another count, but the continuation would not be the same run, so it is refused too.) And
so must the layout (`check_same_layout`): an FSDP checkpoint's sharded/ loads into an
FSDP run, a policy/ directory into a one-process or DDP run.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import Any, Optional

import yaml

from remax.config import Config, ConfigError, to_dict
from remax.trainer.checkpoint import checkpoint_steps, clean_leftovers, latest_checkpoint

RUN_FILES = ("config.yaml", "metrics.jsonl", "reward_curve.png")
RUN_DIRS = ("checkpoints", "final")

# Config fields a resumed run may change: they do not change what is computed per step.
# (train.strategy: auto and fsdp name one layout under an FSDP accelerate config; what
# matters, the checkpoint's layout against the run's, is check_same_layout's.)
RESUMABLE_CHANGES = (
    "output_dir", "overwrite", "resume", "train.steps", "train.micro_batch_size", "train.max_nonfinite_steps",
    "log.", "reward.timeout_s", "reward.on_error", "reward.max_consecutive_skips", "reward.batch_size",
    "model.device", "train.strategy",
)


def notice(message: str) -> None:
    """An informational line on stderr (stdout stays for results)."""
    print(f"remax: {message}", file=sys.stderr, flush=True)


def holds_run(out: Path) -> bool:
    return any((out / f).exists() for f in RUN_FILES + RUN_DIRS)


def remove_run(out: Path) -> None:
    """Remove a run's own files; anything else a user keeps in the directory stays."""
    for name in RUN_FILES:
        (out / name).unlink(missing_ok=True)
    for name in RUN_DIRS:
        if (out / name).exists():
            shutil.rmtree(out / name)


def find_checkpoint(config: Config) -> Optional[Path]:
    """The checkpoint `config.resume` asks for: None for a fresh start."""
    if config.resume is None:
        return None
    if config.resume == "auto":
        return latest_checkpoint(Path(config.output_dir) / "checkpoints")
    return Path(config.resume).expanduser()


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def check_same_run(config: Config, checkpoint: Path) -> None:
    """ConfigError naming the first field the resumed run changed and cannot honour."""
    saved_text = (checkpoint / "config.yaml").read_text() if (checkpoint / "config.yaml").is_file() else ""
    saved = _flat(yaml.safe_load(saved_text) or {})
    if not saved:
        return  # a checkpoint from a library run without a saved config: nothing to compare
    now = _flat(to_dict(config))
    steps = saved.get("train.steps"), now.get("train.steps")
    if steps[0] is not None and steps[0] != steps[1] and now.get("train.lr_schedule") != "constant":
        raise ConfigError(
            f"cannot resume {checkpoint} with a changed train.steps ({steps[0]} -> {steps[1]}) under "
            f"--train.lr_schedule {now.get('train.lr_schedule')}: the schedule's horizon is train.steps, so the lr "
            f"would jump; keep --train.steps {steps[0]}, or start a new run (a constant schedule may change steps)"
        )
    for key in sorted(set(saved) | set(now)):
        if key.startswith(RESUMABLE_CHANGES) or saved.get(key) == now.get(key):
            continue
        raise ConfigError(
            f"cannot resume {checkpoint} with a changed {key} (checkpoint: {saved.get(key)!r}, now: {now.get(key)!r}); "
            f"set it back, or start a new run in another --output_dir"
        )


def check_same_world(checkpoint: Path, saved_world: int, world: int) -> None:
    """ConfigError when the run resumes on another process count than it saved with."""
    if saved_world != world:
        raise ConfigError(
            f"cannot resume {checkpoint} on {world} process(es): it was saved by {saved_world}, and each rank's "
            f"RNG stream, prompt shard and minibatch order depend on the count; launch {saved_world} process(es), "
            "or start a new run in another --output_dir"
        )


def check_same_layout(checkpoint: Path, sharded: bool) -> None:
    """ConfigError when an FSDP checkpoint (sharded/) meets a run without FSDP, or the reverse."""
    from remax.trainer.checkpoint import SHARDED

    written = (checkpoint / SHARDED).is_dir()
    if written != sharded:
        was = f"an FSDP run ({SHARDED}/ shards)" if written else "a run without FSDP (policy/ weights)"
        now = "without FSDP" if written else "with --train.strategy fsdp"
        raise ConfigError(
            f"cannot resume {checkpoint} {now}: it was written by {was}; launch with --train.strategy "
            f"{'fsdp' if written else 'ddp'}, or start a new run in another --output_dir"
        )


def prepare_fresh(config: Config, out: Path) -> None:
    """A new run in `out`: refuse or remove an old run there, per --overwrite / --resume auto."""
    if holds_run(out):
        if config.overwrite:
            notice(f"--overwrite: removing the run in {out}")
        elif config.resume == "auto" and not (out / "final").exists():
            notice(f"--resume auto: no complete checkpoint in {out}/checkpoints; starting from step 0")
        else:
            what = "a finished run with no checkpoint to resume" if config.resume == "auto" else "a run"
            raise ConfigError(
                f"output_dir {str(out)!r} already holds {what}; continue it with --resume auto, "
                "replace it with --overwrite True, or pass a new --output_dir"
            )
        remove_run(out)
    elif config.resume == "auto":
        notice(f"--resume auto: no checkpoint in {out}; starting from step 0")
    out.mkdir(parents=True, exist_ok=True)
    clean_leftovers(out)


def prepare_resumed(out: Path, checkpoint: Path, step: int) -> None:
    """Make `out` hold exactly the run up to `step`: metrics from the checkpoint, no later
    checkpoints, no final/ or plot of a continuation that is being redone."""
    if checkpoint.resolve().parent != (out / "checkpoints").resolve() and holds_run(out):
        raise ConfigError(
            f"output_dir {str(out)!r} holds another run; to continue {checkpoint} there, pass a new --output_dir"
        )
    out.mkdir(parents=True, exist_ok=True)
    clean_leftovers(out)
    clean_leftovers(out / "checkpoints")
    later = [p for s, p in checkpoint_steps(out / "checkpoints").items() if s > step]
    for p in later:
        shutil.rmtree(p)
    if later:
        notice(f"removed {len(later)} checkpoint(s) after step {step}: they belong to the run being redone")
    for name in ("final", "reward_curve.png"):
        p = out / name
        if p.exists():
            shutil.rmtree(p) if p.is_dir() else p.unlink()
    metrics = checkpoint / "metrics.jsonl"
    text = metrics.read_text() if metrics.is_file() else ""
    (out / "metrics.jsonl").write_text(text)
    notice(f"resuming from {checkpoint} at step {step}")
