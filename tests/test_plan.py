"""`remax plan`: the arithmetic by hand, the parameter count against a real model, the CLI
end to end, and one prediction against a measured peak (25%)."""

from __future__ import annotations

import dataclasses

import pytest
from transformers import GPT2Config, GPT2LMHeadModel

from remax.cli import main as cli
from remax.errors import InputError
from remax.plan import (
    ModelShape,
    PlanInputs,
    activation_bytes,
    kv_cache_bytes,
    logit_bytes,
    model_shape,
    parse_memory,
    plan,
    ppo_vs_remax,
    suggestions,
    training_state_bytes,
)

# a made-up shape with round numbers: N = 1000, tied head (trunk = N), h = 4, I = 16
SHAPE = ModelShape(params=1000, trunk_params=1000, lora_params_per_rank=50, hidden=4, layers=2, intermediate=16,
                   kv_dim=4, vocab=10)


def test_training_state_fp32_adam_is_16_bytes_per_parameter_and_zero_shards_it():
    assert training_state_bytes(100, 100, 4, zero=0, gpus=1) == {"weights": 400, "gradients": 400, "adam": 800}
    assert training_state_bytes(100, 100, 4, zero=1, gpus=4) == {"weights": 400, "gradients": 400, "adam": 200}
    assert training_state_bytes(100, 100, 4, zero=2, gpus=4) == {"weights": 400, "gradients": 100, "adam": 200}
    assert training_state_bytes(100, 100, 4, zero=3, gpus=4) == {"weights": 100, "gradients": 100, "adam": 200}
    # LoRA: all weights kept, only the adapters' gradients and moments (bf16: 2 bytes each)
    assert training_state_bytes(110, 10, 2, zero=0, gpus=1) == {"weights": 220, "gradients": 20, "adam": 40}


def test_activation_kv_and_logit_arithmetic():
    # per token per layer 8*4 + 5*16 + 2*2 heads x 5 tokens = 132 elements; 3 rows x 5 tokens x 2 layers x 132 x 4 bytes
    shape = dataclasses.replace(SHAPE, heads=2)
    assert activation_bytes(shape, rows=3, tokens=5, w=4, checkpointing=False) == 3 * 5 * 2 * 132 * 4
    assert activation_bytes(shape, rows=3, tokens=5, w=4, checkpointing=False, flash=True) == 3 * 5 * 2 * 112 * 4
    # checkpointing: each layer's input (2 layers x 4) plus one layer recomputed (132): 3 x 5 x 140 x 4
    assert activation_bytes(shape, rows=3, tokens=5, w=4, checkpointing=True) == 3 * 5 * 140 * 4
    assert logit_bytes(SHAPE, rows=3, response_tokens=2) == 4 * 3 * 3 * 10 * 4  # 4 fp32 copies of (3, R+1, V)
    assert kv_cache_bytes(SHAPE, rows=3, tokens=5, w=2) == 2 * 2 * 4 * 5 * 3 * 2  # K and V, per layer


def test_remax_is_20n_and_ppo_36n_bytes_of_state_in_fp32():
    remax = plan(SHAPE, PlanInputs(algo="remax"))
    ppo = plan(SHAPE, PlanInputs(algo="ppo"))
    assert remax.static == 20 * 1000  # policy 16N + reference 4N
    # + critic: trunk (N) + head (h + 1 = 5 parameters), 16 bytes each
    assert ppo.static == 20 * 1000 + 16 * 1005
    assert "ReMax 20N = 20.00 GB" in ppo_vs_remax(1024**3) and "PPO 36N = 36.00 GB" in ppo_vs_remax(1024**3)


def test_peak_counts_gradients_only_where_they_are_alive():
    p = PlanInputs(algo="remax", batch=2, n_samples=2, prompt_tokens=3, max_new_tokens=2, micro_batch=3)
    r = plan(SHAPE, p)
    act = activation_bytes(SHAPE, 3, 5, 4, False) + logit_bytes(SHAPE, 3, 2)  # micro = min(3, 2 x 2 rows)
    kv = kv_cache_bytes(SHAPE, 2 * (2 + 1), 5, 4)  # remax: n samples + 1 greedy row per prompt
    assert (r.activations, r.rollout) == (act, kv)
    # 4 rows in micro-batches of 3: the second forward runs with the 4N bytes of gradients alive
    assert r.peak == 16_000 + max(4000 + kv, act + 4000)
    one = plan(SHAPE, dataclasses.replace(p, micro_batch=4))  # one micro-batch: its forward has no gradients
    act4 = activation_bytes(SHAPE, 4, 5, 4, False) + logit_bytes(SHAPE, 4, 2)
    assert one.peak == 16_000 + max(4000 + kv, act4)


