"""What stands between a long run and a lost one: signals, failing rewards, NaN steps.

- `SignalGuard`: the first SIGINT / SIGTERM asks the loop to stop after the current
  step (it then writes a checkpoint and exits with one line); a second SIGINT aborts
  at once with KeyboardInterrupt.
- `call_reward`: calls the reward with an optional time limit and turns every way it
  can fail (raises, hangs, NaN / inf, a wrong count, non-numbers) into one
  `RewardFailure` that names the reward, the step and one offending row.
"""

from __future__ import annotations

import os
import signal
import threading
import traceback
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Optional

import torch

from remax.errors import RemaxError
from remax.rewards.base import RewardValueError, as_reward_tensor


class SignalGuard:
    """`with SignalGuard() as g:` ... `g.requested` is the first signal received (or 0).

    Only the main thread can install handlers; elsewhere (a library user's worker
    thread) the guard does nothing and signals keep their default behaviour."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.requested = 0
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> "SignalGuard":
        if threading.current_thread() is threading.main_thread():
            for s in self.SIGNALS:
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:
            if signum == signal.SIGINT:
                raise KeyboardInterrupt  # the second Ctrl-C: abort now
            return
        self.requested = signum
        # os.write, not print: the handler may interrupt a write to stderr (tqdm's bar)
        os.write(2, f"\nremax: {signal.Signals(signum).name} received; stopping after this step "
                    "and saving a checkpoint (Ctrl-C again to abort at once)\n".encode())


class RewardFailure(RemaxError):
    """The reward failed for one batch; `str()` is the one line to show."""


def _call_with_timeout(fn: Callable[[], Any], timeout_s: Optional[float]) -> Any:
    """fn() in a daemon thread, waiting at most timeout_s; a hung call is left behind
    (a thread cannot be killed) and does not keep the process alive at exit."""
    if timeout_s is None:
        return fn()
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["value"] = fn()
        except BaseException as err:  # handed to the caller's thread
            box["error"] = err

    worker = threading.Thread(target=run, name="remax-reward", daemon=True)
    worker.start()
    worker.join(timeout_s)
    if worker.is_alive():
        raise TimeoutError
    if "error" in box:
        raise box["error"]
    return box["value"]


def _short(text: str, limit: int = 60) -> str:
    text = " ".join(str(text).split())
    return repr(text if len(text) <= limit else text[: limit - 3] + "...")


def _where(err: BaseException) -> str:
    """The innermost frame of the traceback outside remax: usually the user's reward file."""
    frames = [f for f in traceback.extract_tb(err.__traceback__) if f"{os.sep}remax{os.sep}" not in f.filename]
    return f" at {os.path.basename(frames[-1].filename)}:{frames[-1].lineno}" if frames else ""


def call_reward(
    fn: Callable[..., Any],
    prompts: list[str],
    responses: list[str],
    extra: dict[str, list[Any]],
    *,
    step: int | str,
    timeout_s: Optional[float] = None,
    greedy: int = 0,
) -> torch.Tensor:
    """Score (prompts, responses) with `fn`: a float32 (N,) tensor or a RewardFailure.
    `greedy`: how many of the rows are greedy baseline responses (the last ones), so a
    wrong count is explained as 'B sampled + G greedy'. `step`: a step number, or where
    else the call happens ('eval')."""
    name = getattr(fn, "name", None) or getattr(fn, "__qualname__", None) or type(fn).__name__
    head = f"reward {name!r} at step {step}" if isinstance(step, int) else f"reward {name!r} in {step}"
    at_step = getattr(fn, "at_step", None)
    if callable(at_step) and isinstance(step, int):
        at_step(step)  # TRL-style rewards read trainer_state.global_step

    def row(i: int) -> str:
        return f"row {i}: prompt {_short(prompts[i], 40)}, response {_short(responses[i])}"

    try:
        out = _call_with_timeout(lambda: fn(prompts, responses, **extra), timeout_s)
        return as_reward_tensor(out, len(prompts), name)
    except TimeoutError:
        raise RewardFailure(
            f"{head} gave no answer within reward.timeout_s={timeout_s:g} s ({len(prompts)} responses, {row(0)})"
        ) from None
    except RewardValueError as err:
        where = f"; {row(err.index)}" if err.index is not None and err.index < len(prompts) else ""
        detail = err.detail
        if greedy:  # the count includes the greedy baseline's rows: say so
            detail = detail.replace("(one per response)", f"(one per response: {len(prompts) - greedy} sampled "
                                    f"+ {greedy} greedy baseline, scored in one call)")
        raise RewardFailure(f"{head}: {detail}{where}") from None
    except Exception as err:
        message = (str(err).strip().splitlines() or [""])[0][:200]
        raise RewardFailure(
            f"{head} raised {type(err).__name__}{_where(err)}: {message} (batch of {len(prompts)}, {row(0)})"
        ) from None


