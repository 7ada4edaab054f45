"""A tiny policy saved to disk (the real from_pretrained path) and a reward file."""

from __future__ import annotations

import json
import textwrap

import pytest

PROMPTS = ["The Lord is", "And God said", "Blessed are the", "Love is", "In the beginning", "O give thanks"]


@pytest.fixture()
def policy_dir(tmp_path, tokenizer):
    from remax.models.tiny import tiny_causal_lm

    path = tmp_path / "policy"
    tiny_causal_lm(tokenizer, seed=0).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture()
def prompts_file(tmp_path):
    path = tmp_path / "prompts.jsonl"
    with open(path, "w") as f:
        for i, p in enumerate(PROMPTS):
            f.write(json.dumps({"prompt": p, "target": "o" if i % 2 else "e"}) + "\n")
    return path


@pytest.fixture()
def reward_file(tmp_path):
    """Share of the response's characters equal to the row's `target` column."""
    path = tmp_path / "my_reward.py"
    path.write_text(textwrap.dedent('''
        def char_share(prompts, responses, target):
            return [r.count(t) / max(len(r), 1) for r, t in zip(responses, target)]
    '''))
    return f"{path}:char_share"


@pytest.fixture()
def make_args(policy_dir, prompts_file, reward_file, seed_offset):
    """CLI arguments for a tiny run: make_args(out, algo="remax", steps=2), seeded with the
    suite's REMAX_TEST_SEED_OFFSET (tests/conftest.py)."""
    return lambda out, algo="remax", steps=2: _args(policy_dir, prompts_file, reward_file, out, algo, steps, seed_offset)


def _args(policy_dir, prompts_file, reward_file, out, algo, steps, seed=0):
    return [
        "--train.seed", str(seed),
        "--algo", algo,
        "--output_dir", str(out),
        "--model.policy", str(policy_dir),
        "--data.train_file", str(prompts_file),
        "--reward.kind", "python",
        "--reward.function", reward_file,
        "--rollout.max_new_tokens", "6",
        "--rollout.n_samples", "1" if algo in ("remax", "reinforce", "ppo") else "2",
        "--train.steps", str(steps),
        "--train.batch_size", "2",
        "--train.micro_batch_size", "2",
        "--train.lr", "1e-3",
        "--log.progress", "False",
    ]
