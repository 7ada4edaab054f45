"""Held-out prompts: a seeded share of the training file or a file of its own, never
trained on (the trainer reads `load_splits(...).train`)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from remax.config import Config, DataConfig
from remax.data import DataError, PromptRows, load_splits, split_rows


def rows(n):
    return PromptRows([{"prompt": f"p{i}"} for i in range(n)], [f"f.jsonl:{i + 1}" for i in range(n)])


def test_split_sizes_order_and_locations():
    train, held = split_rows(rows(10), 0.3, seed=0)
    assert (len(train), len(held)) == (7, 3)  # round(0.3 * 10) = 3 held out
    names = [r["prompt"] for r in train] + [r["prompt"] for r in held]
    assert sorted(names) == sorted(f"p{i}" for i in range(10))  # disjoint, and nothing lost
    for part in (train, held):  # the file's order and each row's file:line are kept
        idx = [int(r["prompt"][1:]) for r in part]
        assert idx == sorted(idx)
        assert part.locations == [f"f.jsonl:{i + 1}" for i in idx]


def test_split_is_seeded():
    assert split_rows(rows(20), 0.25, seed=3) == split_rows(rows(20), 0.25, seed=3)
    held = {tuple(r["prompt"] for r in split_rows(rows(20), 0.25, seed=s)[1]) for s in range(5)}
    assert len(held) > 1  # another seed, another draw


def test_split_edges():
    assert len(split_rows(rows(10), 0.01, seed=0)[1]) == 1  # round(0.1) = 0, but at least one is held out
    with pytest.raises(DataError, match=r"eval_fraction 0.96 of 10 prompts leaves none to train on"):
        split_rows(rows(10), 0.96, seed=0)  # round(9.6) = 10
    with pytest.raises(DataError, match=r"eval_fraction must be in \(0, 1\)"):
        split_rows(rows(10), 1.0, seed=0)


def test_load_splits_from_config(tmp_path):
    train = tmp_path / "train.jsonl"
    train.write_text("".join(json.dumps({"prompt": f"p{i}"}) + "\n" for i in range(8)))
    (tmp_path / "eval.csv").write_text("prompt\nheld one\nheld two\n")
    assert load_splits(DataConfig(train_file=str(train))).eval is None
    own = load_splits(DataConfig(train_file=str(train), eval_file=str(tmp_path / "eval.csv")))
    assert len(own.train) == 8 and own.eval == [{"prompt": "held one"}, {"prompt": "held two"}]
    share = load_splits(DataConfig(train_file=str(train), eval_fraction=0.25), seed=1)
    assert (len(share.train), len(share.eval)) == (6, 2)
    assert share.eval == split_rows(own.train, 0.25, seed=1)[1]
    with pytest.raises(DataError, match="pass only one"):
        load_splits(SimpleNamespace(**{**vars(DataConfig(train_file=str(train))), "eval_file": "x", "eval_fraction": 0.1}))


def test_trainer_never_trains_on_held_out_prompts(tokenizer, tiny_model, tmp_path):
    from remax.trainer import Trainer

    data = tmp_path / "p.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"Love is {i}"}) + "\n" for i in range(10)))
    cfg = Config(output_dir=str(tmp_path / "run"))
    cfg.data = DataConfig(train_file=str(data), eval_fraction=0.3)
    cfg.train.batch_size, cfg.rollout.max_new_tokens = 2, 4
    trainer = Trainer(cfg, policy=tiny_model, tokenizer=tokenizer, reward_fn=lambda p, r: [0.0] * len(p))
    held = load_splits(cfg.data, cfg.train.seed).eval
    assert len(trainer.sampler.rows) == 7 and not [r for r in held if r in trainer.sampler.rows]
