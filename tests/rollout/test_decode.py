"""The fast HF decoder (remax.rollout.decode, issue 19 item 1): one prefill per prompt shared
by its sampled and greedy rows, finished rows out of the batch. Checked against
transformers' own `generate` on GPT-2, Llama and Qwen2 tiny random models, left-padded."""

from __future__ import annotations

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

from remax.config import Config
from remax.rollout import generate_rollout
from remax.rollout.backend import HFBackend, build_backend
from remax.rollout.decode import decode_shared_prefix
from remax.rollout.logits import NonFiniteLogits

PROMPTS = ["And God said", "The Lord is my shepherd; I shall not", "Love", "In the beginning God"]


def tiny(kind: str, tokenizer, seed: int = 0):
    """A 2-layer random model of `kind` (grouped-query attention for Llama and Qwen2)."""
    ids = dict(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
               pad_token_id=tokenizer.pad_token_id)
    shape = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, max_position_embeddings=128)
    config, cls = {
        "gpt2": (GPT2Config(n_positions=128, n_embd=32, n_layer=2, n_head=2, **ids), GPT2LMHeadModel),
        "llama": (LlamaConfig(**shape, **ids), LlamaForCausalLM),
        "qwen2": (Qwen2Config(**shape, **ids), Qwen2ForCausalLM),
    }[kind]
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = cls(config).eval()
    return model


def encode(tokenizer, texts=PROMPTS):
    enc = tokenizer(list(texts), return_tensors="pt", padding=True)
    assert (enc.attention_mask[:, 0] == 0).any()  # left padding is exercised
    return enc.input_ids, enc.attention_mask


def hf_greedy(model, ids, mask, max_new_tokens, eos, pad):
    """transformers' argmax decoding, the reference: (B, R') response ids."""
    out = model.generate(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=max_new_tokens,
                         eos_token_id=eos, pad_token_id=pad, top_k=None, top_p=None, temperature=None)
    return out[:, ids.shape[1]:]


def mid_stop(model, tokenizer, ids, mask, max_new_tokens):
    """A second stop id: a token the greedy decode emits mid-way in some rows, so that rows
    end at different steps (a random-init model almost never emits its EOS)."""
    ref = hf_greedy(model, ids, mask, max_new_tokens, tokenizer.eos_token_id, tokenizer.pad_token_id)
    return int(ref[0, 2])


def rollout(model, tokenizer, ids, mask, eos, **kwargs):
    return generate_rollout(model, ids, mask, eos_token_id=eos, pad_token_id=tokenizer.pad_token_id, **kwargs)


@pytest.mark.parametrize("kind", ["gpt2", "llama", "qwen2"])
def test_greedy_rows_equal_hf_generate_token_for_token_while_rows_leave(tokenizer, kind):
    model = tiny(kind, tokenizer)
    ids, mask = encode(tokenizer)
    R = 10
    eos = [tokenizer.eos_token_id, mid_stop(model, tokenizer, ids, mask, R)]
    ref = hf_greedy(model, ids, mask, R, eos, tokenizer.pad_token_id)  # (B, R')
    torch.manual_seed(0)
    r = rollout(model, tokenizer, ids, mask, eos, n=3, greedy=True, max_new_tokens=R, temperature=1.3, top_k=50)
    got = r.greedy().response_ids
    assert torch.equal(got[:, : ref.shape[1]], ref)
    assert (got[:, ref.shape[1]:] == tokenizer.pad_token_id).all()
    lengths = r.response_mask.sum(-1)
    assert lengths.min() < lengths.max()  # rows ended at different steps: rows left the batch mid-decode
    # the same through `generate` (the reference decoder)
    same = rollout(model, tokenizer, ids, mask, eos, n=3, greedy=True, max_new_tokens=R, temperature=1.3, top_k=50,
                   decoder="generate")
    assert torch.equal(same.greedy().response_ids, got)


