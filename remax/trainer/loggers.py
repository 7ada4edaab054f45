"""Logging backends behind one small interface: `log(metrics, step)`,
`log_samples(rows, step)`, `close()`.

`log.report_to` names the backends (a comma string or a list): `jsonl` (always on:
the loop's MetricsWriter writes metrics.jsonl, which resume relies on, and this module
writes samples.jsonl), `tensorboard` (event files under output_dir/tensorboard, through
`torch.utils.tensorboard`) and `wandb` (offline by default, so no account is needed;
`wandb sync` uploads later). tensorboard and wandb are optional extras; naming one that
is not installed is one ConfigError line with the pip command.

Every `log.samples_every` steps the loop hands over a table of the batch's first rows:
prompt, sampled response, greedy response (None without a greedy rollout) and both
rewards. A resumed run keeps each step once everywhere: samples.jsonl is cut back to the
checkpoint's step, and the TensorBoard writer purges events past it (`purge_step`). A
wandb run cannot be continued offline, so a resumed run is a new wandb run that starts
at the checkpoint's next step.
"""

from __future__ import annotations

import importlib.util
import json
import numbers
import shutil
from pathlib import Path
from typing import Any, Optional, Protocol, Sequence

from remax.config import Config, ConfigError, closest, to_dict

BACKENDS = ("jsonl", "tensorboard", "wandb")
SAMPLE_COLUMNS = ("step", "prompt", "sampled", "greedy", "reward", "greedy_reward")
SAMPLES_FILE = "samples.jsonl"
TENSORBOARD_DIR = "tensorboard"
_PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb"}  # backend -> module that must import


class Logger(Protocol):
    def log(self, metrics: dict[str, float], step: int) -> None: ...

    def log_samples(self, rows: list[dict[str, Any]], step: int) -> None: ...

    def close(self) -> None: ...


def parse_report_to(value: str | Sequence[str]) -> list[str]:
    """'jsonl,tensorboard' or ['jsonl', 'tensorboard'] -> the backends, jsonl always
    first; an unknown name or a backend whose package is missing is one ConfigError."""
    items = [value] if isinstance(value, str) else list(value)
    names = [part for item in items for part in str(item).split(",")]
    out = ["jsonl"]
    for raw in names:
        name = str(raw).strip().lower()
        if not name or name in out:
            continue
        if name not in BACKENDS:
            near = closest(name, BACKENDS)
            hint = f"did you mean {near!r}? " if near else ""
            raise ConfigError(f"--log.report_to: unknown backend {raw!r}; {hint}choose from {', '.join(BACKENDS)}")
        if importlib.util.find_spec(_PACKAGES[name]) is None:
            raise ConfigError(f"--log.report_to {name}: the {name} package is not installed; "
                              f"pip install 'remax[{name}]'")
        out.append(name)
    return out


def samples_due(every: int, step: int) -> bool:
    """True at the steps (1-based) that log a samples table: every `every`-th; 0 never."""
    return every > 0 and step % every == 0


def sample_rows(
    step: int,
    prompts: list[str],
    sampled: list[str],
    rewards: list[float],
    greedy: Optional[list[str]],
    greedy_rewards: Optional[list[float]],
    n: int,
    limit: int,
) -> list[dict[str, Any]]:
    """The samples table: one row per sampled response (prompt i has rows i*n .. i*n+n-1,
    and its greedy response repeated), at most `limit` rows (0: all)."""
    rows = []
    for j, (text, r) in enumerate(zip(sampled, rewards)):
        i = j // n
        rows.append({
            "step": step, "prompt": prompts[i], "sampled": text, "greedy": greedy[i] if greedy else None,
            "reward": float(r), "greedy_reward": float(greedy_rewards[i]) if greedy_rewards is not None else None,
        })
    return rows[:limit] if limit > 0 else rows


def rollout_samples(step: int, prompts: list[Any], rollout: Any, rewards: Any, greedy_rewards: Any, tokenizer: Any,
                    limit: int) -> list[dict[str, Any]]:
    """The samples table of one step's Rollout (sampled rows, then greedy rows if any) and
    its (N,) / (B,) reward tensors; responses decoded as the reward saw them."""
    from remax.trainer.evaluate import decode_responses

    b, n = rollout.num_prompts, rollout.n
    keep = min(b * n, limit) if limit > 0 else b * n  # decode only the rows that are logged
    texts = decode_responses(tokenizer, rollout.response_ids[:keep], rollout.response_mask[:keep])
    greedy = None
    if rollout.has_greedy:
        greedy = decode_responses(tokenizer, rollout.response_ids[b * n :], rollout.response_mask[b * n :])
    g = greedy_rewards.tolist() if greedy_rewards is not None else None
    return sample_rows(step, prompts, texts, rewards[:keep].tolist(), greedy, g, n, limit)


def scalars(metrics: dict[str, Any]) -> dict[str, float]:
    """The numeric entries of a metrics dict, without the step counter itself."""
    return {k: float(v) for k, v in metrics.items()
            if k != "step" and isinstance(v, numbers.Real) and not isinstance(v, bool)}


