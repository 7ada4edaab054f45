"""`remax bench quality`: does the greedy baseline pay off? The demo task, several seeds
per algorithm, measured on held-out prompts, plus the gradient variance behind it.

The task is the offline demo's (`remax.demo`): a small GPT-2 pretrained on the King James
Bible (cached by `remax.demo.pretrain`), pushed towards positive VADER sentiment with a
per-token KL penalty to the pretrained model, on verse-prefix prompts. What it reports:

1. reward and KL curves against steps and against wall time (training batches; mean and
   min-max over seeds), every algorithm on the same prompts and the same number of sampled
   responses per step (`remax.bench.common.samples_rule`);
2. held-out reward (sampled and greedy) and held-out KL (k1 on the sampled tokens against
   the pretrained model, nats per token) at a few points of every run and at its end;
3. the reward-KL frontier: those held-out points, plus runs at other KL coefficients
   (`--kl_sweep`, seed 0), and the reward of each algorithm at one matched KL, read off its
   seed-mean curve by linear interpolation. Raw reward at equal steps misleads: an
   algorithm that drifts far from the reference buys reward with KL.
4. gradient variance (Li et al., arXiv 2310.10505, Sec. 4.3: without the greedy baseline
   REINFORCE's gradient is far noisier). At fixed policy snapshots (the ReMax seed-0 run at
   its start, middle and end), each estimator draws `--grad_samples` independent gradients
   of its own loss on the same prompts (fresh samples each time, through `Trainer.step`,
   clipping off, the weights restored after each); the figure is the trace of their
   covariance, sum_j Var(g_j), and its ratio to ReMax's.

Everything runs in this process, one run after another, algorithms interleaved within each
seed so that a busy machine slows them alike; wall times are per run on a shared CPU.
"""

from __future__ import annotations

import copy
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import torch

from remax.bench import common
from remax.errors import InputError

ALGOS = ("remax", "reinforce", "rloo", "grpo", "ppo")
GRAD_ALGOS = ("remax", "reinforce", "rloo", "grpo")


def _default_cache() -> str:
    from remax.demo import DemoConfig

    return DemoConfig().cache_dir


@dataclass
class QualityConfig:
    algos: tuple[str, ...] = ALGOS
    """Algorithms to train (any registered name)."""
    seeds: int = 3
    """Seeds per algorithm (0, 1, ...): RL sampling and prompt order; the model is the same."""
    steps: int = 60
    """Training steps per run."""
    batch_size: int = 32
    """Sampled responses per step (prompts x n; rloo / grpo: half the prompts x 2)."""
    lr: float = 1e-4
    """Learning rate (policy and critic), the demo's."""
    kl_coef: float = 0.05
    """KL coefficient of the main runs."""
    kl_sweep: tuple[float, ...] = (0.01, 0.2)
    """Extra KL coefficients for the frontier (seed 0, --sweep_algos); empty: none."""
    sweep_algos: tuple[str, ...] = ("remax", "ppo")
    """Algorithms run at every --kl_sweep coefficient."""
    max_new_tokens: int = 24
    """Response length limit (the demo's)."""
    n_eval: int = 128
    """Held-out prompts scored at each evaluation point."""
    evals: int = 3
    """Held-out evaluations during a run besides the start and the end (for the frontier)."""
    grad_algos: tuple[str, ...] = GRAD_ALGOS
    """Estimators whose gradient variance is measured; empty: skip it."""
    grad_samples: int = 12
    """Independent gradient estimates per (estimator, snapshot)."""
    model: Optional[str] = None
    """A save_pretrained model directory to start from; default: the demo's pretrained model."""
    cache_dir: str = field(default_factory=_default_cache)
    """Cache of the demo's pretrained model (built on first use, as `remax demo` does)."""
    pretrain_steps: Optional[int] = None
    """Pretraining steps if the demo model must be built; default: the demo's."""
    threads: int = 0
    """torch threads; 0: torch's default (one per core)."""
    out: str = "benchmarks/results"
    """Directory for quality.md, quality.json and the PNG plots."""
    plot: bool = True
    """Write quality_curves.png, quality_frontier.png and quality_gradvar.png."""


def main(argv: Sequence[str]) -> int:
    from remax.cli import run_tyro

    cfg = run_tyro(QualityConfig, argv, prog="remax bench quality",
                   description="The demo task over seeds: reward and KL curves, held-out reward and KL, the "
                   "reward-KL frontier, and the gradient variance of ReMax against REINFORCE, RLOO and GRPO.")
    report = run_quality(cfg, argv)
    print(report["markdown"])
    print(f"\nwrote {', '.join(str(p) for p in report['paths'])}")
    return 0


