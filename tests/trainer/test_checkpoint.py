"""Atomic directories: a failed write never touches what was there."""

from __future__ import annotations

import pytest

from remax.trainer.checkpoint import atomic_dir


def test_commit_replaces_and_failure_keeps_the_old(tmp_path):
    final = tmp_path / "step-1"
    with atomic_dir(final) as tmp:
        (tmp / "a.txt").write_text("one")
        assert not final.exists()  # nothing under the final name until the block ends
    assert (final / "a.txt").read_text() == "one"

    with atomic_dir(final) as tmp:
        (tmp / "a.txt").write_text("two")
    assert (final / "a.txt").read_text() == "two"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-1"]  # no temporary left behind

    with pytest.raises(RuntimeError):
        with atomic_dir(final) as tmp:
            (tmp / "a.txt").write_text("half")
            raise RuntimeError("killed mid-write")
    assert (final / "a.txt").read_text() == "two"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-1"]  # the half write is gone
