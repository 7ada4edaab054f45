"""advantages: ReMax's greedy baseline, REINFORCE, RLOO and GRPO by hand."""

import math

import pytest
import torch

from remax.algos import (
    greedy_baseline_advantages,
    grpo_advantages,
    reinforce_advantages,
    rloo_advantages,
)

# two prompts, n = 3 samples each: groups [1, 2, 4] and [0, 0, 3]
R = torch.tensor([1.0, 2.0, 4.0, 0.0, 0.0, 3.0])


def test_greedy_baseline_shared_by_the_n_samples():
    out = greedy_baseline_advantages(R, torch.tensor([2.0, 1.0]), n=3)
    torch.testing.assert_close(out, torch.tensor([1 - 2, 2 - 2, 4 - 2, 0 - 1, 0 - 1, 3 - 1.0]))


def test_greedy_baseline_shape_mismatch():
    # one greedy reward per sample instead of per prompt: the n > 1 pitfall
    with pytest.raises(ValueError, match=r"shape \(2,\)"):
        greedy_baseline_advantages(R, torch.zeros(6), n=3)


def test_reinforce_is_the_reward():
    out = reinforce_advantages(R, n=3)
    torch.testing.assert_close(out, R)
    out[0] = 100.0  # a copy: the caller's rewards are untouched
    assert R[0] == 1.0


def test_rloo_by_hand():
    expected = [
        1 - (2 + 4) / 2, 2 - (1 + 4) / 2, 4 - (1 + 2) / 2,  # [-2, -0.5, 2.5]
        0 - (0 + 3) / 2, 0 - (0 + 3) / 2, 3 - (0 + 0) / 2,  # [-1.5, -1.5, 3]
    ]
    torch.testing.assert_close(rloo_advantages(R, n=3), torch.tensor(expected))


def test_grpo_by_hand_unbiased_std():
    eps = 1e-6
    # group 1: mean 7/3, deviations [-4/3, -1/3, 5/3], unbiased var (16+1+25)/9/2 = 7/3
    s1 = math.sqrt(7 / 3)
    # group 2: mean 1, deviations [-1, -1, 2], unbiased var (1+1+4)/2 = 3
    s2 = math.sqrt(3)
    expected = [-4 / 3 / (s1 + eps), -1 / 3 / (s1 + eps), 5 / 3 / (s1 + eps),
                -1 / (s2 + eps), -1 / (s2 + eps), 2 / (s2 + eps)]
    torch.testing.assert_close(grpo_advantages(R, n=3), torch.tensor(expected))


def test_grpo_constant_group_is_zero():
    torch.testing.assert_close(grpo_advantages(torch.tensor([5.0, 5.0, 1.0, 3.0]), n=2),
                               torch.tensor([0.0, 0.0, -1 / (math.sqrt(2) + 1e-6), 1 / (math.sqrt(2) + 1e-6)]))


@pytest.mark.parametrize("fn", [reinforce_advantages, rloo_advantages, grpo_advantages])
def test_not_divisible_by_n(fn):
    with pytest.raises(ValueError, match="not divisible by n=3"):
        fn(R[:5], 3)
    with pytest.raises(ValueError, match="not divisible by n=4"):
        greedy_baseline_advantages(R, torch.zeros(2), 4)


@pytest.mark.parametrize("fn", [rloo_advantages, grpo_advantages])
def test_group_estimators_need_two_samples(fn):
    with pytest.raises(ValueError, match="n >= 2"):
        fn(R, 1)
