"""The PNG plots of `remax bench quality` (matplotlib, Agg): training curves against steps
and wall time, the held-out reward-KL frontier, and the gradient variance per snapshot."""

from __future__ import annotations

from pathlib import Path
from typing import Any

SMOOTH = 5  # moving-average window of the training curves (steps)


def _smooth(values: list[float], k: int = SMOOTH) -> list[float]:
    out, acc = [], []
    for v in values:
        acc.append(v)
        acc = acc[-k:]
        out.append(sum(acc) / len(acc))
    return out


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_curves(runs: dict[str, list[dict[str, Any]]], path: Path, label: str = "VADER") -> Path:
    """2 x 2: training reward and KL against steps (top) and wall seconds (bottom); the
    seed mean of each algorithm's smoothed curve with its min-max band."""
    plt = _plt()
    fig, axes = plt.subplots(2, 2, figsize=(11, 7.5))
    for i, (algo, rs) in enumerate(runs.items()):
        for col, key in enumerate(("reward", "kl")):
            curves = [_smooth([h[key] for h in r["history"]]) for r in rs]
            mean = [sum(c) / len(c) for c in zip(*curves)]
            lo, hi = [min(c) for c in zip(*curves)], [max(c) for c in zip(*curves)]
            steps = [h["step"] for h in rs[0]["history"]]
            wall = [sum(w) / len(w) for w in zip(*[[h["wall_s"] for h in r["history"]] for r in rs])]
            for row, x in enumerate((steps, wall)):
                ax = axes[row][col]
                ax.plot(x, mean, color=f"C{i}", label=algo)
                ax.fill_between(x, lo, hi, color=f"C{i}", alpha=0.15)
    for row, xlabel in enumerate(("step", "wall seconds (seed mean)")):
        axes[row][0].set(xlabel=xlabel, ylabel=f"training reward ({label})")
        axes[row][1].set(xlabel=xlabel, ylabel="KL to reference (nats/token)")
    axes[0][0].legend(fontsize=8)
    fig.suptitle(f"training batches, mean and min-max over seeds, moving average of {SMOOTH} steps")
    return _save(fig, plt, path)


def plot_frontier(raw: dict[str, Any], path: Path) -> Path:
    """Held-out reward against held-out KL: every run's evaluation points (small), the
    seed-mean curve (line), the KL-sweep runs' final points (stars), the matched KL."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 5))
    algos = list(raw["runs"])
    for i, algo in enumerate(algos):
        for r in raw["runs"][algo]:
            ax.scatter([e["kl"] for e in r["evals"]], [e["reward"] for e in r["evals"]], s=8, color=f"C{i}", alpha=0.4)
        curve = raw["summary"]["per_algo"][algo]["curve"]
        ax.plot([e["kl"] for e in curve], [e["reward"] for e in curve], "o-", color=f"C{i}", label=algo)
    for r in raw["sweep"]:
        i = algos.index(r["algo"]) if r["algo"] in algos else len(algos)
        e = r["evals"][-1]
        ax.scatter([e["kl"]], [e["reward"]], marker="*", s=120, color=f"C{i}", edgecolor="k")
        ax.annotate(f"kl_coef {r['kl_coef']:g}", (e["kl"], e["reward"]), fontsize=7, xytext=(4, 4),
                    textcoords="offset points")
    ax.axvline(raw["summary"]["matched_kl"], color="grey", ls=":", label="matched KL")
    ax.set(xlabel="held-out KL to reference (nats/token)", ylabel="held-out reward (sampled)",
           title="reward-KL frontier (stars: other KL coefficients)")
    ax.legend(fontsize=8)
    return _save(fig, plt, path)


def plot_gradvar(rows: list[dict[str, Any]], path: Path) -> Path:
    """Bars: trace of the gradient covariance per estimator at each snapshot (log scale), the
    mean over the ReMax runs' seeds; the offset test's rows are left out (a table shows them)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    rows = [r for r in rows if r.get("series") != "offset"]
    algos = list(dict.fromkeys(r["algo"] for r in rows))
    steps = sorted({r["step"] for r in rows})
    width = 0.8 / len(algos)
    for i, algo in enumerate(algos):
        per_step: dict[int, list[float]] = {}
        for r in rows:
            if r["algo"] == algo:
                per_step.setdefault(r["step"], []).append(r["trace_cov"])
        vals = {step: sum(v) / len(v) for step, v in per_step.items()}
        ax.bar([j + i * width for j in range(len(steps))], [vals.get(s, 0.0) for s in steps], width,
               color=f"C{i}", label=algo)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(steps))], [f"step {s}" for s in steps])
    ax.set(yscale="log", ylabel="trace of gradient covariance", title="gradient variance at ReMax-run snapshots")
    ax.legend(fontsize=8)
    return _save(fig, plt, path)


