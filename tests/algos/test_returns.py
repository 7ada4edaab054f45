"""returns: token_returns for every KL placement, remax_returns, ppo_token_rewards and
gae by hand, then against plain Python loops on random inputs."""

import pytest
import torch

from remax.algos import (
    gae,
    kl_penalty,
    policy_gradient_loss,
    ppo_token_rewards,
    reinforce_advantages,
    remax_returns,
    token_returns,
)

ADV = torch.tensor([2.0, -1.0])
KL = torch.tensor([[0.1, 0.2, 0.3], [0.4, 0.5, 0.6]])
MASK = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])  # lengths 3 and 2
BETA = 0.1


def test_token_placement_discounted_by_hand():
    G = token_returns(ADV, KL, MASK, kl_coef=BETA, gamma=0.9)
    # G_t = -beta*kl_t + gamma^(T - t + 1) * A; row 0 has T = 3, row 1 has T = 2
    expected = [
        [-0.1 * 0.1 + 0.9**3 * 2, -0.1 * 0.2 + 0.9**2 * 2, -0.1 * 0.3 + 0.9**1 * 2],
        [-0.1 * 0.4 + 0.9**2 * -1, -0.1 * 0.5 + 0.9**1 * -1, 0.0],  # kl 0.6 is padding
    ]
    torch.testing.assert_close(G, torch.tensor(expected))


def test_token_placement_gamma_one_is_a_minus_beta_kl():
    G = token_returns(ADV, KL, MASK, kl_coef=BETA)
    expected = [[2 - 0.01, 2 - 0.02, 2 - 0.03], [-1 - 0.04, -1 - 0.05, 0.0]]
    torch.testing.assert_close(G, torch.tensor(expected))


def test_token_placement_clip():
    G = token_returns(ADV, KL, MASK, kl_coef=BETA, gamma=0.9, clip=1.5)
    # A = clip([2, -1], -1.5, 1.5) = [1.5, -1]
    expected = [
        [-0.01 + 0.9**3 * 1.5, -0.02 + 0.9**2 * 1.5, -0.03 + 0.9 * 1.5],
        [-0.04 + 0.9**2 * -1, -0.05 + 0.9 * -1, 0.0],
    ]
    torch.testing.assert_close(G, torch.tensor(expected))


def test_reward_to_go_by_hand():
    G = token_returns(ADV, KL, MASK, kl_coef=BETA, kl_placement="reward_to_go")
    # G_t = sum_{s >= t} -beta*kl_s + A
    expected = [
        [-(0.01 + 0.02 + 0.03) + 2, -(0.02 + 0.03) + 2, -0.03 + 2],
        [-(0.04 + 0.05) - 1, -0.05 - 1, 0.0],
    ]
    torch.testing.assert_close(G, torch.tensor(expected))
    G = token_returns(ADV, KL, MASK, kl_coef=BETA, kl_placement="reward_to_go", clip=1.5)
    torch.testing.assert_close(G[0], torch.tensor(expected[0]) - 0.5)  # A: 2 -> 1.5


def test_reward_to_go_rejects_discount():
    with pytest.raises(ValueError, match="gamma=1.0"):
        token_returns(ADV, KL, MASK, kl_coef=BETA, gamma=0.9, kl_placement="reward_to_go")


@pytest.mark.parametrize("placement", ["none", "loss"])
def test_none_and_loss_placements_ignore_kl(placement):
    G = token_returns(ADV, KL, MASK, kl_coef=BETA, gamma=0.9, kl_placement=placement)
    expected = [[0.9**3 * 2, 0.9**2 * 2, 0.9 * 2], [0.9**2 * -1, 0.9 * -1, 0.0]]
    torch.testing.assert_close(G, torch.tensor(expected))


def test_unknown_placement():
    with pytest.raises(ValueError, match="token, reward_to_go, loss, none"):
        token_returns(ADV, KL, MASK, kl_coef=BETA, kl_placement="sequence")


def test_remax_returns_by_hand_and_detached():
    ref = torch.tensor([[-1.0, -2.0, -0.5], [-0.3, -1.2, -2.2]])
    logp = (ref + KL).requires_grad_(True)  # so that k1 = KL above
    rewards, greedy = torch.tensor([3.0, 1.0]), torch.tensor([1.0, 2.0])  # A = [2, -1]
    G = remax_returns(rewards, greedy, logp, ref, MASK, kl_coef=BETA, gamma=0.9)
    torch.testing.assert_close(G, token_returns(ADV, KL, MASK, kl_coef=BETA, gamma=0.9))
    assert not G.requires_grad
    # k2 on one token: 0.5 * 0.1^2
    G2 = remax_returns(rewards, greedy, logp, ref, MASK, kl_coef=BETA, kl_estimator="k2")
    assert G2[0, 0].item() == pytest.approx(-0.1 * 0.5 * 0.1**2 + 2)


def test_remax_with_zero_baseline_is_reinforce():
    ref = torch.tensor([[-1.0, -2.0, -0.5], [-0.3, -1.2, -2.2]])
    logp = ref + KL
    rewards = torch.tensor([3.0, 1.0])
    G = remax_returns(rewards, torch.zeros(2), logp, ref, MASK, kl_coef=BETA, gamma=0.9)
    G_reinforce = token_returns(reinforce_advantages(rewards, 1), kl_penalty(logp, ref), MASK,
                                kl_coef=BETA, gamma=0.9)
    torch.testing.assert_close(G, G_reinforce)
    # Algorithm 1 with b = 0 and no KL: loss = -mean_i r_i * sum_t logp_it
    G0 = remax_returns(rewards, torch.zeros(2), logp, ref, MASK, kl_coef=0.0)
    loss = policy_gradient_loss(logp, G0, MASK, "seq_mean_token_sum")
    by_hand = -(3.0 * (-0.9 - 1.8 - 0.2) + 1.0 * (0.1 - 0.7)) / 2
    assert loss.item() == pytest.approx(by_hand)


