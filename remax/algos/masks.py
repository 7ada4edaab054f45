"""Response masks (ALGORITHM.md, pitfalls): a response token counts up to and including
the first EOS; everything after it, padding included, does not. A response that never
ends counts all of its tokens."""

from __future__ import annotations

from typing import Sequence

import torch


def response_mask(response_ids: torch.Tensor, eos_token_id: int | Sequence[int]) -> torch.Tensor:
    """(B, T) token ids of generated responses -> (B, T) float32 mask.

    1.0 on every token up to and including the first EOS (any id in `eos_token_id`),
    0.0 after it. Rows without an EOS are all ones."""
    eos_ids = [eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id)
    is_eos = torch.zeros_like(response_ids, dtype=torch.bool)
    for e in eos_ids:
        is_eos |= response_ids == e
    # number of EOS tokens strictly before position t; 0 means t is at or before the first EOS
    eos_before = torch.cumsum(is_eos.long(), dim=-1) - is_eos.long()  # (B, T)
    return (eos_before == 0).float()
