"""The bench's arithmetic, with hand-computed numbers: the equal-work rule, FLOP counting,
the model-state count, gradient-variance figures, the matched-KL reading, tables."""

from __future__ import annotations

import math

import pytest
import torch

from remax.bench import common, quality
from remax.errors import InputError


def test_samples_rule_gives_every_algorithm_the_same_sampled_responses():
    assert common.samples_rule("remax", 8, 1) == (8, 1)
    assert common.samples_rule("ppo", 8, 1) == (8, 1)
    assert common.samples_rule("grpo", 8, 1) == (4, 2)  # 4 x 2 = 8 x 1
    assert common.samples_rule("rloo", 8, 4) == (8, 4)
    with pytest.raises(InputError, match="multiple of 2"):
        common.samples_rule("rloo", 3, 1)
    with pytest.raises(InputError, match="unknown algorithm 'nope'"):
        common.samples_rule("nope", 8, 1)


def test_median_and_markdown_table():
    assert common.median([3.0, 1.0, 2.0]) == 2.0
    assert math.isnan(common.median([]))
    table = common.markdown_table(["a", "b", "c"], [[1.23456, 1234.4, float("nan")]])
    assert table == "| a | b | c |\n|---|---|---|\n| 1.23 | 1234 | n/a |"


def _gpt2(n_layer=2, d=8, vocab=20, positions=16):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config(vocab_size=vocab, n_positions=positions, n_embd=d, n_layer=n_layer, n_head=2))


def test_matmul_params_counts_tied_head_once_and_skips_position_embeddings():
    model = _gpt2()
    d, V, L = 8, 20, 2
    # per block: 2 LayerNorms (2d each), c_attn (d x 3d + 3d), c_proj (d x d + d), c_fc (d x 4d + 4d), mlp c_proj (4d x d + d)
    block = 2 * 2 * d + (3 * d * d + 3 * d) + (d * d + d) + (4 * d * d + 4 * d) + (4 * d * d + d)
    assert common.matmul_params(model) == V * d + L * block + 2 * d  # + final LayerNorm


def test_flop_floor_counts_2n_per_token_without_grad_6n_with_grad():
    model = _gpt2()
    floor = common.FlopFloor({"policy": model})
    n = floor.params["policy"]
    ids = torch.randint(0, 20, (2, 4))
    mask = torch.tensor([[0, 1, 1, 1], [1, 1, 1, 1]])  # 7 real tokens
    model(input_ids=ids, attention_mask=mask)  # no phase: not counted
    floor.phase = "prepare"
    with torch.no_grad():
        model(input_ids=ids, attention_mask=mask)
    floor.phase = "update"
    model(input_ids=ids, attention_mask=mask)
    assert floor.flops == {"prepare": 2 * n * 7, "update": 6 * n * 7}


def test_model_state_count_is_20n_for_remax_and_36n_plus_for_ppo(tiny_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from remax.trainer import Trainer

    tok = AutoTokenizer.from_pretrained(tiny_dir)
    counts = {}
    for algo in ("remax", "ppo"):
        cfg = common.trainer_config(algo, prompts=2, n=1, max_new_tokens=4, kl_coef=0.05, device="cpu", seed=0,
                                    output_dir="unused")
        trainer = Trainer(cfg, policy=AutoModelForCausalLM.from_pretrained(tiny_dir), tokenizer=tok,
                          reward_fn=lambda p, r: [0.0] * len(p), rows=[{"prompt": "In the beginning"}] * 2)
        counts[algo] = common.analytic_bytes(trainer)
    n = counts["remax"]["policy_params_total"]
    assert counts["remax"]["analytic_mb"] * 2**20 == 20 * n  # 16N trained policy + 4N frozen reference
    # PPO adds a critic trunk (the policy minus its tied LM head, plus a value head) at 16 bytes a parameter
    per_param = counts["ppo"]["analytic_mb"] * 2**20 / n
    assert 35.0 < per_param < 36.5


def test_variance_figures_hand_computed():
    grads = torch.tensor([[1.0, 2.0], [3.0, 2.0], [2.0, 5.0]])  # K=3 estimates of a 2-parameter gradient
    # column 0: mean 2, unbiased var (1 + 1 + 0) / 2 = 1; column 1: mean 3, var (1 + 1 + 4) / 2 = 3
    fig = quality.variance_figures(grads)
    assert fig["trace_cov"] == pytest.approx(4.0)
    assert fig["mean_norm2"] == pytest.approx(13.0)  # |(2, 3)|^2
    assert fig["noise_to_signal"] == pytest.approx(4 / 13)
    rows = [{"algo": "remax", "step": 0, "trace_cov": 2.0}, {"algo": "reinforce", "step": 0, "trace_cov": 14.0},
            {"algo": "reinforce", "step": 5, "trace_cov": 1.0}]
    quality.add_variance_ratios(rows)
    assert [r["vs_remax"] for r in rows[:2]] == [1.0, 7.0] and math.isnan(rows[2]["vs_remax"])


def test_matched_kl_reward_interpolates_the_first_crossing():
    evals = [{"kl": 0.0, "reward": 0.0}, {"kl": 0.1, "reward": 0.2}, {"kl": 0.3, "reward": 0.6}]
    assert quality.matched_kl_reward(evals, 0.2) == pytest.approx(0.4)  # halfway from 0.1 to 0.3
    assert quality.matched_kl_reward(evals, 0.0) == 0.0
    assert quality.matched_kl_reward(evals, 0.3) == pytest.approx(0.6)
    assert math.isnan(quality.matched_kl_reward(evals, 0.5))  # never reached


def test_eval_steps():
    assert quality.eval_steps(60, 3) == [0, 15, 30, 45, 60]
    assert quality.eval_steps(4, 0) == [0, 4]
