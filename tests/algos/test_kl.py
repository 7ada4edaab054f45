"""kl.kl_penalty: k1, k2, k3 by hand, gradient, and a Monte Carlo check of unbiasedness."""

import math

import pytest
import torch

from remax.algos import kl_penalty

LOGP = torch.tensor([[-0.1, -2.0]])
REF = torch.tensor([[-0.3, -1.0]])
# d = logp - ref = [0.2, -1.0]; ref - logp = [-0.2, 1.0]


@pytest.mark.parametrize(
    "estimator, expected",
    [
        ("k1", [-0.1 - -0.3, -2.0 - -1.0]),
        ("k2", [0.5 * (-0.1 - -0.3) ** 2, 0.5 * (-2.0 - -1.0) ** 2]),  # [0.02, 0.5]
        ("k3", [math.exp(-0.2) - (-0.2) - 1, math.exp(1.0) - 1.0 - 1]),  # [0.01873, 0.71828]
    ],
)
def test_estimators_by_hand(estimator, expected):
    out = kl_penalty(LOGP, REF, estimator)
    assert out.shape == (1, 2)
    torch.testing.assert_close(out, torch.tensor([expected]))


def test_default_is_k1():
    torch.testing.assert_close(kl_penalty(LOGP, REF), torch.tensor([[0.2, -1.0]]))


def test_unknown_estimator_names_choices():
    with pytest.raises(ValueError, match="k1, k2, k3"):
        kl_penalty(LOGP, REF, "k4")


def test_k3_gradient_through_logprobs():
    logp = LOGP.clone().requires_grad_(True)
    kl_penalty(logp, REF, "k3").sum().backward()
    # d/dlogp [exp(ref - logp) + (logp - ref) - 1] = 1 - exp(ref - logp)
    torch.testing.assert_close(logp.grad, torch.tensor([[1 - math.exp(-0.2), 1 - math.exp(1.0)]]))


def test_k1_k3_unbiased_on_a_categorical():
    # KL(pi || ref) exactly, versus the mean of the estimators over samples from pi
    g = torch.Generator().manual_seed(0)
    logp_all = torch.log_softmax(torch.tensor([1.0, 0.0, -1.0, 0.5], dtype=torch.float64), -1)
    ref_all = torch.log_softmax(torch.tensor([0.0, 0.5, 0.0, -0.5], dtype=torch.float64), -1)
    exact = (logp_all.exp() * (logp_all - ref_all)).sum()
    a = torch.multinomial(logp_all.exp(), 100_000, replacement=True, generator=g)
    for est in ("k1", "k3"):
        samples = kl_penalty(logp_all[a][None], ref_all[a][None], est)[0]
        se = samples.std() / math.sqrt(len(samples))
        assert abs(samples.mean() - exact) < 4 * se, est
    # k3 is never negative, k1 is on some samples
    assert (kl_penalty(logp_all[a], ref_all[a], "k3") >= 0).all()
    assert (kl_penalty(logp_all[a], ref_all[a], "k1") < 0).any()
