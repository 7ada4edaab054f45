"""LoRA on the policy: adapters only train, pi_ref is the base with them off (no copy),
merged weights for backends and final/merged/, adapter save / load bit for bit."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from remax.config import Config, ConfigError, LoraConfig, check_types
from remax.errors import InputError
from remax.models import ValueModel, make_reference, response_logprobs
from remax.models.lora import (
    AdaptersOff,
    adapters_are_zero,
    apply_lora,
    is_peft_model,
    load_adapter_into,
    merged_copy,
    merged_state_dict,
)
from remax.models.tiny import tiny_causal_lm

PROMPTS = ["And God said", "The Lord is my shepherd; I", "Love"]


def batch(tokenizer):
    enc = tokenizer(PROMPTS, return_tensors="pt", padding=True)
    response = torch.tensor([[5, 7, 9, 0, 1], [11, 0, 1, 1, 1], [13, 17, 19, 23, 29]])  # (3, 5); EOS id 0
    rmask = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 0, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.float32)
    return enc.input_ids, enc.attention_mask, response, rmask


def trained_lora(tokenizer, r=4, seed=1, **kw):
    """A LoRA policy whose adapters already change the model (B drawn at random); the same
    one for the same seed (A is drawn from the global RNG, seeded here)."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        policy = apply_lora(tiny_causal_lm(tokenizer, seed=0).eval(), LoraConfig(r=r, alpha=8, **kw))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in policy.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
    return policy


def test_only_adapters_train_and_start_equal_to_the_base(tokenizer):
    base = tiny_causal_lm(tokenizer, seed=0).eval()
    policy = apply_lora(tiny_causal_lm(tokenizer, seed=0).eval(), LoraConfig(r=4, alpha=8))
    assert is_peft_model(policy) and not policy.training
    trainable = [n for n, p in policy.named_parameters() if p.requires_grad]
    # GPT-2's default target is c_attn: one A and one B per layer (2 layers)
    assert len(trainable) == 4 and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    assert adapters_are_zero(policy)  # B = 0: the adapted model starts as the base
    ids, mask, resp, rmask = batch(tokenizer)
    assert torch.equal(response_logprobs(policy, ids, mask, resp, rmask), response_logprobs(base, ids, mask, resp, rmask))


def test_r_zero_is_the_policy_itself(tiny_model):
    assert apply_lora(tiny_model, LoraConfig()) is tiny_model
    assert not is_peft_model(tiny_model)


def test_reference_is_the_base_with_adapters_off_and_holds_no_copy(tokenizer):
    base = tiny_causal_lm(tokenizer, seed=0).eval()
    policy = apply_lora(tiny_causal_lm(tokenizer, seed=0).eval(), LoraConfig(r=4, alpha=8))
    ref = make_reference(policy)
    assert isinstance(ref, AdaptersOff) and ref.config is policy.config
    ids, mask, resp, rmask = batch(tokenizer)
    with torch.no_grad():  # the policy moves away from the base ...
        for name, p in policy.named_parameters():
            if "lora_B" in name:
                p.fill_(0.3)
    on = response_logprobs(policy, ids, mask, resp, rmask)
    off = response_logprobs(ref, ids, mask, resp, rmask)
    want = response_logprobs(base, ids, mask, resp, rmask)
    assert torch.equal(off, want)  # ... the reference stays the base, bitwise
    assert (on - want).abs().max() > 1e-3
    # and the adapters are on again after the reference's call
    assert torch.equal(response_logprobs(policy, ids, mask, resp, rmask), on)
    # the reference owns no tensors: pi_ref costs no memory beyond the policy
    assert {p.data_ptr() for p in ref.parameters()} == {p.data_ptr() for p in policy.parameters()}
    assert not any(isinstance(v, (torch.nn.Module, torch.Tensor)) for k, v in vars(ref).items() if k != "policy")


def test_reference_for_already_trained_adapters_is_a_frozen_merged_copy(tokenizer):
    """A policy passed in with trained adapters starts as base + adapters; that is pi_ref."""
    policy = trained_lora(tokenizer)
    ref = make_reference(policy)
    assert not isinstance(ref, AdaptersOff) and not is_peft_model(ref)
    assert all(not p.requires_grad for p in ref.parameters())
    ids, mask, resp, rmask = batch(tokenizer)
    torch.testing.assert_close(response_logprobs(ref, ids, mask, resp, rmask),
                               response_logprobs(policy, ids, mask, resp, rmask), atol=1e-5, rtol=0)


def test_merged_state_dict_is_w_plus_scaled_ba_under_plain_names(tokenizer):
    policy = trained_lora(tokenizer)
    plain = tiny_causal_lm(tokenizer, seed=0)
    merged = merged_state_dict(policy)
    assert set(merged) == set(plain.state_dict())  # plain key names, no lora_* tensors
    # by hand for one layer: GPT-2's Conv1D stores W as (in, out), so the delta is (B A)^T * alpha / r
    layer = policy.get_base_model().transformer.h[0].attn.c_attn
    a, b = layer.lora_A["default"].weight, layer.lora_B["default"].weight  # (r, in), (out, r)
    want = plain.transformer.h[0].attn.c_attn.weight + (b @ a).T * (8 / 4)
    torch.testing.assert_close(merged["transformer.h.0.attn.c_attn.weight"], want, atol=1e-6, rtol=0)
    # untouched weights are the base's, bitwise; the merge agrees with peft's merge_and_unload
    assert torch.equal(merged["transformer.h.0.mlp.c_fc.weight"], plain.transformer.h[0].mlp.c_fc.weight)
    peft_merged = merged_copy(policy).state_dict()
    assert all(torch.equal(merged[k], peft_merged[k]) for k in merged)
    # the policy itself is unchanged (still adapters, still unmerged)
    assert is_peft_model(policy) and not layer.merged
    # a plain model loads it and computes what the adapted policy does
    plain.load_state_dict(merged)
    ids, mask, resp, rmask = batch(tokenizer)
    torch.testing.assert_close(response_logprobs(plain.eval(), ids, mask, resp, rmask),
                               response_logprobs(policy, ids, mask, resp, rmask), atol=1e-5, rtol=0)


