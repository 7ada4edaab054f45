"""Is ReMax's greedy baseline tracking the reward? The trainer's live `baseline/*`
diagnostics (remax/trainer/diagnostics.py) over the first steps of a ReMax run on a
`remax bench quality` task (default: the pipeline's proxy reward model, `--task rm`).

    python benchmarks/issue18_baseline_diagnostics.py [--task rm] [--steps 10] [--seed 0]

Prints, per metric, the median over the steps and the per-step values: win_frac (samples
beating their greedy response), corr(r, b), var(r - b) / var(r) (< 1: the baseline cuts
variance), and the sampled and greedy mean rewards. Settings as the Issue 18 rm bench
(16 responses per step, lr 2e-4, KL coefficient 0.02)."""

from __future__ import annotations

import argparse
import statistics
import tempfile

import torch

KEYS = ("baseline/win_frac", "baseline/corr", "baseline/var_ratio", "rollout/reward_mean",
        "rollout/baseline_reward_mean")


def main() -> None:
    from remax.bench import quality

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", default="rm", choices=quality.TASKS)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(1)
    cfg = quality.QualityConfig(task=args.task, steps=args.steps, batch_size=16, lr=2e-4, kl_coef=0.02,
                                grad_algos=(), evals=0)
    quality.apply_task_defaults(cfg)
    task = quality.load_task(cfg)
    with tempfile.TemporaryDirectory() as out:
        trainer = quality.make_trainer(task, "remax", seed=args.seed, kl_coef=cfg.kl_coef, cfg=cfg, out=out)
        rows = [trainer.step() for _ in range(args.steps)]
    for key in KEYS:
        values = [r[key] for r in rows]
        print(f"{key:32s} median {statistics.median(values):+.3f}  per step {[round(v, 2) for v in values]}")


if __name__ == "__main__":
    main()
