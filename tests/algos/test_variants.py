"""REINFORCE++, Dr. GRPO, DAPO, GSPO, CISPO and truncated IS: numbers computed by hand."""

from __future__ import annotations

import math

import pytest
import torch

from remax.algos import aggregate, ppo_clip_loss
from remax.algos.variants import (
    batch_mean_advantages,
    cispo_loss,
    group_mean_advantages,
    gspo_loss,
    overlong_penalty,
    reinforce_pp_baseline_advantages,
    truncated_is_weights,
    varied_groups,
)

R = torch.tensor([1.0, 3.0, 2.0, 2.0])  # two prompts, n = 2


def test_group_mean_advantages_do_not_divide_by_std():
    # group 1: mean 2 -> -1, +1 ; group 2: mean 2 -> 0, 0
    assert torch.equal(group_mean_advantages(R, 2), torch.tensor([-1.0, 1.0, 0.0, 0.0]))


def test_reinforce_pp_baseline_scales_by_the_batch_std():
    # centred [-1, 1, 0, 0]: mean 0, unbiased var = 2/3, std = 0.8164966
    got = reinforce_pp_baseline_advantages(R, 2, eps=0.0)
    expected = torch.tensor([-1.0, 1.0, 0.0, 0.0]) / math.sqrt(2 / 3)
    assert torch.allclose(got, expected)
    assert torch.allclose(got[:2], torch.tensor([-1.2247449, 1.2247449]))
    assert torch.equal(reinforce_pp_baseline_advantages(torch.ones(4), 2), torch.zeros(4))  # no signal, no NaN


def test_batch_mean_advantages_take_the_global_mean():
    # R = [1, 3, 2, 2]: mean 2 -> [-1, 1, 0, 0]
    assert torch.equal(batch_mean_advantages(R, 1), torch.tensor([-1.0, 1.0, 0.0, 0.0]))
    # two "ranks" holding [1, 3] and [2, 2]: with the summing reduce each sees count 4, sum 8
    other = {0: R[2:], 1: R[:2]}
    for rank, part in enumerate((R[:2], R[2:])):
        tail = other[rank].double()
        reduce = lambda s, t=tail: s + torch.stack([t.new_tensor(float(t.numel())), t.sum()])  # noqa: E731
        assert torch.equal(batch_mean_advantages(part, 1, reduce=reduce), torch.tensor([-1.0, 1.0, 0.0, 0.0])[2 * rank:2 * rank + 2])
    # ranks holding [1, 1] and [3, 3]: a per-rank mean would leave no signal, the global one is 2
    a = torch.tensor([1.0, 1.0])
    assert torch.equal(batch_mean_advantages(a, 1), torch.zeros(2))  # the local mean: no signal
    glob = lambda s: s + torch.tensor([2.0, 6.0], dtype=torch.float64)  # noqa: E731
    assert torch.equal(batch_mean_advantages(a, 1, reduce=glob), torch.tensor([-1.0, -1.0]))  # global mean 2
    with pytest.raises(ValueError, match="not divisible"):
        batch_mean_advantages(torch.ones(3), 2)


def test_varied_groups_drops_all_equal_groups():
    assert varied_groups(R, 2).tolist() == [True, False]
    assert varied_groups(torch.tensor([0.0, 0.0, 0.0, 1.0, 1.0, 1.0]), 3).tolist() == [False, False]


def test_overlong_penalty():
    # max_len 10, cache 4: free up to 6, then (6 - L) / 4, floored at -1
    got = overlong_penalty(torch.tensor([5, 6, 8, 9, 10, 12]), max_len=10, cache_len=4)
    assert torch.allclose(got, torch.tensor([0.0, 0.0, -0.5, -0.75, -1.0, -1.0]))
    with pytest.raises(ValueError, match="cache_len"):
        overlong_penalty(torch.tensor([1]), max_len=4, cache_len=5)