def test_merged_copy_saves_as_a_plain_model(tmp_path, tokenizer):
    policy = trained_lora(tokenizer)
    copy = merged_copy(policy)
    assert type(copy).__name__ == "GPT2LMHeadModel"
    copy.save_pretrained(tmp_path / "m")
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "m")
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in merged_state_dict(policy).items())


def test_critic_from_a_lora_policy_is_a_plain_trainable_trunk(tokenizer):
    policy = trained_lora(tokenizer)
    critic = ValueModel.from_policy(policy)
    names = [n for n, _ in critic.named_modules()]
    assert not any("lora" in n or "base_layer" in n for n in names)
    assert all(p.requires_grad for p in critic.parameters())
    policy_ptrs = {p.data_ptr() for p in policy.parameters()}
    assert all(p.data_ptr() not in policy_ptrs for p in critic.parameters())
    merged = merged_state_dict(policy)
    for name, p in critic.trunk.named_parameters():  # the trunk is the merged policy's
        assert torch.equal(p, merged[f"transformer.{name}"]), name


def test_adapter_round_trip_is_bitwise_and_refuses_another_rank(tmp_path, tokenizer):
    policy = trained_lora(tokenizer)
    policy.save_pretrained(tmp_path / "ck")
    fresh = apply_lora(tiny_causal_lm(tokenizer, seed=0).eval(), LoraConfig(r=4, alpha=8))
    load_adapter_into(fresh, tmp_path / "ck")
    want = dict(policy.named_parameters())
    assert all(torch.equal(p, want[n]) for n, p in fresh.named_parameters())
    other = apply_lora(tiny_causal_lm(tokenizer, seed=0).eval(), LoraConfig(r=2, alpha=8))
    with pytest.raises(InputError, match="same --lora settings"):
        load_adapter_into(other, tmp_path / "ck")
    with pytest.raises(InputError, match="not written with LoRA"):
        load_adapter_into(fresh, tmp_path)


@pytest.mark.parametrize("cfg, match", [
    (LoraConfig(r=-1), "--lora.r must be >= 0"),
    (LoraConfig(r=4, alpha=0), "--lora.alpha must be > 0"),
    (LoraConfig(r=4, dropout=1.0), r"--lora.dropout must be in \[0, 1\)"),
    (LoraConfig(target_modules=["c_attn"]), "LoRA is off"),
    (LoraConfig(save_merged=True), "LoRA is off"),
    (LoraConfig(r=4, target_modules=[]), "empty list"),
    (LoraConfig(r=4, target_modules=["q_proj"]), "pass --lora.target_modules with some of: .*c_attn"),
])
def test_bad_settings_are_one_line(tokenizer, cfg, match):
    with pytest.raises(ConfigError, match=match) as err:
        apply_lora(tiny_causal_lm(tokenizer, seed=0), cfg)
    assert "\n" not in str(err.value)


def test_adapters_twice_is_refused(tokenizer):
    policy = apply_lora(tiny_causal_lm(tokenizer, seed=0), LoraConfig(r=2))
    with pytest.raises(ConfigError, match="already has peft adapters"):
        apply_lora(policy, LoraConfig(r=2))


def test_target_modules_from_yaml_flags_and_python():
    from remax.cli import parse_train_args

    assert parse_train_args(["--lora.r", "8", "--lora.target_modules", "c_attn", "c_proj"]).lora.target_modules == [
        "c_attn", "c_proj"]
    cfg = Config()
    cfg.lora.target_modules = "c_attn, c_proj"  # a YAML scalar / comma list becomes a list
    check_types(cfg)
    assert cfg.lora.target_modules == ["c_attn", "c_proj"]
    cfg.lora.target_modules = 3
    with pytest.raises(ConfigError, match="expected a list of strings or null"):
        check_types(cfg)


def test_gradient_checkpointing_gives_the_adapters_the_same_gradients(tokenizer):
    """Checkpointed layers whose inputs are frozen base activations still pass gradients
    to the adapters (non-reentrant checkpointing), equal to the plain backward."""
    from remax.trainer.memory import enable_gradient_checkpointing

    ids, mask, resp, rmask = batch(tokenizer)
    grads = []
    for checkpointing in (False, True):
        policy = trained_lora(tokenizer)
        if checkpointing:
            assert enable_gradient_checkpointing(policy) == 2
        response_logprobs(policy, ids, mask, resp, rmask).sum().backward()
        grads.append({n: p.grad for n, p in policy.named_parameters() if p.requires_grad})
    assert all(bool(g.abs().sum() > 0) for g in grads[1].values())
    for name, g in grads[0].items():
        torch.testing.assert_close(grads[1][name], g, atol=1e-6, rtol=1e-5)
