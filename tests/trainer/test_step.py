"""One trainer step on a tiny in-memory model: the same update however the batch is
split into micro-batches, and no forward pass that an on-policy update does not need."""

from __future__ import annotations

import copy

import pytest
import torch

from remax.trainer.phases import prepare, update
from remax.config import Config
from remax.trainer import Trainer

from .conftest import PROMPTS


def vowel_share(prompts, responses, target):
    """Dense enough that a random model's responses get different rewards."""
    return [sum(c in "aeiou" for c in r) / max(len(r), 1) for r in responses]


def make_trainer(model, tokenizer, tmp_path, algo="remax", n=2, micro=4, **loss):
    cfg = Config(algo=algo, output_dir=str(tmp_path / "run"))
    cfg.rollout.n_samples, cfg.rollout.max_new_tokens = n, 6
    cfg.train.batch_size, cfg.train.micro_batch_size, cfg.train.lr = 2, micro, 1e-2
    cfg.train.steps, cfg.log.progress = 1, False
    for k, v in loss.items():
        setattr(cfg.loss, k, v)
    rows = [{"prompt": p, "target": "e"} for p in PROMPTS]
    return Trainer(cfg, policy=copy.deepcopy(model), tokenizer=tokenizer, reward_fn=vowel_share, rows=rows)


@pytest.mark.parametrize("algo, loss", [("remax", {}), ("grpo", {}), ("remax", {"agg": "seq_mean_token_mean"}),
                                        ("ppo", {"epochs": 1, "num_minibatches": 1})])
def test_update_is_independent_of_micro_batch_size(algo, loss, tiny_model, tokenizer, tmp_path):
    n = 1 if algo == "ppo" else 2
    grads, losses = [], []
    for micro in (4, 1, 3):
        t = make_trainer(tiny_model, tokenizer, tmp_path / str(micro), algo, n=n, micro=micro, **loss)
        losses.append(t.step()["loss/policy"])
        # the accumulated gradient of the (only) optimizer step stays in .grad
        grads.append(torch.cat([p.grad.flatten() for p in t.policy.parameters()]))
    assert grads[0].abs().max() > 1e-4  # a real gradient, not all zeros
    for g, l in zip(grads[1:], losses[1:]):
        torch.testing.assert_close(g, grads[0], rtol=1e-4, atol=1e-7)
        assert l == pytest.approx(losses[0], rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("algo, grad_calls, no_grad_policy_calls", [
    ("remax", 1, 0), ("reinforce", 1, 0), ("rloo", 1, 0),
    ("grpo", 1, 0),  # one epoch, one minibatch: the update's forward is the 'old' one
    ("ppo", 1, 1),   # PPO needs old log-probs before the critic targets
])
def test_no_extra_forward_pass(algo, grad_calls, no_grad_policy_calls, tiny_model, tokenizer, tmp_path, monkeypatch):
    calls = []
    real = prepare.response_logprobs

    def spy(model, *args, **kwargs):
        calls.append((model, torch.is_grad_enabled()))
        return real(model, *args, **kwargs)

    for phase in (prepare, update):  # every forward of the policy / reference in a step
        monkeypatch.setattr(phase, "response_logprobs", spy)
    t = make_trainer(tiny_model, tokenizer, tmp_path, algo, n=1 if algo == "ppo" else 2, micro=8)
    t.step()
    policy_grad = sum(1 for m, g in calls if m is t.policy and g)
    policy_no_grad = sum(1 for m, g in calls if m is t.policy and not g)
    ref = sum(1 for m, g in calls if m is t.reference)
    assert (policy_grad, policy_no_grad, ref) == (grad_calls, no_grad_policy_calls, 1)


def test_remax_step_uses_greedy_rewards_as_baseline(tiny_model, tokenizer, tmp_path):
    t = make_trainer(tiny_model, tokenizer, tmp_path, "remax", n=3)
    rows = t.sampler.next_batch()
    rollout = t.rollout(rows)
    rewards, greedy = t.score(rows, rollout)
    assert rewards.shape == (6,) and greedy.shape == (2,)
    batch = t.prepare(rollout.sampled(), rewards, greedy)
    torch.testing.assert_close(batch.seq_adv, rewards - greedy.repeat_interleave(3))
    # the greedy rows are argmax decoding of the same prompts
    again = t.rollout(rows).greedy()
    assert torch.equal(again.response_ids, rollout.greedy().response_ids)


def test_policy_is_trained_with_dropout_off(tiny_model, tokenizer, tmp_path):
    tiny_model.train()
    t = make_trainer(tiny_model, tokenizer, tmp_path)
    assert not any(m.training for m in t.policy.modules())
