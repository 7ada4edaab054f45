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
from typing import Any, Callable, Optional

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
    step: int,
    timeout_s: Optional[float] = None,
) -> torch.Tensor:
    """Score (prompts, responses) with `fn`: a float32 (N,) tensor or a RewardFailure."""
    name = getattr(fn, "name", None) or getattr(fn, "__qualname__", None) or type(fn).__name__
    head = f"reward {name!r} at step {step}"

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
        raise RewardFailure(f"{head}: {err.detail}{where}") from None
    except Exception as err:
        message = (str(err).strip().splitlines() or [""])[0][:200]
        raise RewardFailure(
            f"{head} raised {type(err).__name__}{_where(err)}: {message} (batch of {len(prompts)}, {row(0)})"
        ) from None
