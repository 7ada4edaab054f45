"""Fixtures of the pipeline tests: the data tests' chat tokenizer (the session tokenizer
plus a small chat template) and a tiny random GPT-2 saved with its tokenizer."""

from __future__ import annotations

import pytest

from data.conftest import CHAT_TEMPLATE, chat_tokenizer  # noqa: F401  (tests/data/conftest.py)


@pytest.fixture()
def base_dir(tmp_path, tokenizer):
    """A tiny causal LM and its tokenizer in a directory, as `--model` takes them."""
    from remax.models.tiny import tiny_causal_lm

    path = tmp_path / "base"
    tiny_causal_lm(tokenizer, seed=0).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
