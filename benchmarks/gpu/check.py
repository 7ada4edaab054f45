"""One-GPU check of remax at a real model's shape, no downloads (run by benchmarks/gpu/check.sh).

    .venv/bin/python benchmarks/gpu/check.py [--steps 4] [--batch 8] [--max-new 64] [--workdir DIR]

1. Builds a ~0.5B Qwen2-shaped model from a config, random init (Qwen2.5-0.5B's shape:
   hidden 896, 24 layers, 14 heads, 2 KV heads, intermediate 4864, vocabulary 151,936,
   tied embeddings) and a byte-level BPE tokenizer trained on the spot on the KJV verses
   that the demo ships offline (remax.models.tiny.train_tokenizer); saves both to --workdir.
2. Runs `remax train` on CUDA with `--train.mixed_precision bf16` (float32 master weights)
   for ReMax and for PPO, `--steps` steps each, each in its own process, and reads
   metrics.jsonl: step time (median of the steps after the first), peak
   torch.cuda.max_memory_allocated (`perf/peak_mem_mb`, the largest over the steps), and
   generated tokens per second (`perf/tokens_per_s`, median after the first).
3. If vllm is importable: ReMax again with `--rollout.backend vllm`: the weights are pushed
   into the engine before every rollout and checked with the probe every step
   (`--rollout.verify_every 1`; a push that did not take stops the run); the largest probe
   difference is reported.
4. Prints one markdown table (also written to WORKDIR/table.md, the figures to
   WORKDIR/results.json).

With no CUDA device it prints one line saying so and exits 0, having built nothing.
`--device cpu --tiny` runs the same driver on a 2-layer Qwen2 on CPU (what the test does,
to check the driver itself, not the GPU).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Optional

NO_CUDA = "benchmarks/gpu/check: no CUDA device (torch.cuda.is_available() is False); nothing was run"
QWEN2_05B = dict(hidden_size=896, num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
                 intermediate_size=4864, vocab_size=151936, max_position_embeddings=32768, rope_theta=1e6,
                 tie_word_embeddings=True, rms_norm_eps=1e-6)
TINY = dict(QWEN2_05B, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            intermediate_size=128, vocab_size=8192, max_position_embeddings=512)  # more rows than the tokenizer, as at 0.5B
REWARD = "def score(prompts, responses):\n    return [r.count('e') / max(len(r), 1) for r in responses]\n"


def build(workdir: Path, shape: dict[str, Any], seed: int = 0) -> Path:
    """WORKDIR/model: a random-init Qwen2 of `shape` and a tokenizer trained here; prompts and reward beside it."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from remax.bench.common import bench_prompts
    from remax.demo.corpus import kjv_verses
    from remax.models.tiny import train_tokenizer

    model_dir = workdir / "model"
    (workdir / "prompts.jsonl").write_text("".join(json.dumps({"prompt": p}) + "\n" for p in bench_prompts(64, seed)))
    (workdir / "reward.py").write_text(REWARD)
    if (model_dir / "done").is_file():
        return model_dir
    tokenizer = train_tokenizer(kjv_verses()[:20000], vocab_size=4096)
    config = Qwen2Config(**shape, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = Qwen2ForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    n = sum(p.numel() for p in model.parameters())
    (model_dir / "done").write_text(f"{n}\n")
    return model_dir


def train_cmd(args: argparse.Namespace, workdir: Path, model_dir: Path, name: str, algo: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "remax", "train", "--algo", algo, "--output_dir", str(workdir / name),
            "--overwrite", "True", "--model.policy", str(model_dir), "--model.device", args.device,
            "--train.mixed_precision", "bf16", "--data.train_file", str(workdir / "prompts.jsonl"),
            "--reward.function", f"{workdir / 'reward.py'}:score", "--train.steps", str(args.steps),
            "--train.batch_size", str(args.batch), "--rollout.max_new_tokens", str(args.max_new),
            "--log.save_every", "0", "--log.progress", "False", "--log.plot", "False", *extra]


def summarise(name: str, lines: list[str], status: str = "ok") -> dict[str, Any]:
    """metrics.jsonl lines -> the table's row: medians over the steps after the first (all if one)."""
    steps = [json.loads(line) for line in lines if line.strip()]
    later = steps[1:] or steps

    def median(key: str) -> Optional[float]:
        values = [s[key] for s in later if key in s]
        return statistics.median(values) if values else None

    probes = [s["rollout/engine_probe_diff"] for s in steps if "rollout/engine_probe_diff" in s]
    peaks = [s["perf/peak_mem_mb"] for s in steps if "perf/peak_mem_mb" in s]
    return {"run": name, "status": status, "steps": len(steps), "step_s": median("perf/step_s"),
            "peak_gib": max(peaks) / 1024 if peaks else None, "tokens_per_s": median("perf/tokens_per_s"),
            "probe_diff": max(probes) if probes else None}


def run_one(args: argparse.Namespace, workdir: Path, cmd: list[str], name: str, deadline: float) -> dict[str, Any]:
    start = time.perf_counter()
    limit = min(args.run_timeout, deadline - start)
    if limit < 30:
        return {"run": name, "status": "not run: out of time (--budget)", "steps": 0, "step_s": None, "peak_gib": None,
                "tokens_per_s": None, "probe_diff": None}
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=limit)
        code, log = done.returncode, done.stdout + done.stderr
    except subprocess.TimeoutExpired as err:
        code, log = "timeout", f"{err.stdout or ''}{err.stderr or ''}"
        log = log.decode() if isinstance(log, bytes) else log
    (workdir / f"{name}.log").write_text(log)
    metrics = workdir / name / "metrics.jsonl"
    lines = metrics.read_text().splitlines() if metrics.is_file() else []
    last = [line for line in log.strip().splitlines() if line.strip()][-1:] or [""]
    status = "ok" if code == 0 else f"FAILED ({code}): {last[0][:160]}"
    row = summarise(name, lines, status)
    row["wall_s"] = time.perf_counter() - start
    return row


