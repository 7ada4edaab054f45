"""GSPO reads per-token advantages as their masked mean over the response (issue 15,
item 2): a token-placed KL beyond the first token and truncated-IS weights change the
loss, under --algo gspo and under --algo remax --loss.policy_loss gspo alike."""

from __future__ import annotations

import pytest
import torch

from remax.algos.policy_losses import POLICY_LOSSES, LossParams
from remax.algos.returns import token_returns
from remax.algos.variants import gspo_loss, sequence_advantage


def grad_of(token_adv, mask, logp0, old):
    logp = logp0.clone().requires_grad_(True)
    gspo_loss(logp, old, token_adv, mask, clip_eps=0.2).backward()
    return logp.grad


def test_kl_on_tokens_after_the_first_changes_the_gradient(seed_offset):
    torch.manual_seed(seed_offset)
    mask = torch.tensor([[1.0, 1.0, 1.0, 1.0], [1.0, 1.0, 1.0, 0.0]])
    old = -torch.rand(2, 4)
    logp0 = old + 0.01 * torch.randn(2, 4)  # inside the clip
    seq = torch.tensor([1.0, -0.5])
    kl = torch.zeros(2, 4)
    kl[:, 1:] = 5.0  # KL only on tokens 2..T
    plain = token_returns(seq, torch.zeros(2, 4), mask, kl_coef=0.1, gamma=1.0, kl_placement="token")
    with_kl = token_returns(seq, kl, mask, kl_coef=0.1, gamma=1.0, kl_placement="token")
    assert torch.equal(plain[:, 0], with_kl[:, 0])  # the first token alone could not tell them apart
    g_plain, g_kl = grad_of(plain, mask, logp0, old), grad_of(with_kl, mask, logp0, old)
    assert (g_plain - g_kl).abs().max() > 1e-3
    # the sequence advantage is the masked token mean: 1 - 0.1 * 5 * 3/4 and -0.5 - 0.1 * 5 * 2/3
    assert sequence_advantage(with_kl, mask).tolist() == pytest.approx([1 - 0.375, -0.5 - 1 / 3])
    # a sequence advantage broadcast to its tokens is the same loss as the (N,) one
    torch.testing.assert_close(grad_of(plain, mask, logp0, old), grad_of(seq, mask, logp0, old))


def test_token_is_weights_reach_the_loss_through_the_registry():
    """--loss.policy_loss gspo (any algo): the registered loss honours token weights too."""
    mask = torch.ones(1, 3)
    old = torch.full((1, 3), -1.0)
    p = LossParams(clip_eps=0.2)
    fn = POLICY_LOSSES.get("gspo").fn
    adv = torch.ones(1, 3)
    weighted = adv * torch.tensor([[1.0, 0.5, 0.5]])  # TIS weights on tokens 2..3
    assert float(fn(old, old, adv, mask, p)) == pytest.approx(-1.0)
    assert float(fn(old, old, weighted, mask, p)) == pytest.approx(-2.0 / 3)
