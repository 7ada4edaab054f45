"""`remax bench memory`: peak memory of remax / reinforce / grpo / ppo at several model
sizes, beside the bytes the model state must take, and the ratio to PPO.

The paper's claim (Li et al., arXiv 2310.10505, Sec. 4): ReMax needs about half of PPO's
GPU memory, because it keeps no value model and no optimizer state for one. The count,
in fp32 with AdamW, N = policy parameters:
- ReMax / REINFORCE / GRPO: policy weight + grad + 2 Adam moments (16N) + frozen reference (4N) = 20N
- PPO: the same plus a critic trunk of the policy's size with its grad and moments (16N) = 36N
so the model-state ratio is 20/36 = 0.56. Activations, the KV cache, the logits and (on
CPU) the interpreter and its libraries come on top and differ by algorithm.

How it is measured: each (size, algorithm) is a fresh subprocess
(`remax.bench.common.measure_trainer`, the same worker as the speed bench) that runs
`--steps` full training steps (the first one allocates the Adam moments); peak memory is
the process's peak RSS on CPU, `torch.cuda.max_memory_allocated` on CUDA. On CPU the RSS
before the model is loaded (imports, prompts, reward) is reported too, and the ratio is
given both for the whole peak and for the peak above that base. The count comes from the
live objects (`remax.bench.common.analytic_bytes`), not from the formula.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

from remax.bench import common
from remax.errors import InputError

ALGOS = ("remax", "reinforce", "grpo", "ppo")
SIZE_ORDER = ("tiny", "mini", "small", "gpt2-small", "0.5b")


@dataclass
class MemoryConfig:
    sizes: tuple[str, ...] = ("mini", "small", "gpt2-small")
    """Model sizes (any of tiny mini small gpt2-small 0.5b; 0.5b needs CUDA)."""
    algos: tuple[str, ...] = ALGOS
    """Algorithms to measure (any registered name); PPO is the reference of the ratios."""
    prompts: int = 8
    """Prompts per step."""
    n: int = 1
    """Sampled responses per prompt (grpo / rloo run prompts/2 x 2 when this is 1)."""
    max_new_tokens: int = 32
    """Response length limit."""
    kl_coef: float = 0.05
    """KL penalty coefficient."""
    steps: int = 2
    """Training steps per measured run (>= 2: the first allocates Adam's moments, the second reuses them)."""
    repeats: int = 1
    """Measured runs per (size, algorithm), interleaved; the peak is their median."""
    threads: int = 0
    """torch threads per measured process; 0: torch's default (one per core)."""
    device: str = "auto"
    """'auto' (cuda if available), 'cpu' or 'cuda'."""
    seed: int = 0
    """Seed of the model weights, the prompt order and sampling."""
    out: str = "benchmarks/results"
    """Directory for memory.md, memory.json and memory.png."""
    plot: bool = True
    """Write memory.png."""
    work_dir: Optional[str] = None
    """Cache of the built model directories; default ~/.cache/remax/bench-models."""


def main(argv: Sequence[str]) -> int:
    from remax.cli import run_tyro

    cfg = run_tyro(MemoryConfig, argv, prog="remax bench memory",
                   description="Peak memory of every algorithm at several model sizes, the fp32 + AdamW "
                   "model-state count beside it (PPO 36N bytes, ReMax 20N), the ratio to PPO, a plot.")
    report = run_memory(cfg, argv)
    print(report["markdown"])
    print(f"\nwrote {', '.join(str(p) for p in report['paths'])}")
    return 0


def check_config(cfg: MemoryConfig) -> str:
    """Validate the options (InputError, one line) and return the resolved device."""
    if not cfg.sizes or not cfg.algos:
        raise InputError("--sizes and --algos need at least one name each")
    for name in ("prompts", "n", "max_new_tokens", "repeats"):
        if getattr(cfg, name) < 1:
            raise InputError(f"--{name} must be >= 1, got {getattr(cfg, name)}")
    if cfg.steps < 2:
        raise InputError(f"--steps must be >= 2 (the first step allocates Adam's moments), got {cfg.steps}")
    device = common.resolve_device(cfg.device)
    for size in cfg.sizes:
        common.check_size(size, device)
    for algo in cfg.algos:
        common.samples_rule(algo, cfg.prompts, cfg.n)
    return device


def run_memory(cfg: MemoryConfig, argv: Sequence[str] = ()) -> dict[str, Any]:
    """Measure every (size, algorithm), interleaved over repetitions; write the table,
    the raw figures and the plot. Returns {"rows", "markdown", "paths", ...}."""
    device = check_config(cfg)
    sizes = sorted(set(cfg.sizes), key=SIZE_ORDER.index)
    work = cfg.work_dir or common.default_work_dir()
    dirs = {s: str(common.prepare_model_dir(s, work, cfg.seed)) for s in sizes}
    results: dict[tuple[str, str], list[dict[str, Any]]] = {(s, a): [] for s in sizes for a in cfg.algos}
    for rep in range(cfg.repeats):
        for size in sizes:
            order = list(cfg.algos[rep % len(cfg.algos):]) + list(cfg.algos[: rep % len(cfg.algos)])
            for algo in order:
                print(f"[rep {rep + 1}/{cfg.repeats}] {size} {algo} ...", file=sys.stderr, flush=True)
                prompts, n = common.samples_rule(algo, cfg.prompts, cfg.n)
                spec = dict(algo=algo, model_dir=dirs[size], prompts=prompts, n=n, device=device,
                            max_new_tokens=cfg.max_new_tokens, kl_coef=cfg.kl_coef, seed=cfg.seed,
                            warmup=cfg.steps - 1, steps=1, threads=cfg.threads)
                results[(size, algo)].append(common.run_worker(common.TRAINER_WORKER, spec))
    rows = summarize(results, sizes, cfg.algos)
    raw = {"command": common.command_line("remax bench memory", argv), "config": vars(cfg),
           "machine": common.machine_info(device), "rows": rows,
           "runs": {f"{s}/{a}": r for (s, a), r in results.items()}}
    markdown = render(raw, cfg)
    paths = list(common.write_results(cfg.out, "memory", markdown, raw))
    if cfg.plot:
        paths.append(plot_memory(rows, cfg.algos, Path(cfg.out) / "memory.png", device))
    return dict(raw, markdown=markdown, paths=paths)


def summarize(results: dict[tuple[str, str], list[dict[str, Any]]], sizes: Sequence[str],
              algos: Sequence[str]) -> list[dict[str, Any]]:
    """One row per (size, algorithm): params, peak, base, peak above base, the count, and
    each of them divided by PPO's at the same size (NaN without PPO)."""
    rows = []
    for size in sizes:
        per = {}
        for algo in algos:
            runs = results[(size, algo)]
            peak = common.median(r["peak_mem_mb"] for r in runs)
            base = common.median(r["base_rss_mb"] for r in runs) if runs[0]["device"] == "cpu" else 0.0
            params = runs[0]["policy_params_total"]
            per[algo] = {"size": size, "algo": algo, "params": params, "peak_mb": peak, "base_mb": base,
                         "above_base_mb": peak - base, "count_mb": runs[0]["analytic_mb"],
                         "count_per_param": runs[0]["analytic_mb"] * 2**20 / runs[0]["policy_params_total"]}
        ppo = per.get("ppo")
        for row in per.values():
            for key in ("peak_mb", "above_base_mb", "count_mb"):
                row[f"{key}_vs_ppo"] = row[key] / ppo[key] if ppo and ppo[key] > 0 else float("nan")
            rows.append(row)
    return rows


def render(raw: dict[str, Any], cfg: MemoryConfig) -> str:
    m = raw["machine"]
    mem = "peak RSS" if m["device"] == "cpu" else "CUDA max allocated"
    lines = [f"### memory: {', '.join(cfg.sizes)}, {m['device']}", "",
             f"`{raw['command']}`  ", f"{m['date']}; {m['cores']} cores, {m['cpu']}"
             f"{', ' + m['gpu'] if 'gpu' in m else ''}; torch {m['torch']}, transformers {m['transformers']}  ",
             f"{cfg.prompts} prompts x {cfg.n}, {cfg.max_new_tokens} new tokens, fp32, AdamW; {mem} of a fresh "
             f"process over {cfg.steps} training steps; base = RSS before the model is loaded (CPU); "
             f"count = weights + grads + 2 Adam moments of every trained tensor, weights of frozen ones; "
             f"torch threads per process: {cfg.threads or 'default'}", ""]
    table = [[r["size"], f"{r['params'] / 1e6:.2f}M", r["algo"], r["peak_mb"], r["above_base_mb"], r["count_mb"],
              f"{r['count_per_param']:.1f}N", r["peak_mb_vs_ppo"], r["above_base_mb_vs_ppo"], r["count_mb_vs_ppo"]]
             for r in raw["rows"]]
    lines.append(common.markdown_table(
        ["size", "params", "algo", f"{mem} MiB", "above base MiB", "count MiB", "count bytes", "peak / PPO",
         "above base / PPO", "count / PPO"], table))
    return "\n".join(lines)


def plot_memory(rows: list[dict[str, Any]], algos: Sequence[str], path: Path, device: str) -> Path:
    """memory.png: peak above base (solid) and the count (dashed) against parameters, and
    each algorithm's ratio to PPO against parameters with the 20/36 line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 4.2))
    for i, algo in enumerate(algos):
        mine = [r for r in rows if r["algo"] == algo]
        x = [r["params"] / 1e6 for r in mine]
        color = f"C{i}"
        ax.plot(x, [r["above_base_mb"] for r in mine], "o-", color=color, label=f"{algo} measured")
        ax.plot(x, [r["count_mb"] for r in mine], "--", color=color, alpha=0.6, label=f"{algo} count")
        if algo != "ppo":
            bx.plot(x, [r["above_base_mb_vs_ppo"] for r in mine], "o-", color=color, label=algo)
    bx.axhline(20 / 36, color="grey", ls=":", label="count 20N / 36N")
    what = "peak RSS above base" if device == "cpu" else "CUDA max allocated"
    positive = all(r["above_base_mb"] > 0 for r in rows)  # tiny's peak can precede the model: 0 above base
    ax.set(xscale="log", yscale="log" if positive else "linear", xlabel="policy parameters (M)", ylabel="MiB",
           title=what)
    ratios = any(r["algo"] != "ppo" and r["above_base_mb_vs_ppo"] == r["above_base_mb_vs_ppo"] for r in rows)
    bx.set(xscale="log" if ratios else "linear", xlabel="policy parameters (M)", ylabel="ratio to PPO", title=f"{what} / PPO's")
    ax.legend(fontsize=7, ncol=2)
    bx.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
