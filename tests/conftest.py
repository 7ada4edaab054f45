"""Shared fixtures: a tokenizer trained here and a tiny random GPT-2, both offline."""

from __future__ import annotations

import os

import pytest
import torch

# No network here or in CI: never wait on the hub for a name that is not a local path.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

# REMAX_TEST_SEED_OFFSET=k shifts the seed of every seeded training test by k: the default
# seed of remax.Config's train.seed, every tiny model built by remax.models.tiny.tiny_causal_lm
# (fixtures and tests alike), and the seeds that tests pass explicitly (the `seed_offset`
# fixture). A test marked `learning` asserts the outcome of a training run; `make test` runs
# those a second time under another offset, so a margin that holds on one trajectory only
# fails here, not on a user's machine (tests/README.md, benchmarks/learning_margins.py).
SEED_OFFSET = int(os.environ.get("REMAX_TEST_SEED_OFFSET", "0"))
# OMP_NUM_THREADS picks the torch thread count of every test (default 1): a training run's
# floating-point path depends on it, so the learning margins are measured under 1 and 2.
TEST_THREADS = int(os.environ.get("OMP_NUM_THREADS") or 1)


def _shift_library_seeds(offset: int) -> None:
    """Shift train.seed's default and tiny_causal_lm's seed by `offset` (nothing at 0)."""
    if not offset:
        return
    import functools

    import remax.config
    import remax.models.tiny

    init = remax.config.TrainConfig.__init__

    @functools.wraps(init)
    def shifted_init(self, *args, **kwargs):
        init(self, *args, **kwargs)
        if "seed" not in kwargs:
            self.seed += offset

    remax.config.TrainConfig.__init__ = shifted_init
    build = remax.models.tiny.tiny_causal_lm

    @functools.wraps(build)
    def shifted_build(*args, seed: int = 0, **kwargs):
        return build(*args, seed=seed + offset, **kwargs)

    remax.models.tiny.tiny_causal_lm = shifted_build


_shift_library_seeds(SEED_OFFSET)


@pytest.fixture(scope="session")
def seed_offset() -> int:
    """REMAX_TEST_SEED_OFFSET: add it to a seed a test sets explicitly (cfg.train.seed = s + seed_offset)."""
    return SEED_OFFSET


@pytest.fixture()
def record_outcome(request):
    """record_outcome(name, value, bound): with REMAX_TEST_RECORD=path, append the value a
    learning test asserts on (and its bound) as one JSON line, so benchmarks/learning_margins.py
    can report its range over seeds and thread counts. A no-op otherwise."""
    import json

    def record(name: str, value: float, bound: float) -> None:
        path = os.environ.get("REMAX_TEST_RECORD")
        if path:
            row = {"test": request.node.nodeid, "name": name, "value": float(value), "bound": float(bound),
                   "offset": SEED_OFFSET, "threads": TEST_THREADS}
            with open(path, "a") as f:
                f.write(json.dumps(row) + "\n")

    return record


@pytest.fixture(autouse=True)
def one_torch_thread():
    """One intra-op thread (or OMP_NUM_THREADS): these models are tiny, and on a 2-core machine
    torch's default pool oversubscribes and makes the tests several times slower. Restored after each test."""
    before = torch.get_num_threads()
    torch.set_num_threads(TEST_THREADS)
    yield
    torch.set_num_threads(before)

CORPUS = [
    "In the beginning God created the heaven and the earth.",
    "And the earth was without form, and void; and darkness was upon the face of the deep.",
    "And God said, Let there be light: and there was light.",
    "And God saw the light, that it was good: and God divided the light from the darkness.",
    "The Lord is my shepherd; I shall not want.",
    "He maketh me to lie down in green pastures: he leadeth me beside the still waters.",
    "Blessed are the meek: for they shall inherit the earth.",
    "Love is patient, love is kind, and joy is good and happy.",
    "The wicked are sad and angry; they hate and fear the terrible night.",
    "O give thanks unto the Lord; for he is good: for his mercy endureth for ever.",
] * 20


@pytest.fixture(scope="session")
def corpus():
    return CORPUS


@pytest.fixture(scope="session")
def tokenizer():
    from remax.models.tiny import train_tokenizer

    return train_tokenizer(CORPUS, vocab_size=300)


@pytest.fixture()
def tiny_model(tokenizer):
    from remax.models.tiny import tiny_causal_lm

    model = tiny_causal_lm(tokenizer, seed=0)
    model.eval()
    return model
