"""response_logprobs: log pi(a_t | x, a_<t) from one forward over prompt + response."""

from __future__ import annotations

import torch

from remax.algos.masks import response_mask
from remax.models import response_logprobs, rollout_logprobs
from remax.rollout import generate_rollout

PROMPTS = ["And God said", "The Lord is my shepherd; I", "Love"]


def sample_with_logits(model, tokenizer, max_new_tokens=6):
    enc = tokenizer(PROMPTS, return_tensors="pt", padding=True)
    torch.manual_seed(0)
    out = model.generate(
        input_ids=enc.input_ids, attention_mask=enc.attention_mask, do_sample=True, top_k=0,
        max_new_tokens=max_new_tokens, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, output_logits=True, return_dict_in_generate=True,
    )
    response = out.sequences[:, enc.input_ids.shape[1]:]  # (B, R)
    logits = torch.stack(out.logits, dim=1).float()  # (B, R, V) raw, before any processor
    return enc.input_ids, enc.attention_mask, response, logits


def test_equals_generate_logits_at_temperature_one(tokenizer, tiny_model):
    ids, mask, response, logits = sample_with_logits(tiny_model, tokenizer)
    expected = torch.log_softmax(logits, -1).gather(-1, response[..., None]).squeeze(-1)  # (B, R)
    rmask = response_mask(response, tokenizer.eos_token_id)
    got = response_logprobs(tiny_model, ids, mask, response, rmask)
    assert got.dtype == torch.float32 and got.shape == response.shape
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)

    # masked-out positions are exactly 0, the others do not change (causal attention)
    cut = rmask.clone()
    cut[0, -2:] = 0
    got_cut = response_logprobs(tiny_model, ids, mask, response, cut)
    assert (got_cut[0, -2:] == 0).all()
    torch.testing.assert_close(got_cut[cut.bool()], expected[cut.bool()], atol=1e-5, rtol=1e-5)


def test_left_padded_batch_equals_each_prompt_alone(tokenizer, tiny_model):
    ids, mask, response, _ = sample_with_logits(tiny_model, tokenizer)
    rmask = torch.ones_like(response, dtype=torch.float32)
    batched = response_logprobs(tiny_model, ids, mask, response, rmask)  # (B, R)
    for i, text in enumerate(PROMPTS):
        alone = tokenizer([text], return_tensors="pt").input_ids  # (1, P_i), no padding
        assert alone.shape[1] < ids.shape[1] or i == 1  # the others really are padded
        single = response_logprobs(tiny_model, alone, torch.ones_like(alone), response[i : i + 1], rmask[i : i + 1])
        torch.testing.assert_close(batched[i : i + 1], single, atol=1e-5, rtol=1e-5)


def test_temperature_divides_the_logits(tokenizer, tiny_model):
    alone = tokenizer(["The Lord is"], return_tensors="pt").input_ids  # (1, P)
    response = torch.tensor([[5, 77, 123, 9]])  # (1, R)
    full = tiny_model(input_ids=torch.cat([alone, response], 1)).logits[:, alone.shape[1] - 1 : -1]  # (1, R, V)
    ones = torch.ones_like(response, dtype=torch.float32)
    for T in (0.5, 2.0):
        expected = torch.log_softmax(full / T, -1).gather(-1, response[..., None]).squeeze(-1)
        got = response_logprobs(tiny_model, alone, torch.ones_like(alone), response, ones, temperature=T)
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    t1 = response_logprobs(tiny_model, alone, torch.ones_like(alone), response, ones)
    assert not torch.allclose(t1, got, atol=1e-3)


def test_gradients_flow_through_rollout_logprobs(tokenizer, tiny_model):
    enc = tokenizer(PROMPTS, return_tensors="pt", padding=True)
    r = generate_rollout(
        tiny_model, enc.input_ids, enc.attention_mask, n=2, greedy=True, max_new_tokens=4,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    tiny_model.train()
    logp = rollout_logprobs(tiny_model, r.sampled(), temperature=0.7)  # (B*n, R)
    assert logp.requires_grad and logp.shape == r.sampled().response_ids.shape
    (-logp.sum()).backward()
    grads = [p.grad for p in tiny_model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert tiny_model.transformer.wte.weight.grad.abs().sum() > 0
