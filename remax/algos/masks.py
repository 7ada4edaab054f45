"""Response masks (ALGORITHM.md, pitfalls): a response token counts up to and including
the first EOS; everything after it, padding included, does not. A response that never
ends counts all of its tokens."""

from __future__ import annotations

from typing import Sequence

import torch


def is_eos(token_ids: torch.Tensor, eos_token_id: int | Sequence[int]) -> torch.Tensor:
    """(B, T) ids -> (B, T) bool, True where the id is ANY of the EOS ids (a chat model
    ends on several: `remax.models.loading.eos_token_ids`)."""
    eos_ids = [eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id)
    return torch.isin(token_ids, torch.tensor(eos_ids, dtype=token_ids.dtype, device=token_ids.device))


def ended(response_ids: torch.Tensor, response_mask: torch.Tensor, eos_token_id: int | Sequence[int]) -> torch.Tensor:
    """(B, T) responses and their mask -> (B,) bool: the response reached an EOS (any id)."""
    return (is_eos(response_ids, eos_token_id) & response_mask.bool()).any(-1)


def response_mask(response_ids: torch.Tensor, eos_token_id: int | Sequence[int]) -> torch.Tensor:
    """(B, T) token ids of generated responses -> (B, T) float32 mask.

    1.0 on every token up to and including the first EOS (any id in `eos_token_id`),
    0.0 after it. Rows without an EOS are all ones."""
    is_eos_ = is_eos(response_ids, eos_token_id)
    # number of EOS tokens strictly before position t; 0 means t is at or before the first EOS
    eos_before = torch.cumsum(is_eos_.long(), dim=-1) - is_eos_.long()  # (B, T)
    return (eos_before == 0).float()
