"""Rollout phase: a batch of prompt rows -> a `Rollout` with n sampled responses per
prompt and, when the algorithm asks (ReMax), a greedy one, from ONE backend call.

`generate` is the whole phase: it reads only the rows, the backend (which holds the
weights its last `sync` pushed) and the decoding settings; `submit` is the same without
waiting, for a backend that generates in another process (vllm_server).
`rollout_stream` is the context a rollout runs under: this rank's seeded RNG stream for
that step (reproducible, resumable) and the full parameters a sharded policy needs.

Where a step's batch comes from is a *source*, chosen once at start (`make_source`,
`rollout.async_steps`), so that the loop asks `source.next(rows, step, policy)` and never
branches on the mode:

- `OnPolicy` (async_steps 0): sync the weights, then generate this step's batch.
- `Prefetching` (async_steps 1, one step off-policy): while step t trains, the server
  generates step t+1's batch from the weights before step t's update (W_t): at step
  t+1 the source waits for it, pushes W_t+1 (off the trainer's path where the backend can:
  `sync_later` copies the weights and computes the trainer's probe side now, the server's
  side of the push and probe runs while the trainer trains, and its result is checked
  before the batch it fed is trained on), submits step t+2's batch and returns the waiting one. Each batch's staleness (the step - the server's reported weights version)
  is logged as rollout/staleness: 1 in steady state, 0 for a batch generated on the spot.
  The off-policy gap is corrected by TIS (loss.tis) on the engine's log-probs, which are
  the log-probs of the weights that sampled.

Resume stays exact: no batch is prefetched across a checkpoint (`drain`: a step
whose state a checkpoint holds, or the last), so the step a resumed run starts with
generates its batch on the spot from the checkpoint's weights and RNG, exactly as the
uninterrupted run did. A run stopped between checkpoints (a signal, a failure) drops its
pending batch; its resumed run regenerates that batch from the checkpointed weights (on
policy for that one step): deterministic, but not the trajectory the run would have had.
A prefetched batch whose rows are not the step's (a refill or a skipped batch drew prompts
in between) is dropped and the step's batch generated on the spot."""

from __future__ import annotations

import contextlib
from concurrent.futures import Future
from typing import Any, Callable, Iterator, Optional

import torch

from remax.config import ConfigError, DataConfig
from remax.data import encode_prompts
from remax.rollout import Rollout


def generate(rows: list[dict[str, Any]], *, backend: Any, tokenizer: Any, data: DataConfig, n: int, greedy: bool,
             device: torch.device) -> Rollout:
    """The n samples per prompt and, if `greedy`, the greedy baseline: one generate call."""
    prompts = [r[data.prompt_column] for r in rows]
    ids, mask = encode_prompts(tokenizer, prompts, data.max_prompt_tokens, data.chat_template)
    return backend.generate(ids.to(device), mask.to(device), n=n, greedy=greedy)


def submit(rows: list[dict[str, Any]], *, backend: Any, tokenizer: Any, data: DataConfig, n: int, greedy: bool,
           device: torch.device) -> Any:
    """`generate` without waiting: a pending rollout (`.result()`, `.version`), from a
    backend with `submit` (remax.rollout.client)."""
    prompts = [r[data.prompt_column] for r in rows]
    ids, mask = encode_prompts(tokenizer, prompts, data.max_prompt_tokens, data.chat_template)
    return backend.submit(ids.to(device), mask.to(device), n=n, greedy=greedy)


@contextlib.contextmanager
def rollout_stream(dist: Any, seed: int, stream: int) -> Iterator[None]:
    """This rank's rollout RNG stream number `stream` (the step, or a refill's own) and
    the policy's full parameters (FSDP / ZeRO-3 gather them; a no-op in one process)."""
    with dist.rollout_rng(seed, stream), dist.generation("policy"):
        yield


# ------------------------------------------------------------------- sources
Stopwatch = Callable[[str], contextlib.AbstractContextManager]  # remax.trainer.metrics.Stopwatch


