"""Shared fixtures: a tokenizer trained here and a tiny random GPT-2, both offline."""

from __future__ import annotations

import os

import pytest
import torch

# No network here or in CI: never wait on the hub for a name that is not a local path.
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(autouse=True)
def one_torch_thread():
    """One intra-op thread: these models are tiny, and on a 2-core machine torch's default
    pool oversubscribes and makes the tests several times slower. Restored after each test."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
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
