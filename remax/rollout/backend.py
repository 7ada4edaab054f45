"""Rollout backends: the one seam between the trainer and whatever generates responses.

The trainer builds one backend per run and, every step, calls

    backend.sync(policy, step)                       # the sampler now holds the policy's weights
    backend.generate(prompt_ids, prompt_mask, n=n, greedy=g)   -> Rollout

and `backend.close()` at the end. Every backend returns the same `Rollout` (row layout,
left-padded prompts, the response mask up to and including the first EOS, pad after it),
so nothing downstream knows which one ran.

- `hf` (the default and the reference): `generate_rollout`, sampled and greedy rows in one
  decode loop on the policy itself (`rollout.hf_decoder`: `fast`, each prompt prefilled
  once and finished rows out of the batch, or `generate`, one `model.generate` call;
  `rollout.hf_kernels onednn`: packed oneDNN matmuls on CPU, `remax.rollout.kernels`). It
  shares the policy's weights, so `sync` has nothing to push.
- `vllm` (`remax.rollout.vllm`, an optional extra): a colocated vLLM engine. `sync` pushes
  the weights into it and every `rollout.verify_every` steps checks them with a probe.
- `vllm_server` (`remax.rollout.client`): the same engine in its own process
  (`remax serve-rollout`), weights pushed over torch.distributed, the same probe; its
  `submit` starts a rollout without waiting, which `rollout.async_steps` builds on.

`sync` runs at the start of a step, before its rollout: the push carries the weights the
last optimizer step produced (or a resumed checkpoint's), and a failed check stops the
run at a step boundary, where the loop saves a consistent state. The engine's own
log-probs of its samples (`Rollout.engine_logprobs`) are compared with the update's
log-probs as they are computed (`add_logprob_mismatch`): the off-policy gap, logged,
never trusted in place of the trainer's log-probs.

The types every backend shares (`Sampling`, `RolloutBackend`, `EngineOutOfSync`, the
log-prob mismatch meter) live in `remax.rollout.types` and are re-exported here; this
module imports a backend's own module (vllm.py) only when building it.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Optional, Sequence

import torch

from remax.config import ConfigError
from remax.rollout.generate import Rollout, generate_rollout
from remax.rollout.kernels import rollout_kernels
from remax.rollout.types import (  # the shared types, re-exported: callers import them from here
    EngineOutOfSync,
    RolloutBackend,
    Sampling,
    add_logprob_mismatch,
    engine_support,
    logprob_mismatch_metrics,
)


class HFBackend:
    """`generate_rollout` on the policy itself: no copy of the weights, nothing to sync."""

    def __init__(self, policy: Any, sampling: Sampling,
                 forward_context: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
                 decoder: str = "fast", kernels: str = "torch") -> None:
        # forward_context: the run's precision (train.mixed_precision's autocast), as the trainer's forwards;
        # decoder: rollout.hf_decoder (`generate_rollout`'s decoder); kernels: rollout.hf_kernels
        self.policy, self.sampling, self.forward_context, self.decoder = policy, sampling, forward_context, decoder
        device = next(policy.parameters()).device
        if kernels != "torch" and device.type != "cpu":
            raise ConfigError(f"--rollout.hf_kernels {kernels} packs weights for CPU matmuls, and the policy is on "
                              f"{device}: remove --rollout.hf_kernels")
        self.kernels = kernels

    def generate(self, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, *, n: int, greedy: bool) -> Rollout:
        s = self.sampling
        rows = prompt_ids.shape[0] * (n + int(greedy))  # the first decode step's batch
        with self.forward_context(), rollout_kernels(self.kernels, self.policy, rows):
            return generate_rollout(
                self.policy, prompt_ids, prompt_mask, n=n, greedy=greedy, max_new_tokens=s.max_new_tokens,
                temperature=s.temperature, top_p=s.top_p, top_k=s.top_k,
                eos_token_id=s.eos_token_id, pad_token_id=s.pad_token_id, decoder=self.decoder,
            )

    def sync(self, policy: Any, step: int) -> dict[str, float]:
        self.policy = policy  # the same module the optimizer updates in place
        return {}

    def close(self) -> None:
        pass


def _build_hf(config: Any, policy: Any, tokenizer: Any, sampling: Sampling,
              forward_context: Callable[[], Any] = contextlib.nullcontext) -> RolloutBackend:
    return HFBackend(policy, sampling, forward_context, decoder=getattr(config.rollout, "hf_decoder", "fast"),
                     kernels=getattr(config.rollout, "hf_kernels", "torch"))


def _build_vllm(config: Any, policy: Any, tokenizer: Any, sampling: Sampling,
                forward_context: Callable[[], Any] = contextlib.nullcontext) -> RolloutBackend:
    # the engine computes in rollout.vllm_dtype (auto: the run's autocast dtype, else the weights'); pushes cast to it
    from remax.rollout.vllm import VLLMBackend  # an optional extra's backend: loaded only when a run asks for it

    return VLLMBackend.from_config(config, policy, tokenizer, sampling)


def _build_vllm_server(config: Any, policy: Any, tokenizer: Any, sampling: Sampling,
                       forward_context: Callable[[], Any] = contextlib.nullcontext) -> RolloutBackend:
    from remax.rollout.client import VLLMServerBackend  # a client only: vLLM runs in the server's process

    return VLLMServerBackend.from_config(config, policy, tokenizer, sampling)


BACKENDS: dict[str, Callable[..., RolloutBackend]] = {"hf": _build_hf, "vllm": _build_vllm,
                                                      "vllm_server": _build_vllm_server}


def build_backend(config: Any, policy: Any, tokenizer: Any, eos_token_id: Optional[int | Sequence[int]] = None,
                  forward_context: Callable[[], Any] = contextlib.nullcontext) -> RolloutBackend:
    """The backend `config.rollout.backend` names, set up with the run's decoding settings;
    stop ids: `eos_token_id`, or by default the tokenizer's and the policy's generation_config's;
    `forward_context` (the run's precision) wraps an in-process generate (hf)."""
    from remax.models.loading import eos_token_ids

    r = config.rollout
    eos = eos_token_ids(tokenizer, policy) if eos_token_id is None else eos_token_id
    sampling = Sampling(
        max_new_tokens=r.max_new_tokens, temperature=r.temperature, top_p=r.top_p, top_k=r.top_k,
        eos_token_id=eos if isinstance(eos, int) else tuple(eos),
        pad_token_id=tokenizer.pad_token_id,
    )
    if r.backend not in BACKENDS:
        raise ConfigError(f"--rollout.backend {r.backend!r} is not one of {', '.join(BACKENDS)}")
    return BACKENDS[r.backend](config, policy, tokenizer, sampling, forward_context=forward_context)


__all__ = [
    "BACKENDS", "EngineOutOfSync", "HFBackend", "RolloutBackend", "Sampling", "add_logprob_mismatch",
    "build_backend", "engine_support", "logprob_mismatch_metrics",
]
