"""Smoke run: ReMax on a tiny random model raises a dense reward (share of 'e' characters)."""

from __future__ import annotations

import pytest

from remax.config import Config
from remax.trainer import Trainer


def e_share(prompts, responses):
    return [sum(c == "e" for c in r) / max(len(r), 1) for r in responses]


@pytest.mark.learning
@pytest.mark.parametrize("seed", [0, 1])
def test_remax_raises_the_reward(seed, tokenizer, corpus, tmp_path, seed_offset, record_outcome):
    from remax.models.tiny import tiny_causal_lm

    cfg = Config(algo="remax", output_dir=str(tmp_path / "run"))
    cfg.rollout.n_samples, cfg.rollout.max_new_tokens, cfg.rollout.top_p = 4, 8, 1.0
    cfg.train.steps, cfg.train.batch_size, cfg.train.micro_batch_size = 60, 8, 32
    cfg.train.lr, cfg.train.lr_schedule, cfg.train.seed = 1e-2, "constant", seed + seed_offset
    cfg.loss.kl_coef, cfg.log.progress, cfg.log.plot = 0.0, False, False
    policy = tiny_causal_lm(tokenizer, seed=seed)
    start = [p.detach().clone() for p in policy.parameters()]
    history = Trainer(cfg, policy=policy, tokenizer=tokenizer, reward_fn=e_share,
                      rows=[{"prompt": p} for p in corpus[:10]]).train()
    r = [m["rollout/reward_mean"] for m in history]
    first, last = sum(r[:15]) / 15, sum(r[-15:]) / 15
    record_outcome("gain", last - first, 0.2)
    # measured (benchmarks/learning_margins.py): gain 0.43 .. 0.96 over seed offsets 0..9 x
    # OMP_NUM_THREADS 1 and 2, for both seeds (median 0.46); the bound leaves 2x to the minimum
    assert last > first + 0.2, (first, last)
    assert history[-1]["kl/mean"] > 0  # it moved away from the reference
    assert all(not p.equal(s) for p, s in zip(policy.parameters(), start) if p.requires_grad)
