"""as_reward_tensor and check_batch: every scorer's output goes through them."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from remax.rewards import as_reward_tensor, check_batch


def _check(t: torch.Tensor, expected: list[float]) -> None:
    assert t.dtype == torch.float32 and t.device.type == "cpu" and t.shape == (len(expected),)
    assert t.tolist() == pytest.approx(expected)


@pytest.mark.parametrize(
    "values",
    [
        [1, 0.5, -2.0],
        (1, 0.5, -2.0),
        [True, 0.5, -2],
        np.array([1.0, 0.5, -2.0]),
        np.array([[1.0], [0.5], [-2.0]]),  # (B, 1) from a reward head
        torch.tensor([1.0, 0.5, -2.0], dtype=torch.float64),
        torch.tensor([[1.0], [0.5], [-2.0]]),
        [torch.tensor(1.0), torch.tensor(0.5), np.float64(-2.0)],
    ],
    ids=["list", "tuple", "bool", "numpy", "numpy_b1", "tensor64", "tensor_b1", "scalars"],
)
def test_converts_supported_outputs(values):
    _check(as_reward_tensor(values, 3, "r"), [1.0, 0.5, -2.0])


def test_single_number_is_a_batch_of_one():
    _check(as_reward_tensor(0.25, 1, "r"), [0.25])
    _check(as_reward_tensor(np.float32(0.25), 1, "r"), [0.25])


def test_detaches_grad():
    x = torch.tensor([1.0, 2.0], requires_grad=True)
    out = as_reward_tensor(x * 2, 2, "r")
    assert not out.requires_grad
    _check(out, [2.0, 4.0])


@pytest.mark.parametrize(
    "values, expected_len, match",
    [
        ([1.0, 2.0], 3, r"reward 'myrew' returned 2 values; expected 3"),
        (0.5, 2, r"reward 'myrew' returned 1 values; expected 2"),  # never broadcast
        (torch.ones(3, 2), 3, r"reward 'myrew' returned shape \(3, 2\)"),
        ([1.0, float("nan"), 2.0], 3, r"reward 'myrew' returned 1 non-finite value\(s\) out of 3: \[1\]=nan"),
        (np.array([1.0, np.inf]), 2, r"non-finite.*\[1\]=inf"),
        ([1e300], 1, r"non-finite"),  # overflows float32
        ([1.0, "good"], 2, r"non-numeric value 'good' \(str\) at index 1"),
        ([None], 1, r"non-numeric value None"),
        ({"a": 1.0}, 1, r"returned dict; expected a list"),
        ("1.0", 1, r"returned str"),
    ],
)
def test_bad_outputs_raise_one_line_errors(values, expected_len, match):
    with pytest.raises(ValueError, match=match) as info:
        as_reward_tensor(values, expected_len, "myrew")
    assert "\n" not in str(info.value)


def test_check_batch_lengths():
    check_batch(["a", "b"], ["x", "y"], {"answer": [1, 2]}, "r")
    with pytest.raises(ValueError, match="got 2 prompts but 1 responses"):
        check_batch(["a", "b"], ["x"], {}, "r")
    with pytest.raises(ValueError, match="column 'answer' with 1 values for 2 prompts"):
        check_batch(["a", "b"], ["x", "y"], {"answer": [1]}, "r")
