"""A verifiable-reward task that a tiny model learns on a CPU in minutes: two-number
addition, "12+35=" -> "47", reward 1 for the exact answer and 0 otherwise.

It is the RLVR shape of 2025-26 (exact match, unit tests) at toy scale, and where ReMax's
greedy baseline meets a 0/1 reward in a particular way: when the greedy answer is right, a
right sample gets advantage 0 and a wrong one -1; when it is wrong, a right sample gets +1
and a wrong one 0 (`baseline/right_zero_adv_frac` in the trainer's metrics counts the
first case).

- `problems(...)`: the problem set, every pair (a, b) of operands in [0, max_operand],
  shuffled and split into pretraining / RL / held-out parts that share no problem;
- `exact_match(prompts, responses, answer)`: the reward, also usable from the command line
  as `--reward.kind python --reward.function remax.tasks.arithmetic:exact_match` with an
  `answer` column in the prompt file;
- `pretrain_arithmetic_model(...)`: a character-level tokenizer and a small GPT-2 trained
  with the demo's recipe (`remax.demo.pretrain`) on "a+b=c" lines until its greedy
  accuracy reaches ~50%: a policy that is right half the time leaves room to learn and
  gives the baseline both cases;
- `accuracy(...)`: greedy and sampled accuracy on held-out problems;
- `python -m remax.tasks.arithmetic OUT`: writes OUT/train.jsonl and OUT/heldout.jsonl
  (prompt, answer) and the pretrained model in OUT/model, and prints the `remax train`
  command that runs ReMax on them with this reward: an RLVR example end to end.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

from pathlib import Path

import torch

# the pretrained model's size and recipe (chosen by the sweep in benchmarks/README.md, "Issue 18")
MODEL_KWARGS: dict[str, int] = dict(n_layer=2, n_embd=64, n_head=4, n_positions=32)
TRAIN_KWARGS: dict[str, Any] = dict(batch_size=32, lr=3e-3, warmup_steps=20)
MAX_PRETRAIN_STEPS = 3000  # the schedule's length; training stops earlier, at TARGET_ACCURACY
TARGET_ACCURACY = 0.5
VOCAB_SIZE = 258  # the 256 byte symbols + EOS + PAD: no merges, one token per character
MAX_NEW_TOKENS = 4  # up to 3 digits of a sum of two 2-digit numbers, then EOS


@dataclass(frozen=True)
class Problems:
    """Disjoint problem sets, each a list of (prompt, answer) pairs."""

    pretrain: list[tuple[str, str]]
    train: list[tuple[str, str]]
    heldout: list[tuple[str, str]]

    def rows(self, part: str) -> list[dict[str, str]]:
        """`part`'s problems as prompt rows with the `answer` column `exact_match` reads."""
        return [{"prompt": p, "answer": a} for p, a in getattr(self, part)]


def problem(a: int, b: int) -> tuple[str, str]:
    """(prompt, answer) of a + b: ("12+35=", "47")."""
    return f"{a}+{b}=", str(a + b)


def problems(max_operand: int = 99, n_train: int = 2000, n_heldout: int = 500, seed: int = 0) -> Problems:
    """Every a + b with 0 <= a, b <= max_operand, shuffled with `seed`: the first n_heldout
    are held out, the next n_train are RL prompts, the rest are the pretraining text. The
    pretrained model never saw an RL or held-out problem, so its accuracy on them is what it
    learned of addition, not of a table."""
    pairs = [problem(a, b) for a in range(max_operand + 1) for b in range(max_operand + 1)]
    random.Random(seed).shuffle(pairs)
    if n_heldout + n_train >= len(pairs):
        raise ValueError(f"n_train + n_heldout = {n_train + n_heldout} leaves no pretraining problems out of "
                         f"{len(pairs)}; lower them or raise max_operand")
    return Problems(pretrain=pairs[n_heldout + n_train:], train=pairs[n_heldout: n_heldout + n_train],
                    heldout=pairs[:n_heldout])


def parse_answer(response: str) -> str:
    """The answer a response gives: its text with surrounding whitespace removed (a response
    ends at EOS, so "47" and "47 " count, "47+1" and "4" do not)."""
    return str(response).strip()


def exact_match(prompts: Sequence[str], responses: Sequence[str], answer: Sequence[Any]) -> list[float]:
    """1.0 where the response is exactly the answer (after `parse_answer`), else 0.0."""
    if len(answer) != len(responses):
        raise ValueError(f"exact_match got {len(responses)} responses but {len(answer)} answers; "
                         "each prompt row needs an 'answer' column")
    return [float(parse_answer(r) == str(a).strip()) for r, a in zip(responses, answer)]


exact_match.name = "arithmetic_exact_match"  # type: ignore[attr-defined]  # how reward errors name it


