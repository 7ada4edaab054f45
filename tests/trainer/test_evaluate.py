"""evaluate(): seeded sampled + greedy responses on held-out prompts, one reward path."""

from __future__ import annotations

import torch

from remax.rollout import generate_rollout
from remax.trainer import decode_responses, evaluate

from .conftest import PROMPTS


def n_chars(prompts, responses):
    return [float(len(r)) for r in responses]


def test_evaluate_is_seeded_and_scores_both(tiny_model, tokenizer):
    a = evaluate(tiny_model, tokenizer, PROMPTS, n_chars, max_new_tokens=5, batch_size=4, seed=3)
    state = torch.get_rng_state()
    b = evaluate(tiny_model, tokenizer, PROMPTS, n_chars, max_new_tokens=5, batch_size=4, seed=3)
    assert torch.equal(torch.get_rng_state(), state)  # the caller's RNG is untouched
    assert a.sampled == b.sampled and a.greedy == b.greedy
    assert a.sampled_rewards.tolist() == [float(len(r)) for r in a.sampled]
    assert a.greedy_rewards.tolist() == [float(len(r)) for r in a.greedy]
    m = a.metrics()
    assert abs(m["eval/reward_mean"] - sum(len(r) for r in a.sampled) / len(PROMPTS)) < 1e-5

    # the greedy responses are the argmax decoding of each prompt
    enc = tokenizer(PROMPTS[:1], return_tensors="pt")
    ro = generate_rollout(tiny_model, enc["input_ids"], enc["attention_mask"], n=0, greedy=True, max_new_tokens=5,
                          eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    assert decode_responses(tokenizer, ro.response_ids, ro.response_mask)[0] == a.greedy[0]