def fmt(value: Optional[float], spec: str) -> str:
    return "-" if value is None else format(value, spec)


def table(rows: list[dict[str, Any]], header: str) -> str:
    out = [header, "",
           "| run | steps | step s (median, steps 2..) | peak GiB (cuda max_memory_allocated; cpu RSS) | tokens/s | vLLM probe max diff | wall s | status |",
           "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        out.append(f"| {r['run']} | {r['steps']} | {fmt(r['step_s'], '.3f')} | {fmt(r['peak_gib'], '.2f')} | "
                   f"{fmt(r['tokens_per_s'], '.1f')} | {fmt(r['probe_diff'], '.2e')} | {fmt(r.get('wall_s'), '.0f')} | {r['status']} |")
    return "\n".join(out)


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--batch", type=int, default=8, help="prompts per step (ReMax adds a greedy row each)")
    p.add_argument("--max-new", type=int, default=64)
    p.add_argument("--workdir", default=os.environ.get("REMAX_GPU_CHECK_DIR", "/tmp/remax-gpu-check"))
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"], help="cpu: only with --tiny, to test the driver")
    p.add_argument("--tiny", action="store_true", help="a 2-layer Qwen2 instead of the 0.5B shape (driver test)")
    p.add_argument("--no-vllm", action="store_true")
    p.add_argument("--run-timeout", type=int, default=180, help="seconds per training run at most")
    p.add_argument("--budget", type=int, default=450, help="seconds for the whole check (check.sh kills it at 480)")
    args = p.parse_args(argv)

    try:
        import torch
    except ImportError:
        print(f"benchmarks/gpu/check: torch is not installed for {sys.executable}; set PYTHON=/path/to/venv/bin/python")
        return 2
    if args.device == "cuda" and not torch.cuda.is_available():
        print(NO_CUDA)
        return 0
    if args.device == "cpu" and not args.tiny:
        p.error("--device cpu needs --tiny (the 0.5B shape on CPU is not this check)")
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    deadline = start + args.budget
    model_dir = build(workdir, TINY if args.tiny else QWEN2_05B)
    params = int((model_dir / "done").read_text())
    built_s = time.perf_counter() - start
    runs = [("remax", "remax"), ("ppo", "ppo")]
    vllm = not args.no_vllm and args.device == "cuda" and importlib.util.find_spec("vllm") is not None
    rows = []
    for name, algo in runs:
        rows.append(run_one(args, workdir, train_cmd(args, workdir, model_dir, name, algo), name, deadline))
    if vllm:
        extra = ("--rollout.backend", "vllm", "--rollout.verify_every", "1")
        rows.append(run_one(args, workdir, train_cmd(args, workdir, model_dir, "remax-vllm", "remax", *extra), "remax-vllm", deadline))
    else:
        rows.append({"run": "remax-vllm", "status": "not run: vllm not importable" if args.device == "cuda" and not args.no_vllm
                     else "not run", "steps": 0, "step_s": None, "peak_gib": None, "tokens_per_s": None, "probe_diff": None})
    device = torch.cuda.get_device_name(0) if args.device == "cuda" else "cpu"
    header = (f"remax GPU check on {device}: Qwen2 {params / 1e6:.1f}M params (random init), bf16 mixed precision, "
              f"{args.steps} steps x {args.batch} prompts x {args.max_new} new tokens; model built in {built_s:.0f} s; "
              f"total {time.perf_counter() - start:.0f} s")
    text = table(rows, header)
    print(text)
    (workdir / "table.md").write_text(text + "\n")
    (workdir / "results.json").write_text(json.dumps({"header": header, "rows": rows}, indent=1) + "\n")
    return 0 if all(r["status"] == "ok" or r["status"].startswith("not run") for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
