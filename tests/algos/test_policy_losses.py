"""The policy-loss table and the run settings resolved from a spec: hand-computed
numbers through the table's common signature; truncated IS applied to advantages."""

from __future__ import annotations

import math

import pytest
import torch

from remax.algos import POLICY_LOSSES, LossParams, get_algorithm
from remax.algos.variants import apply_truncated_is

LOGP = torch.tensor([[0.3, -0.2]], requires_grad=True)
OLD = torch.zeros(1, 2)
MASK = torch.ones(1, 2)
ADV = torch.tensor([[1.0, 1.0]])


def test_table_holds_every_loss_with_its_ratio_flag():
    assert POLICY_LOSSES.names() == ["policy_gradient", "ppo_clip", "gspo", "cispo"]
    assert [POLICY_LOSSES.get(n).uses_ratio for n in POLICY_LOSSES] == [False, True, True, True]


def test_policy_gradient_through_the_table():
    # -(1 * 0.3 + 1 * -0.2) / 2 tokens = -0.05
    loss = POLICY_LOSSES.get("policy_gradient").fn(LOGP, OLD, ADV, MASK, LossParams())
    assert loss.item() == pytest.approx(-0.05)


def test_ppo_clip_through_the_table_uses_both_bounds():
    # ratios e^0.3 = 1.3499, e^-0.2 = 0.8187; A = +1: token 1 clipped at 1 + eps_high, token 2 unclipped
    p = LossParams(clip_eps=0.2, clip_eps_high=0.28)
    loss = POLICY_LOSSES.get("ppo_clip").fn(LOGP, OLD, ADV, MASK, p)
    assert loss.item() == pytest.approx(-(1.28 + math.exp(-0.2)) / 2, rel=1e-6)
    frac = POLICY_LOSSES.get("ppo_clip").clip_fraction(LOGP.detach(), OLD, ADV, MASK, p)
    assert frac.item() == pytest.approx(0.5)
    # symmetric 0.2: token 1 clipped at 1.2 instead
    loss = POLICY_LOSSES.get("ppo_clip").fn(LOGP, OLD, ADV, MASK, LossParams(clip_eps=0.2))
    assert loss.item() == pytest.approx(-(1.2 + math.exp(-0.2)) / 2, rel=1e-6)


def test_gspo_and_cispo_through_the_table():
    # GSPO: mean log-ratio 0.05 -> s = e^0.05 = 1.0513 > 1 + 4e-4: clipped, loss -(1 + 4e-4)
    g = POLICY_LOSSES.get("gspo").fn(LOGP, OLD, ADV, MASK, LossParams(3e-4, 4e-4), num_seqs=1)
    assert g.item() == pytest.approx(-1.0004, rel=1e-6)
    # CISPO: weights clip(e^0.3, 0, 1.28) = 1.28 and e^-0.2; loss = token mean of -w * A * logp
    c = POLICY_LOSSES.get("cispo").fn(LOGP, OLD, ADV, MASK, LossParams(1.0, 0.28))
    assert c.item() == pytest.approx(-(1.28 * 0.3 + math.exp(-0.2) * -0.2) / 2, rel=1e-6)
    # seq_mean_token_sum_norm reaches the loss: sum / (1 sequence x max_len 4)
    c = POLICY_LOSSES.get("cispo").fn(LOGP, OLD, ADV, MASK, LossParams(1.0, 0.28, "seq_mean_token_sum_norm"),
                                      num_seqs=1, max_len=4)
    assert c.item() == pytest.approx(-(1.28 * 0.3 + math.exp(-0.2) * -0.2) / 4, rel=1e-6)