# ------------------------------------------------------------------ non-finite weights and logits
class NonFiniteModel(RemaxError):
    """The policy's weights or logits became NaN / inf: the run cannot go on from here."""


def _finite(params: list[torch.Tensor]) -> bool:
    """All of `params` finite, in one device sync: the max |p| of each, stacked. FSDP shards
    (DTensors): each rank checks its own shard and the verdict is all-reduced (the minimum),
    so every rank takes the same decision."""
    from torch.distributed.tensor import DTensor

    sharded = next((p for p in params if isinstance(p, DTensor)), None)
    local = [(p.to_local() if isinstance(p, DTensor) else p).detach() for p in params]
    finite = _local_finite([p for p in local if p.numel()])
    if sharded is None:
        return finite
    verdict = torch.tensor([float(finite)], device=sharded.to_local().device)
    torch.distributed.all_reduce(verdict, op=torch.distributed.ReduceOp.MIN, group=sharded.device_mesh.get_group())
    return bool(verdict.item())


def _local_finite(params: list[torch.Tensor]) -> bool:
    if not params:
        return True
    try:
        peaks = torch._foreach_norm(params, float("inf"))
    except (AttributeError, RuntimeError, TypeError):
        peaks = [p.abs().amax() for p in params]
    return bool(torch.isfinite(torch.stack([x.float().to(params[0].device) for x in peaks])).all())


def check_finite_weights(optimizers: dict[str, Any], step: int) -> None:
    """After an optimizer step: NonFiniteModel if a weight it updated is NaN / inf (the loss
    and gradients were finite, so the step itself overflowed: the learning rate)."""
    for name, opt in optimizers.items():
        params = [p for g in opt.param_groups for p in g["params"]]
        if not _finite(params):
            raise NonFiniteModel(f"the {name}'s weights became NaN/inf in the update of step {step}")


def nonfinite_stop(err: BaseException, step: int, out: Any, lr: float) -> "RunStopped":
    """The one line for a run whose weights or logits are no longer finite (`step`: the
    steps finished). Nothing is saved (the weights are broken); the newest checkpoint
    written before is named. Logits that fail in a rollout come from step `step`'s
    weights, so its checkpoint, if any, is not a good one: the one before it is named."""
    from pathlib import Path

    from remax.errors import RunStopped
    from remax.trainer.checkpoint import checkpoint_steps

    logits = not isinstance(err, NonFiniteModel)
    what = f"the policy's logits were NaN/inf in the rollout of step {step + 1}" if logits else str(err)
    steps = checkpoint_steps(Path(out) / "checkpoints")
    good = [s for s in steps if s < step or (s == step and not logits)]
    kept = (f"the last good checkpoint, {steps[max(good)]}, is intact and nothing newer was saved" if good
            else "no good checkpoint had been written (--log.save_every N keeps some), so nothing was saved")
    if logits and step in steps:
        kept += f" ({steps[step]} holds the weights that gave those logits)"
    return RunStopped(f"{what}: the run diverged; lower --train.lr (now {lr:g}) and start again (--overwrite True); {kept}")


@contextmanager
def nonfinite_guard(step: int, out: Any, lr: float) -> Iterator[None]:
    """Around a training step: diverged weights (check_finite_weights) or logits the sampler
    cannot draw from (NonFiniteLogits) become one RunStopped line (`nonfinite_stop`)."""
    from remax.rollout.logits import NonFiniteLogits

    try:
        yield
    except (NonFiniteModel, NonFiniteLogits) as err:
        raise nonfinite_stop(err, step, out, lr) from None


def prepare_reward(fn: Callable[..., Any], rows: list[dict[str, Any]], prompt_column: str, tokenizer: Any = None):
    """The reward the loop calls: a plain function wrapped as a PythonReward (so TRL / verl /
    remax signatures are mapped by parameter name), its needed columns checked against the
    data now, at load (a ConfigError line), not after the first generation."""
    from remax.config import ConfigError
    from remax.rewards.python import PythonReward, wrap_function

    try:
        fn = wrap_function(fn)
        if isinstance(fn, PythonReward):
            if tokenizer is not None:
                fn.tokenizer = tokenizer  # for completion_ids
            if rows:
                fn.check_columns([k for k in rows[0] if k != prompt_column])
    except ValueError as err:
        raise ConfigError(str(err)) from None
    return fn