@pytest.mark.parametrize("kind", ["gpt2", "llama", "qwen2"])
def test_every_sampled_token_lies_in_its_own_prefix_top_k(tokenizer, kind):
    """A row that read another row's cache (a wrong repeat or select) would draw from the
    wrong distribution: with top_k = 2 of ~300 tokens, each of its tokens would fall outside
    the top-2 of its own prefix ~99% of the time. The top-2 here come from one full forward
    of each row's own prompt + response, no cache."""
    model = tiny(kind, tokenizer, seed=1)
    ids, mask = encode(tokenizer)
    R = 12
    eos = [tokenizer.eos_token_id, mid_stop(model, tokenizer, ids, mask, R)]
    torch.manual_seed(0)
    r = rollout(model, tokenizer, ids, mask, eos, n=4, greedy=True, max_new_tokens=R, top_k=2)
    lengths = r.response_mask.sum(-1)
    assert lengths.min() < R and lengths.max() > lengths.min()  # rows left mid-decode
    from remax.models.logprobs import response_logits

    with torch.no_grad():
        logits = response_logits(model, r.prompt_ids, r.prompt_mask, r.response_ids, r.response_mask)  # (N, R, V)
    top2 = logits.topk(2, dim=-1).indices  # (N, R, 2)
    inside = (top2 == r.response_ids[..., None]).any(-1)  # (N, R)
    assert inside[r.response_mask.bool()].all()
    # and the sampler did sample: the second choice was taken somewhere
    second = top2[..., 1] == r.response_ids
    assert second[: len(r) - r.num_prompts][r.sampled().response_mask.bool()].any()


def test_row_layout_n_greedy_and_greedy_only(tokenizer, tiny_model):
    ids, mask = encode(tokenizer)
    B = ids.shape[0]
    for n, greedy in ((3, True), (2, False), (0, True)):
        torch.manual_seed(0)
        r = rollout(tiny_model, tokenizer, ids, mask, tokenizer.eos_token_id, n=n, greedy=greedy, max_new_tokens=4)
        assert len(r) == B * (n + int(greedy)) and r.response_ids.shape[1] == 4
        for i in range(B):  # row i*n + j samples prompt i; row B*n + i is its greedy row
            assert all(torch.equal(r.prompt_ids[i * n + j], ids[i]) for j in range(n))
        if greedy:
            ref = hf_greedy(tiny_model, ids, mask, 4, tokenizer.eos_token_id, tokenizer.pad_token_id)
            assert torch.equal(r.greedy().response_ids, ref)


def test_decoder_switch_from_the_config_and_a_bad_name(tokenizer, tiny_model):
    ids, mask = encode(tokenizer)
    cfg = Config()
    cfg.rollout.max_new_tokens, cfg.rollout.hf_decoder = 5, "generate"
    backend = build_backend(cfg, tiny_model, tokenizer)
    assert isinstance(backend, HFBackend) and backend.decoder == "generate"
    torch.manual_seed(3)
    got = backend.generate(ids, mask, n=2, greedy=True)
    torch.manual_seed(3)
    want = rollout(tiny_model, tokenizer, ids, mask, tokenizer.eos_token_id, n=2, greedy=True, max_new_tokens=5,
                   top_p=cfg.rollout.top_p, decoder="generate")
    assert torch.equal(got.response_ids, want.response_ids)  # the seed's draws: the same generate call
    assert build_backend(Config(), tiny_model, tokenizer).decoder == "fast"  # the default
    with pytest.raises(ValueError, match="decoder must be one of fast, generate"):
        rollout(tiny_model, tokenizer, ids, mask, tokenizer.eos_token_id, n=1, decoder="vllm")


def test_same_seed_same_rollout(tokenizer, tiny_model):
    ids, mask = encode(tokenizer)
    runs = []
    for _ in range(2):
        torch.manual_seed(7)
        runs.append(rollout(tiny_model, tokenizer, ids, mask, tokenizer.eos_token_id, n=3, greedy=True,
                            max_new_tokens=6, top_p=0.9))
    assert torch.equal(runs[0].response_ids, runs[1].response_ids)


