"""Cheap live diagnostics of a policy-gradient baseline: is it doing its job?

ReMax (Li et al., arXiv 2310.10505) subtracts the reward `b` of the policy's greedy
response from the reward `r` of each sampled one. The baseline helps exactly as much as
it tracks `r`: var(r - b) = var(r) + var(b) - 2 cov(r, b), so it cuts the variance of the
advantage only when cov(r, b) > var(b) / 2. These statistics are over one batch, from
tensors already at hand (no model, no config, no extra forward pass):

    baseline/win_frac    share of samples with r > b (strictly): how often a sample beats
                         its baseline. Near 0 means the greedy response is rarely beaten
                         (sampling mostly hurts), near 1 that the baseline is too low.
    baseline/tie_frac    share with r == b exactly (for ReMax: a sample that decodes to the
                         greedy response, or a saturated reward); such rows get no gradient
                         from the reward.
    baseline/corr        Pearson correlation of r and b over the batch.
    baseline/var_ratio   var(r - b) / var(r): the variance left after the baseline, as a
                         share of plain REINFORCE's (b = 0). < 1: the baseline helps.
    baseline/reward_var, baseline/adv_var   var(r) and var(r - b), so the ratio's parts can
                         be read when var(r) is zero.
    baseline/right_frac, baseline/right_tied_frac   for a 0/1 (verifiable) reward: the share
                         of samples that are right (r = 1), and of samples that are right
                         beside a right greedy answer (r = b = 1: advantage 0, no signal;
                         a wrong sample there gets -1, a right one beside a wrong greedy
                         answer +1). right_tied_frac / right_frac is the zero-advantage
                         share of the right samples. Both are shares of the batch, logged
                         whatever the reward (so every rank logs the same keys), and
                         meaningless for a reward that is not 0/1.

Variances are population variances (divide by N); the ratio and the correlation do not
depend on that choice.

Zero-variance cases (a batch whose rewards, or baselines, are all equal), chosen so that a
log never holds NaN:
- corr is 0.0 when r or b is constant (or N = 1): a constant has no linear relation to
  anything, and 0.0 reads as "the baseline tracks nothing", which is what it means here.
- var_ratio is 1.0 when both var(r) and var(r - b) are zero (the baseline neither adds nor
  removes variance) and +inf when only var(r) is zero (the baseline brought variance into
  a batch that had none). json.dumps writes inf as `Infinity`, which json.loads reads back.
"""

from __future__ import annotations

import torch


def baseline_diagnostics(rewards: torch.Tensor, baselines: torch.Tensor) -> dict[str, float]:
    """Statistics of rewards `r` (N,) against their baselines `b` (N,) in one batch.

    For ReMax with n samples per prompt, pass the greedy rewards repeated per sample
    (`greedy.repeat_interleave(n)`), so that row i of both tensors belongs to one prompt.
    Returns the `baseline/*` metrics described in the module docstring, as Python floats."""
    r = rewards.detach().double().flatten()  # (N,)
    b = baselines.detach().double().flatten()  # (N,)
    if r.shape != b.shape or r.numel() == 0:
        raise ValueError(f"rewards and baselines must have the same non-zero length, got {tuple(r.shape)} and {tuple(b.shape)}")
    adv = r - b  # (N,)
    var_r, var_b, var_adv = _var(r), _var(b), _var(adv)
    out = {
        "baseline/win_frac": float((r > b).double().mean()),
        "baseline/tie_frac": float((r == b).double().mean()),
        "baseline/corr": _corr(r, b, var_r, var_b),
        "baseline/var_ratio": _ratio(var_adv, var_r),
        "baseline/reward_var": var_r,
        "baseline/adv_var": var_adv,
    }
    right = r == 1.0
    out["baseline/right_frac"] = float(right.double().mean())
    out["baseline/right_tied_frac"] = float((right & (b == 1.0)).double().mean())
    return out


def _var(x: torch.Tensor) -> float:
    """Population variance; exactly 0.0 for a constant tensor (no rounding residue)."""
    if bool(x.max() == x.min()):
        return 0.0
    return float(((x - x.mean()) ** 2).mean())


def _corr(r: torch.Tensor, b: torch.Tensor, var_r: float, var_b: float) -> float:
    if var_r == 0.0 or var_b == 0.0:
        return 0.0  # see the module docstring
    cov = float(((r - r.mean()) * (b - b.mean())).mean())
    return max(-1.0, min(1.0, cov / (var_r * var_b) ** 0.5))  # clamp rounding past +-1


def _ratio(var_adv: float, var_r: float) -> float:
    if var_r == 0.0:
        return 1.0 if var_adv == 0.0 else float("inf")  # see the module docstring
    return var_adv / var_r


__all__ = ["baseline_diagnostics"]
