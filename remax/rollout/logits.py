"""The NaN / inf guard on the policy's logits, shared by both HF decoders (`generate.py`'s
`model.generate` call and `decode.py`'s shared-prefix loop) without either importing the other."""

from __future__ import annotations

import torch
from transformers import LogitsProcessor


class NonFiniteLogits(RuntimeError):
    """The policy's logits hold NaN / +inf (diverged weights): sampling from them is
    meaningless, and torch.multinomial would fail with a traceback."""


class FiniteLogitsCheck(LogitsProcessor):
    """Raises NonFiniteLogits when a row's logits hold NaN or +inf, or are all -inf, before
    any other processor or the sampler reads them."""

    def __call__(self, input_ids: torch.LongTensor, scores: torch.Tensor) -> torch.Tensor:
        # one pass: a row's max is NaN if it holds a NaN, +inf if it holds +inf, -inf if all are -inf
        if not bool(torch.isfinite(scores.max(-1).values).all()):
            raise NonFiniteLogits("the policy's logits are NaN/inf")
        return scores
