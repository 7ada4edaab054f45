"""Issue 15 on a real engine: TIS weights of 1 at synced weights under top-p / top-k
(item 1), every EOS id stops the engine (item 9), the probe keeps checkpointing on (item 6)."""

from __future__ import annotations

import copy
import dataclasses

import torch
from vllm_toy import PROMPTS, varied_model

from remax.algos.variants import apply_truncated_is
from remax.models.logprobs import response_logprobs
from remax.rollout import generate_rollout
from remax.trainer.memory import enable_gradient_checkpointing


def encode(tokenizer, texts=PROMPTS):
    enc = tokenizer(list(texts), return_tensors="pt", padding=True)
    return enc.input_ids, enc.attention_mask


def test_tis_weights_are_one_at_synced_weights(engine, toy_tokenizer, seed_offset):
    model = varied_model(toy_tokenizer, seed=11 + seed_offset)
    engine.sync(model, 0)
    T, k, p = 0.7, 20, 0.9
    saved = engine.sampling
    engine.sampling = dataclasses.replace(saved, temperature=T, top_k=k, top_p=p)
    try:
        r = engine.generate(*encode(toy_tokenizer), n=4, greedy=True).sampled()
    finally:
        engine.sampling = saved
    m = r.response_mask
    logp, mass = response_logprobs(model, r.prompt_ids, r.prompt_mask, r.response_ids, m, temperature=T,
                                   support=(k, p))
    assert float(mass.min()) < -0.05  # top-p / top-k really cut mass off here
    ones = torch.ones_like(m)
    weights, stats = apply_truncated_is(ones, logp, r.engine_logprobs, m, "token", 2.0, mass)
    assert ((weights - ones).abs() * m).max() < 1e-3, stats
    seq, _ = apply_truncated_is(ones, logp, r.engine_logprobs, m, "sequence", 2.0, mass)
    assert ((seq - ones).abs() * m).max() < 1e-3
    _, mixed = apply_truncated_is(ones, logp, r.engine_logprobs, m, "token", 2.0)  # conventions mixed
    assert mixed["rollout/is_weight_mean"] < 0.99


def test_a_second_eos_id_stops_the_engine(engine, toy_tokenizer, seed_offset):
    model = varied_model(toy_tokenizer, seed=12 + seed_offset)
    engine.sync(model, 0)
    ids, mask = encode(toy_tokenizer)
    plain = engine.generate(ids, mask, n=1, greedy=True).greedy()
    eos = toy_tokenizer.eos_token_id
    # a token some greedy response emits after its first one, other than EOS (which row and
    # token depend on the seed): declared a second EOS id, it must end that response there
    j, stop = next((j, int(t)) for j, (row, m) in enumerate(zip(plain.response_ids, plain.response_mask))
                   for t in row[1 : int(m.sum())] if int(t) != eos)
    saved = engine.sampling
    engine.sampling = dataclasses.replace(saved, eos_token_id=(toy_tokenizer.eos_token_id, stop))
    try:
        got = engine.generate(ids, mask, n=1, greedy=True).greedy()
    finally:
        engine.sampling = saved
    row = got.response_ids[j].tolist()
    end = row.index(stop) + 1
    assert got.response_mask[j].tolist() == [1.0] * end + [0.0] * (len(row) - end)
    hf_model = copy.deepcopy(model)
    hf_model.generation_config.eos_token_id = [toy_tokenizer.eos_token_id, stop]
    want = generate_rollout(hf_model, ids, mask, n=1, greedy=True, max_new_tokens=saved.max_new_tokens,
                            eos_token_id=[toy_tokenizer.eos_token_id, stop],
                            pad_token_id=toy_tokenizer.pad_token_id).greedy()
    R = min(got.response_ids.shape[1], want.response_ids.shape[1])
    assert torch.equal(got.response_mask[:, :R], want.response_mask[:, :R])


def test_the_probe_keeps_gradient_checkpointing_on(engine, toy_tokenizer, seed_offset):
    model = varied_model(toy_tokenizer, seed=13 + seed_offset)
    assert enable_gradient_checkpointing(model) > 0
    before = [(m.training, getattr(m, "gradient_checkpointing", None)) for m in model.modules()]
    assert engine.sync(model, 0)["rollout/engine_probe_diff"] <= engine.tol
    assert [(m.training, getattr(m, "gradient_checkpointing", None)) for m in model.modules()] == before
