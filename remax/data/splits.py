"""Training and held-out prompts from the `data.*` options: the one function that
`remax train` (which trains on `train` only) and `remax eval` (which scores `eval`) share,
so a held-out prompt is never trained on.

The held-out split is either a file of its own (`data.eval_file`, any format that
`load_prompts` reads) or a seeded share of the training file (`data.eval_fraction`):
the same seed gives the same split on every machine, and a resumed run sees the same
training rows.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Optional

from remax.data.prompts import DataError, PromptRows
from remax.data.sources import load_prompts


@dataclass
class PromptSplits:
    train: PromptRows
    eval: Optional[PromptRows]  # None when nothing is held out


def split_rows(rows: PromptRows, fraction: float, seed: int) -> tuple[PromptRows, PromptRows]:
    """(train, held-out): round(fraction * n) rows (at least 1) drawn with `seed`; both
    keep the file's order and each row's location. At least one row stays for training."""
    if not 0 < fraction < 1:
        raise DataError(f"--data.eval_fraction must be in (0, 1) to hold prompts out, got {fraction}")
    n = len(rows)
    n_eval = max(1, round(fraction * n))
    if n_eval >= n:
        raise DataError(
            f"--data.eval_fraction {fraction} of {n} prompts leaves none to train on; lower it or add prompts"
        )
    held = set(random.Random(seed).sample(range(n), n_eval))
    locations = getattr(rows, "locations", None) or [f"row {i}" for i in range(n)]

    def take(keep: bool) -> PromptRows:
        idx = [i for i in range(n) if (i in held) == keep]
        return PromptRows([rows[i] for i in idx], [locations[i] for i in idx])

    return take(False), take(True)


def load_splits(data: Any, seed: int = 0) -> PromptSplits:
    """Read `data.train_file` (and `data.eval_file`) and split off the held-out prompts.
    `data` is a `remax.config.DataConfig` (or anything with its fields)."""
    if data.eval_file and data.eval_fraction:
        raise DataError("--data.eval_file and --data.eval_fraction both hold prompts out; pass only one")
    if data.eval_fraction < 0:
        raise DataError(f"--data.eval_fraction must be >= 0 (0 holds out nothing), got {data.eval_fraction}")
    rows = load_prompts(data.train_file, data.prompt_column, split=data.split, subset=data.subset)
    if data.eval_file:
        held = load_prompts(data.eval_file, data.prompt_column, split=data.eval_split, subset=data.subset,
                            flag="--data.eval_file")
        return PromptSplits(rows, held)
    if data.eval_fraction:
        train, held = split_rows(rows, data.eval_fraction, seed)
        return PromptSplits(train, held)
    return PromptSplits(rows, None)