def test_ppo_token_rewards_by_hand():
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
    kl = torch.cat([KL, torch.ones(1, 3)])
    out = ppo_token_rewards(torch.tensor([2.0, -1.0, 7.0]), kl, mask, kl_coef=BETA)
    expected = [
        [-0.01, -0.02, -0.03 + 2.0],
        [-0.04, -0.05 - 1.0, 0.0],  # reward on the last *masked* token
        [0.0, 0.0, 0.0],  # empty response: nothing to put the reward on
    ]
    torch.testing.assert_close(out, torch.tensor(expected))


def test_gae_by_hand():
    g, lam = 0.9, 0.8
    rewards = torch.tensor([[1.0, 0.0, 2.0, 5.0], [0.0, 0.0, 0.0, 1.0]])
    values = torch.tensor([[0.5, 1.0, 1.5, 9.0], [0.2, 0.4, 0.6, 0.8]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0], [1.0, 1.0, 1.0, 1.0]])
    adv, ret = gae(rewards, values, mask, g, lam)
    # row 0 (the 5.0 reward and 9.0 value are padding; V after the last token is 0)
    a2 = 2.0 + g * 0.0 - 1.5  # 0.5
    a1 = (0.0 + g * 1.5 - 1.0) + g * lam * a2  # 0.35 + 0.72*0.5 = 0.71
    a0 = (1.0 + g * 1.0 - 0.5) + g * lam * a1  # 1.4 + 0.72*0.71 = 1.9112
    # row 1
    b3 = 1.0 - 0.8  # 0.2
    b2 = (g * 0.8 - 0.6) + g * lam * b3  # 0.12 + 0.144 = 0.264
    b1 = (g * 0.6 - 0.4) + g * lam * b2  # 0.14 + 0.19008 = 0.33008
    b0 = (g * 0.4 - 0.2) + g * lam * b1  # 0.16 + 0.2376576 = 0.3976576
    torch.testing.assert_close(adv, torch.tensor([[a0, a1, a2, 0.0], [b0, b1, b2, b3]]))
    torch.testing.assert_close(
        ret, torch.tensor([[a0 + 0.5, a1 + 1.0, a2 + 1.5, 0.0], [b0 + 0.2, b1 + 0.4, b2 + 0.6, b3 + 0.8]])
    )


# ---- loops versus vectorised -------------------------------------------------------


def loop_token_returns(adv, kl, lengths, T, kl_coef, gamma, clip, placement):
    """Straight from the spec, one row and one token at a time."""
    out = [[0.0] * T for _ in adv]
    for i, (a, n) in enumerate(zip(adv, lengths)):
        if clip is not None:
            a = max(-clip, min(clip, a))
        if placement == "reward_to_go":
            running = 0.0
            for t in reversed(range(n)):
                running += -kl_coef * kl[i][t]
                out[i][t] = running + a
            continue
        running = a
        for t in reversed(range(n)):  # authors' loop: discount, then add
            running *= gamma
            out[i][t] = running + (-kl_coef * kl[i][t] if placement == "token" else 0.0)
    return out


def loop_gae(rewards, values, lengths, T, gamma, lam):
    adv = [[0.0] * T for _ in rewards]
    ret = [[0.0] * T for _ in rewards]
    for i, n in enumerate(lengths):
        last = 0.0
        for t in reversed(range(n)):
            next_v = values[i][t + 1] if t + 1 < n else 0.0
            last = rewards[i][t] + gamma * next_v - values[i][t] + gamma * lam * last
            adv[i][t] = last
            ret[i][t] = last + values[i][t]
    return adv, ret


def _random(seed, B=6, T=9):
    g = torch.Generator().manual_seed(seed)
    lengths = [0, T, 1, 4, 7, 2][:B]
    mask = (torch.arange(T)[None] < torch.tensor(lengths)[:, None]).double()
    x = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    return lengths, mask, x(B), x(B, T).abs(), x(B, T), x(B, T)


LOOP_CASES = [
    (placement, gamma, clip)
    for placement in ("token", "reward_to_go", "none", "loss")
    for gamma in (1.0, 0.9)
    for clip in (None, 0.5)
    if not (placement == "reward_to_go" and gamma != 1.0)  # it has no discount
]


@pytest.mark.parametrize("placement, gamma, clip", LOOP_CASES)
def test_token_returns_matches_loop(placement, gamma, clip):
    lengths, mask, adv, kl, _, _ = _random(seed=1)
    G = token_returns(adv, kl, mask, kl_coef=0.05, gamma=gamma, clip=clip, kl_placement=placement)
    ref = loop_token_returns(adv.tolist(), kl.tolist(), lengths, 9, 0.05, gamma, clip, placement)
    torch.testing.assert_close(G, torch.tensor(ref, dtype=torch.float64))


def test_gae_matches_loop():
    lengths, mask, _, _, rewards, values = _random(seed=2)
    adv, ret = gae(rewards, values, mask, 0.95, 0.7)
    ref_adv, ref_ret = loop_gae(rewards.tolist(), values.tolist(), lengths, 9, 0.95, 0.7)
    torch.testing.assert_close(adv, torch.tensor(ref_adv, dtype=torch.float64))
    torch.testing.assert_close(ret, torch.tensor(ref_ret, dtype=torch.float64))
