"""The HF rollout's two decoders side by side (issue 19, item 1): `generate` (one
`model.generate` call) against `fast` (remax.rollout.decode: one prefill per prompt, its
cache shared by its rows, finished rows out of the batch), each against its FLOP floor.

    .venv/bin/python benchmarks/hf_rollout.py --size gpt2-small --threads 1 --reps 3

Model: `remax.bench`'s random GPT-2 of that size (gpt2-small: 85M trunk + 8k vocabulary),
fp32, `--prompts` KJV prompts (3-5 words, left-padded), top-p 0.9, `--max-new` tokens.
Two EOS regimes: `never` (a random model almost never emits EOS: every row runs to the
limit) and `varied` (a bias of `--eos-bias` on the EOS logit of an untied LM head: the
sampled rows end after a geometric number of tokens, the greedy rows at once, since EOS
becomes the argmax). Rollouts: ReMax's (n samples + 1 greedy row per prompt) and
REINFORCE's (n samples).

The floor is `remax bench speed`'s: 2 x matmul params x (generated tokens of every row +
prompt tokens of every row) at the fp32 matmul rate measured in this process just before
each repetition. Every (regime, rollout, decoder) runs once per repetition, in rotating
order; figures are medians over `--reps` repetitions; ratios are of medians. Also printed:
the rate of the model's own matmuls at a decode step's row count with torch's and with
oneDNN's packed kernels (the bound a decode step meets with them), and with `--candidates`
a candidate measured and not adopted (transformers' continuous batching `generate_batch`).
Decoders: `generate`, `fast`, and `fast+onednn` (fast with --rollout.hf_kernels onednn,
each rollout's packing included).
Prints tables; writes nothing.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from remax.bench.common import (SIZES, bench_prompts, default_work_dir, matmul_gflops, matmul_params, prepare_model_dir,
                                set_threads)
from remax.data import encode_prompts
from remax.rollout import generate_rollout
from remax.rollout.kernels import rollout_kernels


def eos_varied(model, eos_id: int, bias: float):
    """An untied LM head with `bias` on the EOS logit (weights copied from the tied one)."""
    old = model.lm_head
    head = torch.nn.Linear(old.in_features, old.out_features, bias=True)
    with torch.no_grad():
        head.weight.copy_(old.weight)
        head.bias.zero_()
        head.bias[eos_id] = bias
    model.lm_head = head
    return model


def gemm_rate(model, rows: int, kernels: str = "torch", reps: int = 3) -> float:
    """GFLOP/s of the model's own matmuls (every Linear / GPT-2 Conv1D, the LM head too) at
    `rows` rows, the shape of one decode step, each module's forward as the rollout runs it
    (`kernels`: --rollout.hf_kernels; onednn's packing excluded): the best a decode step
    could do with these kernels, against the square-matmul rate the floor assumes. Median
    of `reps` passes."""
    from transformers.pytorch_utils import Conv1D

    mods = [m for m in model.modules() if isinstance(m, (Conv1D, torch.nn.Linear))]
    inputs = [torch.randn(rows, m.weight.shape[0] if isinstance(m, Conv1D) else m.in_features) for m in mods]
    flops = sum(2 * rows * m.weight.numel() for m in mods)
    times = []
    with torch.no_grad(), rollout_kernels(kernels, model, rows):
        for _ in range(reps + 1):  # the first pass warms up
            start = time.perf_counter()
            for mod, x in zip(mods, inputs):
                mod(x)
            times.append(time.perf_counter() - start)
    return flops / statistics.median(times[1:]) / 1e9


def candidates(model, tok, ids, mask, args) -> None:
    """Time the candidates not adopted against the fast decoder, interleaved, medians."""
    from transformers import GenerationConfig

    prompts = [row[m.bool()].tolist() for row, m in zip(ids, mask)]
    config = GenerationConfig(do_sample=True, top_p=0.9, top_k=0, max_new_tokens=args.max_new,
                              eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)

    def fast(greedy):
        return generate_rollout(model, ids, mask, n=args.n, greedy=greedy, max_new_tokens=args.max_new, top_p=0.9,
                                eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)

    runs = {
        "reinforce fast": lambda: fast(False),
        "reinforce generate_batch (continuous batching)": lambda: model.generate_batch(prompts, generation_config=config),
        "remax fast": lambda: fast(True),
    }
    times = {k: [] for k in runs}
    for rep in range(args.reps + 1):  # the first round warms up
        for name, fn in runs.items():
            start = time.perf_counter()
            fn()
            if rep:
                times[name].append(time.perf_counter() - start)
    med = {k: statistics.median(v) for k, v in times.items()}
    print("\nCandidates not adopted (EOS never; same prompts; medians of", args.reps, "):")
    for name, t in med.items():
        base = med[name.split()[0] + " fast"]
        print(f"- {name}: {t:.3f} s = {t / base:.2f}x the fast decoder")


def time_jobs(run, jobs: list, reps: int, params: int) -> tuple[dict, dict, dict]:
    """Every job once to warm up, then once per repetition in rotating order: job -> seconds,
    FLOP-floor seconds (2 x params x tokens at the matmul rate measured before the
    repetition) and generated tokens, one entry per repetition."""
    times, floors, tokens = ({j: [] for j in jobs} for _ in range(3))
    for job in jobs:  # warm-up
        run(job)
    for rep in range(reps):
        gflops = matmul_gflops("cpu")
        for job in jobs[rep % len(jobs):] + jobs[: rep % len(jobs)]:
            torch.manual_seed(rep)
            start = time.perf_counter()
            ro = run(job)
            times[job].append(time.perf_counter() - start)
            work = float(ro.response_mask.sum()) + float(ro.prompt_mask.sum())
            floors[job].append(2 * params * work / (gflops * 1e9))
            tokens[job].append(float(ro.response_mask.sum()))
    return times, floors, tokens


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="gpt2-small", choices=list(SIZES))
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--n", type=int, default=1)
    ap.add_argument("--max-new", type=int, default=32)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--eos-bias", type=float, default=6.0)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--candidates", action="store_true",
                    help="also time transformers' generate_batch (not adopted)")
    args = ap.parse_args()
    set_threads(args.threads)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = prepare_model_dir(args.size, default_work_dir())
    tok = AutoTokenizer.from_pretrained(path, padding_side="left")
    ids, mask = encode_prompts(tok, bench_prompts(args.prompts), 32, False)
    models = {"never": AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()}
    models["varied"] = eos_varied(AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval(),
                                  tok.eos_token_id, args.eos_bias)
    params = matmul_params(models["never"])
    decoders = ("generate", "fast", "fast+onednn")  # +onednn: --rollout.hf_kernels onednn (packing included)
    jobs = [(eos, algo, dec) for eos in models for algo in ("remax", "reinforce") for dec in decoders]

    def run(job):
        eos, algo, dec = job
        decoder, _, kernels = dec.partition("+")
        rows = args.prompts * (args.n + int(algo == "remax"))
        with rollout_kernels(kernels or "torch", models[eos], rows):
            return generate_rollout(models[eos], ids, mask, n=args.n, greedy=algo == "remax",
                                    max_new_tokens=args.max_new, top_p=0.9, eos_token_id=tok.eos_token_id,
                                    pad_token_id=tok.pad_token_id, decoder=decoder)

    times, floors, tokens = time_jobs(run, jobs, args.reps, params)
    square = statistics.median(matmul_gflops("cpu") for _ in range(3))
    rows = {"reinforce": args.prompts * args.n, "remax": args.prompts * (args.n + 1)}
    gemm = {(algo, k): gemm_rate(models["never"], r, k) for algo, r in rows.items() for k in ("torch", "onednn")}
    med = {j: statistics.median(times[j]) for j in jobs}
    print(f"{args.size} ({params / 1e6:.1f}M matmul params), {args.prompts} prompts x n={args.n}, {args.max_new} new "
          f"tokens, fp32, torch threads {torch.get_num_threads()}, load average {os.getloadavg()[0]:.1f} on "
          f"{os.cpu_count()} CPUs; medians of {args.reps} repetitions\n")
    print("| EOS | rollout | decoder | s | x floor | generated tokens | / generate | remax / reinforce |")
    print("|---|---|---|---:|---:|---:|---:|---:|")
    for eos, algo, dec in jobs:
        j = (eos, algo, dec)
        x_floor = statistics.median(t / f for t, f in zip(times[j], floors[j]))
        vs_gen = med[j] / med[(eos, algo, "generate")]
        vs_rf = med[j] / med[(eos, "reinforce", dec)]
        print(f"| {eos} | {algo} | {dec} | {med[j]:.3f} | {x_floor:.2f} | {statistics.median(tokens[j]):.0f} | "
              f"{vs_gen:.2f} | {vs_rf:.2f} |")
    print(f"\nThe model's own matmuls at a decode step's shape (after the runs; square 1024^3 rate {square:.1f} "
          f"GFLOP/s):")
    for (algo, k), rate in gemm.items():
        print(f"- {algo}, {k} kernels: {rows[algo]} rows, {rate:.1f} GFLOP/s = {rate / square:.2f} of the square rate: "
              f"a decode step cannot run below {square / rate:.2f}x its floor with these kernels")
    if args.candidates:
        candidates(models["never"], tok, ids, mask, args)


if __name__ == "__main__":
    main()
