"""A tiny bench model directory, built once per session (tokenizer trained on the KJV
Bible, random GPT-2 weights, save_pretrained), as `remax bench` builds its sizes."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def bench_root(tmp_path_factory):
    from remax.bench.common import prepare_model_dir

    root = tmp_path_factory.mktemp("bench-models")
    prepare_model_dir("tiny", root)
    return root


@pytest.fixture(scope="session")
def tiny_dir(bench_root):
    return bench_root / "tiny-seed0"