def plot_heldout(raw: dict[str, Any], path: Path, label: str = "reward") -> Path:
    """Held-out reward (sampled: solid, greedy: dashed) of every algorithm's seed mean against
    steps and against generated tokens (every decoded token, ReMax's greedy rows included),
    with the min-max over seeds of the sampled reward."""
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for i, (algo, p) in enumerate(raw["summary"]["per_algo"].items()):
        curve, runs = p["curve"], raw["runs"][algo]
        lo = [min(r["evals"][j]["reward"] for r in runs) for j in range(len(curve))]
        hi = [max(r["evals"][j]["reward"] for r in runs) for j in range(len(curve))]
        for ax, x in zip(axes, ("step", "gen_tokens")):
            xs = [e[x] for e in curve]
            ax.plot(xs, [e["reward"] for e in curve], "o-", color=f"C{i}", label=f"{algo} sampled")
            ax.plot(xs, [e["greedy_reward"] for e in curve], "s--", color=f"C{i}", alpha=0.7, label=f"{algo} greedy")
            ax.fill_between(xs, lo, hi, color=f"C{i}", alpha=0.12)
    axes[0].set(xlabel="step", ylabel=f"held-out {label}")
    axes[1].set(xlabel="generated tokens (greedy rows included)", ylabel=f"held-out {label}")
    axes[0].legend(fontsize=7, ncol=2)
    fig.suptitle("held-out, seed mean (band: min-max of the sampled figure over seeds)")
    return _save(fig, plt, path)


def plot_overoptimisation(curves: dict[str, list[dict[str, float]]], path: Path, title: str = "") -> Path:
    """Gold and proxy held-out reward against the KL to the reference along training (Gao et
    al. 2022, arXiv 2210.10760, Fig. 1 with KL per token on the x axis): proxy solid, gold
    dashed, one colour per curve name."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.8))
    gold_ax = ax.twinx()
    for i, (name, curve) in enumerate(curves.items()):
        kl = [e["kl"] for e in curve]
        ax.plot(kl, [e["reward"] for e in curve], "o-", color=f"C{i}", label=f"{name}: proxy RM")
        gold_ax.plot(kl, [e["gold_reward"] for e in curve], "s--", color=f"C{i}", label=f"{name}: gold (VADER)")
    ax.set(xlabel="held-out KL to the pretrained model (nats/token)", ylabel="proxy reward (solid)",
           title=title or "over-optimisation: proxy and gold reward against KL")
    gold_ax.set_ylabel("gold VADER reward (dashed)")
    lines = ax.get_legend_handles_labels()
    more = gold_ax.get_legend_handles_labels()
    ax.legend(lines[0] + more[0], lines[1] + more[1], fontsize=7, loc="best")
    return _save(fig, plt, path)


def plot_all(raw: dict[str, Any], out: Path) -> list[Path]:
    label = raw.get("label", "VADER")
    paths = [plot_curves(raw["runs"], out / "quality_curves.png", label),
             plot_frontier(raw, out / "quality_frontier.png"), plot_heldout(raw, out / "quality_heldout.png", label)]
    per = raw["summary"]["per_algo"]
    if all("gold_reward" in p for p in per.values()):
        paths.append(plot_overoptimisation({a: p["curve"] for a, p in per.items()}, out / "quality_overopt.png"))
    if raw["gradvar"]:
        paths.append(plot_gradvar(raw["gradvar"], out / "quality_gradvar.png"))
    return paths


def _save(fig, plt, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
