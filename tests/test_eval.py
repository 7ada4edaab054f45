"""`remax eval`: the win rate, its Wilson interval and the per-token KL by hand; the
command end to end on tiny saved models (a policy against itself, against another)."""

from __future__ import annotations

import json
import math
import textwrap

import pytest
import torch

from remax.cli import main
from remax.eval import token_kl, wilson_interval, win_counts, win_rate

PROMPTS = ["The Lord is", "And God said", "Blessed are the", "Love is", "In the beginning", "O give thanks"]


def test_win_counts_and_rate_ties_half():
    a, b = torch.tensor([1.0, 2.0, 3.0, 3.0]), torch.tensor([0.0, 2.0, 4.0, 3.0])
    assert win_counts(a, b) == (1, 2, 1)
    assert win_rate(1, 2, 1) == 0.5
    assert win_rate(2, 1, 0) == pytest.approx(2.5 / 3)  # (2 + 1/2) / 3
    assert math.isnan(win_rate(0, 0, 0))
    with pytest.raises(ValueError, match="shapes differ"):
        win_counts(a, b[:3])


def test_wilson_interval_by_hand():
    # p = 1/2, n = 4, z = 2: centre 1/2 + 4/8 = 1, half 2 sqrt(1/16 + 4/64) = sqrt(1/2), denom 1 + 4/4 = 2
    lo, hi = wilson_interval(0.5, 4, z=2.0)
    assert lo == pytest.approx((1 - math.sqrt(0.5)) / 2) and hi == pytest.approx((1 + math.sqrt(0.5)) / 2)
    # p = 1, n = 9, z = 2: centre 1 + 4/18, half 2 * 2/18, denom 13/9 -> (9/13, 1)
    lo, hi = wilson_interval(1.0, 9, z=2.0)
    assert lo == pytest.approx(9 / 13) and hi == pytest.approx(1.0)
    # the default is 95%: p = 0.5, n = 100 -> 0.5 -+ 0.0962 (standard tables)
    lo, hi = wilson_interval(0.5, 100)
    assert lo == pytest.approx(0.4038, abs=1e-4) and hi == pytest.approx(0.5962, abs=1e-4)
    assert all(math.isnan(x) for x in wilson_interval(0.5, 0))


