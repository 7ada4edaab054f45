"""The two supervised losses of the pipeline, as pure tensor functions (torch only).

- `completion_nll`: supervised fine-tuning's next-token cross-entropy, summed over the
  completion tokens only: a label of `IGNORE` (-100, the value transformers and TRL use)
  marks a prompt or padding position, which contributes nothing. Returned as a sum and a
  count, so the caller divides by the count of the whole (global) batch: the loss is the
  mean over completion tokens however the batch is split into micro-batches or ranks.
- `bradley_terry`: the reward model's pairwise loss (Bradley and Terry 1952; Ouyang et
  al. 2022, arXiv 2203.02155, eq. 1), -log sigmoid(r_chosen - r_rejected - margin), per
  pair. The margin (Touvron et al. 2023, arXiv 2307.09288, Llama 2, section 3.2.2; TRL's
  `margin` column) asks the chosen reward to lead by at least that much.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

IGNORE = -100


def completion_nll(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, T, V) logits and (B, T) labels -> (sum of -log p(label) over the positions whose
    label is not IGNORE, their count). Position t predicts label t + 1 (the usual shift),
    so labels[:, 0] is never a target."""
    pred = logits[:, :-1].float()  # (B, T-1, V): position t predicts token t + 1
    target = labels[:, 1:]  # (B, T-1)
    nll = F.cross_entropy(pred.reshape(-1, pred.shape[-1]), target.reshape(-1), ignore_index=IGNORE, reduction="sum")
    return nll, (target != IGNORE).sum()


def bradley_terry(chosen: torch.Tensor, rejected: torch.Tensor, margin: Optional[torch.Tensor] = None) -> torch.Tensor:
    """(P,) rewards of the chosen and the rejected response of each pair -> (P,) losses
    -log sigmoid(chosen - rejected - margin); `margin` (P,) or None (0)."""
    diff = chosen - rejected  # (P,)
    if margin is not None:
        diff = diff - margin
    return -F.logsigmoid(diff)


def pair_accuracy(chosen: torch.Tensor, rejected: torch.Tensor) -> torch.Tensor:
    """(P,) 1.0 where the chosen response scores strictly higher, 0.5 for a tie, else 0."""
    return (chosen > rejected).float() + 0.5 * (chosen == rejected).float()


__all__ = ["IGNORE", "bradley_terry", "completion_nll", "pair_accuracy"]
