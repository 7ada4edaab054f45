"""Checkpoints: everything a run needs to continue, written atomically.

A checkpoint directory holds `policy/` (model + tokenizer, loadable with
from_pretrained), `critic/` for PPO, and `trainer_state.pt` with the optimizers,
schedulers and the RunState (step, prompt-sampler position, RNG states). It is first
written to a temporary sibling and then renamed, so a kill mid-write never leaves a
half checkpoint under the final name and never touches earlier ones."""

from __future__ import annotations

import os
import random
import shutil
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch

from remax.models.loading import progress_bars


@dataclass
class RunState:
    """All mutable run state that is not a model or optimizer tensor."""

    step: int = 0
    sampler: dict[str, int] = field(default_factory=dict)
    torch_rng: Any = None
    python_rng: Any = None

    def capture_rng(self) -> None:
        self.torch_rng = torch.get_rng_state()
        self.python_rng = random.getstate()

    def restore_rng(self) -> None:
        if self.torch_rng is not None:
            torch.set_rng_state(self.torch_rng)
        if self.python_rng is not None:
            random.setstate(self.python_rng)


def save_pretrained_dir(model: Any, tokenizer: Any, path: Path) -> None:
    """Model and tokenizer side by side, as AutoModel*/AutoTokenizer.from_pretrained expect."""
    with progress_bars(False):  # no "Writing model shards" bar in the middle of the training bar
        model.save_pretrained(path)
    if tokenizer is not None:
        tokenizer.save_pretrained(path)


@contextmanager
def atomic_dir(final: Path) -> Iterator[Path]:
    """`with atomic_dir(final) as tmp:` write into `tmp`; on success it is renamed to
    `final` (replacing what was there), on an exception it is removed and `final` is
    left exactly as it was."""
    final = Path(final)
    tmp = final.parent / f".{final.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if final.exists():
        old = final.parent / f".{final.name}.old-{os.getpid()}"
        os.replace(final, old)  # a directory cannot be replaced in one step
        os.replace(tmp, final)
        shutil.rmtree(old)
    else:
        os.replace(tmp, final)


def save_checkpoint(
    path: Path,
    *,
    policy: Any,
    tokenizer: Any,
    state: RunState,
    optimizers: dict[str, torch.optim.Optimizer],
    schedulers: dict[str, Any],
    critic: Any = None,
) -> None:
    state.capture_rng()
    with atomic_dir(path) as tmp:
        save_pretrained_dir(policy, tokenizer, tmp / "policy")
        if critic is not None:
            critic.save_pretrained(tmp / "critic")
        torch.save(
            {
                "run_state": asdict(state),
                "optimizers": {k: o.state_dict() for k, o in optimizers.items()},
                "schedulers": {k: s.state_dict() for k, s in schedulers.items()},
            },
            tmp / "trainer_state.pt",
        )
