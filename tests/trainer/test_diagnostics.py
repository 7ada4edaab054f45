"""baseline_diagnostics: hand-computed numbers, the zero-variance cases, and no NaN ever."""

from __future__ import annotations

import json
import math

import pytest
import torch

from remax.trainer.diagnostics import baseline_diagnostics


def _d(r, b):
    return baseline_diagnostics(torch.tensor(r), torch.tensor(b))


def test_hand_computed_batch():
    # r = [1, 2, 3, 4], b = [0, 2, 2, 5]: r > b at rows 0 and 2, r == b at row 1.
    # mean r = 2.5, var r = (2.25 + 0.25 + 0.25 + 2.25) / 4 = 1.25
    # mean b = 2.25, var b = (5.0625 + 0.0625 + 0.0625 + 7.5625) / 4 = 3.1875
    # cov = (3.375 + 0.125 - 0.125 + 4.125) / 4 = 1.875, corr = 1.875 / sqrt(255 / 64) = 15 / sqrt(255)
    # r - b = [1, 0, 1, -1]: mean 0.25, var (0.5625 + 0.0625 + 0.5625 + 1.5625) / 4 = 0.6875
    d = _d([1.0, 2.0, 3.0, 4.0], [0.0, 2.0, 2.0, 5.0])
    assert d["baseline/win_frac"] == 0.5
    assert d["baseline/tie_frac"] == 0.25
    assert d["baseline/corr"] == pytest.approx(15 / math.sqrt(255))
    assert d["baseline/reward_var"] == pytest.approx(1.25)
    assert d["baseline/adv_var"] == pytest.approx(0.6875)
    assert d["baseline/var_ratio"] == pytest.approx(0.55)


def test_perfect_shifted_and_opposite_baselines():
    r = [0.1, -0.4, 0.9, 0.3]
    same = _d(r, r)
    assert same["baseline/var_ratio"] == 0.0 and same["baseline/tie_frac"] == 1.0 and same["baseline/win_frac"] == 0.0
    assert same["baseline/corr"] == pytest.approx(1.0)
    shifted = _d([1.0, 2.0, 4.0], [0.0, 1.0, 3.0])  # b = r - 1: every sample wins, no variance left
    assert shifted["baseline/win_frac"] == 1.0 and shifted["baseline/var_ratio"] == pytest.approx(0.0, abs=1e-12)
    assert shifted["baseline/corr"] == pytest.approx(1.0)
    opposite = _d([1.0, 2.0, 4.0], [-1.0, -2.0, -4.0])  # r - b = 2r: four times the variance
    assert opposite["baseline/corr"] == pytest.approx(-1.0)
    assert opposite["baseline/var_ratio"] == pytest.approx(4.0)


def test_constant_baseline_leaves_the_variance_and_has_zero_correlation():
    d = _d([1.0, 2.0, 6.0], [0.7, 0.7, 0.7])  # REINFORCE with a constant baseline
    assert d["baseline/corr"] == 0.0
    assert d["baseline/var_ratio"] == pytest.approx(1.0)
    assert d["baseline/win_frac"] == 1.0


def test_constant_rewards():
    d = _d([0.5, 0.5, 0.5], [0.0, 1.0, 0.5])  # the baseline brings variance where there was none
    assert d["baseline/corr"] == 0.0 and d["baseline/reward_var"] == 0.0
    assert d["baseline/var_ratio"] == math.inf
    assert d["baseline/win_frac"] == pytest.approx(1 / 3) and d["baseline/tie_frac"] == pytest.approx(1 / 3)
    both = _d([0.1, 0.1], [0.3, 0.3])  # neither varies: the baseline neither helps nor hurts
    assert both == {**both, "baseline/corr": 0.0, "baseline/var_ratio": 1.0, "baseline/win_frac": 0.0}
    assert json.loads(json.dumps(d))["baseline/var_ratio"] == math.inf  # survives metrics.jsonl


def test_single_row_and_no_nan():
    d = _d([2.0], [1.0])
    assert d == {**d, "baseline/win_frac": 1.0, "baseline/corr": 0.0, "baseline/var_ratio": 1.0}
    gen = torch.Generator().manual_seed(0)
    for _ in range(20):
        n = int(torch.randint(1, 6, (1,), generator=gen))
        r = torch.randint(0, 3, (n,), generator=gen).float()  # many ties and constant batches
        b = torch.randint(0, 3, (n,), generator=gen).float()
        values = baseline_diagnostics(r, b).values()
        assert not any(math.isnan(v) for v in values)
        assert -1.0 <= baseline_diagnostics(r, b)["baseline/corr"] <= 1.0


def test_greedy_reward_repeated_per_sample():
    # ReMax with n = 2: 2 prompts, greedy rewards [0.5, -1], samples [1, 0 | -1, -2].
    greedy = torch.tensor([0.5, -1.0])
    d = baseline_diagnostics(torch.tensor([1.0, 0.0, -1.0, -2.0]), greedy.repeat_interleave(2))
    # r - b = [0.5, -0.5, 0, -1]; wins at row 0, tie at row 2
    assert d["baseline/win_frac"] == 0.25 and d["baseline/tie_frac"] == 0.25
    # var r = (2.25 + 0.25 + 0.25 + 2.25) / 4 = 1.25; var(r - b): mean -0.25, (0.5625 + 0.0625 + 0.0625 + 0.5625) / 4
    assert d["baseline/var_ratio"] == pytest.approx(0.3125 / 1.25)


def test_inputs_are_checked_and_grads_ignored():
    with pytest.raises(ValueError, match="same non-zero length"):
        baseline_diagnostics(torch.zeros(3), torch.zeros(2))
    with pytest.raises(ValueError, match="same non-zero length"):
        baseline_diagnostics(torch.zeros(0), torch.zeros(0))
    r = torch.tensor([1.0, 2.0], requires_grad=True)
    out = baseline_diagnostics(r, torch.zeros(2))
    assert all(isinstance(v, float) for v in out.values())
