"""Rollout phase: a batch of prompt rows -> a `Rollout` with n sampled responses per
prompt and, when the algorithm asks (ReMax), a greedy one, from ONE backend call.

`generate` is the whole phase: it reads only the rows, the backend (which holds the
weights its last `sync` pushed) and the decoding settings, so a producer running it
ahead of the update (an asynchronous rollout) would call the same function.
`rollout_stream` is the context a rollout runs under: this rank's seeded RNG stream for
that step (reproducible, resumable) and the full parameters a sharded policy needs."""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

import torch

from remax.config import DataConfig
from remax.data import encode_prompts
from remax.rollout import Rollout


def generate(rows: list[dict[str, Any]], *, backend: Any, tokenizer: Any, data: DataConfig, n: int, greedy: bool,
             device: torch.device) -> Rollout:
    """The n samples per prompt and, if `greedy`, the greedy baseline: one generate call."""
    prompts = [r[data.prompt_column] for r in rows]
    ids, mask = encode_prompts(tokenizer, prompts, data.max_prompt_tokens, data.chat_template)
    return backend.generate(ids.to(device), mask.to(device), n=n, greedy=greedy)


@contextlib.contextmanager
def rollout_stream(dist: Any, seed: int, stream: int) -> Iterator[None]:
    """This rank's rollout RNG stream number `stream` (the step, or a refill's own) and
    the policy's full parameters (FSDP / ZeRO-3 gather them; a no-op in one process)."""
    with dist.rollout_rng(seed, stream), dist.generation("policy"):
        yield
