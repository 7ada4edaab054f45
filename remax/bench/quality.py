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
   REINFORCE's gradient is far noisier). At fixed policy snapshots (ReMax runs, seeds 0..--grad_seeds-1, at
   its start, middle and end), each estimator draws `--grad_samples` independent gradients
   of its own loss on the same prompts (fresh samples each time, through `Trainer.step`,
   clipping off, the weights restored after each); the figure is the trace of their
   covariance, sum_j Var(g_j), and its ratio to ReMax's.

Everything runs in this process, one run after another, algorithms interleaved within each
seed so that a busy machine slows them alike; wall times are per run on a shared CPU.
"""

from __future__ import annotations

import copy
import dataclasses
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional, Sequence

import torch

from remax.bench import common
from remax.errors import InputError

ALGOS = ("remax", "reinforce", "rloo", "grpo", "ppo")
GRAD_ALGOS = ("remax", "reinforce", "rloo", "grpo")


def _default_cache() -> str:
    from remax.demo import DemoConfig

    return DemoConfig().cache_dir


TASKS = ("vader", "arithmetic", "rm")
# what --task changes, for the options left at their defaults (the demo's values serve vader)
TASK_DEFAULTS: dict[str, dict[str, Any]] = {
    "arithmetic": dict(algos=("remax", "rloo", "grpo", "batch_mean"), grad_algos=(), kl_sweep=(), steps=60,
                       max_new_tokens=4, lr=3e-4, kl_coef=0.01, n_eval=500),
    "rm": dict(algos=("remax", "reinforce", "rloo", "grpo", "ppo", "batch_mean"), grad_algos=("remax", "reinforce"),
               kl_sweep=(), offsets=(0.0, 5.0)),
}


@dataclass
class QualityConfig:
    task: Literal["vader", "arithmetic", "rm"] = "vader"
    """vader: the demo's VADER reward. arithmetic: "a+b=" problems, exact-match 0/1 reward, a tiny model pretrained
    to ~50% greedy accuracy (remax.tasks.arithmetic); held-out reward = accuracy. rm: the pipeline demo's proxy reward
    model (remax demo --pipeline: pairs of the pretrained model's responses labelled by VADER, a Bradley-Terry RM), held
    out scored by the proxy and the gold VADER. arithmetic and rm change the defaults of --algos, --grad_algos,
    --kl_sweep, --offsets and the sizes (TASK_DEFAULTS in remax/bench/quality.py) unless those are given."""
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
    grad_seeds: int = 1
    """ReMax runs (seeds 0..k-1, at most --seeds) at whose start / middle / end weights the gradient variance is measured."""
    pair_prompts: int = 1536
    """--task rm: prompts whose sampled responses make the proxy's preference pairs (remax demo --pipeline's)."""
    offsets: tuple[float, ...] = ()
    """The offset test: gradient variance of --grad_algos at the middle snapshot with these constants added to the
    reward, each from the same seed, so every offset sees the same samples (a baseline that tracks the reward removes
    a constant; REINFORCE's variance grows with it); include 0 for the reference; empty: skip."""
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
    apply_task_defaults(cfg)
    report = run_quality(cfg, argv)
    print(report["markdown"])
    print(f"\nwrote {', '.join(str(p) for p in report['paths'])}")
    return 0


def apply_task_defaults(cfg: QualityConfig) -> None:
    """--task's defaults (TASK_DEFAULTS) for every option still at QualityConfig's default."""
    base = QualityConfig()
    for name, value in TASK_DEFAULTS.get(cfg.task, {}).items():
        if getattr(cfg, name) == getattr(base, name):
            setattr(cfg, name, value)


def check_config(cfg: QualityConfig) -> None:
    if not cfg.algos:
        raise InputError("--algos needs at least one algorithm name")
    for name in ("seeds", "steps", "batch_size", "n_eval"):
        if getattr(cfg, name) < 1:
            raise InputError(f"--{name} must be >= 1, got {getattr(cfg, name)}")
    if cfg.evals < 0:
        raise InputError(f"--evals must be >= 0, got {cfg.evals}")
    if cfg.task not in TASKS:
        raise InputError(f"--task {cfg.task!r}: choose one of {', '.join(TASKS)}")
    if not 1 <= cfg.grad_seeds <= cfg.seeds:
        raise InputError(f"--grad_seeds must be in [1, --seeds {cfg.seeds}], got {cfg.grad_seeds}")
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
    eval_extra: dict[str, list[Any]] = field(default_factory=dict)
    """Columns of the held-out rows the reward reads (arithmetic: `answer`)."""
    gold: Any = None
    """A second reward the held-out responses are scored by (rm: VADER, the proxy's gold)."""
    label: str = "VADER"
    """What `reward` is, for tables and plots."""


def load_task(cfg: QualityConfig) -> Task:
    """--task's starting model, tokenizer, train rows, held-out prompts and reward(s)."""
    if cfg.task == "arithmetic":
        return _arithmetic_task(cfg)
    if cfg.task == "rm":
        return _rm_task(cfg)
    return _vader_task(cfg)


def _arithmetic_task(cfg: QualityConfig) -> Task:
    from remax.models import load_tokenizer
    from remax.tasks import arithmetic

    probs = arithmetic.problems()
    model_dir = cfg.model
    if model_dir is None:
        model_dir = str(Path(cfg.cache_dir).parent / "arithmetic-pretrain")
        arithmetic.pretrain_arithmetic_model(model_dir, probs, log=lambda m: print(m, file=sys.stderr))
    held = probs.heldout[: cfg.n_eval]
    return Task(str(model_dir), load_tokenizer(str(model_dir)), probs.rows("train"), [p for p, _ in held],
                arithmetic.exact_match, eval_extra={"answer": [a for _, a in held]}, label="accuracy")


def _rm_task(cfg: QualityConfig) -> Task:
    from remax.demo.pipeline import PipelineConfig, build_proxy
    from remax.models import load_tokenizer
    from remax.rewards import RewardModelReward, VaderReward

    pc = PipelineConfig(cache_dir=cfg.cache_dir, max_new_tokens=cfg.max_new_tokens, pair_prompts=cfg.pair_prompts)
    if cfg.pretrain_steps:
        pc.pretrain_steps = cfg.pretrain_steps
    vader = _vader_task(cfg)  # the starting model (pretrained first if it is the demo's and not cached), prompts
    proxy_dir = build_proxy(pc, model_dir=cfg.model, log=lambda m: print(m, file=sys.stderr))["path"]
    return Task(vader.model_dir, load_tokenizer(vader.model_dir), vader.train_rows, vader.eval_prompts,
                RewardModelReward(str(proxy_dir)), gold=VaderReward(), label="proxy RM")


def _vader_task(cfg: QualityConfig) -> Task:
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
    config.train.lr, config.train.seed = cfg.lr, seed
    if common.get_algorithm_or_input_error(algo).needs_critic:
        config.train.critic_lr = cfg.lr  # set only where a critic reads it (elsewhere the trainer warns)
    if grad_clip is not None:
        config.train.grad_clip = grad_clip
    config.loss.kl_coef = kl_coef
    config.log.progress, config.log.plot = False, False
    return Trainer(config, policy=load_policy(task.model_dir), tokenizer=task.tokenizer, reward_fn=task.reward,
                   rows=rows if rows is not None else task.train_rows)


# --------------------------------------------------------------- held out
@torch.no_grad()
def heldout(policy, reference, tokenizer, prompts: list[str], reward, max_new_tokens: int,
            seed: int = 0, chunk: int = 64, extra: Optional[dict[str, list[Any]]] = None,
            gold: Any = None) -> dict[str, float]:
    """Sampled (top-p 0.9, T 1, as in training) and greedy responses to the held-out prompts:
    mean rewards, and the KL to the reference as the mean over sampled response tokens of
    log pi(a_t) - log pi_ref(a_t) (k1, nats per token). Seeded; the global RNG is restored.
    `extra`: the prompts' columns the reward reads; `gold`: a second reward, whose means are
    `gold_reward` and `gold_greedy_reward`."""
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
    columns = {k: list(v) + list(v) for k, v in (extra or {}).items()}
    scores = torch.as_tensor(reward(prompts + prompts, texts_s + texts_g, **columns), dtype=torch.float32)
    out = {"reward": float(scores[: len(prompts)].mean()), "greedy_reward": float(scores[len(prompts):].mean()),
           "kl": kl_sum / max(tokens, 1.0)}
    if gold is not None:
        g = torch.as_tensor(gold(prompts + prompts, texts_s + texts_g), dtype=torch.float32)
        out.update(gold_reward=float(g[: len(prompts)].mean()), gold_greedy_reward=float(g[len(prompts):].mean()))
    return out


# --------------------------------------------------------------- one run
def eval_steps(steps: int, evals: int) -> list[int]:
    """Steps after which the held-out set is scored: 0, `evals` evenly spaced ones, the last."""
    points = {0, steps} | {round(steps * (i + 1) / (evals + 1)) for i in range(evals)}
    return sorted(points)


def train_run(task: Task, algo: str, seed: int, kl_coef: float, cfg: QualityConfig,
              snapshot_steps: Sequence[int] = (), final_dir: Optional[Path] = None) -> dict[str, Any]:
    """One run: per-step training reward, KL and seconds; held-out figures at eval_steps;
    the policy's weights at `snapshot_steps` (for the gradient variance); the trained policy
    saved to `final_dir` (from_pretrained) when given."""
    points = eval_steps(cfg.steps, cfg.evals)
    history, evals, snapshots, wall, tokens = [], [], {}, 0.0, 0.0
    with tempfile.TemporaryDirectory(prefix="remax-bench-quality-") as out:
        trainer = make_trainer(task, algo, seed=seed, kl_coef=kl_coef, cfg=cfg, out=out)
        for step in range(cfg.steps + 1):
            if step in snapshot_steps:
                snapshots[step] = copy.deepcopy(trainer.policy.state_dict())
            if step in points:
                ev = heldout(trainer.policy, trainer.reference, task.tokenizer, task.eval_prompts, task.reward,
                             cfg.max_new_tokens, seed=1000 + step, extra=task.eval_extra, gold=task.gold)
                evals.append(dict(ev, step=step, wall_s=wall, gen_tokens=tokens))
            if step == cfg.steps:
                if final_dir is not None:
                    trainer.save_final(Path(final_dir))
                break
            start = time.perf_counter()
            m = trainer.step()
            wall += time.perf_counter() - start
            tokens += m["perf/tokens_per_s"] * m["perf/step_s"]  # every generated token, greedy rows included
            history.append({"step": step + 1, "wall_s": wall, "reward": m["rollout/reward_mean"],
                            "kl": m["kl/mean"], "step_s": m["perf/step_s"], "gen_tokens": tokens}
                           | {k.split("/")[1]: m[k] for k in ("baseline/right_frac", "baseline/right_tied_frac")
                              if k in m})
    return {"algo": algo, "seed": seed, "kl_coef": kl_coef, "history": history, "evals": evals,
            "snapshots": snapshots}


# --------------------------------------------------------- gradient variance
class OffsetReward:
    """`reward` + a constant: the offset test. A baseline that follows the reward (ReMax's
    greedy reward, a batch mean) cancels the constant; REINFORCE's gradient is
    sum_t grad log pi * (r + c), whose variance grows with c."""

    def __init__(self, reward: Any, offset: float):
        self.reward, self.offset = reward, offset
        self.name = f"{getattr(reward, 'name', type(reward).__name__)}+{offset:g}"

    def __call__(self, prompts, responses, **columns):
        scores = torch.as_tensor(self.reward(prompts, responses, **columns), dtype=torch.float32)
        return scores + self.offset


def gradient_variance(task: Task, snapshots: dict[int, dict], cfg: QualityConfig,
                      offset: float = 0.0) -> list[dict[str, Any]]:
    """For every snapshot and estimator: `grad_samples` gradients of the estimator's loss at
    those weights on one fixed set of prompts, through Trainer.step with clipping off (the
    optimizer step that follows is undone by reloading the weights). Returns rows with the
    trace of the covariance, the squared norm of the mean gradient and their ratio.
    `offset`: a constant added to the reward (`OffsetReward`)."""
    rows_all = task.train_rows[: cfg.batch_size]
    if offset:
        task = dataclasses.replace(task, reward=OffsetReward(task.reward, offset))
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
                out.append(dict(algo=algo, step=step, offset=offset, **variance_figures(torch.stack(grads))))
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
    """trace_cov / ReMax's at the same snapshot and offset (NaN when ReMax was not measured)."""
    def key(r: dict[str, Any]) -> tuple:
        return r["step"], r.get("offset", 0.0), r.get("series", "snapshots"), r.get("run_seed", 0)

    ref = {key(r): r["trace_cov"] for r in rows if r["algo"] == "remax"}
    for r in rows:
        r["vs_remax"] = r["trace_cov"] / ref[key(r)] if ref.get(key(r)) else float("nan")


# ------------------------------------------------------------------ figures
def matched_kl_reward(evals: list[dict[str, float]], target: float, key: str = "reward", x: str = "kl") -> float:
    """Held-out `key` where the (step-ordered) held-out `x` (KL, or generated tokens) first
    reaches `target`, linearly interpolated between the two evaluations around it; NaN if it
    never does."""
    for a, b in zip(evals, evals[1:]):
        if a[x] <= target <= b[x] and b[x] > a[x]:
            w = (target - a[x]) / (b[x] - a[x])
            return a[key] + w * (b[key] - a[key])
        if a[x] == target:
            return a[key]
    return evals[-1][key] if evals and evals[-1][x] == target else float("nan")


def first_reach(evals: list[dict[str, float]], key: str, target: float, x: str = "wall_s") -> float:
    """`x` (wall seconds) where `key` first reaches `target` along the step-ordered
    evaluations, interpolated; NaN if it never does."""
    for a, b in zip(evals, evals[1:]):
        if a[key] >= target:
            return a[x]
        if b[key] >= target:
            w = (target - a[key]) / (b[key] - a[key])
            return a[x] + w * (b[x] - a[x])
    return evals[0][x] if evals and evals[0][key] >= target else float("nan")


EVAL_KEYS = ("reward", "greedy_reward", "kl", "gold_reward", "gold_greedy_reward", "wall_s", "gen_tokens")


def mean_evals(runs: list[dict[str, Any]]) -> list[dict[str, float]]:
    """Seed-mean held-out figures (rewards, KL, gold rewards when scored, wall seconds and
    generated tokens so far) at each evaluation step."""
    out = []
    for i, ev in enumerate(runs[0]["evals"]):
        keys = [k for k in EVAL_KEYS if k in ev]
        out.append({k: sum(r["evals"][i][k] for r in runs) / len(runs) for k in keys} | {"step": ev["step"]})
    return out


def zero_adv_share(runs: list[dict[str, Any]]) -> Optional[dict[str, float]]:
    """ReMax on a 0/1 reward: of all right samples over the runs' training batches, the share
    beside a right greedy answer (advantage 0), in all and over the first and last third of
    the steps; None without the baseline/right_* metrics."""
    hist = [h for r in runs for h in r["history"] if "right_frac" in h]
    if not hist or not any(h["right_frac"] for h in hist):
        return None  # not a greedy baseline, or not a 0/1 reward (no sample scored exactly 1)
    steps = max(h["step"] for h in hist)

    def share(rows: list[dict[str, float]]) -> float:
        right = sum(h["right_frac"] for h in rows)
        return sum(h["right_tied_frac"] for h in rows) / right if right else float("nan")

    return {"all": share(hist), "first_third": share([h for h in hist if h["step"] <= steps / 3]),
            "last_third": share([h for h in hist if h["step"] > 2 * steps / 3]),
            "right_frac": sum(h["right_frac"] for h in hist) / len(hist)}


def summarize(main_runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Per algorithm: final held-out figures (mean, sd over seeds), seconds per step; the
    matched KL (the smallest of the algorithms' largest seed-mean held-out KLs, so that
    every algorithm reaches it) and each algorithm's reward there; likewise the matched
    generated tokens (the smallest of the algorithms' totals: ReMax's greedy rows count);
    with a gold reward, the gold figures too, and the wall seconds ReMax takes to reach PPO's
    final gold reward."""
    per = {}
    for algo, runs in main_runs.items():
        finals = [r["evals"][-1] for r in runs]
        keys = [k for k in ("reward", "greedy_reward", "kl", "gold_reward", "gold_greedy_reward") if k in finals[0]]
        per[algo] = {k: _mean_sd([f[k] for f in finals]) for k in keys}
        per[algo]["start"] = runs[0]["evals"][0]
        per[algo]["step_s"] = common.median(h["step_s"] for r in runs for h in r["history"])
        per[algo]["curve"] = mean_evals(runs)
        zero = zero_adv_share(runs)
        if zero is not None:
            per[algo]["zero_adv_share"] = zero
    target = min(max(e["kl"] for e in p["curve"]) for p in per.values())
    tokens = min(p["curve"][-1].get("gen_tokens", 0.0) for p in per.values())
    for p in per.values():
        p["reward_at_matched_kl"] = matched_kl_reward(p["curve"], target)
        if "gold_reward" in p:
            p["gold_at_matched_kl"] = matched_kl_reward(p["curve"], target, key="gold_reward")
        if tokens > 0:
            p["reward_at_matched_tokens"] = matched_kl_reward(p["curve"], tokens, x="gen_tokens")
            p["greedy_at_matched_tokens"] = matched_kl_reward(p["curve"], tokens, key="greedy_reward", x="gen_tokens")
    out = {"per_algo": per, "matched_kl": target, "matched_tokens": tokens}
    if "remax" in per and "ppo" in per and "gold_reward" in per["ppo"]:
        goal = per["ppo"]["curve"][-1]["gold_reward"]
        out["time_to_ppo_gold"] = {"ppo_final_gold": goal, "ppo_wall_s": per["ppo"]["curve"][-1]["wall_s"],
                                   "remax_wall_s": first_reach(per["remax"]["curve"], "gold_reward", goal)}
    return out


def _mean_sd(values: list[float]) -> tuple[float, float]:
    t = torch.tensor(values, dtype=torch.float64)
    return float(t.mean()), float(t.std()) if len(values) > 1 else 0.0


# ------------------------------------------------------------------ the run
def run_quality(cfg: QualityConfig, argv: Sequence[str] = ()) -> dict[str, Any]:
    apply_task_defaults(cfg)
    check_config(cfg)
    common.set_threads(cfg.threads)
    task = load_task(cfg)
    start = time.perf_counter()
    snap_steps = (0, cfg.steps // 2, cfg.steps) if cfg.grad_algos else ()
    main_runs: dict[str, list[dict[str, Any]]] = {a: [] for a in cfg.algos}
    snapshots: dict[int, dict[int, dict]] = {}  # ReMax run seed -> step -> weights
    for seed in range(cfg.seeds):
        order = list(cfg.algos[seed % len(cfg.algos):]) + list(cfg.algos[: seed % len(cfg.algos)])
        for algo in order:
            print(f"[seed {seed}] {algo} ...", file=sys.stderr, flush=True)
            want = snap_steps if algo == "remax" and seed < cfg.grad_seeds else ()
            run = train_run(task, algo, seed, cfg.kl_coef, cfg, snapshot_steps=want)
            if want:
                snapshots[seed] = run.pop("snapshots")
            run.pop("snapshots", None)
            main_runs[algo].append(run)
    sweep = []
    for kl in cfg.kl_sweep:
        for algo in cfg.sweep_algos:
            print(f"[kl {kl}] {algo} ...", file=sys.stderr, flush=True)
            run = train_run(task, algo, 0, kl, cfg)
            run.pop("snapshots")
            sweep.append(run)
    if cfg.grad_algos and not snapshots:  # ReMax was not among --algos: snapshot ReMax runs anyway
        for seed in range(cfg.grad_seeds):
            snapshots[seed] = train_run(task, "remax", seed, cfg.kl_coef, cfg, snapshot_steps=snap_steps)["snapshots"]
    gradvar = []
    for seed, snaps in snapshots.items() if cfg.grad_algos else ():
        print(f"gradient variance at the ReMax seed-{seed} run's weights ...", file=sys.stderr, flush=True)
        gradvar += [dict(r, run_seed=seed) for r in gradient_variance(task, snaps, cfg)]
    middle = {cfg.steps // 2: snapshots[0][cfg.steps // 2]} if snapshots else {}
    for offset in cfg.offsets if middle else ():  # each from a fresh trainer: the same samples for every offset
        print(f"gradient variance, reward + {offset:g} ...", file=sys.stderr, flush=True)
        gradvar += [dict(r, series="offset", run_seed=0) for r in gradient_variance(task, middle, cfg, offset=offset)]
    add_variance_ratios(gradvar)
    summary = summarize(main_runs)
    raw = {"command": common.command_line("remax bench quality", argv), "config": vars(cfg), "label": task.label,
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
    what = {"vader": "the demo task (VADER)", "arithmetic": "arithmetic, exact-match reward (reward = accuracy)",
            "rm": "the pipeline's proxy reward model (gold: VADER)"}[cfg.task]
    lines = [f"### quality: {what}, {cfg.seeds} seeds x {cfg.steps} steps", "",
             f"`{raw['command']}`  ", f"{m['date']}; {m['cores']} cores, {m['cpu']}; torch {m['torch']}; "
             f"total {raw['total_s'] / 60:.1f} min  ",
             f"{cfg.batch_size} sampled responses per step (n >= 2 algorithms: {cfg.batch_size // 2} prompts x 2; "
             f"remax decodes one greedy row per prompt on top), "
             f"lr {cfg.lr}, KL coefficient {cfg.kl_coef}, {cfg.max_new_tokens} new tokens, top-p 0.9; held out: "
             f"{cfg.n_eval} prompts, one sampled and one greedy response each, KL = mean over sampled tokens of "
             f"log pi - log pi_ref (nats/token); mean +- sd over seeds", ""]
    gold = any("gold_reward" in p for p in s["per_algo"].values())
    tokens = s.get("matched_tokens", 0.0) > 0
    rows = []
    for algo, p in s["per_algo"].items():
        row = [algo, f"{p['start']['reward']:.3f} / {p['start']['greedy_reward']:.3f}",
               f"{p['reward'][0]:.3f} +- {p['reward'][1]:.3f}", f"{p['greedy_reward'][0]:.3f} +- {p['greedy_reward'][1]:.3f}"]
        if gold:
            row += [f"{p['start']['gold_reward']:.3f}", f"{p['gold_reward'][0]:.3f} +- {p['gold_reward'][1]:.3f}"]
        row += [f"{p['kl'][0]:.3f} +- {p['kl'][1]:.3f}", p["reward_at_matched_kl"]]
        if gold:
            row.append(p["gold_at_matched_kl"])
        if tokens:
            row += [p["reward_at_matched_tokens"], p["greedy_at_matched_tokens"], p["curve"][-1]["gen_tokens"]]
        rows.append(row + [p["step_s"]])
    head = ["algo", "held-out reward at start (sampled / greedy)", "final held-out reward", "final greedy reward"]
    if gold:
        head += ["gold at start", "final gold reward"]
    head += ["final KL", f"reward at KL {s['matched_kl']:.3f}"]
    if gold:
        head.append(f"gold at KL {s['matched_kl']:.3f}")
    if tokens:
        head += [f"reward at {s['matched_tokens']:.0f} gen. tokens", "greedy at those tokens", "gen. tokens in all"]
    lines.append(common.markdown_table(head + ["s / step"], rows))
    zero = {a: p["zero_adv_share"] for a, p in s["per_algo"].items() if "zero_adv_share" in p}
    if zero:
        lines += ["", "ReMax's right samples with advantage 0 (the greedy answer right too), over all training "
                  "batches of every seed (baseline/right_tied_frac / baseline/right_frac):", "",
                  common.markdown_table(["algo", "share of samples right", "zero-advantage share of the right ones",
                                         "first third of the steps", "last third"],
                                        [[a, z["right_frac"], z["all"], z["first_third"], z["last_third"]]
                                         for a, z in zero.items()])]
    if "time_to_ppo_gold" in s:
        t = s["time_to_ppo_gold"]
        lines += ["", f"PPO's final held-out gold reward {t['ppo_final_gold']:.3f} took it {t['ppo_wall_s']:.0f} s of "
                  f"training (seed mean); ReMax reached it after {t['remax_wall_s']:.0f} s (NaN: never, "
                  f"interpolated between evaluations)."]
    if raw["sweep"]:
        sweep = [[r["algo"], r["kl_coef"], r["evals"][-1]["reward"], r["evals"][-1]["kl"]] for r in raw["sweep"]]
        sweep += [[a, cfg.kl_coef, p["reward"][0], p["kl"][0]] for a, p in s["per_algo"].items() if a in cfg.sweep_algos]
        lines += ["", "KL-coefficient sweep (seed 0; the main runs' seed means at the main coefficient):", "",
                  common.markdown_table(["algo", "kl_coef", "final held-out reward", "final KL"],
                                        sorted(sweep, key=lambda r: (r[0], r[1])))]
    if raw["gradvar"]:
        gv = [[r["algo"], r.get("run_seed", 0), r["step"], r.get("offset", 0.0) if r.get("series") == "offset" else "-",
               r["trace_cov"], r["mean_norm2"], r["noise_to_signal"], r["vs_remax"]] for r in raw["gradvar"]]
        lines += ["", f"Gradient variance at the weights of ReMax runs (seeds 0..{cfg.grad_seeds - 1}) after 0, "
                  f"{cfg.steps // 2} and "
                  f"{cfg.steps} steps: {cfg.grad_samples} independent estimates each, same prompts, no clipping "
                  f"(reward offset: the offset test, a constant added to the reward at the middle snapshot, every "
                  f"offset on the same samples; '-': the snapshot series):", "",
                  common.markdown_table(["estimator", "ReMax run seed", "snapshot step", "reward offset", "trace cov",
                                         "|mean grad|^2",
                                         "trace / |mean|^2", "trace / ReMax's"], gv)]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
