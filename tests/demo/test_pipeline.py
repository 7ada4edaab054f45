"""`remax demo --pipeline` end to end, shrunk: a few pretraining steps, pairs of the model's
own responses labelled by VADER, `remax rm` on them, two ReMax steps against the proxy,
held-out proxy and gold figures, the over-optimisation PNG; and the pair builder by hand."""

from __future__ import annotations

import json

import pytest
import torch

from remax.cli import main
from remax.demo.pipeline import PipelineConfig, build_proxy, preference_pairs

PNG = b"\x89PNG"
TINY = ["--pretrain_steps", "3", "--pair_prompts", "96", "--samples_per_prompt", "4", "--rm_epochs", "1",
        "--rm_batch_size", "8", "--steps", "2", "--batch_size", "4", "--n_eval", "6", "--evals", "1",
        "--max_new_tokens", "8"]


@pytest.mark.slow
def test_remax_demo_pipeline_end_to_end(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["demo", "--pipeline", "--cache_dir", str(tmp_path / "cache"), "--output_dir", str(out), *TINY]) == 0
    printed = capsys.readouterr().out
    assert "proxy reward model:" in printed and "held-out pair accuracy" in printed
    pairs = [json.loads(x) for x in (out / "pairs.jsonl").read_text().splitlines()]
    assert len(pairs) >= 10 and all(p["chosen"] != p["rejected"] for p in pairs)
    from remax.rewards import VaderReward

    gold = VaderReward()
    assert all(c > r for c, r in zip(gold([p["prompt"] for p in pairs], [p["chosen"] for p in pairs]),
                                      gold([p["prompt"] for p in pairs], [p["rejected"] for p in pairs])))
    r = json.loads((out / "pipeline.json").read_text())
    assert [e["step"] for e in r["curve"]] == [0, 1, 2]
    for e in r["curve"]:
        assert -1.0 <= e["gold_reward"] <= 1.0 and e["reward"] == e["reward"] and e["kl"] == e["kl"]
    assert r["curve"][0]["kl"] == pytest.approx(0.0, abs=1e-6)  # the policy starts at the reference
    assert 0.0 <= r["proxy"]["eval_accuracy"] <= 1.0 and r["proxy"]["eval_pairs"] >= 1
    assert (out / "overoptimisation.png").read_bytes().startswith(PNG)
    assert (out / "rl" / "final" / "config.json").is_file()
    # the proxy is an AutoModelForSequenceClassification that --reward.kind model loads and scores
    from remax.rewards import RewardModelReward

    rm = RewardModelReward(r["proxy"]["path"], max_length=64)
    scores = rm([p["prompt"] for p in pairs[:4]], [p["chosen"] for p in pairs[:4]])
    assert torch.as_tensor(scores).shape == (4,)


def test_preference_pairs_take_the_gold_best_and_worst(tmp_path):
    from remax.demo.pretrain import pretrain_demo_model

    verses = ["In the beginning God created the heaven and the earth."] * 20 + ["And God saw the light, that it was good."] * 20
    model, tok, _ = pretrain_demo_model(None, steps=2, verses=verses, vocab_size=300,
                                        model_kwargs=dict(n_layer=1, n_embd=16, n_head=2, n_positions=32),
                                        log=lambda m: None)

    def gold(prompts, responses):  # a reward that orders by length: never ties on distinct lengths
        return [float(len(r)) for r in responses]

    rows, stats = preference_pairs(model, tok, ["In the", "And God"], gold, samples_per_prompt=3, max_new_tokens=6,
                                   seed=0)
    assert stats["pairs"] + stats["tied_prompts"] == 2
    for row in rows:
        assert len(row["chosen"]) > len(row["rejected"])
    def gold_prefers_empty(prompts, responses):  # an empty response would win: it is never picked
        return [10.0 if not r.strip() else float(len(r)) for r in responses]

    rows3, _ = preference_pairs(model, tok, ["In the", "And God"] * 4, gold_prefers_empty, samples_per_prompt=4,
                                max_new_tokens=2, seed=0)
    assert all(row["chosen"].strip() and row["rejected"].strip() for row in rows3)
    rows2, _ = preference_pairs(model, tok, ["In the", "And God"], lambda p, r: [0.0] * len(r), samples_per_prompt=3,
                                max_new_tokens=6, seed=0)
    assert rows2 == []  # all tied: no pair
    with pytest.raises(ValueError, match="samples_per_prompt must be >= 2"):
        preference_pairs(model, tok, ["In"], gold, samples_per_prompt=1, max_new_tokens=2, seed=0)


def test_too_few_pairs_is_one_line_naming_the_fix(tmp_path):
    from remax.demo.pretrain import pretrain_demo_model
    from remax.errors import InputError

    model, tok, _ = pretrain_demo_model(None, steps=1, verses=["In the beginning God created."] * 30, vocab_size=280,
                                        model_kwargs=dict(n_layer=1, n_embd=16, n_head=2, n_positions=32),
                                        log=lambda m: None)
    cfg = PipelineConfig(cache_dir=str(tmp_path / "cache"), pair_prompts=4, max_new_tokens=2)
    with pytest.raises(InputError, match="raise --pair_prompts or --samples_per_prompt"):
        build_proxy(cfg, tmp_path / "out", model=model, tokenizer=tok, log=lambda m: None)
