"""Peak memory of a ReMax run with and without LoRA, on one random GPT-2, side by side.

With LoRA (`--lora.r 16`) the policy's base is frozen, so it needs no gradient and no
AdamW moments, and pi_ref is the same base with the adapters switched off
(`remax.models.lora.AdaptersOff`), so no second copy of the weights is held. The fp32
model-state count, N = base parameters, n = adapter parameters (n << N):
- full fine-tuning: policy weight + grad + 2 Adam moments (16N) + a frozen reference copy (4N) = 20N
- LoRA: base weight (4N) + adapters with grad and moments (16n), no reference copy
so the model state shrinks by about 5x; activations, logits, the KV cache and (on CPU) the
interpreter and its libraries come on top and are the same in both runs.

Each run is a fresh subprocess (so peaks do not mix) that builds the Trainer on a model
directory written by save_pretrained and runs `--steps` full steps (the first allocates
the Adam moments); its peak RSS (VmHWM) and the RSS before the model was loaded are
reported. Runs are interleaved (full, lora, full, lora, ...) and the median is taken.

    .venv/bin/python benchmarks/lora_memory.py --size small --repeats 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile

WORKER = r'''
import json, resource, sys, tempfile
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from remax.bench.common import bench_prompts
from remax.config import Config
from remax.trainer import Trainer

spec = json.loads(sys.argv[1])
torch.manual_seed(0)
from remax.trainer.metrics import peak_rss_mb as rss  # VmHWM, MiB (ru_maxrss counts the parent's RSS)
rows = [{"prompt": p} for p in bench_prompts(64, 0)]
reward = lambda prompts, responses: [len(set(r)) / 10 for r in responses]
base_mb = rss()
policy = AutoModelForCausalLM.from_pretrained(spec["model_dir"], dtype=torch.float32)
tokenizer = AutoTokenizer.from_pretrained(spec["model_dir"])
with tempfile.TemporaryDirectory() as out:
    cfg = Config(algo="remax", output_dir=out)
    cfg.model.device = "cpu"
    cfg.rollout.max_new_tokens = spec["max_new_tokens"]
    cfg.train.steps, cfg.train.batch_size, cfg.train.micro_batch_size = spec["steps"], spec["prompts"], spec["prompts"]
    cfg.log.progress, cfg.log.plot = False, False
    cfg.lora.r = spec["r"]
    trainer = Trainer(cfg, policy=policy, tokenizer=tokenizer, reward_fn=reward, rows=rows)
    for _ in range(spec["steps"]):
        trainer.step()
    trained = sum(p.numel() for p in trainer.policy.parameters() if p.requires_grad)
    total = sum(p.numel() for p in trainer.policy.parameters())
print(json.dumps({"r": spec["r"], "peak_mb": rss(), "base_mb": base_mb, "trainable": trained, "params": total,
                  "reference": type(trainer.reference).__name__}))
'''


def run_one(model_dir: str, r: int, args) -> dict:
    spec = {"model_dir": model_dir, "r": r, "steps": args.steps, "prompts": args.prompts, "max_new_tokens": args.max_new_tokens}
    proc = subprocess.run([sys.executable, "-c", WORKER, json.dumps(spec)], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"worker failed (r={r}): {proc.stderr.strip().splitlines()[-1]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="small", help="a remax.bench.common.SIZES name (small: ~21M, gpt2-small: ~92M)")
    parser.add_argument("--r", type=int, default=16, help="LoRA rank of the LoRA runs")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--max_new_tokens", type=int, default=16)
    args = parser.parse_args()

    from remax.bench.common import prepare_model_dir

    with tempfile.TemporaryDirectory(prefix="remax-lora-mem-") as root:
        model_dir = str(prepare_model_dir(args.size, root))
        runs: dict[int, list[dict]] = {0: [], args.r: []}
        for _ in range(args.repeats):
            for r in runs:  # interleaved, so drifts in the machine hit both alike
                runs[r].append(run_one(model_dir, r, args))
    med = {r: statistics.median(x["peak_mb"] for x in rs) for r, rs in runs.items()}
    base = statistics.median(x["base_mb"] for rs in runs.values() for x in rs)
    full, lora = runs[0][0], runs[args.r][0]
    print(f"model: {args.size}, {full['params'] / 1e6:.1f}M parameters; LoRA r={args.r} trains "
          f"{lora['trainable'] / 1e6:.3f}M ({100 * lora['trainable'] / full['params']:.2f}%); "
          f"reference: {full['reference']} vs {lora['reference']}")
    print(f"steps {args.steps}, prompts {args.prompts}, max_new_tokens {args.max_new_tokens}, "
          f"median of {args.repeats} interleaved runs each, CPU peak RSS")
    print(f"  full fine-tuning peak: {med[0]:.0f} MB   (all runs: {[round(x['peak_mb']) for x in runs[0]]})")
    print(f"  LoRA peak:             {med[args.r]:.0f} MB   (all runs: {[round(x['peak_mb']) for x in runs[args.r]]})")
    print(f"  saved: {med[0] - med[args.r]:.0f} MB; LoRA / full = {med[args.r] / med[0]:.2f}")
    print(f"  above the {base:.0f} MB a run holds before loading the model: "
          f"LoRA / full = {(med[args.r] - base) / (med[0] - base):.2f}")
    print(f"  fp32 model-state count: full 20N = {20 * full['params'] / 2**20:.0f} MB, "
          f"LoRA 4N + 16n = {(4 * full['params'] + 16 * lora['trainable']) / 2**20:.0f} MB")


if __name__ == "__main__":
    main()
