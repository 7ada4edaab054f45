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
    mixed_activation_bytes,
    model_shape,
    optimizer_step_bytes,
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


def test_mixed_precision_activations_logits_and_weight_copies_by_hand():
    shape = dataclasses.replace(SHAPE, heads=2, matmul_params=900)
    # per token and layer: 2 bytes x (8*4 + 5*16 + 2*2 heads x 5 tokens = 132 elements) + 16 h (4) = 328 bytes
    assert mixed_activation_bytes(shape, rows=3, tokens=5, checkpointing=False) == 3 * 5 * 2 * 328
    # flash: 2 x 112 + 64 = 288; checkpointing: float32 layer inputs (4 bytes x 2 layers x 4) + one layer (328)
    assert mixed_activation_bytes(shape, rows=3, tokens=5, checkpointing=False, flash=True) == 3 * 5 * 2 * 288
    assert mixed_activation_bytes(shape, rows=3, tokens=5, checkpointing=True) == 3 * 5 * (32 + 328)
    # the LM head's bf16 output (2 bytes) beside the 4 float32 copies: 18 bytes per logit
    assert logit_bytes(SHAPE, rows=3, response_tokens=2, mixed=True) == 18 * 3 * 3 * 10
    p = PlanInputs(algo="remax", batch=2, n_samples=2, prompt_tokens=3, max_new_tokens=2, micro_batch=4,
                   mixed_precision="bf16", foreach=False)
    r = plan(shape, p)
    act = mixed_activation_bytes(shape, 4, 5, False) + logit_bytes(shape, 4, 2, mixed=True)
    assert r.parts["autocast weight copies"] == 2 * 900  # bf16 copies of the matmul weights
    assert r.activations == act + 1800
    # the KV cache comes out of bf16 linears; a no-grad forward casts the LM head (V x h = 10 x 4) to bf16
    assert r.rollout == kv_cache_bytes(shape, 2 * 3, 5, 2) + 2 * 10 * 4
    assert r.static == 20_000  # float32 master weights, gradients, moments, reference: as without mixed precision
    assert r.peak == 16_000 + max(4000 + r.rollout, act + 1800, 4000 + 0)  # largest_param 0: no Adam temporaries
    with pytest.raises(InputError, match="not one of no, bf16, fp16"):
        plan(shape, dataclasses.replace(p, mixed_precision="fp8"))


def test_adam_step_temporaries_by_hand():
    shape = dataclasses.replace(SHAPE, largest_param=300)
    # CPU (a loop over tensors): sqrt(v) and its quotient, two fp32 temporaries of the largest tensor
    assert optimizer_step_bytes(shape, trainable=1000, w=4, foreach=False) == 2 * 300 * 4
    # GPUs (foreach): one temporary per trained tensor at once, sharded with the moments under ZeRO >= 1
    assert optimizer_step_bytes(shape, trainable=1000, w=4, foreach=True) == 4000
    assert optimizer_step_bytes(shape, trainable=1000, w=4, foreach=True, shard=4) == 1000
    # LoRA: the trained adapters are smaller than the largest (frozen) tensor
    assert optimizer_step_bytes(shape, trainable=100, w=4, foreach=False) == 2 * 100 * 4
    # a tiny batch: the step's temporaries set the peak (weights + grads + moments + reference + 2400)
    p = PlanInputs(algo="remax", batch=1, n_samples=1, prompt_tokens=1, max_new_tokens=1, micro_batch=1, foreach=False)
    r = plan(shape, p)
    assert r.parts["optimizer step temporaries"] == 2400
    assert r.peak == 20_000 + 2400 > 20_000 + r.rollout and r.activations < 4000 + 2400


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


def test_fsdp_shards_the_reference_too_and_the_rollout_gathers_the_policy():
    """N = 1000 fp32 on 4 GPUs. --fsdp: policy 16N / 4 = 4000 and reference 4N / 4 = 1000;
    DeepSpeed's ZeRO-3 the same policy state but the whole reference, 4000. Either way the
    rollout gathers the 3 other quarters of the policy's weights: 3000 bytes on top of the KV cache."""
    base = PlanInputs(algo="remax", batch=8, micro_batch=8, gpus=4)
    fsdp, zero3 = plan(SHAPE, dataclasses.replace(base, fsdp=True)), plan(SHAPE, dataclasses.replace(base, zero=3))
    assert (fsdp.parts["policy weights"], fsdp.parts["policy gradients"], fsdp.parts["policy adam"]) == (1000, 1000, 2000)
    assert fsdp.parts["reference"] == 1000 and zero3.parts["reference"] == 4000
    assert fsdp.static == 5000 and zero3.static == 8000
    kv = kv_cache_bytes(SHAPE, 2 * (1 + 1), 512, 4)  # 8 prompts / 4 GPUs, 1 sample + 1 greedy row each
    assert fsdp.parts["policy gathered for the rollout"] == 3000 and fsdp.rollout == kv + 3000
    assert "policy gathered for the rollout" not in plan(SHAPE, base).parts  # nothing sharded, nothing gathered
    assert plan(SHAPE, dataclasses.replace(base, fsdp=True, lora_r=2)).parts["reference"] == 0  # the base, adapters off


