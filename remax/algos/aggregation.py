"""Reducing per-token values (losses) to a scalar, and masked statistics.

ReMax's Algorithm 1 (Li et al., arXiv 2310.10505) sums log-probs over a response and
averages over responses: that is `seq_mean_token_sum`. The authors' code divides by
the number of response tokens in the batch instead: `token_mean`. `seq_mean_token_mean`
(mean over tokens, then over responses) is the third mode in common use (OpenRLHF, verl).

Micro-batches and ranks. Each mode is a sum over tokens divided by a normaliser:
`token_mean` by the number of masked tokens, the `seq_*` modes by the number of
sequences. Computed on a micro-batch, the default normaliser is the micro-batch's own
count, and the micro-batch losses no longer add up to the full-batch loss (a short
micro-batch's tokens weigh more). Pass the full batch's `num_tokens` / `num_seqs`
instead: the numerator is a plain sum over tokens or sequences, so

    sum over micro-batches of aggregate(v_k, m_k, agg, num_tokens=N, num_seqs=S)
        == aggregate(v, m, agg)   (exactly, and so are the gradients)

for any split of the rows. Gradient accumulation then just calls `backward()` on each
micro-batch loss. Across ranks, use the global counts (summed over ranks); since DDP
*averages* gradients over the world, scale each rank's loss by the world size (or pass
counts divided by it) to recover the same gradient.

An all-zero mask gives 0, not NaN: the default token count is clamped to 1 (a given
count of 0 to 1e-8).
"""

from __future__ import annotations

from typing import Callable, Optional, Union

import torch

from ._registry import Registry

Count = Union[int, float, torch.Tensor]
# (values (B, T), mask (B, T), num_tokens, num_seqs, max_len) -> scalar
AggFn = Callable[[torch.Tensor, torch.Tensor, Optional[Count], Optional[Count], Optional[int]], torch.Tensor]

AGGREGATIONS: Registry[AggFn] = Registry("aggregation mode")


def _token_mean(values, mask, num_tokens, num_seqs, max_len):
    total = (values * mask).sum()
    if num_tokens is None:
        return total / mask.sum().clamp(min=1.0)
    # a batch with no response tokens (all masked) gives 0, not 0/0; a global count over
    # ranks may be a fraction (count / world), so the floor is far below any real one
    return total / (num_tokens.clamp(min=1e-8) if torch.is_tensor(num_tokens) else max(num_tokens, 1e-8))


def _seq_mean_token_sum(values, mask, num_tokens, num_seqs, max_len):
    total = (values * mask).sum()
    return total / (values.shape[0] if num_seqs is None else num_seqs)


def _seq_mean_token_mean(values, mask, num_tokens, num_seqs, max_len):
    # max(len, 1): an empty response contributes 0 instead of NaN
    per_seq = (values * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)  # (B,)
    return per_seq.sum() / (values.shape[0] if num_seqs is None else num_seqs)


def _seq_mean_token_sum_norm(values, mask, num_tokens, num_seqs, max_len):
    # Dr. GRPO: a constant normaliser, so a response's weight does not depend on its length
    total = (values * mask).sum()
    return total / ((values.shape[0] if num_seqs is None else num_seqs) * (max_len or values.shape[1]))


AGGREGATIONS.register("token_mean", _token_mean)
AGGREGATIONS.register("seq_mean_token_sum", _seq_mean_token_sum)
AGGREGATIONS.register("seq_mean_token_mean", _seq_mean_token_mean)
AGGREGATIONS.register("seq_mean_token_sum_norm", _seq_mean_token_sum_norm)


def aggregate(
    values: torch.Tensor,
    mask: torch.Tensor,
    agg: str,
    *,
    num_tokens: Optional[Count] = None,
    num_seqs: Optional[Count] = None,
    max_len: Optional[int] = None,
) -> torch.Tensor:
    """(B, T) values and mask -> scalar, by `agg`:

    - token_mean:          sum(v*m) / (num_tokens or sum(m))
    - seq_mean_token_sum:  sum(v*m) / (num_seqs or B)
    - seq_mean_token_mean: sum_i[sum_t (v*m)_i / max(sum_t m_i, 1)] / (num_seqs or B)
    - seq_mean_token_sum_norm: sum(v*m) / ((num_seqs or B) * (max_len or T))  (Dr. GRPO)

    `num_tokens` / `num_seqs` are the global normalisers that make micro-batch losses
    add up to the full-batch loss (see the module docstring). Each mode reads only the
    one that concerns it."""
    fn = AGGREGATIONS.get(agg)
    return fn(values, mask.to(values.dtype), num_tokens, num_seqs, max_len)


def masked_mean(
    values: torch.Tensor, mask: torch.Tensor, dim: Optional[int] = None
) -> torch.Tensor:
    """Mean of `values` where `mask` is 1, over `dim` (all elements if None).
    An empty mask gives 0."""
    mask = mask.to(values.dtype)
    if dim is None:
        return (values * mask).sum() / mask.sum().clamp(min=1e-8)
    return (values * mask).sum(dim) / mask.sum(dim).clamp(min=1e-8)


def masked_whiten(
    values: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8
) -> torch.Tensor:
    """Normalise the masked entries to mean 0 and variance 1 (PPO's advantage
    whitening); with `shift_mean=False` the mean is added back (only the scale changes).

    The variance is the unbiased one (Bessel's n/(n-1)), as TRL and verl compute it,
    so at least 2 masked entries are needed. Entries outside the mask are set to 0, as
    everywhere in this package."""
    mask = mask.to(values.dtype)
    count = mask.sum()
    if count.item() < 2:
        raise ValueError(f"masked_whiten needs at least 2 masked entries, got {count.item():g}")
    mean = masked_mean(values, mask)
    var = masked_mean((values - mean).square(), mask) * count / (count - 1)  # unbiased
    whitened = (values - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        whitened = whitened + mean
    return whitened * mask
