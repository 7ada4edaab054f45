"""Metrics: namespaced names (rollout/*, loss/*, kl/*, perf/*), one JSON object per step
in metrics.jsonl, a stopwatch for the perf/* split, and the reward curve plot (reward
and KL panels). The other logging backends are in remax/trainer/loggers.py."""

from __future__ import annotations

import json
import resource
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import torch


class Stopwatch:
    """Accumulates wall seconds per phase: `with sw("rollout"): ...` -> perf/rollout_s."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, phase: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[phase] = self.seconds.get(phase, 0.0) + time.perf_counter() - start

    def metrics(self) -> dict[str, float]:
        return {f"perf/{k}_s": v for k, v in self.seconds.items()}


def peak_rss_mb() -> float:
    """This process's peak resident set size, MiB.

    On Linux this is VmHWM from /proc/self/status, the high-water mark of this program's own
    memory. Not getrusage's ru_maxrss: Linux carries that across fork + exec, so a process
    started by a big parent (a pytest session, the bench driver) reports at least the
    parent's RSS as its own peak."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 1024  # bytes on macOS, KiB on Linux


def peak_mem_mb(device: torch.device) -> float:
    """Peak memory in MiB: CUDA's allocator peak on a GPU, else the process's peak RSS."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return peak_rss_mb()


class MetricsWriter:
    """Appends one JSON object per step to metrics.jsonl (flushed, so a killed run keeps them)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.history: list[dict[str, float]] = []

    def reload(self) -> None:
        """history from the file (a resumed run); a partial last line from a kill is dropped."""
        self.history = []
        if self.path.is_file():
            for line in self.path.read_text().splitlines():
                try:
                    self.history.append(json.loads(line))
                except json.JSONDecodeError:
                    break
        self.path.write_text("".join(json.dumps(m) + "\n" for m in self.history))

    def write(self, metrics: dict[str, float]) -> None:
        self.history.append(metrics)
        with open(self.path, "a") as f:
            f.write(json.dumps(metrics) + "\n")


def reward_curve_figure(history: list[dict[str, float]], title: str = ""):
    """Two panels over the steps: the sampled reward (and the greedy baseline's where there
    is one), and the KL to the reference per response token (kl/mean)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [m["step"] for m in history]
    fig, (ax, ax_kl) = plt.subplots(2, 1, figsize=(6, 5.5), sharex=True)
    ax.plot(steps, [m["rollout/reward_mean"] for m in history], label="sampled reward")
    if history and "rollout/baseline_reward_mean" in history[0]:
        ax.plot(steps, [m["rollout/baseline_reward_mean"] for m in history], label="greedy (baseline) reward")
    ax.set_ylabel("reward")
    ax.set_title(title)
    ax.legend()
    ax_kl.plot(steps, [m.get("kl/mean", float("nan")) for m in history], color="tab:red", label="KL to reference")
    ax_kl.set_xlabel("step")
    ax_kl.set_ylabel("KL (nats / token)")
    ax_kl.legend()
    fig.tight_layout()
    return fig


def plot_reward_curve(history: list[dict[str, float]], path: str | Path, title: str = "") -> None:
    """reward_curve.png: reward panel above a KL panel (`reward_curve_figure`)."""
    import matplotlib.pyplot as plt

    fig = reward_curve_figure(history, title)
    fig.savefig(path, dpi=100)
    plt.close(fig)