def test_seq_mean_token_sum_norm_is_a_constant_normaliser():
    v = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    m = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    # masked sum 1 + 2 + 4 = 7; / (2 sequences x max_len 5) = 0.7; default max_len = T = 3
    assert aggregate(v, m, "seq_mean_token_sum_norm", max_len=5).item() == pytest.approx(0.7)
    assert aggregate(v, m, "seq_mean_token_sum_norm").item() == pytest.approx(7 / 6)
    # micro-batches with the global normalisers add up to the whole
    parts = sum(aggregate(v[i : i + 1], m[i : i + 1], "seq_mean_token_sum_norm", num_seqs=2, max_len=5) for i in range(2))
    assert parts.item() == pytest.approx(0.7)


def test_clip_higher():
    logp, old = torch.tensor([[0.3]]), torch.zeros(1, 1)
    m, a = torch.ones(1, 1), torch.tensor([1.0])
    # ratio e^0.3 = 1.3499 > both bounds: loss = -(1 + eps_high) * A
    assert ppo_clip_loss(logp, old, a, m, 0.2).item() == pytest.approx(-1.2)
    assert ppo_clip_loss(logp, old, a, m, 0.2, clip_eps_high=0.28).item() == pytest.approx(-1.28)


def test_gspo_sequence_ratio_clip_and_gradient():
    # row 0: log-ratios [0.1, 0.3] -> mean 0.2 -> s = e^0.2 = 1.2214028, A = +1: clipped to 1.1
    # row 1: log-ratios [0.2, (masked 5.0)] -> s = e^0.2, A = -1: unclipped, loss +1.2214028
    logp = torch.tensor([[0.1, 0.3], [0.2, 5.0]], requires_grad=True)
    old = torch.zeros(2, 2)
    m = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    loss = gspo_loss(logp, old, torch.tensor([1.0, -1.0]), m, clip_eps=0.1)
    s = math.exp(0.2)
    assert loss.item() == pytest.approx((-1.1 + s) / 2)
    loss.backward()
    # row 0 clipped: no gradient; row 1: -A * s / T / num_seqs = s / 1 / 2 on its one token
    assert torch.allclose(logp.grad, torch.tensor([[0.0, 0.0], [s / 2, 0.0]]))


def test_cispo_keeps_gradient_on_clipped_tokens():
    # log-ratios [0.5, -0.1] -> ratios [1.6487, 0.9048]; eps_low 1, eps_high 0.28 -> weights [1.28, 0.9048]
    logp = torch.tensor([[-1.0, -2.0]], requires_grad=True)
    old = logp.detach() - torch.tensor([[0.5, -0.1]])
    w = torch.tensor([1.28, math.exp(-0.1)])
    loss = cispo_loss(logp, old, torch.tensor([2.0]), torch.ones(1, 2), clip_eps=1.0, clip_eps_high=0.28)
    # token mean of -w * A * logp = (1.28*2*1 + 0.9048*2*2) / 2
    assert loss.item() == pytest.approx((1.28 * 2 + w[1].item() * 4) / 2, rel=1e-6)
    loss.backward()
    assert torch.allclose(logp.grad, -w * 2 / 2)  # the clipped token (1.28) still has a gradient


def test_truncated_is_weights_token_and_sequence():
    m = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    engine = torch.zeros(2, 2)
    logp = torch.tensor([[0.0, math.log(3.0)], [math.log(0.5), 9.0]])  # ratios [[1, 3], [0.5, (masked)]]
    w, stats = truncated_is_weights(logp, engine, m, "token", cap=2.0)
    assert torch.allclose(w, torch.tensor([[1.0, 2.0], [0.5, 0.0]]))
    assert stats["rollout/is_weight_mean"] == pytest.approx((1 + 3 + 0.5) / 3)
    assert stats["rollout/is_capped_frac"] == pytest.approx(1 / 3)
    w, stats = truncated_is_weights(logp, engine, m, "sequence", cap=2.0)
    # row 0: product 3 -> capped 2 on both tokens; row 1: 0.5 on its one token
    assert torch.allclose(w, torch.tensor([[2.0, 2.0], [0.5, 0.0]]))
    assert stats["rollout/is_capped_frac"] == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="token' or 'sequence"):
        truncated_is_weights(logp, engine, m, "batch")
