"""Throughput of `--rollout.async_steps 1` against the synchronous run, both with the vLLM
engine in its own process (`remax serve-rollout`), each side on its own core.

    .venv-vllm/bin/python benchmarks/rollout_overlap.py [--size gpt2-small --reps 3 --steps 6]

The server runs on the first core this process may use, the trainer (this process) on
the second, one torch thread each. Per repetition, the synchronous run (async_steps 0:
the trainer waits while the server generates, the server idles while the trainer
trains) and the overlapped run (async_steps 1) take turns, `--warmup` steps then
`--steps` timed steps each (a fresh Trainer; the same server). Printed: median seconds per
step of each, the ratio of their steps per second per repetition and its median, and the
phases' medians (sync: the push + probe; rollout: the generation time training did not
hide). Shared machine: other processes' load shows up in every figure; the repetitions are
interleaved so that it falls on both modes alike, and the ratio is taken per repetition.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def start_server(model_dir: Path, core: int) -> tuple[subprocess.Popen, str]:
    log = open(model_dir / "server.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "remax.cli", "serve-rollout", "--model", str(model_dir),
                             "--port", "0", "--cpus", str(core), "--max_model_len", "128", "--cpu_kvcache_gb", "1"],
                            stdout=subprocess.PIPE, stderr=log, text=True)
    line = proc.stdout.readline()
    if " on http://" not in line:
        proc.kill()
        raise SystemExit(f"serve-rollout did not start: {line!r} (see {model_dir / 'server.log'})")
    return proc, line.split(" on ")[1].split(";")[0]


def length_reward(prompts, responses):
    return [len(r) / 100 for r in responses]


def one_run(model_dir: Path, url: str, async_steps: int, args, out: str) -> dict[str, float]:
    from remax.bench.common import bench_prompts, trainer_config
    from remax.trainer import Trainer

    cfg = trainer_config("remax", prompts=args.prompts, n=1, max_new_tokens=args.max_new_tokens, kl_coef=0.05,
                         device="cpu", seed=0, output_dir=out)
    cfg.model.policy = str(model_dir)
    cfg.rollout.backend, cfg.rollout.server_url, cfg.rollout.async_steps = "vllm_server", url, async_steps
    cfg.train.steps, cfg.log.save_every = args.warmup + args.steps, 0
    rows = [{"prompt": p} for p in bench_prompts(256)]
    trainer = Trainer(cfg, rows=rows, reward_fn=length_reward)
    start = time.perf_counter()
    history = trainer.train()
    wall = time.perf_counter() - start
    timed = history[args.warmup:]
    med = {k: statistics.median(m.get(k, 0.0) for m in timed) for k in ("perf/step_s", "perf/sync_s", "perf/rollout_s",
                                                                      "perf/update_s", "perf/prepare_s")}
    med["timed_s"] = sum(m["perf/step_s"] for m in timed)
    med["wall_s"] = wall
    med["staleness"] = statistics.mean(m.get("rollout/staleness", 0.0) for m in timed)
    return med


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", default="gpt2-small")
    p.add_argument("--prompts", type=int, default=8)
    p.add_argument("--max_new_tokens", type=int, default=32)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--steps", type=int, default=6)
    args = p.parse_args()

    import torch

    from remax.bench.common import prepare_model_dir

    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < 2:
        raise SystemExit(f"needs 2 cores (one for the server, one for the trainer); this process may use {cores}")
    root = Path(tempfile.mkdtemp(prefix="remax-overlap-"))
    model_dir = prepare_model_dir(args.size, root)
    server, url = start_server(model_dir, cores[0])
    os.sched_setaffinity(0, {cores[1]})
    torch.set_num_threads(1)
    try:
        runs: dict[int, list[dict[str, float]]] = {0: [], 1: []}
        for rep in range(args.reps):
            for mode in (0, 1) if rep % 2 == 0 else (1, 0):  # alternate the order: load drifts
                runs[mode].append(one_run(model_dir, url, mode, args, str(root / f"run-{mode}-{rep}")))
                r = runs[mode][-1]
                print(f"rep {rep} async_steps {mode}: {r['timed_s'] / args.steps:.3f} s/step "
                      f"(sync {r['perf/sync_s']:.3f}, rollout {r['perf/rollout_s']:.3f}, "
                      f"update {r['perf/update_s']:.3f}, staleness {r['staleness']:.2f})", flush=True)
    finally:
        server.terminate()
        server.wait(60)
    ratios = [a["timed_s"] / b["timed_s"] for a, b in zip(runs[0], runs[1])]  # steps/s of async over sync
    print()
    print(f"{args.size}, {args.prompts} prompts x (1 sampled + 1 greedy), {args.max_new_tokens} new tokens, fp32; "
          f"server on core {cores[0]}, trainer on core {cores[1]}, 1 thread each; {args.reps} interleaved reps x "
          f"{args.steps} timed steps (after {args.warmup}); shared machine (other jobs running)")
    print()
    print("| mode | s/step (median of reps) | sync s | rollout s (waited) | prepare s | update s |")
    print("|---|---|---|---|---|---|")
    for mode, name in ((0, "synchronous (async_steps 0)"), (1, "overlapped (async_steps 1)")):
        med = {k: statistics.median(r[k] for r in runs[mode]) for k in runs[mode][0]}
        print(f"| {name} | {med['timed_s'] / args.steps:.3f} | {med['perf/sync_s']:.3f} | {med['perf/rollout_s']:.3f} "
              f"| {med['perf/prepare_s']:.3f} | {med['perf/update_s']:.3f} |")
    print()
    print(f"steps/s, async over sync, per rep: {', '.join(f'{x:.2f}' for x in ratios)}; "
          f"median {statistics.median(ratios):.2f}x (target >= 1.4x)")


if __name__ == "__main__":
    main()
