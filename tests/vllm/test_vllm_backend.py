"""The vLLM backend against the HF reference, on one real engine: same greedy rows, the
sampled rows' log-probs and frequencies at the run's temperature, pushes that take and a
skipped push that the probe catches."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from vllm_toy import MAX_NEW, PROMPTS, toy_model, varied_model

from remax.models.logprobs import rollout_logprobs
from remax.rollout import generate_rollout
from remax.rollout.backend import EngineOutOfSync


def encode(tokenizer, texts=PROMPTS[:3]):
    enc = tokenizer(list(texts), return_tensors="pt", padding=True)
    return enc.input_ids, enc.attention_mask  # (B, P) left-padded, different lengths


def hf_rollout(model, tokenizer, ids, mask, **kw):
    kw = {"max_new_tokens": MAX_NEW, "top_p": 1.0, **kw}
    return generate_rollout(model, ids, mask, eos_token_id=tokenizer.eos_token_id,
                            pad_token_id=tokenizer.pad_token_id, **kw)


def eos_often(model, tokenizer, shift: float):
    """Make EOS frequent without changing the architecture (vLLM's GPT-2 ties the LM head,
    so there is no head bias to add): shrink ln_f's gain so h ~ ln_f.bias = b for every
    position, and move EOS's embedding along b so that its logit rises by `shift`."""
    with torch.no_grad():
        lnf, wte = model.transformer.ln_f, model.transformer.wte.weight
        lnf.weight.mul_(0.3)
        b = torch.randn(lnf.bias.shape, generator=torch.Generator().manual_seed(0))
        lnf.bias.copy_(b * 3.0 / (wte.std() * b.norm()))  # logits of other tokens spread ~ +-3
        wte[tokenizer.eos_token_id] += shift * lnf.bias / lnf.bias.norm() ** 2
    return model


@pytest.mark.parametrize("shift", [None, 4.0])
def test_greedy_rows_equal_hf_token_for_token(engine, toy_tokenizer, shift):
    model = varied_model(toy_tokenizer, seed=1)
    if shift is not None:
        model = eos_often(model, toy_tokenizer, shift)
    engine.sync(model, 0)
    ids, mask = encode(toy_tokenizer, PROMPTS)
    got = engine.generate(ids, mask, n=2, greedy=True)
    want = hf_rollout(model, toy_tokenizer, ids, mask, n=2, greedy=True)
    g, w = got.greedy(), want.greedy()
    assert torch.equal(g.response_ids, w.response_ids) and torch.equal(g.response_mask, w.response_mask)
    if shift is None:  # eos_often makes every position alike; the plain model must not
        assert len(set(map(tuple, g.response_ids.tolist()))) >= 3  # not one repeated token for every prompt
    assert torch.equal(got.prompt_ids, want.prompt_ids) and torch.equal(got.prompt_mask, want.prompt_mask)
    assert (got.n, got.num_prompts, got.has_greedy, len(got)) == (2, len(PROMPTS), True, 3 * len(PROMPTS))
    if shift is not None:  # EOS inside the responses: mask up to and including the first EOS, pad after
        eos, pad = toy_tokenizer.eos_token_id, toy_tokenizer.pad_token_id
        rows = got.response_ids.tolist()
        assert sum(eos in row[:-1] for row in rows) >= 3, rows  # the arrangement worked ...
        assert (g.response_mask.sum(-1) < g.response_ids.shape[1]).any()  # ... for greedy rows too
        for row, m in zip(rows, got.response_mask.tolist()):
            end = row.index(eos) + 1 if eos in row else len(row)
            assert m == [1.0] * end + [0.0] * (len(row) - end)
            assert all(t == pad for t in row[end:])


def test_sampled_logprobs_are_the_trainers_at_the_temperature(engine, toy_tokenizer):
    model = toy_model(toy_tokenizer, seed=2)
    engine.sync(model, 0)
    engine.sampling = dataclasses.replace(engine.sampling, temperature=0.7)
    try:
        ids, mask = encode(toy_tokenizer)
        r = engine.generate(ids, mask, n=4, greedy=True).sampled()
    finally:
        engine.sampling = dataclasses.replace(engine.sampling, temperature=1.0)
    m = r.response_mask
    at_07 = rollout_logprobs(model, r, temperature=0.7)
    at_1 = rollout_logprobs(model, r, temperature=1.0)
    assert ((r.engine_logprobs - at_07).abs() * m).max() < 1e-4  # fp32: rounding only
    assert ((r.engine_logprobs - at_1).abs() * m).max() > 1e-2  # the check can tell temperatures apart
    assert (r.engine_logprobs[m == 0] == 0).all()


def test_first_token_frequencies_follow_the_temperature(engine, toy_tokenizer):
    model = toy_model(toy_tokenizer, seed=3)
    with torch.no_grad():  # sharpen the near-uniform random model so temperatures differ visibly
        model.transformer.ln_f.weight.mul_(2.0)
    engine.sync(model, 0)
    ids, mask = encode(toy_tokenizer, ["the day is"])
    T, N = 0.7, 2000
    engine.sampling = dataclasses.replace(engine.sampling, temperature=T, max_new_tokens=1)
    try:
        r = engine.generate(ids, mask, n=N, greedy=False)
    finally:
        engine.sampling = dataclasses.replace(engine.sampling, temperature=1.0, max_new_tokens=MAX_NEW)
    logits = model(input_ids=ids, attention_mask=mask).logits[0, -1].double()  # (V,)
    freq = torch.bincount(r.response_ids[:, 0], minlength=len(logits)).double() / N

    def within(q):  # every token within 5 binomial sigmas (+1 count) of q
        return bool(((freq - q).abs() <= 5 * (q * (1 - q) / N).sqrt() + 1.0 / N).all())

    assert within(torch.softmax(logits / T, -1))
    assert not within(torch.softmax(logits, -1))  # the same check rejects temperature 1


def test_a_push_changes_the_output_and_passes_the_probe(engine, toy_tokenizer):
    before, after = varied_model(toy_tokenizer, seed=4), varied_model(toy_tokenizer, seed=5)
    ids, mask = encode(toy_tokenizer, PROMPTS)
    assert engine.sync(before, 0)["rollout/engine_probe_diff"] <= engine.tol
    old = engine.generate(ids, mask, n=1, greedy=True).greedy().response_ids
    metrics = engine.sync(after, 1)
    assert 0 <= metrics["rollout/engine_probe_diff"] <= engine.tol == 1e-4
    new = engine.generate(ids, mask, n=1, greedy=True).greedy().response_ids
    assert not torch.equal(new, old)
    assert torch.equal(new, hf_rollout(after, toy_tokenizer, ids, mask, n=1, greedy=True).greedy().response_ids)


def test_a_skipped_push_fails_the_probe(engine, toy_tokenizer):
    model = toy_model(toy_tokenizer, seed=6)
    engine.sync(model, 0)
    with torch.no_grad():  # one "optimizer step" the engine never hears of
        for p in model.parameters():
            p.add_(1e-2 * torch.randn_like(p))
    assert engine.probe_diff(model) > 10 * engine.tol
    with pytest.raises(EngineOutOfSync, match=r"not the policy's at step 7: .* > rollout.verify_tol 0.0001"):
        engine.verify(model, 7)
    engine.verify_every = 2
    try:
        assert engine.sync(model, 3) == {}  # pushed, not checked this step
    finally:
        engine.verify_every = 1
    assert engine.probe_diff(model) <= engine.tol  # the push took