def pretrain_arithmetic_model(cache_dir: Optional[str], probs: Problems, *, max_steps: int = MAX_PRETRAIN_STEPS,
                              target: float = TARGET_ACCURACY, check_every: int = 100, seed: int = 0,
                              log: Callable[[str], Any] = print, model_kwargs: Optional[dict] = None,
                              train_kwargs: Optional[dict] = None):
    """(model, tokenizer, info): the demo's pretraining recipe (`remax.demo.pretrain`: its
    tokenizer trainer, corpus windows, AdamW groups and warmup-cosine schedule over
    `max_steps`) on the lines "a+b=c" of the pretraining problems, each followed by EOS, so
    a response to "a+b=" is the sum then EOS; stopped at the first multiple of
    `check_every` steps where greedy accuracy on 200 pretraining problems reaches `target`
    (a tiny model learns addition in a jump, from ~10% to ~90% within a few hundred steps,
    so a fixed step count would land anywhere in it). Cached in `cache_dir` under a key over
    every setting; `info` has the step it stopped at and the accuracy there."""
    from remax.demo import pretrain as pt
    from remax.models.tiny import tiny_causal_lm, train_tokenizer

    lines = [p + a for p, a in probs.pretrain]
    settings = pt._settings(lines, max_steps, seed, VOCAB_SIZE, {**MODEL_KWARGS, **(model_kwargs or {})},
                            {**TRAIN_KWARGS, **(train_kwargs or {})})
    settings.update(task="arithmetic", target=target, check_every=check_every)
    key = pt._settings_key(settings)
    if cache_dir is not None:
        cached = pt._load_cached(Path(cache_dir), key)
        if cached is not None:
            log(f"pretrain: loaded the arithmetic model from {cache_dir} (step {cached[2]['steps']})")
            return cached
    t0 = time.perf_counter()
    tokenizer = train_tokenizer(lines, vocab_size=VOCAB_SIZE)
    cfg = settings["train"]
    tokens, starts = pt.encode_corpus(tokenizer, lines, cfg["block_size"])
    model = tiny_causal_lm(tokenizer, seed=seed, **settings["model"])
    pt._disable_dropout(model)
    gen = torch.Generator().manual_seed(seed)
    optimizer = pt._adamw(model, cfg)
    dev = probs.pretrain[:200]
    step, acc, losses = 0, 0.0, []
    while step < max_steps:
        model.train()
        for group in optimizer.param_groups:
            group["lr"] = pt.lr_at(step, step / max_steps, cfg)
        batch = pt.sample_batch(tokens, starts, cfg["batch_size"], cfg["block_size"], gen)  # (B, T+1)
        losses.append(pt.lm_step(model, optimizer, batch, cfg["grad_clip"]))
        step += 1
        if step % check_every == 0 or step == max_steps:
            model.eval()
            acc = accuracy(model, tokenizer, dev)
            log(f"pretrain step {step}/{max_steps} loss {sum(losses[-20:]) / len(losses[-20:]):.3f} "
                f"greedy accuracy {acc:.3f} {time.perf_counter() - t0:.0f}s")
            if acc >= target:
                break
    model.eval()
    info = dict(steps=step, tokens_seen=step * cfg["batch_size"] * cfg["block_size"], dev_accuracy=acc,
                final_loss=sum(losses[-20:]) / len(losses[-20:]), seconds=round(time.perf_counter() - t0, 2),
                settings=settings, settings_key=key, loaded_from_cache=False)
    if cache_dir is not None:
        pt._save_atomic(Path(cache_dir), model, tokenizer, info)
    return model, tokenizer, info


@torch.no_grad()
def accuracy(model, tokenizer, pairs: Sequence[tuple[str, str]], *, sampled: bool = False, seed: int = 0,
             chunk: int = 256, max_new_tokens: int = MAX_NEW_TOKENS) -> float:
    """Share of `pairs` answered exactly, by greedy decoding (or one sample at temperature 1,
    top-p 1 with `sampled`; seeded, the global RNG restored)."""
    from remax.data import encode_prompts
    from remax.rollout import generate_rollout
    from remax.trainer.evaluate import decode_responses

    right = 0.0
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        for i in range(0, len(pairs), chunk):
            part = pairs[i: i + chunk]
            ids, mask = encode_prompts(tokenizer, [p for p, _ in part], 16)
            ro = generate_rollout(model, ids, mask, n=1, greedy=not sampled, max_new_tokens=max_new_tokens,
                                  top_p=1.0, eos_token_id=tokenizer.eos_token_id,
                                  pad_token_id=tokenizer.pad_token_id)
            texts = decode_responses(tokenizer, ro.response_ids, ro.response_mask)
            texts = texts[len(part):] if not sampled else texts[: len(part)]
            right += sum(exact_match([], texts, [a for _, a in part]))
    return right / max(len(pairs), 1)


def prepare(out: str, *, max_steps: int = MAX_PRETRAIN_STEPS, log: Callable[[str], Any] = print,
            model_kwargs: Optional[dict] = None) -> str:
    """Write `out`/train.jsonl, `out`/heldout.jsonl and the pretrained model `out`/model;
    return the `remax train` command for ReMax on them with the exact-match reward."""
    import json

    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    probs = problems()
    for part in ("train", "heldout"):
        (root / f"{part}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in probs.rows(part)))
    _, _, info = pretrain_arithmetic_model(str(root / "model"), probs, max_steps=max_steps, log=log,
                                           model_kwargs=model_kwargs)
    log(f"pretrained to greedy accuracy {info['dev_accuracy']:.2f} at step {info['steps']}")
    return (f"remax train --model.policy {root / 'model'} --data.train_file {root / 'train.jsonl'} "
            f"--reward.kind python --reward.function remax.tasks.arithmetic:exact_match "
            f"--rollout.max_new_tokens {MAX_NEW_TOKENS} --train.batch_size 32 --train.micro_batch_size 32 "
            f"--train.lr 3e-4 --loss.kl_coef 0.01 --train.steps 150 --output_dir {root / 'run'}")


def main(argv: Optional[Sequence[str]] = None) -> int:
    import sys

    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1 or args[0].startswith("-"):
        print("usage: python -m remax.tasks.arithmetic OUT_DIR   (problems, a pretrained model, the train command)")
        return 0 if args[:1] in (["-h"], ["--help"]) else 2
    print(prepare(args[0]))
    return 0


__all__ = ["prepare", "main", "Problems", "problem", "problems", "parse_answer", "exact_match", "pretrain_arithmetic_model",
           "accuracy", "MODEL_KWARGS", "TRAIN_KWARGS", "MAX_PRETRAIN_STEPS", "TARGET_ACCURACY", "MAX_NEW_TOKENS"]


if __name__ == "__main__":
    raise SystemExit(main())
