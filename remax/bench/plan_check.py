"""`remax plan` against measured memory: peak RSS of a subprocess training a GPT-2-shaped
model for a few steps on CPU, beside the planner's prediction for the same run.

Measured = peak RSS (getrusage) minus the RSS just before the model is built (glibc's
mmap threshold fixed, see `measure`), after a
one-step warm-up run on a 1-layer model has loaded every kernel and library the real
run touches: what remains is the run's own memory (weights, gradients, Adam, reference,
critic, activations, KV cache), which is what the planner predicts. The final/ save is
not run (its serialiser's copy is not part of a training step).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import asdict, dataclass

from remax.plan import ModelShape, PlanInputs, model_shape, plan

PROMPT_WORDS = 24  # every prompt: this many words of the test corpus (one token each or more)


@dataclass
class Case:
    name: str
    algo: str = "remax"
    n_embd: int = 256
    n_layer: int = 4
    n_head: int = 4
    batch: int = 4
    n_samples: int = 1
    max_new_tokens: int = 32
    micro_batch: int = 4
    gradient_checkpointing: bool = False
    reference_dtype: str = "float32"
    steps: int = 2


_CHILD = r'''
import gc, json, os, resource, sys
import torch
torch.set_num_threads(1)
from transformers import GPT2Config, GPT2LMHeadModel
from remax.config import Config
from remax.models.tiny import train_tokenizer
from remax.trainer import Trainer

case = json.loads(sys.argv[1])
corpus = ["In the beginning God created the heaven and the earth and the earth was without form and void",
          "And God said Let there be light and there was light and God saw the light that it was good"] * 10
tok = train_tokenizer(corpus, vocab_size=300)
words = " ".join(corpus).split()
rows = [{"prompt": " ".join(words[i:i + case["prompt_words"]])} for i in range(0, 8 * case["batch"], 8)]

def reward(prompts, responses):
    return [r.count("e") / max(len(r), 1) for r in responses]

def run(n_embd, n_layer, n_head, steps):
    cfg = GPT2Config(vocab_size=len(tok), n_positions=512, n_embd=n_embd, n_layer=n_layer, n_head=n_head,
                     eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id, pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    policy = GPT2LMHeadModel(cfg)
    c = Config(algo=case["algo"], output_dir="unused")
    c.model.device = "cpu"
    c.model.reference_dtype = case["reference_dtype"]
    c.rollout.n_samples, c.rollout.max_new_tokens = case["n_samples"], case["max_new_tokens"]
    c.train.batch_size, c.train.micro_batch_size = case["batch"], case["micro_batch"]
    c.train.gradient_checkpointing = case["gradient_checkpointing"]
    c.data.max_prompt_tokens = 256
    trainer = Trainer(c, policy=policy, tokenizer=tok, reward_fn=reward, rows=rows)
    prompt_tokens = max(len(tok(r["prompt"])["input_ids"]) for r in rows)
    for _ in range(steps):
        trainer.step()
    return prompt_tokens

run(32, 1, 2, 1)  # warm-up: kernels, allocator arenas, lazily imported modules
gc.collect()
base = int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
prompt_tokens = run(case["n_embd"], case["n_layer"], case["n_head"], case["steps"])
from remax.trainer.metrics import peak_rss_mb
peak = peak_rss_mb() * 2**20  # VmHWM: ru_maxrss would count the parent's RSS (kept across fork + exec)
print(json.dumps({"measured": peak - base, "prompt_tokens": prompt_tokens, "vocab": len(tok)}))
'''


def measure(case: Case) -> dict:
    """Run `case` in a fresh interpreter; bytes measured, and the prompt length it used."""
    args = dict(asdict(case), prompt_words=PROMPT_WORDS)
    # glibc malloc with a fixed mmap threshold: large freed tensors go back to the OS, so RSS
    # follows live memory as a GPU allocator's peak does (the default threshold adapts upwards
    # and keeps freed blocks in the heap, where RSS counts them long after they died)
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="131072", OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    out = subprocess.run([sys.executable, "-c", _CHILD, json.dumps(args)], capture_output=True, text=True,
                         timeout=600, env=env)
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-2000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def shape_of(case: Case, vocab: int) -> ModelShape:
    from transformers import GPT2Config

    return model_shape(GPT2Config(vocab_size=vocab, n_positions=512, n_embd=case.n_embd, n_layer=case.n_layer,
                                  n_head=case.n_head))


def predict(case: Case, prompt_tokens: int, vocab: int) -> float:
    inputs = PlanInputs(algo=case.algo, batch=case.batch, n_samples=case.n_samples, prompt_tokens=prompt_tokens,
                        max_new_tokens=case.max_new_tokens, micro_batch=case.micro_batch,
                        gradient_checkpointing=case.gradient_checkpointing, reference_dtype=case.reference_dtype)
    return plan(shape_of(case, vocab), inputs).peak


def compare(case: Case) -> dict:
    m = measure(case)
    predicted = predict(case, m["prompt_tokens"], m["vocab"])
    return {"case": case.name, "predicted_mb": predicted / 2**20, "measured_mb": m["measured"] / 2**20,
            "error": predicted / m["measured"] - 1}


CASES = [
    Case("remax fp32, 8 x 512", n_embd=512, n_layer=8, n_head=8),
    Case("ppo fp32, 8 x 512", algo="ppo", n_embd=512, n_layer=8, n_head=8),
    Case("remax, activations large (n=4, 96 tokens)", n_embd=256, n_layer=8, n_samples=4, batch=4,
         max_new_tokens=96, micro_batch=16),
    Case("same, gradient checkpointing", n_embd=256, n_layer=8, n_samples=4, batch=4, max_new_tokens=96,
         micro_batch=16, gradient_checkpointing=True),
    Case("remax, bf16 reference", n_embd=512, n_layer=8, n_head=8, reference_dtype="bfloat16"),
]


def main() -> None:
    print(f"{'case':<44} {'predicted MB':>13} {'measured MB':>12} {'error':>7}")
    for case in CASES:
        r = compare(case)
        print(f"{r['case']:<44} {r['predicted_mb']:>13.1f} {r['measured_mb']:>12.1f} {r['error']:>+7.1%}", flush=True)


if __name__ == "__main__":
    main()
