"""Runs a few remax and ppo steps and saves the final weights; used by test_equivalence.py.

    torchrun --nproc_per_node 2 _worker.py ranks TOKENIZER_DIR OUT   # 2 processes, gloo, DDP via accelerate
    python _worker.py reference TOKENIZER_DIR OUT                    # 1 process, the whole global batch

Sampling noise is per rank in a multi-process run (seeded with rank_seed(seed, step,
rank)), so the one-process reference draws each half of its batch with the seed the
rank that owns it uses, then trains on the whole batch at once: same rollouts, one
process, one backward over all rows. Everything else is the library's own code path.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

WORLD = 2
SEED_OFFSET = int(os.environ.get("REMAX_TEST_SEED_OFFSET", "0"))  # tests/conftest.py's switch, in the workers too
PROMPTS = ["The Lord is", "And God said", "Blessed are the", "Love is", "In the beginning", "O give thanks",
           "He maketh me", "The wicked are"]


def char_share(prompts, responses):
    return [r.count("e") / max(len(r), 1) for r in responses]


def make_config(algo: str, out: Path, steps: int, **train):
    from remax.config import Config

    c = Config(algo=algo, output_dir=str(out))
    c.train.seed = SEED_OFFSET
    c.model.device = "cpu"
    c.rollout.max_new_tokens = 6
    c.rollout.n_samples = 2 if algo == "remax" else 1
    c.train.steps = steps
    c.train.batch_size = 4  # prompts per global batch: 2 per rank
    c.train.micro_batch_size = 3  # uneven micro-batches on both sides (4 rows = 3 + 1; 8 rows = 3 + 3 + 2)
    c.train.lr = c.train.critic_lr = 3e-3
    c.train.lr_schedule = "constant"  # every step moves the weights visibly
    c.train.warmup_steps = 0
    c.log.progress = c.log.plot = False
    if algo == "ppo":
        c.loss.epochs = 2  # two passes: old log-probs and values differ from the current ones
    for k, v in train.items():
        section, _, key = k.partition("__")
        setattr(getattr(c, section), key, v)
    return c


def concat_rollouts(parts, pad_id: int):
    """Shards' Rollouts -> one Rollout in the global layout (all samples, then all greedy rows)."""
    from remax.rollout import Rollout

    P = max(p.prompt_ids.shape[1] for p in parts)
    R = max(p.response_ids.shape[1] for p in parts)

    def pad(t, width, value, left):
        extra = t.new_full((t.shape[0], width - t.shape[1]), value)
        return torch.cat([extra, t] if left else [t, extra], dim=1)

    groups = [[p.sampled() for p in parts]] + ([[p.greedy() for p in parts]] if parts[0].has_greedy else [])
    rows = [g for group in groups for g in group]
    return Rollout(
        prompt_ids=torch.cat([pad(g.prompt_ids, P, pad_id, True) for g in rows]),
        prompt_mask=torch.cat([pad(g.prompt_mask, P, 0, True) for g in rows]),
        response_ids=torch.cat([pad(g.response_ids, R, pad_id, False) for g in rows]),
        response_mask=torch.cat([pad(g.response_mask, R, 0.0, False) for g in rows]),
        num_prompts=sum(p.num_prompts for p in parts),
        n=parts[0].n,
        has_greedy=parts[0].has_greedy,
    )


def shard_seeded(rollout, rows, seed: int, stream: int, pad_token_id: int):
    """`rollout(rows)` of the global batch as WORLD ranks draw it: block r of `rows` under rank
    r's sampling seed for `stream`, the blocks concatenated (one process standing for the ranks)."""
    from remax.trainer.distributed import rank_seed, shard_bounds

    parts = []
    for r in range(WORLD):
        a, b = shard_bounds(len(rows), WORLD, r)
        with torch.random.fork_rng():
            torch.manual_seed(rank_seed(seed, stream, r))
            parts.append(rollout(rows[a:b]))
    return concat_rollouts(parts, pad_token_id)


def trainer_class(reference: bool):
    from remax.trainer import Trainer

    class ShardSeededReference(Trainer):
        def rollout(self, rows):
            return shard_seeded(super().rollout, rows, self.config.train.seed, self.state.step,
                                self.tokenizer.pad_token_id)

    return ShardSeededReference if reference else Trainer


def run(config, cls, tokenizer):
    from remax.models.tiny import tiny_causal_lm

    trainer = cls(config, policy=tiny_causal_lm(tokenizer, seed=SEED_OFFSET), tokenizer=tokenizer, reward_fn=char_share,
                  rows=[{"prompt": p} for p in PROMPTS])
    history = trainer.train()
    weights = {f"policy.{k}": v.detach().clone() for k, v in trainer.policy.state_dict().items()}
    if trainer.critic is not None:
        weights.update({f"critic.{k}": v.detach().clone() for k, v in trainer.critic.state_dict().items()})
    return trainer, weights, history


def main(mode: str, tok_dir: str, out: Path) -> None:
    """Train remax and ppo for 3 steps (checkpoint at 2; with ranks, resume remax from it); save weights."""
    from remax.models import load_tokenizer

    torch.set_num_threads(1)  # 2 processes on a 2-core machine
    tokenizer = load_tokenizer(tok_dir)
    reference = mode == "reference"
    cls = trainer_class(reference)
    saved = {}
    for algo in ("remax", "ppo"):
        config = make_config(algo, out / f"{algo}-{mode}", steps=3, log__save_every=2)
        trainer, saved[algo], history = run(config, cls, tokenizer)
        saved[algo + "/loss"] = torch.tensor([h["loss/policy"] for h in history])
    if not reference:  # resume the 2-process remax run from its step-2 checkpoint: the same 3rd step
        again = make_config("remax", out / "remax-resumed", steps=3)
        again.resume = str(out / f"remax-{mode}" / "checkpoints" / "step-2")
        _, saved["remax-resumed"], _ = run(again, cls, tokenizer)
    if trainer.dist.is_main:
        torch.save(saved, out / f"weights-{mode}.pt")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], Path(sys.argv[3]))