def test_token_kl_by_hand():
    logp = torch.tensor([[-1.0, -2.0, 0.0], [-0.5, 0.0, 0.0]])
    ref = torch.tensor([[-1.5, -1.0, -9.0], [-1.0, -3.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    # (0.5 - 1.0) + 0.5 = 0 over 3 tokens; the masked-out -9 never counts
    assert token_kl(logp, ref, mask) == (0.0, 3.0)


REWARD = textwrap.dedent('''
    def share(prompts, responses, target):
        return [r.count(t) / max(len(r), 1) for r, t in zip(responses, target)]
''')


@pytest.fixture()
def setup(tmp_path, tokenizer):
    from remax.models.tiny import tiny_causal_lm

    for name, seed in (("a", 0), ("b", 1)):
        tiny_causal_lm(tokenizer, seed=seed).save_pretrained(tmp_path / name)
        tokenizer.save_pretrained(tmp_path / name)
    (tmp_path / "heldout.jsonl").write_text(
        "".join(json.dumps({"prompt": p, "target": "e" if i % 2 else "o"}) + "\n" for i, p in enumerate(PROMPTS)))
    (tmp_path / "reward.py").write_text(REWARD)
    return tmp_path


def eval_args(root, policy, reference, out, *extra):
    return ["eval", "--policy", str(root / policy), "--reference", str(root / reference),
            "--data", str(root / "heldout.jsonl"), "--reward.kind", "python",
            "--reward.function", f"{root / 'reward.py'}:share", "--max_new_tokens", "8", "--batch_size", "4",
            "--out", str(out), *extra]


def read(out):
    return json.loads((out / "eval.json").read_text()), [json.loads(x) for x in (out / "samples.jsonl").read_text().splitlines()]


def test_policy_against_itself(setup, capsys):
    out = setup / "self"
    assert main(eval_args(setup, "a", "a", out)) == 0
    s, rows = read(out)
    assert s["n_prompts"] == len(rows) == 6
    # same model, same seed: the same responses, so every prompt is a tie
    assert s["win_rate/sampled"] == 0.5 and s["win_rate/sampled_ties"] == 6
    assert s["win_rate/greedy"] == 0.5
    lo, hi = s["win_rate/sampled_ci_low"], s["win_rate/sampled_ci_high"]
    assert lo == pytest.approx(1 - hi) and lo < 0.5 < hi
    assert s["kl/per_token"] == 0.0
    assert s["policy/reward_mean"] == s["reference/reward_mean"]
    assert all(r["policy_sampled"] == r["reference_sampled"] for r in rows)
    assert "win rate of the policy, sampled: 0.500" in capsys.readouterr().out


def test_policy_against_another_is_consistent(setup):
    out = setup / "ab"
    assert main(eval_args(setup, "a", "b", out, "--n_prompts", "5", "--temperature", "0.7")) == 0
    s, rows = read(out)
    assert len(rows) == 5 and [r["prompt"] for r in rows] == PROMPTS[:5]
    # rewards in the file are the reward of the text shown, target column passed through
    targets = ["o", "e", "o", "e", "o"]
    for r, t in zip(rows, targets):
        for col in ("policy_sampled", "reference_sampled", "policy_greedy", "reference_greedy"):
            assert r[col + "_reward"] == pytest.approx(r[col].count(t) / max(len(r[col]), 1))
    for who in ("policy", "reference"):
        assert s[f"{who}/reward_mean"] == pytest.approx(sum(r[f"{who}_sampled_reward"] for r in rows) / 5)
        assert s[f"{who}/greedy_reward_mean"] == pytest.approx(sum(r[f"{who}_greedy_reward"] for r in rows) / 5)
        assert 1 <= s[f"{who}/response_len_mean"] <= 8
    w = sum(r["policy_sampled_reward"] > r["reference_sampled_reward"] for r in rows)
    t = sum(r["policy_sampled_reward"] == r["reference_sampled_reward"] for r in rows)
    assert (s["win_rate/sampled_wins"], s["win_rate/sampled_ties"]) == (w, t)
    assert s["win_rate/sampled"] == pytest.approx((w + t / 2) / 5)
    assert (s["win_rate/sampled_ci_low"], s["win_rate/sampled_ci_high"]) == pytest.approx(
        wilson_interval(s["win_rate/sampled"], 5))
    assert s["kl/per_token"] != 0.0 and math.isfinite(s["kl/per_token"])  # two different random models
    assert rows[0]["policy_greedy"] != rows[0]["reference_greedy"] or rows[1]["policy_greedy"] != rows[1]["reference_greedy"]


@pytest.mark.parametrize("drop, message", [
    ("--reference", "no reference given; pass --reference"),
    ("--data", "no prompts given; pass --data"),
])
def test_missing_inputs_are_one_line(setup, capsys, drop, message):
    args = eval_args(setup, "a", "a", setup / "x")
    i = args.index(drop)
    assert main(args[:i] + args[i + 2:]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and message in err


def test_bad_values_are_one_line(setup, capsys, tokenizer):
    from transformers import GPT2Config, GPT2LMHeadModel

    assert main(eval_args(setup, "a", "a", setup / "x", "--top_p", "0")) == 2
    assert "--top_p must be in (0, 1]" in capsys.readouterr().err
    bad = eval_args(setup, "a", "a", setup / "x")
    bad[bad.index("--data") + 1] = str(setup / "nope.jsonl")
    assert main(bad) == 2
    assert "not found" in capsys.readouterr().err
    cfg = GPT2Config(vocab_size=len(tokenizer) + 7, n_layer=1, n_embd=16, n_head=2, bos_token_id=0, eos_token_id=0)
    GPT2LMHeadModel(cfg).save_pretrained(setup / "c")
    capsys.readouterr()
    assert main(eval_args(setup, "a", "c", setup / "x")) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "one shared vocabulary" in err
