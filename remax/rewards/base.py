"""The reward protocol every scorer in `remax.rewards` follows, and the one check that
turns whatever a scorer returns into the tensor the trainer expects.

A reward is any callable `(prompts, responses, **row) -> Tensor (B,) float32`, where
`row` holds extra dataset columns as lists aligned with `prompts` (e.g. `answer=[...]`).
ReMax (Li et al., arXiv 2310.10505) scores the sampled and the greedy (baseline)
responses in the same call, so both go through exactly one reward path.
"""

from __future__ import annotations

import numbers
from typing import Any, Protocol, Sequence, runtime_checkable

import torch


class ResponseText(str):
    """A response as the trainer hands it to a reward: its text, special tokens dropped
    (so a Python reward compares plain strings), and `ended`: whether it stopped on an EOS
    id (True) or was cut at max_new_tokens (False). It is a `str` in every other way.

    A scorer that models the end of a text reads `ended` (None on a plain string: not
    known): the reward model appends its own end as its tokenizer and template produce it
    for a finished response, and leaves a cut one open (`remax.rewards.model`)."""

    ended: bool | None

    def __new__(cls, text: str, ended: bool | None = None) -> "ResponseText":
        obj = super().__new__(cls, text)
        obj.ended = ended
        return obj


def response_ended(response: Any) -> bool | None:
    """`ended` of a ResponseText; None for any other string (not known)."""
    return getattr(response, "ended", None)


@runtime_checkable
class RewardFunction(Protocol):
    """Scores a batch: one float per (prompt, response) pair, higher is better."""

    def __call__(self, prompts: list[str], responses: list[str], **row: list[Any]) -> torch.Tensor:
        ...


class RewardValueError(ValueError):
    """A scorer's output is unusable; `detail` is the message without the reward's name
    and `index` the first offending row, where there is one."""

    def __init__(self, source_name: str, detail: str, index: int | None = None) -> None:
        super().__init__(f"reward '{source_name}' {detail}")
        self.detail, self.index = detail, index


def check_batch(prompts: Sequence[str], responses: Sequence[str], row: dict, source_name: str) -> None:
    """Raise a one-line ValueError when prompts, responses and row columns disagree in length."""
    if len(prompts) != len(responses):
        raise ValueError(
            f"reward '{source_name}' got {len(prompts)} prompts but {len(responses)} responses"
        )
    for column, values in row.items():
        if len(values) != len(prompts):
            raise ValueError(
                f"reward '{source_name}' got column '{column}' with {len(values)} values "
                f"for {len(prompts)} prompts"
            )


def as_reward_tensor(values: Any, expected_len: int, source_name: str) -> torch.Tensor:
    """Convert a scorer's output (list, tuple, numpy array, tensor or a single number)
    to a float32 1-D CPU tensor of length `expected_len`, or raise a one-line ValueError.

    A (B, 1) array is accepted as (B,), since reward heads often return that shape; a
    single number is a batch of one and is never broadcast, which would hide bugs."""
    scores = _to_float_tensor(values, source_name)
    if scores.dim() == 2 and scores.shape[1] == 1:
        scores = scores[:, 0]
    if scores.dim() == 0:
        scores = scores.reshape(1)
    if scores.dim() != 1:
        raise RewardValueError(
            source_name, f"returned shape {tuple(scores.shape)}; expected {expected_len} values in a 1-D sequence"
        )
    if scores.numel() != expected_len:
        raise RewardValueError(
            source_name, f"returned {scores.numel()} values; expected {expected_len} (one per response)"
        )
    bad = (~torch.isfinite(scores)).nonzero().flatten().tolist()
    if bad:
        shown = ", ".join(f"[{i}]={scores[i].item()}" for i in bad[:5])
        raise RewardValueError(
            source_name, f"returned {len(bad)} non-finite value(s) out of {expected_len}: {shown}", bad[0]
        )
    return scores


def _to_float_tensor(values: Any, source_name: str) -> torch.Tensor:
    """Any supported container -> float32 CPU tensor (shape unchecked)."""
    if isinstance(values, torch.Tensor):
        if values.is_complex():
            raise RewardValueError(source_name, "returned a complex tensor; expected real numbers")
        # float32 after the cast: a value too large for float32 becomes inf and is caught.
        return values.detach().to(device="cpu", dtype=torch.float32)
    if hasattr(values, "tolist") and not isinstance(values, (list, tuple)):
        # numpy arrays and scalars, without importing numpy; (B, 1) -> (B,) first
        if getattr(values, "ndim", None) == 2 and values.shape[1] == 1:
            values = values[:, 0]
        values = values.tolist()
    if _is_real(values):
        values = [values]
    if not isinstance(values, (list, tuple)):
        raise RewardValueError(
            source_name, f"returned {type(values).__name__}; expected a list, tuple, numpy array, tensor or number"
        )
    return torch.tensor([_as_float(v, i, source_name) for i, v in enumerate(values)], dtype=torch.float32)


def _as_float(value: Any, index: int, source_name: str) -> float:
    if isinstance(value, torch.Tensor) and value.numel() == 1 and not value.is_complex():
        return value.item()  # lists of per-example 0-d tensors are common
    if not _is_real(value):
        raise RewardValueError(
            source_name, f"returned a non-numeric value {value!r} ({type(value).__name__}) at index {index}", index
        )
    return float(value)


def _is_real(value: Any) -> bool:
    # bool counts: exact-match rewards naturally return True/False.
    return isinstance(value, numbers.Real)
