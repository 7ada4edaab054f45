# %% [markdown]
# # remax from Python: ReMax with LoRA on a tiny model, offline
#
# The Python API mirrors `remax train`: a `remax.Config` (the same dataclasses as the
# CLI's flags and YAML), then `remax.train(config, policy=..., tokenizer=..., reward_fn=...,
# rows=...)` with ready objects in place of paths. Everything here runs offline on a CPU
# in seconds: the tokenizer is trained on the spot and the model is a random 2-layer GPT-2,
# so read it for the API, not for the text. Run it as a script (`python
# examples/python_api.py`) or cell by cell (`# %%`) in VS Code / Jupyter.
#
# The task: emit letters and spaces rather than stray bytes (a random model's output is
# mostly the latter). ReMax (Li et al., arXiv 2310.10505) samples a response and
# decodes a greedy one per prompt, and uses the greedy reward as the baseline.

# %%
import os
from pathlib import Path

import torch

import remax
from remax.models.tiny import tiny_causal_lm, train_tokenizer

torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS") or 1))  # a model this small runs fastest on one
OUT = Path(os.environ.get("REMAX_EXAMPLE_OUT", "runs/python_api"))

TEXT = [
    "the day is good and the night is long",
    "a good word is a light unto my path",
    "the sea is wide and the wind is cold",
    "my heart is glad for the morning is good",
] * 25
tokenizer = train_tokenizer(TEXT, vocab_size=300)  # byte-level BPE, left padding, EOS and PAD set
model = tiny_causal_lm(tokenizer, n_layer=2, n_embd=32, seed=0)  # random init, ~30k parameters

PROMPTS = ["the day is", "a word is", "the sea is", "my heart is", "the night is", "the wind is"]
HELD_OUT = ["the morning is", "a light is", "the path is", "my word is"]
rows = [{"prompt": p} for p in PROMPTS]  # any other columns would reach the reward by name


# %% A Python reward: one score per response (any callable of prompts and responses)
def text_share(prompts, responses):
    """Share of the response's characters that are lowercase letters or spaces: text, not bytes."""
    return [sum(c.islower() or c == " " for c in r) / max(len(r), 1) for r in responses]


# %% The config: the same fields as `remax train --help`
cfg = remax.Config(algo="remax", output_dir=str(OUT), overwrite=True)
cfg.model.device = "cpu"
cfg.rollout.max_new_tokens = 6
cfg.rollout.top_p = 1.0  # a random model's tail is large: sample from all of it (see the README)
cfg.rollout.temperature = 0.7
cfg.train.steps = 30
cfg.rollout.n_samples = 4  # four samples per prompt share one greedy baseline
cfg.train.batch_size = 6  # prompts per step
cfg.train.micro_batch_size = 24
cfg.train.lr = 3e-2  # adapters take a larger learning rate than full fine-tuning
cfg.train.lr_schedule = "constant"
cfg.loss.kl_coef = 0.05
cfg.lora.r = 8  # LoRA: only the adapters train; pi_ref is the base with them off, no copy
cfg.lora.alpha = 16
cfg.lora.target_modules = ["c_attn", "c_proj"]
cfg.lora.save_merged = True  # final/merged/: plain weights for AutoModelForCausalLM
cfg.log.progress = False
cfg.log.plot = False

before = remax.evaluate(model, tokenizer, HELD_OUT, text_share, max_new_tokens=6, temperature=0.7, seed=0)

# %% Train: metrics of every step come back (and go to OUT/metrics.jsonl)
history = remax.train(cfg, policy=model, tokenizer=tokenizer, reward_fn=text_share, rows=rows)
first, last = history[0], history[-1]
print(f"{len(history)} steps: reward {first['rollout/reward_mean']:.3f} -> {last['rollout/reward_mean']:.3f}, "
      f"greedy baseline {first['rollout/baseline_reward_mean']:.3f} -> {last['rollout/baseline_reward_mean']:.3f}, "
      f"KL {last['kl/mean']:.4f}")

# %% Load the result as a user would: the adapter on its base, or the merged model
from peft import PeftModel  # noqa: E402
from transformers import AutoModelForCausalLM  # noqa: E402

base = tiny_causal_lm(tokenizer, n_layer=2, n_embd=32, seed=0)  # the same base the run started from
trained = PeftModel.from_pretrained(base, OUT / "final").eval()
merged = AutoModelForCausalLM.from_pretrained(OUT / "final" / "merged").eval()

# %% Evaluate on held-out prompts: the trained policy against the base it started from
after = remax.evaluate(trained, tokenizer, HELD_OUT, text_share, max_new_tokens=6, temperature=0.7, seed=0)
after_merged = remax.evaluate(merged, tokenizer, HELD_OUT, text_share, max_new_tokens=6, temperature=0.7, seed=0)
print(f"held-out reward, sampled: {before.sampled_rewards.mean():.3f} -> {after.sampled_rewards.mean():.3f}; "
      f"greedy: {before.greedy_rewards.mean():.3f} -> {after.greedy_rewards.mean():.3f} "
      f"(merged weights, greedy: {after_merged.greedy_rewards.mean():.3f})")
for prompt, b, a in zip(HELD_OUT, before.greedy, after.greedy):
    print(f"  {prompt!r}: {b!r} -> {a!r}")
