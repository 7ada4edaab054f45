"""ReMax's claim on a toy it can be checked on exactly: a categorical policy over K = 5
actions (responses of length 1), fixed logits and rewards. With the library's own
functions (remax_returns, policy_gradient_loss, greedy_baseline_advantages):

- the greedy baseline b = r(argmax action) leaves the gradient unbiased, as b = 0
  (REINFORCE) does: the mean per-sample gradient matches sum_a pi(a) r(a) dlogpi(a)
  within a few standard errors, while an action-dependent baseline does not;
- the greedy baseline cuts the per-sample gradient variance, here by far, because
  every reward sits on a large positive offset (the paper's REINFORCE ablation).
"""

import math

import pytest
import torch

from remax.algos import greedy_baseline_advantages, policy_gradient_loss, remax_returns

K, N = 5, 200_000
LOGITS = torch.tensor([0.5, -0.3, 1.2, 0.0, -1.0], dtype=torch.float64)
REWARDS = 10.0 + torch.tensor([1.0, -0.5, 2.0, 0.3, -1.2], dtype=torch.float64)
PI = torch.softmax(LOGITS, -1)
GREEDY = REWARDS[LOGITS.argmax()]  # action 2, reward 12: what greedy decoding scores
# d/dlogits E_pi[r] = sum_a pi(a) r(a) (onehot(a) - pi) = pi * (r - E[r])
EXACT = PI * (REWARDS - (PI * REWARDS).sum())


BASELINES = {"remax": GREEDY.item(), "reinforce": 0.0}


@pytest.fixture(scope="module")
def actions():
    g = torch.Generator().manual_seed(1234)
    return torch.multinomial(PI, N, replacement=True, generator=g)  # (N,)


@pytest.fixture(scope="module")
def grads(actions):
    """name -> (N, K) per-sample gradients with that constant baseline (computed once)."""
    return {name: per_sample_grads(actions, torch.full((N,), b, dtype=torch.float64))
            for name, b in BASELINES.items()}


def per_sample_grads(actions, baseline):
    """(N,) actions, (N,) baseline -> (N, K) gradients of E[r] wrt the logits, one per
    sample, through the library: each sample is a length-1 response of its own."""
    logits = LOGITS.expand(N, K).clone().requires_grad_(True)  # one copy per sample
    logp = torch.log_softmax(logits, -1).gather(1, actions[:, None])  # (N, 1)
    mask = torch.ones(N, 1, dtype=torch.float64)
    # reference = policy: KL is 0, so kl_coef does not matter here
    G = remax_returns(REWARDS[actions], baseline, logp, logp.detach(), mask, kl_coef=0.05)
    loss = policy_gradient_loss(logp, G, mask, agg="seq_mean_token_sum")  # mean over N
    loss.backward()
    return -N * logits.grad  # minus: the loss is -E[r]; N: undo the mean


def mean_and_se(grads):
    return grads.mean(0), grads.std(0) / math.sqrt(grads.shape[0])


def exact_total_variance(b):
    # E||g||^2 - ||E g||^2 with g(a) = (onehot(a) - pi) * (r(a) - b)
    onehot = torch.eye(K, dtype=torch.float64)
    sq = ((onehot - PI).square().sum(-1) * (REWARDS - b).square() * PI).sum()
    return sq - EXACT.square().sum()


def test_closed_form_per_sample_gradient(actions, grads):
    onehot = torch.nn.functional.one_hot(actions, K).double()
    for name, b in BASELINES.items():
        closed = (onehot - PI) * (REWARDS[actions] - b)[:, None]  # (N, K)
        torch.testing.assert_close(grads[name], closed)


def test_greedy_baseline_matches_library_advantages(actions):
    adv = greedy_baseline_advantages(REWARDS[actions], GREEDY.reshape(1), n=N)  # 1 prompt, N samples
    torch.testing.assert_close(adv, REWARDS[actions] - 12.0)


@pytest.mark.parametrize("name", sorted(BASELINES))
def test_unbiased(grads, name):
    mean, se = mean_and_se(grads[name])
    assert ((mean - EXACT).abs() <= 4 * se).all(), (name, mean, EXACT, se)


def test_action_dependent_baseline_is_biased(actions):
    # the control that shows the tolerance has teeth: b = r(a)/2 halves the gradient
    grads = per_sample_grads(actions, 0.5 * REWARDS[actions])
    mean, se = mean_and_se(grads)
    assert ((mean - EXACT).abs() > 4 * se).any()
    torch.testing.assert_close(mean, 0.5 * EXACT, atol=(4 * se).max().item(), rtol=0)


def test_greedy_baseline_reduces_variance(grads):
    var = {}
    for name, b in BASELINES.items():
        var[name] = grads[name].var(0).sum().item()  # total variance: trace of the covariance
        # the Monte Carlo estimate agrees with the exact variance
        assert var[name] == pytest.approx(exact_total_variance(b).item(), rel=0.03), name
    # exact: about 79 for REINFORCE and 1.7 for ReMax on this toy
    assert var["reinforce"] > 20 * var["remax"], var
