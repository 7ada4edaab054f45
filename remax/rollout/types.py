"""What every rollout backend shares: the decoding settings (`Sampling`), the backend
protocol (`RolloutBackend`), the out-of-sync error, and the meter of engine vs trainer
log-probs on the sampled tokens.

Its own module so that `remax.rollout.backend` (the registry that builds a backend) and
the backends themselves (`remax.rollout.vllm`) both import it and neither imports the
other at module level: backend.py loads vllm.py only when a run asks for that backend.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Protocol

import torch

from remax.algos.variants import sampler_logprobs
from remax.errors import RemaxError
from remax.rollout.generate import Rollout


class EngineOutOfSync(RemaxError):
    """The generation engine's log-probs of the probe disagree with the trainer's: its
    weights are not the policy's, so its samples would be off-policy without notice."""


class RolloutServerError(EngineOutOfSync):
    """The rollout server (`remax serve-rollout`) is gone, did not answer in time, or failed:
    like an engine out of sync, the run stops at a step boundary with a checkpoint."""


@dataclass(frozen=True)
class Sampling:
    """The decoding settings every backend honours (rollout.* of the config)."""

    max_new_tokens: int
    temperature: float
    top_p: float
    top_k: int  # 0: off
    eos_token_id: int | tuple[int, ...]  # every stop id (`remax.models.loading.eos_token_ids`)
    pad_token_id: int


class RolloutBackend(Protocol):
    def generate(self, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, *, n: int, greedy: bool) -> Rollout:
        """(B, P) left-padded prompts -> Rollout with B*n sampled rows (+ B greedy rows)."""

    def sync(self, policy: Any, step: int) -> dict[str, float]:
        """Make the generator hold `policy`'s current weights (those after `step` updates);
        returns metrics (e.g. rollout/engine_probe_diff); raises EngineOutOfSync."""

    def close(self) -> None:
        """Free the engine."""


# ------------------------------------------------- engine vs trainer log-probs
def engine_support(rollout: Any, engine_logprobs: Optional[torch.Tensor]) -> Optional[tuple[int, float]]:
    """(top_k, top_p) of the run's sampler when a backend reported engine log-probs, else
    None: what `response_logprobs(support=...)` needs to put the trainer's log-probs in the
    engine's convention (the sampler's, remax/models/logprobs.py) for TIS and the mismatch."""
    return None if engine_logprobs is None else (rollout.top_k, rollout.top_p)


def add_logprob_mismatch(acc: dict[str, float], engine: Optional[torch.Tensor], logprobs: torch.Tensor,
                         mask: torch.Tensor, log_mass: Optional[torch.Tensor] = None) -> None:
    """Accumulate |engine - trainer| log-prob on the sampled tokens into `acc` (keys start
    with '_', the loop's private accumulators). engine, logprobs, mask: (n, R). No-op when
    the backend reports no engine log-probs (HF). Both in the sampler's convention: the
    trainer's full-vocabulary log-probs less `log_mass` (see `sampler_logprobs`)."""
    if engine is None:
        return
    trainer = sampler_logprobs(logprobs.detach(), log_mass)
    diff = (engine.to(logprobs.device) - trainer).abs() * mask  # (n, R)
    acc["_lp_mismatch_sum"] = acc.get("_lp_mismatch_sum", 0.0) + float(diff.sum())
    acc["_lp_mismatch_tokens"] = acc.get("_lp_mismatch_tokens", 0.0) + float(mask.sum())
    acc["_lp_mismatch_max"] = max(acc.get("_lp_mismatch_max", 0.0), float(diff.max()) if diff.numel() else 0.0)


def logprob_mismatch_metrics(acc: dict[str, float]) -> dict[str, float]:
    """rollout/logprob_mismatch_max and _mean from `add_logprob_mismatch`'s sums; {} if none."""
    if "_lp_mismatch_sum" not in acc:
        return {}
    return {
        "rollout/logprob_mismatch_max": acc["_lp_mismatch_max"],
        "rollout/logprob_mismatch_mean": acc["_lp_mismatch_sum"] / max(acc["_lp_mismatch_tokens"], 1.0),
    }


__all__ = [
    "EngineOutOfSync", "RolloutBackend", "RolloutServerError", "Sampling", "add_logprob_mismatch", "engine_support",
    "logprob_mismatch_metrics",
]
