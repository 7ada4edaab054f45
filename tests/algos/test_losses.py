"""losses by hand: policy gradient, PPO clip (both branches), clip fraction, clipped
value loss, KL loss; and their gradients."""

import math

import pytest
import torch

from remax.algos import (
    kl_loss,
    policy_gradient_loss,
    ppo_clip_fraction,
    ppo_clip_loss,
    value_loss,
)


def test_policy_gradient_loss_by_hand():
    logp = torch.tensor([[-1.0, -2.0, -3.0], [-0.5, -1.5, -2.5]], requires_grad=True)
    G = torch.tensor([[2.0, 1.0, 9.0], [-1.0, 0.5, 9.0]], requires_grad=True)
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    # -G*logp on masked tokens: 2*1, 1*2, 9*3 | -(-1)(-0.5) -> sum 2 + 2 + 27 - 0.5 = 30.5
    loss = policy_gradient_loss(logp, G, mask)
    assert loss.item() == pytest.approx(30.5 / 4)
    assert policy_gradient_loss(logp, G, mask, "seq_mean_token_sum").item() == pytest.approx(30.5 / 2)
    assert policy_gradient_loss(logp, G, mask, "seq_mean_token_mean").item() == pytest.approx(
        ((2 + 2 + 27) / 3 + -0.5 / 1) / 2)
    loss.backward()
    torch.testing.assert_close(logp.grad, -G.detach() * mask / 4)
    assert G.grad is None  # advantages are targets


def test_policy_gradient_sequence_advantages_broadcast():
    logp = torch.tensor([[-1.0, -2.0], [-0.5, -1.5]])
    mask = torch.ones(2, 2)
    seq = policy_gradient_loss(logp, torch.tensor([2.0, -1.0]), mask)
    # -(2*(-1) + 2*(-2) + (-1)*(-0.5) + (-1)*(-1.5)) / 4 = -(-6 + 2) / 4 = 1
    assert seq.item() == pytest.approx(1.0)


# five tokens with old log-prob 0, so log-ratio = logp; one padded token
RATIO = [1.5, 0.5, 1.5, 0.5, 1.1, 7.0]
ADV = torch.tensor([[1.0, 1.0, -2.0, -2.0, 1.0, 5.0]])
MASK = torch.tensor([[1.0, 1.0, 1.0, 1.0, 1.0, 0.0]])


def test_ppo_clip_loss_both_branches():
    logp = torch.log(torch.tensor([RATIO])).requires_grad_(True)
    old = torch.zeros(1, 6)
    # per token max(-A*ratio, -A*clamp(ratio, 0.8, 1.2)):
    #   A=+1, r=1.5: max(-1.5, -1.2) = -1.2   clipped branch
    #   A=+1, r=0.5: max(-0.5, -0.8) = -0.5   unclipped
    #   A=-2, r=1.5: max( 3.0,  2.4) =  3.0   unclipped
    #   A=-2, r=0.5: max( 1.0,  1.6) =  1.6   clipped branch
    #   A=+1, r=1.1: max(-1.1, -1.1) = -1.1   inside the trust region
    loss = ppo_clip_loss(logp, old, ADV, MASK, clip_eps=0.2)
    assert loss.item() == pytest.approx((-1.2 - 0.5 + 3.0 + 1.6 - 1.1) / 5)
    loss.backward()
    # d(-A*ratio)/dlogp = -A*ratio on the unclipped branch, 0 on the clipped one
    expected = torch.tensor([[0.0, -1 * 0.5, 2 * 1.5, 0.0, -1 * 1.1, 0.0]]) / 5
    torch.testing.assert_close(logp.grad, expected)
    frac = ppo_clip_fraction(logp, old, ADV, MASK, clip_eps=0.2)
    assert frac.item() == pytest.approx(2 / 5)


def test_ppo_clip_on_policy_gradient_equals_policy_gradient():
    # ratio = 1 at the first update: the PPO gradient is the plain policy gradient
    g = torch.Generator().manual_seed(0)
    logp = (-torch.rand(3, 4, generator=g)).requires_grad_(True)
    adv = torch.randn(3, 4, generator=g)
    mask = torch.tensor([[1.0, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0]])
    (g_ppo,) = torch.autograd.grad(ppo_clip_loss(logp, logp.detach(), adv, mask), logp)
    (g_pg,) = torch.autograd.grad(policy_gradient_loss(logp, adv, mask), logp)
    torch.testing.assert_close(g_ppo, g_pg)


def test_value_loss_clipped_branch():
    V = torch.tensor([[1.0, 2.0, 0.0, -1.0, 50.0]], requires_grad=True)
    old = torch.tensor([[0.5, 2.0, 1.0, 0.0, 0.0]])
    R = torch.tensor([[3.0, 1.0, 0.1, 1.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 1.0, 0.0]])
    # V_clip = old + clamp(V - old, -0.2, 0.2) = [0.7, 2.0, 0.8, -0.2]
    #   max((1-3)^2, (0.7-3)^2)     = max(4, 5.29)    = 5.29  clipped
    #   max((2-1)^2, (2-1)^2)       = 1
    #   max((0-0.1)^2, (0.8-0.1)^2) = max(0.01, 0.49) = 0.49  clipped
    #   max((-1-1)^2, (-0.2-1)^2)   = max(4, 1.44)    = 4     unclipped
    loss = value_loss(V, old, R, mask, clip_eps=0.2)
    assert loss.item() == pytest.approx(0.5 * (5.29 + 1 + 0.49 + 4) / 4)
    loss.backward()
    # 0.5 * 2 * (V - R) / 4 where unclipped, 0 where the clipped branch wins
    torch.testing.assert_close(V.grad, torch.tensor([[0.0, (2 - 1) / 4, 0.0, (-1 - 1) / 4, 0.0]]))
    assert value_loss(V, old, R, mask, num_tokens=8).item() == pytest.approx(0.5 * 10.78 / 8)


def test_kl_loss_k3_by_hand():
    logp = torch.tensor([[-0.1, -2.0, 0.0]], requires_grad=True)
    ref = torch.tensor([[-0.3, -1.0, -9.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    loss = kl_loss(logp, ref, mask)
    k3 = [math.exp(-0.2) + 0.2 - 1, math.exp(1.0) - 1.0 - 1]
    assert loss.item() == pytest.approx(sum(k3) / 2)
    loss.backward()
    # d k3 / dlogp = 1 - exp(ref - logp), token mean over 2
    torch.testing.assert_close(
        logp.grad, torch.tensor([[(1 - math.exp(-0.2)) / 2, (1 - math.exp(1.0)) / 2, 0.0]]))
    assert kl_loss(logp, ref, mask, "k1").item() == pytest.approx((0.2 - 1.0) / 2)