def test_model_shape_counts_what_a_real_model_has():
    config = GPT2Config(vocab_size=300, n_positions=64, n_embd=32, n_layer=2, n_head=2)
    shape = model_shape(config)
    real = GPT2LMHeadModel(config)
    assert shape.params == sum(p.numel() for p in real.parameters())  # tied head counted once
    assert shape.trunk_params == sum(p.numel() for p in real.transformer.parameters())
    # GPT-2 block: c_attn 32 -> 96, attn c_proj 32 -> 32, c_fc 32 -> 128, mlp c_proj 128 -> 32: 16 h per layer
    assert shape.lora_params_per_rank == 2 * 16 * 32
    assert (shape.hidden, shape.layers, shape.heads, shape.intermediate, shape.kv_dim, shape.vocab) == (32, 2, 2, 128, 32, 300)
    assert shape.largest_param == 300 * 32  # the (tied) token embedding
    # every matmul weight: 12 h^2 per layer (c_attn 3h^2, c_proj h^2, c_fc and mlp c_proj 4h^2 each) + the tied head
    assert shape.matmul_params == 2 * 12 * 32 * 32 + 300 * 32


def test_model_shape_of_a_qwen2_with_grouped_query_attention():
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(vocab_size=500, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False)
    shape = model_shape(config)
    assert shape.params == sum(p.numel() for p in Qwen2ForCausalLM(config).parameters())
    assert shape.kv_dim == 2 * 16  # 2 KV heads of 64 / 4
    # per layer: q, o 64x64; k, v 64x32 (+ biases, not matmul weights); gate, up, down 64x96; untied head 500 x 64
    assert shape.matmul_params == 2 * (2 * 64 * 64 + 2 * 64 * 32 + 3 * 64 * 96) + 500 * 64
    assert shape.largest_param == 500 * 64


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
    assert cli(["plan", "--model", str(tmp_path / "m"), "--mixed-precision", "bf16", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "bf16 mixed precision" in out and "autocast weight copies" in out and "optimizer step temporaries" in out
    assert cli(["plan", "--model", str(tmp_path / "m"), "--fsdp", "--gpus", "2"]) == 0
    out = capsys.readouterr().out
    assert "2 device(s), FSDP" in out and "policy gathered for the rollout" in out
    assert cli(["plan", "--model", str(tmp_path / "m"), "--fsdp", "--zero", "3"]) == 2
    assert "drop --zero 3" in capsys.readouterr().err
    assert cli(["plan", "--model", str(tmp_path / "nothing")]) == 2
    assert "cannot read a model config" in capsys.readouterr().err


@pytest.mark.slow
def test_prediction_within_25_percent_of_measured_peak():
    from remax.bench.plan_check import Case, compare

    r = compare(Case("small remax", hidden=384, layers=6, heads=6, steps=2))  # step 2: Adam moments exist
    assert abs(r["error"]) < 0.25, r


@pytest.mark.slow
def test_plan_check_driver_on_a_tiny_qwen2_in_bf16_mixed_precision():
    """The driver end to end on an architecture other than GPT-2, in bf16 mixed precision:
    a measured figure and a prediction for the same run, within plan's 25% (a 0.8M model
    was mostly allocator noise: -52%; benchmarks/README.md has the real sizes)."""
    from remax.bench.plan_check import Case, compare

    case = Case("small qwen2 bf16", arch="qwen2", hidden=256, layers=2, heads=4, kv_heads=2, intermediate=512,
                vocab=32000, batch=2, max_new_tokens=8, micro_batch=2, mixed_precision="bf16", steps=2)
    r = compare(case)  # 9.4M parameters, 32k vocabulary: measured -9.3% here (before the LM head's cast was counted)
    assert r["measured_mb"] > 0 and r["params"] == 9_373_952
    assert abs(r["error"]) < 0.25, r
