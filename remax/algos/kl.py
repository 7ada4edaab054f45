"""Per-token KL estimators between the policy and the frozen reference.

ReMax (Li et al., arXiv 2310.10505, and the authors' code) penalises each response
token with the k1 estimate; GRPO (Shao et al., arXiv 2402.03300) adds a k3 term to the
loss instead. The names follow Schulman, "Approximating KL Divergence" (2020). All
three are single-sample estimates of KL(pi || pi_ref) from the log-probs of the tokens
that were *sampled from pi*, with `d = logp - ref`:

- k1 = d                        unbiased, can be negative, high variance
- k2 = d^2 / 2                  biased, >= 0, low variance
- k3 = exp(-d) - (-d) - 1       unbiased, >= 0, low variance

Departure from verl: no clamp of k3 to [-10, 10]; the estimate is returned as is.
"""

from __future__ import annotations

from typing import Callable

import torch

from ._registry import Registry

KL_ESTIMATORS: Registry[Callable[[torch.Tensor], torch.Tensor]] = Registry("kl estimator")
# each estimator maps d = logp - ref_logp (B, T) -> (B, T)
KL_ESTIMATORS.register("k1", lambda d: d)
KL_ESTIMATORS.register("k2", lambda d: 0.5 * d.square())
# written with log_ratio = ref - logp = -d, as in the formula above
KL_ESTIMATORS.register("k3", lambda d: torch.exp(-d) - (-d) - 1.0)


def kl_penalty(
    logprobs: torch.Tensor, ref_logprobs: torch.Tensor, estimator: str = "k1"
) -> torch.Tensor:
    """(B, T) log-probs of the sampled tokens under the policy and the reference ->
    (B, T) elementwise KL estimate. Not masked: callers mask or aggregate. Gradients
    flow through `logprobs` (detach it for a reward penalty, keep it for a KL loss)."""
    fn = KL_ESTIMATORS.get(estimator)
    return fn(logprobs - ref_logprobs)  # (B, T)
