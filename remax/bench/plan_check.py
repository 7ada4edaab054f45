"""`remax plan` against measured memory: peak RSS of a subprocess training a model for a
few steps on CPU, beside the planner's prediction for the same run.

Measured = peak RSS (VmHWM) minus the RSS just before the model is built (glibc's mmap
threshold fixed, see `measure`), after a one-step warm-up run on a 1-layer model of the
same architecture has loaded every kernel and library the real run touches: what remains
is the run's own memory (weights, gradients, Adam, reference, critic, activations, KV
cache, logits), which is what the planner predicts. The final/ save is not run (its
serialiser's copy is not part of a training step).

    .venv/bin/python -m remax.bench.plan_check                  # the GPT-2 cases that set plan's constants
    .venv/bin/python -m remax.bench.plan_check --holdout        # architectures and sizes that did not

Architectures: GPT-2 (the cases the activation constants were checked on), Qwen2 and Llama
(random init from a config: no download). The vocabulary may be larger than the tokenizer's
(the Qwen2.5-0.5B shape keeps its 151,936 rows, as the real model does): token ids stay
below the tokenizer's size, the logits have the model's width.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import asdict, dataclass
from typing import Any, Optional

from remax.plan import ModelShape, PlanInputs, model_shape, plan

PROMPT_WORDS = 24  # every prompt: this many words of the test corpus (one token each or more)


@dataclass
class Case:
    name: str
    algo: str = "remax"
    arch: str = "gpt2"  # gpt2 | qwen2 | llama
    hidden: int = 256
    layers: int = 4
    heads: int = 4
    kv_heads: Optional[int] = None  # None: heads (no grouped-query attention)
    intermediate: Optional[int] = None  # None: 4 x hidden
    vocab: Optional[int] = None  # None: the tokenizer's
    tied: bool = True  # input embedding and LM head share one tensor
    batch: int = 4
    n_samples: int = 1
    max_new_tokens: int = 32
    micro_batch: int = 4
    gradient_checkpointing: bool = False
    reference_dtype: str = "float32"
    mixed_precision: str = "no"  # --train.mixed_precision: no | bf16
    steps: int = 2


def model_config(case: Case, vocab: int, special: Optional[dict[str, int]] = None) -> Any:
    """The transformers config of `case` (random init: built from it, nothing downloaded)."""
    from transformers import GPT2Config, LlamaConfig, Qwen2Config

    special = special or {}
    vocab = case.vocab or vocab
    inter = case.intermediate or 4 * case.hidden
    if case.arch == "gpt2":
        return GPT2Config(vocab_size=vocab, n_positions=512, n_embd=case.hidden, n_layer=case.layers,
                          n_head=case.heads, n_inner=inter, tie_word_embeddings=case.tied, **special)
    kind = {"qwen2": Qwen2Config, "llama": LlamaConfig}[case.arch]
    return kind(vocab_size=vocab, hidden_size=case.hidden, intermediate_size=inter, num_hidden_layers=case.layers,
                num_attention_heads=case.heads, num_key_value_heads=case.kv_heads or case.heads,
                max_position_embeddings=512, tie_word_embeddings=case.tied, **special)


_CHILD = r'''
import dataclasses, gc, json, os, sys
import torch
torch.set_num_threads(1)
from transformers import AutoModelForCausalLM
from remax.bench.plan_check import Case, model_config
from remax.config import Config
from remax.models.tiny import train_tokenizer
from remax.trainer import Trainer

args = json.loads(sys.argv[1])
words_per_prompt = args.pop("prompt_words")
case = Case(**args)
corpus = ["In the beginning God created the heaven and the earth and the earth was without form and void",
          "And God said Let there be light and there was light and God saw the light that it was good"] * 10
tok = train_tokenizer(corpus, vocab_size=300)
words = " ".join(corpus).split()
rows = [{"prompt": " ".join(words[i:i + words_per_prompt])} for i in range(0, 8 * case.batch, 8)]
special = dict(eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id, pad_token_id=tok.pad_token_id)

def reward(prompts, responses):
    return [r.count("e") / max(len(r), 1) for r in responses]

def run(case, steps):
    torch.manual_seed(0)
    policy = AutoModelForCausalLM.from_config(model_config(case, len(tok), special))
    c = Config(algo=case.algo, output_dir="unused")
    c.model.device = "cpu"
    c.model.reference_dtype = case.reference_dtype
    c.rollout.n_samples, c.rollout.max_new_tokens = case.n_samples, case.max_new_tokens
    c.train.batch_size, c.train.micro_batch_size = case.batch, case.micro_batch
    c.train.gradient_checkpointing = case.gradient_checkpointing
    c.train.mixed_precision = case.mixed_precision
    c.data.max_prompt_tokens = 256
    trainer = Trainer(c, policy=policy, tokenizer=tok, reward_fn=reward, rows=rows)
    prompt_tokens = max(len(tok(r["prompt"])["input_ids"]) for r in rows)
    for _ in range(steps):
        trainer.step()
    return prompt_tokens

# warm-up: kernels, allocator arenas, lazily imported modules (same architecture and precision, 1 small layer)
run(dataclasses.replace(case, hidden=32, layers=1, heads=2, kv_heads=1, intermediate=64, vocab=None), 1)
gc.collect()
base = int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
prompt_tokens = run(case, case.steps)
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
    return model_shape(model_config(case, vocab))


def plan_inputs(case: Case, prompt_tokens: int) -> PlanInputs:
    return PlanInputs(algo=case.algo, batch=case.batch, n_samples=case.n_samples, prompt_tokens=prompt_tokens,
                      max_new_tokens=case.max_new_tokens, micro_batch=case.micro_batch,
                      gradient_checkpointing=case.gradient_checkpointing, reference_dtype=case.reference_dtype,
                      mixed_precision=case.mixed_precision, foreach=False)  # CPU: torch's AdamW loops over tensors


def predict(case: Case, prompt_tokens: int, vocab: int) -> float:
    return plan(shape_of(case, vocab), plan_inputs(case, prompt_tokens)).peak


def compare(case: Case) -> dict:
    m = measure(case)
    predicted = predict(case, m["prompt_tokens"], m["vocab"])
    return {"case": case.name, "params": shape_of(case, m["vocab"]).params, "predicted_mb": predicted / 2**20,
            "measured_mb": m["measured"] / 2**20, "error": predicted / m["measured"] - 1}


# the cases the activation constants were checked on (GPT-2, fp32)
CASES = [
    Case("remax fp32, 8 x 512", hidden=512, layers=8, heads=8),
    Case("ppo fp32, 8 x 512", algo="ppo", hidden=512, layers=8, heads=8),
    Case("remax, activations large (n=4, 96 tokens)", hidden=256, layers=8, n_samples=4, batch=4,
         max_new_tokens=96, micro_batch=16),
    Case("same, gradient checkpointing", hidden=256, layers=8, n_samples=4, batch=4, max_new_tokens=96,
         micro_batch=16, gradient_checkpointing=True),
    Case("remax, bf16 reference", hidden=512, layers=8, heads=8, reference_dtype="bfloat16"),
]

# Qwen2.5-0.5B's shape (494M parameters, random init), 2 prompts x (1 sample + 1 greedy), 8 new tokens
QWEN_05B = dict(arch="qwen2", hidden=896, layers=24, heads=14, kv_heads=2, intermediate=4864, vocab=151936, tied=True,
                batch=2, max_new_tokens=8, micro_batch=2)
# a Llama-shaped ~110M (untied 32k head, grouped-query attention), activations and logits large
LLAMA_110M = dict(arch="llama", hidden=768, layers=12, heads=12, kv_heads=4, intermediate=2048, vocab=32000,
                  tied=False, batch=4, n_samples=4, max_new_tokens=48, micro_batch=16)
# sizes and architectures that did not set plan's constants
HOLDOUT = [
    Case("qwen2 0.5B shape, fp32", **QWEN_05B),
    Case("qwen2 0.5B shape, bf16 mixed", mixed_precision="bf16", **QWEN_05B),
    Case("llama 110M shape, fp32", **LLAMA_110M),
    Case("llama 110M shape, bf16 mixed", mixed_precision="bf16", **LLAMA_110M),
]


def main(argv: Optional[list[str]] = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    cases = HOLDOUT if "--holdout" in argv else CASES
    names = [a.split("=", 1)[1] for a in argv if a.startswith("--only=")]
    cases = [c for c in cases if not names or any(n in c.name for n in names)]
    print(f"{'case':<44} {'params':>8} {'predicted MB':>13} {'measured MB':>12} {'error':>7}")
    for case in cases:
        r = compare(case)
        print(f"{r['case']:<44} {r['params'] / 1e6:>7.1f}M {r['predicted_mb']:>13.1f} {r['measured_mb']:>12.1f} "
              f"{r['error']:>+7.1%}", flush=True)


if __name__ == "__main__":
    main()