def check_config(cfg: QualityConfig) -> None:
    if not cfg.algos:
        raise InputError("--algos needs at least one algorithm name")
    for name in ("seeds", "steps", "batch_size", "n_eval"):
        if getattr(cfg, name) < 1:
            raise InputError(f"--{name} must be >= 1, got {getattr(cfg, name)}")
    if cfg.evals < 0:
        raise InputError(f"--evals must be >= 0, got {cfg.evals}")
    if cfg.grad_algos and cfg.grad_samples < 2:
        raise InputError(f"--grad_samples must be >= 2 (a variance needs two estimates), got {cfg.grad_samples}")
    if any(k < 0 for k in (cfg.kl_coef, *cfg.kl_sweep)):
        raise InputError("--kl_coef and --kl_sweep must be >= 0")
    for algo in {*cfg.algos, *cfg.grad_algos, *(cfg.sweep_algos if cfg.kl_sweep else ())}:
        common.samples_rule(algo, cfg.batch_size, 1)
    if cfg.model is not None and not Path(cfg.model).is_dir():
        raise InputError(f"--model {cfg.model}: no such directory; give a save_pretrained directory or leave it out")


# ------------------------------------------------------------------ inputs
@dataclass
class Task:
    model_dir: str
    tokenizer: Any
    train_rows: list[dict[str, str]]
    eval_prompts: list[str]
    reward: Any


def load_task(cfg: QualityConfig) -> Task:
    """The starting model's directory (the demo's pretrained model unless --model), its
    tokenizer, the demo's train and held-out prompts and the VADER reward."""
    from remax.demo.corpus import demo_prompts, kjv_verses
    from remax.models import load_tokenizer
    from remax.rewards import VaderReward

    model_dir = cfg.model
    if model_dir is None:
        from remax.demo.pretrain import DEFAULT_STEPS, pretrain_demo_model

        steps = cfg.pretrain_steps or DEFAULT_STEPS
        pretrain_demo_model(cfg.cache_dir, steps=steps, seed=0, log=lambda m: print(m, file=sys.stderr))
        model_dir = cfg.cache_dir
    train, held_out = demo_prompts(kjv_verses(), n_train=2048, n_eval=cfg.n_eval, seed=0)
    return Task(str(model_dir), load_tokenizer(str(model_dir)), [{"prompt": p} for p in train], held_out,
                VaderReward())


def load_policy(model_dir: str):
    from remax.models import load_causal_lm

    return load_causal_lm(model_dir, kind="policy", flag="--model", dtype="float32", device="cpu")


def make_trainer(task: Task, algo: str, *, seed: int, kl_coef: float, cfg: QualityConfig, out: str,
                 rows: Optional[list[dict[str, str]]] = None, grad_clip: Optional[float] = None,
                 steps: Optional[int] = None):
    """A Trainer on a fresh copy of the starting model, at the demo's settings."""
    from remax.config import Config
    from remax.trainer import Trainer

    prompts, n = common.samples_rule(algo, cfg.batch_size, 1)
    config = Config(algo=algo, output_dir=out, overwrite=True)
    config.model.device = "cpu"
    config.rollout.max_new_tokens, config.rollout.top_p, config.rollout.n_samples = cfg.max_new_tokens, 0.9, n
    config.train.steps = steps or cfg.steps  # the schedule's length
    config.train.batch_size, config.train.micro_batch_size = prompts, prompts * n
    config.train.lr, config.train.critic_lr, config.train.seed = cfg.lr, cfg.lr, seed
    if grad_clip is not None:
        config.train.grad_clip = grad_clip
    config.loss.kl_coef = kl_coef
    config.log.progress, config.log.plot = False, False
    return Trainer(config, policy=load_policy(task.model_dir), tokenizer=task.tokenizer, reward_fn=task.reward,
                   rows=rows if rows is not None else task.train_rows)


