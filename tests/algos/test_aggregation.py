"""aggregation: the three modes by hand, masked statistics, and the micro-batch
invariance that the global normalisers buy."""

import math

import pytest
import torch

from remax.algos import (
    aggregate,
    kl_loss,
    masked_mean,
    masked_whiten,
    policy_gradient_loss,
    ppo_clip_loss,
)

V = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
M = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
# masked sum = 1 + 2 + 4 = 7, masked tokens = 3, sequences = 2


@pytest.mark.parametrize(
    "agg, kwargs, expected",
    [
        ("token_mean", {}, 7 / 3),
        ("token_mean", {"num_tokens": 10}, 7 / 10),
        ("seq_mean_token_sum", {}, 7 / 2),
        ("seq_mean_token_sum", {"num_seqs": 4}, 7 / 4),
        ("seq_mean_token_mean", {}, ((1 + 2) / 2 + 4 / 1) / 2),  # 2.75
        ("seq_mean_token_mean", {"num_seqs": 4}, ((1 + 2) / 2 + 4 / 1) / 4),
        # each mode ignores the other mode's normaliser
        ("token_mean", {"num_seqs": 100}, 7 / 3),
        ("seq_mean_token_sum", {"num_tokens": 100}, 7 / 2),
    ],
)
def test_aggregate_by_hand(agg, kwargs, expected):
    out = aggregate(V, M, agg, **kwargs)
    assert out.shape == ()
    assert out.item() == pytest.approx(expected)


def test_empty_rows_and_empty_mask():
    m = torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
    assert aggregate(V, m, "seq_mean_token_mean").item() == pytest.approx(((1 + 2) / 2 + 0) / 2)
    assert aggregate(V, m, "token_mean").item() == pytest.approx((1 + 2) / 2)
    zero = torch.zeros_like(m)
    for agg in ("token_mean", "seq_mean_token_sum", "seq_mean_token_mean"):
        assert aggregate(V, zero, agg).item() == 0.0


def test_unknown_aggregation():
    with pytest.raises(ValueError, match="token_mean, seq_mean_token_sum, seq_mean_token_mean"):
        aggregate(V, M, "mean")


def test_masked_mean():
    assert masked_mean(V, M).item() == pytest.approx(7 / 3)
    torch.testing.assert_close(masked_mean(V, M, dim=-1), torch.tensor([(1 + 2) / 2, 4 / 1]))
    torch.testing.assert_close(masked_mean(V, M, dim=0), torch.tensor([(1 + 4) / 2, 2 / 1, 0.0]))


def test_masked_whiten_by_hand():
    # masked values 1, 2, 4: mean 7/3, deviations -4/3, -1/3, 5/3,
    # unbiased variance (16/9 + 1/9 + 25/9) / (3 - 1) = 7/3
    std = math.sqrt(7 / 3)
    expected = torch.tensor([[-4 / 3, -1 / 3, 0.0], [5 / 3, 0.0, 0.0]]) / std
    torch.testing.assert_close(masked_whiten(V, M), expected)
    shifted = torch.tensor([[-4 / 3, -1 / 3, 0.0], [5 / 3, 0.0, 0.0]]) / std + 7 / 3 * M
    torch.testing.assert_close(masked_whiten(V, M, shift_mean=False), shifted)


def test_masked_whiten_needs_two_entries():
    with pytest.raises(ValueError, match="at least 2"):
        masked_whiten(V, torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 0.0]]))


# ---- micro-batch invariance -------------------------------------------------------

AGGS = ("token_mean", "seq_mean_token_sum", "seq_mean_token_mean")


def _batch(B=8, T=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.tensor([6, 1, 3, 0, 5, 2, 6, 4])  # uneven, one empty row
    mask = (torch.arange(T)[None] < lengths[:, None]).float()  # (B, T) prefix masks
    logp = -torch.rand(B, T, generator=g, dtype=torch.float64) * 3
    old = logp + 0.3 * torch.randn(B, T, generator=g, dtype=torch.float64)
    adv = torch.randn(B, T, generator=g, dtype=torch.float64)
    return logp, old, adv, mask


LOSSES = {
    "policy_gradient": lambda lp, old, adv, m, agg, **kw: policy_gradient_loss(lp, adv, m, agg, **kw),
    "ppo_clip": lambda lp, old, adv, m, agg, **kw: ppo_clip_loss(lp, old, adv, m, 0.2, agg, **kw),
    "kl_loss": lambda lp, old, adv, m, agg, **kw: kl_loss(lp, old, m, "k3", agg, **kw),
}


@pytest.mark.parametrize("agg", AGGS)
@pytest.mark.parametrize("loss_name", sorted(LOSSES))
def test_micro_batches_sum_to_full_batch(agg, loss_name):
    loss_fn = LOSSES[loss_name]
    logp, old, adv, mask = _batch()
    full_lp = logp.clone().requires_grad_(True)
    full = loss_fn(full_lp, old, adv, mask, agg)
    full.backward()

    split_lp = logp.clone().requires_grad_(True)
    num_tokens, num_seqs = mask.sum(), mask.shape[0]  # the full batch's counts
    total = 0.0
    for rows in torch.arange(8).split(2):  # 4 micro-batches of 2 rows
        micro = loss_fn(split_lp[rows], old[rows], adv[rows], mask[rows], agg,
                        num_tokens=num_tokens, num_seqs=num_seqs)
        micro.backward()  # gradient accumulation
        total = total + micro.detach()
    torch.testing.assert_close(total, full.detach())
    torch.testing.assert_close(split_lp.grad, full_lp.grad)


def test_token_mean_without_global_normaliser_is_not_invariant():
    # the control: local token counts weigh the micro-batches' tokens unequally
    logp, old, adv, mask = _batch()
    full = policy_gradient_loss(logp, adv, mask, "token_mean")
    micro = [policy_gradient_loss(logp[r], adv[r], mask[r], "token_mean") for r in torch.arange(8).split(2)]
    assert abs(sum(micro) / len(micro) - full) > 1e-3