# ----------------------------------------------------------------- backends
class SamplesFile:
    """samples.jsonl: one JSON object per table row, flushed per table. Fresh start: the
    file of an overwritten run is removed; resume at step k: rows past k are dropped."""

    def __init__(self, out: Path, start_step: int) -> None:
        self.path = out / SAMPLES_FILE
        if start_step == 0:
            self.path.unlink(missing_ok=True)
        elif self.path.is_file():
            kept = []
            for line in self.path.read_text().splitlines():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    break  # a partial last line from a kill
                if row.get("step", 0) <= start_step:
                    kept.append(line + "\n")
            self.path.write_text("".join(kept))

    def log(self, metrics: dict[str, float], step: int) -> None:
        pass  # metrics.jsonl is the loop's MetricsWriter

    def log_samples(self, rows: list[dict[str, Any]], step: int) -> None:
        with open(self.path, "a") as f:
            f.write("".join(json.dumps(r) + "\n" for r in rows))

    def close(self) -> None:
        pass


class TensorBoardLogger:
    """Scalars under their metric names, the samples table as a markdown text summary."""

    def __init__(self, out: Path, start_step: int) -> None:
        from torch.utils.tensorboard import SummaryWriter

        log_dir = out / TENSORBOARD_DIR
        if start_step == 0 and log_dir.exists():
            shutil.rmtree(log_dir)  # an overwritten run's events
        # purge_step: on load, events at or after it from the abandoned continuation are dropped
        self.writer = SummaryWriter(str(log_dir), purge_step=start_step + 1 if start_step else None)

    def log(self, metrics: dict[str, float], step: int) -> None:
        for k, v in scalars(metrics).items():
            self.writer.add_scalar(k, v, step)
        self.writer.flush()  # a killed run keeps its events

    def log_samples(self, rows: list[dict[str, Any]], step: int) -> None:
        self.writer.add_text("samples", markdown_table(rows), step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class WandbLogger:
    """A wandb run in output_dir/wandb; offline unless log.wandb_mode says online."""

    def __init__(self, config: Config, out: Path, start_step: int) -> None:
        import wandb

        self.wandb = wandb
        name = Path(config.output_dir).name + (f"-from-{start_step}" if start_step else "")
        self.run = wandb.init(project=config.log.wandb_project, name=name, dir=str(out), config=to_dict(config),
                              mode=config.log.wandb_mode, settings=wandb.Settings(console="off", silent=True))

    def log(self, metrics: dict[str, float], step: int) -> None:
        self.run.log(scalars(metrics), step=step)

    def log_samples(self, rows: list[dict[str, Any]], step: int) -> None:
        data = [[_plain(r[c]) for c in SAMPLE_COLUMNS] for r in rows]
        table = self.wandb.Table(columns=list(SAMPLE_COLUMNS), data=data)
        self.run.log({"samples": table}, step=step)

    def close(self) -> None:
        self.run.finish()


def _plain(value: Any) -> Any:
    """A table cell wandb can type: a chat prompt (a list of messages) becomes its JSON."""
    return value if value is None or isinstance(value, (str, int, float)) else json.dumps(value)


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """The samples table as markdown (TensorBoard's text plugin renders it)."""

    def cell(v: Any) -> str:
        text = f"{v:.4f}" if isinstance(v, float) else ("" if v is None else str(_plain(v)))
        return " ".join(text.split()).replace("|", "\\|")

    head = "| " + " | ".join(SAMPLE_COLUMNS) + " |\n|" + "---|" * len(SAMPLE_COLUMNS) + "\n"
    return head + "".join("| " + " | ".join(cell(r[c]) for c in SAMPLE_COLUMNS) + " |\n" for r in rows)


# ------------------------------------------------------------------- group
class LoggerGroup:
    """Every backend of `log.report_to` behind the one interface the loop calls."""

    def __init__(self, loggers: list[Logger]) -> None:
        self.loggers = loggers

    def log(self, metrics: dict[str, float], step: int) -> None:
        for lg in self.loggers:
            lg.log(metrics, step)

    def log_samples(self, rows: list[dict[str, Any]], step: int) -> None:
        for lg in self.loggers:
            lg.log_samples(rows, step)

    def close(self) -> None:
        for lg in self.loggers:
            lg.close()
        self.loggers = []


def open_loggers(config: Config, out: Path, start_step: int, main: bool = True) -> LoggerGroup:
    """The backends for a run in `out` that starts (fresh: 0) or resumes at `start_step`;
    none on a process other than the main one (several ranks: only rank 0 logs)."""
    names = parse_report_to(config.log.report_to)
    if not main:
        return LoggerGroup([])
    out = Path(out)
    loggers: list[Logger] = [SamplesFile(out, start_step)]
    if "tensorboard" in names:
        loggers.append(TensorBoardLogger(out, start_step))
    if "wandb" in names:
        loggers.append(WandbLogger(config, out, start_step))
    return LoggerGroup(loggers)


__all__ = [
    "BACKENDS", "Logger", "LoggerGroup", "SamplesFile", "TensorBoardLogger", "WandbLogger", "markdown_table",
    "open_loggers", "parse_report_to", "rollout_samples", "sample_rows", "samples_due", "scalars",
]