# --------------------------------------------------------------- held out
@torch.no_grad()
def heldout(policy, reference, tokenizer, prompts: list[str], reward, max_new_tokens: int,
            seed: int = 0, chunk: int = 64) -> dict[str, float]:
    """Sampled (top-p 0.9, T 1, as in training) and greedy responses to the held-out prompts:
    mean rewards, and the KL to the reference as the mean over sampled response tokens of
    log pi(a_t) - log pi_ref(a_t) (k1, nats per token). Seeded; the global RNG is restored."""
    from remax.data import encode_prompts
    from remax.models import response_logprobs
    from remax.rollout import generate_rollout
    from remax.trainer.evaluate import decode_responses

    texts_s, texts_g, kl_sum, tokens = [], [], 0.0, 0.0
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        for i in range(0, len(prompts), chunk):
            part = prompts[i: i + chunk]
            ids, mask = encode_prompts(tokenizer, part, 32)
            ro = generate_rollout(policy, ids, mask, n=1, greedy=True, max_new_tokens=max_new_tokens,
                                  top_p=0.9, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
            texts = decode_responses(tokenizer, ro.response_ids, ro.response_mask)
            texts_s += texts[: len(part)]
            texts_g += texts[len(part):]
            s = ro.sampled()
            args = (s.prompt_ids, s.prompt_mask, s.response_ids, s.response_mask)
            kl_sum += float(((response_logprobs(policy, *args) - response_logprobs(reference, *args))
                             * s.response_mask).sum())
            tokens += float(s.response_mask.sum())
    scores = torch.as_tensor(reward(prompts + prompts, texts_s + texts_g), dtype=torch.float32)
    return {"reward": float(scores[: len(prompts)].mean()), "greedy_reward": float(scores[len(prompts):].mean()),
            "kl": kl_sum / max(tokens, 1.0)}


# --------------------------------------------------------------- one run
def eval_steps(steps: int, evals: int) -> list[int]:
    """Steps after which the held-out set is scored: 0, `evals` evenly spaced ones, the last."""
    points = {0, steps} | {round(steps * (i + 1) / (evals + 1)) for i in range(evals)}
    return sorted(points)


def train_run(task: Task, algo: str, seed: int, kl_coef: float, cfg: QualityConfig,
              snapshot_steps: Sequence[int] = ()) -> dict[str, Any]:
    """One run: per-step training reward, KL and seconds; held-out figures at eval_steps;
    the policy's weights at `snapshot_steps` (for the gradient variance)."""
    points = eval_steps(cfg.steps, cfg.evals)
    history, evals, snapshots, wall = [], [], {}, 0.0
    with tempfile.TemporaryDirectory(prefix="remax-bench-quality-") as out:
        trainer = make_trainer(task, algo, seed=seed, kl_coef=kl_coef, cfg=cfg, out=out)
        for step in range(cfg.steps + 1):
            if step in snapshot_steps:
                snapshots[step] = copy.deepcopy(trainer.policy.state_dict())
            if step in points:
                ev = heldout(trainer.policy, trainer.reference, task.tokenizer, task.eval_prompts, task.reward,
                             cfg.max_new_tokens, seed=1000 + step)
                evals.append(dict(ev, step=step, wall_s=wall))
            if step == cfg.steps:
                break
            start = time.perf_counter()
            m = trainer.step()
            wall += time.perf_counter() - start
            history.append({"step": step + 1, "wall_s": wall, "reward": m["rollout/reward_mean"],
                            "kl": m["kl/mean"], "step_s": m["perf/step_s"]})
    return {"algo": algo, "seed": seed, "kl_coef": kl_coef, "history": history, "evals": evals,
            "snapshots": snapshots}


# --------------------------------------------------------- gradient variance
def gradient_variance(task: Task, snapshots: dict[int, dict], cfg: QualityConfig) -> list[dict[str, Any]]:
    """For every snapshot and estimator: `grad_samples` gradients of the estimator's loss at
    those weights on one fixed set of prompts, through Trainer.step with clipping off (the
    optimizer step that follows is undone by reloading the weights). Returns rows with the
    trace of the covariance, the squared norm of the mean gradient and their ratio."""
    rows_all = task.train_rows[: cfg.batch_size]
    out = []
    for algo in cfg.grad_algos:
        prompts, _ = common.samples_rule(algo, cfg.batch_size, 1)
        with tempfile.TemporaryDirectory(prefix="remax-bench-grad-") as tmp:
            # the reference is the starting model, as in training; the snapshot is loaded after
            trainer = make_trainer(task, algo, seed=12345, kl_coef=cfg.kl_coef, cfg=cfg, out=tmp,
                                   rows=rows_all[:prompts], grad_clip=0.0,
                                   steps=len(snapshots) * cfg.grad_samples)
            for step, state in snapshots.items():
                grads = []
                for _ in range(cfg.grad_samples):
                    trainer.policy.load_state_dict(state)
                    trainer.step()  # batch = every one of the fixed prompts; fresh samples
                    grads.append(torch.cat([p.grad.flatten() for p in trainer.policy.parameters()
                                            if p.grad is not None]))
                trainer.policy.load_state_dict(state)
                out.append(dict(algo=algo, step=step, **variance_figures(torch.stack(grads))))
    add_variance_ratios(out)
    return out


def variance_figures(grads: torch.Tensor) -> dict[str, float]:
    """(K, P) gradient estimates -> trace of their covariance sum_j Var(g_j) (unbiased,
    K - 1), the squared norm of the mean gradient, and trace / norm^2 (noise per signal)."""
    mean = grads.double().mean(0)
    trace = float(grads.double().var(0, unbiased=True).sum())
    norm2 = float(mean.pow(2).sum())
    return {"trace_cov": trace, "mean_norm2": norm2, "noise_to_signal": trace / norm2 if norm2 > 0 else float("nan")}


def add_variance_ratios(rows: list[dict[str, Any]]) -> None:
    """trace_cov / ReMax's at the same snapshot (NaN when ReMax was not measured)."""
    ref = {r["step"]: r["trace_cov"] for r in rows if r["algo"] == "remax"}
    for r in rows:
        r["vs_remax"] = r["trace_cov"] / ref[r["step"]] if ref.get(r["step"]) else float("nan")


# ------------------------------------------------------------------ figures
def matched_kl_reward(evals: list[dict[str, float]], target: float) -> float:
    """Held-out reward where the (step-ordered) held-out KL first reaches `target`,
    linearly interpolated between the two evaluations around it; NaN if it never does."""
    for a, b in zip(evals, evals[1:]):
        if a["kl"] <= target <= b["kl"] and b["kl"] > a["kl"]:
            w = (target - a["kl"]) / (b["kl"] - a["kl"])
            return a["reward"] + w * (b["reward"] - a["reward"])
        if a["kl"] == target:
            return a["reward"]
    return evals[-1]["reward"] if evals and evals[-1]["kl"] == target else float("nan")


def mean_evals(runs: list[dict[str, Any]]) -> list[dict[str, float]]:
    """Seed-mean held-out reward, greedy reward and KL at each evaluation step."""
    out = []
    for i, ev in enumerate(runs[0]["evals"]):
        out.append({k: sum(r["evals"][i][k] for r in runs) / len(runs) for k in ("reward", "greedy_reward", "kl")}
                   | {"step": ev["step"]})
    return out


def summarize(main_runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Per algorithm: final held-out figures (mean, sd over seeds), seconds per step; the
    matched KL (the smallest of the algorithms' largest seed-mean held-out KLs, so that
    every algorithm reaches it) and each algorithm's reward there."""
    per = {}
    for algo, runs in main_runs.items():
        finals = [r["evals"][-1] for r in runs]
        per[algo] = {k: _mean_sd([f[k] for f in finals]) for k in ("reward", "greedy_reward", "kl")}
        per[algo]["start"] = runs[0]["evals"][0]
        per[algo]["step_s"] = common.median(h["step_s"] for r in runs for h in r["history"])
        per[algo]["curve"] = mean_evals(runs)
    target = min(max(e["kl"] for e in p["curve"]) for p in per.values())
    for p in per.values():
        p["reward_at_matched_kl"] = matched_kl_reward(p["curve"], target)
    return {"per_algo": per, "matched_kl": target}


def _mean_sd(values: list[float]) -> tuple[float, float]:
    t = torch.tensor(values, dtype=torch.float64)
    return float(t.mean()), float(t.std()) if len(values) > 1 else 0.0


# ------------------------------------------------------------------ the run
def run_quality(cfg: QualityConfig, argv: Sequence[str] = ()) -> dict[str, Any]:
    check_config(cfg)
    common.set_threads(cfg.threads)
    task = load_task(cfg)
    start = time.perf_counter()
    snap_steps = (0, cfg.steps // 2, cfg.steps) if cfg.grad_algos else ()
    main_runs: dict[str, list[dict[str, Any]]] = {a: [] for a in cfg.algos}
    snapshots: dict[int, dict] = {}
    for seed in range(cfg.seeds):
        order = list(cfg.algos[seed % len(cfg.algos):]) + list(cfg.algos[: seed % len(cfg.algos)])
        for algo in order:
            print(f"[seed {seed}] {algo} ...", file=sys.stderr, flush=True)
            want = snap_steps if (algo, seed) == ("remax", 0) else ()
            run = train_run(task, algo, seed, cfg.kl_coef, cfg, snapshot_steps=want)
            snapshots.update(run.pop("snapshots"))
            main_runs[algo].append(run)
    sweep = []
    for kl in cfg.kl_sweep:
        for algo in cfg.sweep_algos:
            print(f"[kl {kl}] {algo} ...", file=sys.stderr, flush=True)
            run = train_run(task, algo, 0, kl, cfg)
            run.pop("snapshots")
            sweep.append(run)
    if cfg.grad_algos and not snapshots:  # ReMax was not among --algos: snapshot a ReMax run anyway
        snapshots = train_run(task, "remax", 0, cfg.kl_coef, cfg, snapshot_steps=snap_steps)["snapshots"]
    print("gradient variance ...", file=sys.stderr, flush=True)
    gradvar = gradient_variance(task, snapshots, cfg) if cfg.grad_algos else []
    summary = summarize(main_runs)
    raw = {"command": common.command_line("remax bench quality", argv), "config": vars(cfg),
           "machine": common.machine_info("cpu"), "model_dir": task.model_dir, "summary": summary,
           "gradvar": gradvar, "runs": main_runs, "sweep": sweep, "total_s": time.perf_counter() - start}
    markdown = render(raw, cfg)
    paths = list(common.write_results(cfg.out, "quality", markdown, raw))
    if cfg.plot:
        from remax.bench.quality_plots import plot_all

        paths += plot_all(raw, Path(cfg.out))
    return dict(raw, markdown=markdown, paths=paths)


def render(raw: dict[str, Any], cfg: QualityConfig) -> str:
    m, s = raw["machine"], raw["summary"]
    lines = [f"### quality: the demo task, {cfg.seeds} seeds x {cfg.steps} steps", "",
             f"`{raw['command']}`  ", f"{m['date']}; {m['cores']} cores, {m['cpu']}; torch {m['torch']}; "
             f"total {raw['total_s'] / 60:.1f} min  ",
             f"{cfg.batch_size} sampled responses per step (rloo / grpo: {cfg.batch_size // 2} prompts x 2), "
             f"lr {cfg.lr}, KL coefficient {cfg.kl_coef}, {cfg.max_new_tokens} new tokens, top-p 0.9; held out: "
             f"{cfg.n_eval} prompts, one sampled and one greedy response each, KL = mean over sampled tokens of "
             f"log pi - log pi_ref (nats/token); mean +- sd over seeds", ""]
    rows = []
    for algo, p in s["per_algo"].items():
        rows.append([algo, f"{p['start']['reward']:.3f}", f"{p['reward'][0]:.3f} +- {p['reward'][1]:.3f}",
                     f"{p['greedy_reward'][0]:.3f} +- {p['greedy_reward'][1]:.3f}",
                     f"{p['kl'][0]:.3f} +- {p['kl'][1]:.3f}", p["reward_at_matched_kl"], p["step_s"]])
    lines.append(common.markdown_table(
        ["algo", "held-out reward at start", "final held-out reward", "final greedy reward", "final KL",
         f"reward at KL {s['matched_kl']:.3f}", "s / step"], rows))
    if raw["sweep"]:
        sweep = [[r["algo"], r["kl_coef"], r["evals"][-1]["reward"], r["evals"][-1]["kl"]] for r in raw["sweep"]]
        sweep += [[a, cfg.kl_coef, p["reward"][0], p["kl"][0]] for a, p in s["per_algo"].items() if a in cfg.sweep_algos]
        lines += ["", "KL-coefficient sweep (seed 0; the main runs' seed means at the main coefficient):", "",
                  common.markdown_table(["algo", "kl_coef", "final held-out reward", "final KL"],
                                        sorted(sweep, key=lambda r: (r[0], r[1])))]
    if raw["gradvar"]:
        gv = [[r["algo"], r["step"], r["trace_cov"], r["mean_norm2"], r["noise_to_signal"], r["vs_remax"]]
              for r in raw["gradvar"]]
        lines += ["", f"Gradient variance at the ReMax seed-0 run's weights after 0, {cfg.steps // 2} and "
                  f"{cfg.steps} steps: {cfg.grad_samples} independent estimates each, same prompts, no clipping:", "",
                  common.markdown_table(["estimator", "snapshot step", "trace cov", "|mean grad|^2",
                                         "trace / |mean|^2", "trace / ReMax's"], gv)]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