def test_options_lower_what_they_should():
    base = PlanInputs(algo="remax", batch=8, micro_batch=8)
    full = plan(SHAPE, base)
    lora = plan(SHAPE, dataclasses.replace(base, lora_r=2))
    assert lora.parts["reference"] == 0  # LoRA's reference is the base with adapters off
    assert lora.parts["policy adam"] == 2 * 2 * 50 * 4  # r x 50 trainable parameters, two fp32 moments
    assert plan(SHAPE, dataclasses.replace(base, reference_offload=True)).parts["reference"] == 0
    assert plan(SHAPE, dataclasses.replace(base, reference_dtype="bf16")).parts["reference"] == 2000
    assert plan(SHAPE, dataclasses.replace(base, dtype="bf16")).static == full.static / 2
    ckpt = plan(SHAPE, dataclasses.replace(base, gradient_checkpointing=True))
    assert ckpt.activations < full.activations


def test_model_shape_counts_what_a_real_model_has():
    config = GPT2Config(vocab_size=300, n_positions=64, n_embd=32, n_layer=2, n_head=2)
    shape = model_shape(config)
    real = GPT2LMHeadModel(config)
    assert shape.params == sum(p.numel() for p in real.parameters())  # tied head counted once
    assert shape.trunk_params == sum(p.numel() for p in real.transformer.parameters())
    # GPT-2 block: c_attn 32 -> 96, attn c_proj 32 -> 32, c_fc 32 -> 128, mlp c_proj 128 -> 32: 16 h per layer
    assert shape.lora_params_per_rank == 2 * 16 * 32
    assert (shape.hidden, shape.layers, shape.heads, shape.intermediate, shape.kv_dim, shape.vocab) == (32, 2, 2, 128, 32, 300)


def test_suggestions_each_fit():
    p = PlanInputs(algo="ppo", batch=8, micro_batch=8, max_new_tokens=64, prompt_tokens=64)
    need = plan(SHAPE, p).peak
    p = dataclasses.replace(p, device_memory_gb=0.6 * need / 1024**3)
    assert plan(SHAPE, p).fits is False
    fixes = suggestions(SHAPE, p)
    assert fixes and all(peak <= 0.9 * p.device_memory_gb * 1024**3 for _, peak in fixes)


def test_parse_memory():
    assert parse_memory("80GB") == 80 and parse_memory("24GiB") == 24 and parse_memory("512MB") == 0.5
    with pytest.raises(InputError, match="80GB"):
        parse_memory("eighty")


def test_cli_plan_end_to_end(tmp_path, capsys):
    GPT2Config(vocab_size=300, n_positions=64, n_embd=32, n_layer=2, n_head=2).save_pretrained(tmp_path / "m")
    assert cli(["plan", "--model", str(tmp_path / "m"), "--algo", "ppo", "--batch", "4", "--max-new-tokens", "16",
                "--device-memory", "80GB"]) == 0
    out = capsys.readouterr().out
    assert "critic adam" in out and "fits in 80 GB" in out and "PPO 36N" in out
    assert cli(["plan", "--model", str(tmp_path / "m"), "--device-memory", "1MB", "--max-new-tokens", "256"]) == 1
    assert "does NOT fit" in capsys.readouterr().out
    assert cli(["plan", "--model", str(tmp_path / "nothing")]) == 2
    assert "cannot read a model config" in capsys.readouterr().err


@pytest.mark.slow
def test_prediction_within_25_percent_of_measured_peak():
    from remax.bench.plan_check import Case, compare

    r = compare(Case("small remax", n_embd=384, n_layer=6, n_head=6, steps=2))  # step 2: Adam moments exist
    assert abs(r["error"]) < 0.25, r