@pytest.mark.parametrize("decoder", ["fast", "generate"])
def test_nan_logits_raise_in_both_decoders(tokenizer, tiny_model, decoder):
    ids, mask = encode(tokenizer)
    with torch.no_grad():
        tiny_model.transformer.ln_f.weight[0] = float("nan")
    with pytest.raises(NonFiniteLogits):
        rollout(tiny_model, tokenizer, ids, mask, tokenizer.eos_token_id, n=1, greedy=True, max_new_tokens=3,
                decoder=decoder)


def test_decode_needs_the_model_in_eval_mode_only_through_generate_rollout(tokenizer, tiny_model):
    """decode_shared_prefix is the bare loop: in train mode (dropout 0.1) its greedy rows
    differ from the eval-mode ones; generate_rollout switches to eval mode around it."""
    ids, mask = encode(tokenizer)
    kw = dict(n=0, greedy=True, max_new_tokens=8, temperature=1.0, top_p=1.0, top_k=0,
              eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    with torch.no_grad():
        evald = decode_shared_prefix(tiny_model, ids, mask, **kw)
        tiny_model.train()
        torch.manual_seed(0)
        trained = decode_shared_prefix(tiny_model, ids, mask, **kw)
    assert not torch.equal(evald, trained)
    assert torch.equal(rollout(tiny_model, tokenizer, ids, mask, tokenizer.eos_token_id, n=0, greedy=True,
                               max_new_tokens=8).response_ids, evald)
    assert tiny_model.training


def test_second_token_frequencies_follow_temperature_top_k_and_top_p(tokenizer, tiny_model):
    """The first decode step after the shared prefill (the cache repeated to N rows): among
    the rows whose first token is the most frequent one, the second token's frequencies
    match softmax(logits / T) restricted to top-k then top-p, the logits from one forward
    of prompt + that token."""
    from .test_rollout_generate import within

    enc = tokenizer(["The Lord is"], return_tensors="pt")
    ids, mask = enc.input_ids, enc.attention_mask
    T, top_k, top_p, N = 0.8, 6, 0.9, 4000
    with torch.no_grad():  # sharpen the near-uniform random model so the support is small
        tiny_model.transformer.ln_f.weight.mul_(8.0)
    torch.manual_seed(0)
    r = rollout(tiny_model, tokenizer, ids, mask, tokenizer.eos_token_id, n=N, max_new_tokens=2, temperature=T,
                top_k=top_k, top_p=top_p)
    first = r.response_ids[:, 0]
    a = int(first.mode().values)
    rows = r.response_ids[first == a, 1]  # (M,) second tokens after the common first token
    assert len(rows) >= 500
    with torch.no_grad():
        logits = tiny_model(input_ids=torch.cat([ids, torch.tensor([[a]])], 1),
                            attention_mask=torch.cat([mask, torch.ones(1, 1, dtype=mask.dtype)], 1)).logits[0, -1]
    p = torch.softmax(logits.double() / T, -1)
    kth = p.topk(top_k).values[-1]
    p = torch.where(p >= kth, p, torch.zeros_like(p)) / p[p >= kth].sum()  # top-k, renormalised
    sorted_p, order = p.sort(descending=True)
    keep = torch.zeros_like(p, dtype=torch.bool).scatter(-1, order, (sorted_p.cumsum(-1) - sorted_p) < top_p)
    q = torch.where(keep, p, torch.zeros_like(p))
    q = q / q.sum()
    assert 3 <= int((q > 0).sum()) <= top_k  # a non-trivial support, cut by top-k or top-p
    counts = torch.bincount(rows, minlength=len(q)).double()
    assert counts[q == 0].sum() == 0
    assert within(counts / len(rows), q, len(rows))
    assert not within(counts / len(rows), torch.softmax(logits.double(), -1), len(rows))  # the check has power
