"""Demo pretraining: schedule, data windows, the on-disk cache, and that it learns."""

from __future__ import annotations

import json

import pytest
import torch

from remax.demo.corpus import kjv_verses
from remax.demo.pretrain import (
    encode_corpus,
    lr_at,
    pretrain_demo_model,
    sample_batch,
    _save_atomic,
)

TINY = dict(
    vocab_size=300,
    model_kwargs=dict(n_layer=1, n_embd=32, n_head=2, n_positions=32),
    train_kwargs=dict(block_size=16, batch_size=4, warmup_steps=2),
)


@pytest.fixture(scope="module")
def verses():
    return kjv_verses()[:2000]


def _same_weights(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_lr_warmup_then_cosine():
    cfg = dict(lr=1.0, min_lr_ratio=0.1, warmup_steps=4)
    assert lr_at(0, 0.0, cfg) == pytest.approx(0.25)
    assert lr_at(3, 0.0, cfg) == pytest.approx(1.0)
    assert lr_at(10, 0.0, cfg) == pytest.approx(1.0)
    assert lr_at(10, 0.5, cfg) == pytest.approx(0.1 + 0.9 * 0.5)
    assert lr_at(10, 1.0, cfg) == pytest.approx(0.1)


def test_windows_start_at_verse_starts(tokenizer):
    verses = ["In the beginning God created.", "And God said, Let there be light.", "Jesus wept."]
    tokens, starts = encode_corpus(tokenizer, verses, block_size=4)
    eos = tokenizer.eos_token_id
    assert tokens.tolist() == [t for v in verses for t in tokenizer(v)["input_ids"] + [eos]]
    assert starts[0] == 0 and all(tokens[s - 1] == eos for s in starts[1:].tolist())
    batch = sample_batch(tokens, starts, 8, 4, torch.Generator().manual_seed(0))  # (8, 5)
    assert batch.shape == (8, 5)
    decoded = [tokenizer.decode(row) for row in batch]
    assert all(any(v.startswith(d) or d.startswith(v) for v in verses) for d in decoded)


def test_cache_written_reused_and_invalidated(tmp_path, verses):
    cache = tmp_path / "demo"
    logs: list[str] = []
    m1, _, info1 = pretrain_demo_model(cache, steps=5, verses=verses, log=logs.append, **TINY)
    assert not info1["loaded_from_cache"] and info1["steps"] == 5
    assert info1["tokens_seen"] == 5 * 4 * 16 and len(info1["losses"]) == 5
    assert (cache / "model.safetensors").is_file() and (cache / "tokenizer.json").is_file()
    on_disk = json.loads((cache / "info.json").read_text())
    assert on_disk["settings_key"] == info1["settings_key"] and on_disk["steps"] == 5
    assert [p.name for p in tmp_path.iterdir()] == ["demo"]  # no temporary dirs left

    logs.clear()
    m2, tok2, info2 = pretrain_demo_model(cache, steps=5, verses=verses, log=logs.append, **TINY)
    assert info2["loaded_from_cache"] and info2["settings_key"] == info1["settings_key"]
    assert not any("step" in line and "loss" in line for line in logs)  # no training logged
    assert _same_weights(m1, m2)
    assert tok2.padding_side == "left"

    m3, _, info3 = pretrain_demo_model(cache, steps=5, seed=1, verses=verses, log=logs.append, **TINY)
    assert not info3["loaded_from_cache"] and info3["settings_key"] != info1["settings_key"]
    assert not _same_weights(m1, m3)
    assert json.loads((cache / "info.json").read_text())["settings_key"] == info3["settings_key"]


def test_cached_model_loads_with_auto_classes(tmp_path, verses):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    pretrain_demo_model(tmp_path, steps=3, verses=verses, log=lambda s: None, **TINY)
    tok = AutoTokenizer.from_pretrained(tmp_path)
    model = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert tok.padding_side == "left"
    assert tok.eos_token_id == model.generation_config.eos_token_id
    assert tok.pad_token_id == model.generation_config.pad_token_id != tok.eos_token_id
    assert model.config.resid_pdrop == model.config.attn_pdrop == model.config.embd_pdrop == 0.0
    enc = tok(["And God said", "In the beginning God created"], return_tensors="pt", padding=True)
    assert enc["attention_mask"][0, 0] == 0  # left padding
    out = model.generate(**enc, max_new_tokens=4, do_sample=False)
    assert out.shape == (2, enc["input_ids"].shape[1] + 4)


def test_failed_save_keeps_the_old_cache(tmp_path, verses):
    cache = tmp_path / "demo"
    model, tok, info = pretrain_demo_model(cache, steps=2, verses=verses, log=lambda s: None, **TINY)

    class BrokenTokenizer:
        def save_pretrained(self, path):
            raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        _save_atomic(cache, model, BrokenTokenizer(), dict(info, settings_key="other"))
    assert json.loads((cache / "info.json").read_text())["settings_key"] == info["settings_key"]
    assert [p.name for p in tmp_path.iterdir()] == ["demo"]


def test_step_count_not_the_clock_ends_training(verses):
    """Same settings, same model: nothing in the recipe depends on how fast the machine is."""
    _, _, a = pretrain_demo_model(None, steps=6, verses=verses, log=lambda s: None, **TINY)
    m1, _, b = pretrain_demo_model(None, steps=6, verses=verses, log=lambda s: None, **TINY)
    m2, _, c = pretrain_demo_model(None, steps=6, verses=verses, log=lambda s: None, **TINY)
    assert a["steps"] == b["steps"] == 6 and len(a["losses"]) == 6
    assert a["losses"] == b["losses"] and _same_weights(m1, m2)
    assert "time_budget_s" not in a["settings"] and a["settings"]["steps"] == 6


def test_step_count_is_part_of_the_cache_key(tmp_path, verses):
    _, _, five = pretrain_demo_model(tmp_path, steps=5, verses=verses, log=lambda s: None, **TINY)
    _, _, six = pretrain_demo_model(tmp_path, steps=6, verses=verses, log=lambda s: None, **TINY)
    assert not six["loaded_from_cache"] and six["settings_key"] != five["settings_key"]


def test_demo_config_pretrains_the_default_step_count():
    from remax.demo import DemoConfig
    from remax.demo.pretrain import DEFAULT_STEPS

    assert DemoConfig().pretrain_steps == DEFAULT_STEPS


def test_zero_steps_is_refused():
    with pytest.raises(ValueError, match="steps must be >= 1"):
        pretrain_demo_model(None, steps=0, verses=["In the beginning"], log=lambda s: None, **TINY)


@pytest.mark.learning
def test_loss_decreases_on_the_real_corpus(seed_offset, record_outcome):
    _, _, info = pretrain_demo_model(
        None,
        steps=40,
        seed=seed_offset,
            vocab_size=1024,
        model_kwargs=dict(n_layer=1, n_embd=64, n_head=2, n_positions=32),
        train_kwargs=dict(batch_size=16, lr=3e-3, warmup_steps=5),
        log=lambda s: None,
    )
    assert info["settings"]["train"]["block_size"] == 32  # rows default to n_positions
    assert info["tokens_seen"] == 40 * 16 * 32
    losses = info["losses"]
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert first > 6.5  # about ln(1024) = 6.9 at random init
    record_outcome("loss_drop", first - last, 0.75)
    # measured (benchmarks/learning_margins.py): drop 0.99 .. 1.08 nats over seed offsets 0..9 x
    # OMP_NUM_THREADS 1 and 2 (it was asserted > 1.0, which offset 3 missed); 0.75 is a quarter below
    assert last < first - 0.75