def test_resolve_loss_takes_spec_defaults_unless_the_config_sets_them():
    from remax.config import Config, ConfigError
    from remax.trainer.validate import overlong_buffer_tokens, resolve_kl, resolve_loss

    def resolved(algo, **loss):
        c = Config(algo=algo)
        for k, v in loss.items():
            setattr(c.loss, k, v)
        fn, p = resolve_loss(c, get_algorithm(algo))
        return POLICY_LOSSES.names()[[POLICY_LOSSES.get(n) for n in POLICY_LOSSES].index(fn)], p

    assert resolved("remax") == ("policy_gradient", LossParams(0.2, None, "token_mean"))
    assert resolved("dapo") == ("ppo_clip", LossParams(0.2, 0.28, "token_mean"))
    assert resolved("dapo", clip_eps=0.1) == ("ppo_clip", LossParams(0.1, 0.28, "token_mean"))
    assert resolved("gspo") == ("gspo", LossParams(3e-4, 4e-4, "token_mean"))
    assert resolved("dr_grpo") == ("ppo_clip", LossParams(0.2, None, "seq_mean_token_sum_norm"))
    assert resolved("dr_grpo", agg="token_mean")[1].agg == "token_mean"
    assert resolved("remax", policy_loss="ppo_clip", clip_eps_high=0.3) == ("ppo_clip", LossParams(0.2, 0.3, "token_mean"))
    with pytest.raises(ConfigError, match="unknown policy loss 'ppo_clp'; did you mean 'ppo_clip'"):
        resolved("remax", policy_loss="ppo_clp")
    c = Config(algo="reinforce_pp_baseline")
    assert resolve_kl(c, get_algorithm(c.algo)) == ("loss", "k2")
    c = Config(algo="dapo")
    c.rollout.max_new_tokens = 24
    assert resolve_kl(c, get_algorithm("dapo")) == ("none", "k1")
    assert overlong_buffer_tokens(c, get_algorithm("dapo")) == 5  # round(0.2 * 24)
    c.loss.overlong_buffer = 0.0
    assert overlong_buffer_tokens(c, get_algorithm("dapo")) == 0
    assert overlong_buffer_tokens(Config(), get_algorithm("remax")) == 0


def test_apply_truncated_is():
    adv = torch.tensor([[2.0, 2.0], [1.0, 0.0]])
    m = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    logp = torch.tensor([[0.0, math.log(3.0)], [math.log(0.5), 0.0]])
    engine = torch.zeros(2, 2)
    # no engine log-probs: auto is off
    out, stats = apply_truncated_is(adv, logp, None, m, "auto")
    assert out is adv and stats == {}
    out, stats = apply_truncated_is(adv, logp, engine, m, "off")
    assert out is adv and stats == {}
    # auto with engine log-probs = token level: weights [[1, min(3, 2)], [0.5, 0]]
    out, stats = apply_truncated_is(adv, logp, engine, m, "auto", cap=2.0)
    assert torch.allclose(out, torch.tensor([[2.0, 4.0], [0.5, 0.0]]))
    assert stats["rollout/is_capped_frac"] == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match="needs the rollout engine's log-probs"):
        apply_truncated_is(adv, logp, None, m, "token")


def test_a_spec_with_an_unknown_loss_is_refused():
    import dataclasses

    with pytest.raises(ValueError, match="loss 'ppo_clipped' is not one of"):
        dataclasses.replace(get_algorithm("grpo"), loss="ppo_clipped")
    with pytest.raises(ValueError, match="default_agg 'sum'"):
        dataclasses.replace(get_algorithm("grpo"), default_agg="sum")
    assert get_algorithm("grpo").on_policy is False and get_algorithm("remax").on_policy is True


def test_token_mean_of_an_all_masked_batch_is_zero_with_a_finite_gradient():
    from remax.algos import aggregate

    v = torch.tensor([[1.0, 2.0]], requires_grad=True)
    out = aggregate(v, torch.zeros(1, 2), "token_mean", num_tokens=torch.tensor(0.0))
    out.backward()
    assert out.item() == 0.0 and torch.equal(v.grad, torch.zeros(1, 2))
    assert aggregate(v, torch.zeros(1, 2), "token_mean", num_tokens=0).item() == 0.0
    # a fractional global count (1 token over 2 ranks) is used as it is: 2 / 0.5
    assert aggregate(v.detach(), torch.tensor([[0.0, 1.0]]), "token_mean", num_tokens=0.5).item() == 4.0