class OnPolicy:
    """async_steps 0: each step syncs the generator, then generates its own batch."""

    def __init__(self, backend: Any, generate: Callable[[list[dict[str, Any]]], Any],
                 stream: Callable[[int], contextlib.AbstractContextManager]) -> None:
        # generate(rows) -> Rollout (the Trainer's rollout phase); stream(step) -> rollout_stream
        self.backend, self.generate, self.stream = backend, generate, stream

    def next(self, rows: list[dict[str, Any]], step: int, policy: Any, sw: Stopwatch) -> tuple[Any, dict[str, float]]:
        """This step's Rollout and the metrics of getting it (the sync's probe, staleness)."""
        with sw("sync"):  # the generator takes the last update's weights (a no-op for hf)
            metrics = dict(self.backend.sync(policy, step))
        with sw("rollout"), self.stream(step):
            rollout = self.generate(rows)
        version = getattr(self.backend, "version", None)  # a server reports the weights it sampled with
        if version is not None:
            metrics["rollout/staleness"] = float(step - version)
        return rollout, metrics

    def close(self) -> None:
        pass


class Prefetching(OnPolicy):
    """async_steps 1: see the module docstring."""

    def __init__(self, backend: Any, generate: Callable[[list[dict[str, Any]]], Any],
                 stream: Callable[[int], contextlib.AbstractContextManager], *,
                 start: Callable[[list[dict[str, Any]]], Any], peek: Callable[[], list[dict[str, Any]]],
                 drain: Callable[[int], bool]) -> None:
        # start(rows) -> a pending rollout; peek() -> the next step's rows, not drawn; drain(step): never prefetch it
        super().__init__(backend, generate, stream)
        self.start, self.peek, self.drain = start, peek, drain
        # (step, rows, pending rollout, the future of the push its weights came with, or None)
        self.pending: Optional[tuple[int, list[dict[str, Any]], Any, Optional[Future]]] = None

    def next(self, rows: list[dict[str, Any]], step: int, policy: Any, sw: Stopwatch) -> tuple[Any, dict[str, float]]:
        pending, self.pending = self.pending, None
        synced: Any = None  # this step's push, when still to come: a future of its metrics, or its metrics
        if pending is not None and pending[0] == step and pending[1] == rows:
            with sw("rollout"):  # only the part of generation that training did not hide
                metrics = dict(pending[3].result()) if pending[3] is not None else {}  # the push + probe of its weights
                rollout = pending[2].result()
            metrics["rollout/staleness"] = float(step - pending[2].version)
            if not self.drain(step + 1):  # the server takes this step's weights, for the next step's batch
                with sw("sync"):
                    synced = self._sync_later(policy, step)
                if not isinstance(synced, Future):
                    metrics.update(synced)
        else:  # the first step, a step after a checkpoint, or a prefetch of other rows: on the spot
            if pending is not None:
                self._forget(pending)  # let the server finish it (its weights follow in order), then drop it
            rollout, metrics = super().next(rows, step, policy, sw)  # the engine holds this step's weights now
        if not self.drain(step + 1):
            with self.stream(step + 1):  # the next step's seeds, drawn now from its own stream
                rows_next = self.peek()
                later = synced if isinstance(synced, Future) else None
                self.pending = (step + 1, rows_next, self.start(rows_next), later)
        return rollout, metrics

    def _sync_later(self, policy: Any, step: int) -> Any:
        """The push of this step's weights: off the trainer's path where the backend can
        (`sync_later`: a future of its metrics, resolved before the batch it feeds is
        trained on), else now (its metrics)."""
        later = getattr(self.backend, "sync_later", None)
        return later(policy, step) if callable(later) else dict(self.backend.sync(policy, step))

    @staticmethod
    def _forget(pending: tuple) -> None:
        for future in (pending[3], pending[2]):
            if future is not None:
                future.result()

    def close(self) -> None:
        if self.pending is not None:  # a batch nobody will train on: wait for the server, then forget it
            try:
                self._forget(self.pending)
            except Exception:  # noqa: BLE001 - the run is ending; its own error (if any) was reported
                pass
            self.pending = None


def make_source(async_steps: int, backend: Any, generate: Callable, stream: Callable, *, start: Callable,
                peek: Callable, drain: Callable[[int], bool]) -> OnPolicy:
    """The run's rollout source: OnPolicy for async_steps 0, Prefetching for 1."""
    if async_steps == 0:
        return OnPolicy(backend, generate, stream)
    if not callable(getattr(backend, "submit", None)):
        raise ConfigError(f"--rollout.async_steps {async_steps} needs a backend that generates without waiting "
                          f"(`submit`, as --rollout.backend vllm_server's); {type(backend).__name__} has none")
    return Prefetching(backend, generate, stream, start=start, peek=peek, drain=drain)


def peek_batch(sampler: Any) -> list[dict[str, Any]]:
    """The batch `sampler.next_batch()` will return next, without drawing it."""
    state = sampler.state_dict()
    rows = sampler.next_batch()
    sampler.load_state_dict(state)
    return rows
