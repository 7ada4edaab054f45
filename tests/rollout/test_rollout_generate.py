"""generate_rollout: sampled and greedy rows in one generate call (ReMax Algorithm 1)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from remax.rollout import Rollout, generate_rollout

PROMPTS = ["And God said", "The Lord is my shepherd; I", "Love"]  # different lengths


def encode(tokenizer, texts=PROMPTS):
    enc = tokenizer(texts, return_tensors="pt", padding=True)
    return enc.input_ids, enc.attention_mask  # (B, P) left-padded


def rollout(model, tokenizer, ids, mask, **kwargs) -> Rollout:
    kwargs.setdefault("max_new_tokens", 8)
    return generate_rollout(
        model, ids, mask, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, **kwargs
    )


def eos_likely(model, tokenizer, bias: float = 4.3) -> nn.Module:
    """A random-init model almost never emits EOS (p ~ 1/V per step). Untie the LM head
    and give it a bias with `bias` on the EOS logit: with V=300 and logits ~ +-0.3,
    p(EOS) ~ e^4.3 / (e^4.3 + 299) ~ 0.2 per step, so within 12 tokens most rows end
    and a few do not, and EOS is the argmax everywhere (greedy rows are [EOS, pad...])."""
    old = model.lm_head
    head = nn.Linear(old.in_features, old.out_features, bias=True)
    with torch.no_grad():
        head.weight.copy_(old.weight)
        head.bias.zero_()
        head.bias[tokenizer.eos_token_id] = bias
    model.lm_head = head
    return model


def test_greedy_rows_equal_separate_argmax_decoding(tokenizer, tiny_model):
    ids, mask = encode(tokenizer)
    r = rollout(tiny_model, tokenizer, ids, mask, n=3, greedy=True, temperature=0.7, top_p=0.9, top_k=20)
    ref = tiny_model.generate(
        input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=8,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )[:, ids.shape[1]:]  # (B, R')
    got = r.greedy().response_ids
    assert torch.equal(got[:, : ref.shape[1]], ref)
    assert (got[:, ref.shape[1]:] == tokenizer.pad_token_id).all()
    # sampled rows at temperature 0.7 are not all the greedy decode: the processor is row-local
    assert not torch.equal(r.sampled().response_ids, got.repeat_interleave(3, dim=0))


def test_eval_mode_during_generate_and_mode_restored(tokenizer, tiny_model):
    ids, mask = encode(tokenizer)
    expected = rollout(tiny_model, tokenizer, ids, mask, n=1, greedy=True).greedy().response_ids
    tiny_model.train()  # GPT-2 dropout 0.1: a train-mode greedy decode would differ
    tiny_model.transformer.h[0].eval()  # a mixed per-module state must come back as it was
    got = rollout(tiny_model, tokenizer, ids, mask, n=1, greedy=True).greedy().response_ids
    assert torch.equal(got, expected)
    assert tiny_model.training and tiny_model.transformer.h[1].training
    assert not tiny_model.transformer.h[0].training


def test_checkpoint_generation_config_does_not_leak_into_rollouts(tokenizer, tiny_model):
    ids, mask = encode(tokenizer)
    torch.manual_seed(0)
    clean = rollout(tiny_model, tokenizer, ids, mask, n=2, greedy=True)
    # what a generation_config.json may carry: each would change samples or greedy rows
    cfg = tiny_model.generation_config
    cfg.top_k, cfg.repetition_penalty, cfg.no_repeat_ngram_size, cfg.min_new_tokens = 1, 100.0, 1, 8
    torch.manual_seed(0)
    leaky = rollout(tiny_model, tokenizer, ids, mask, n=2, greedy=True)
    assert torch.equal(leaky.response_ids, clean.response_ids)


def test_greedy_is_deterministic_across_seeds(tokenizer, tiny_model):
    ids, mask = encode(tokenizer)
    torch.manual_seed(0)
    a = rollout(tiny_model, tokenizer, ids, mask, n=2, greedy=True)
    torch.manual_seed(1)
    b = rollout(tiny_model, tokenizer, ids, mask, n=2, greedy=True)
    assert torch.equal(a.greedy().response_ids, b.greedy().response_ids)
    assert not torch.equal(a.sampled().response_ids, b.sampled().response_ids)  # the seed does matter


def test_tiny_top_p_samples_are_greedy(tokenizer, tiny_model):
    ids, mask = encode(tokenizer)
    r = rollout(tiny_model, tokenizer, ids, mask, n=3, greedy=True, top_p=1e-6)
    assert torch.equal(r.sampled().response_ids, r.greedy().response_ids.repeat_interleave(3, dim=0))


def nucleus_probs(logits: torch.Tensor, temperature: float, top_p: float) -> torch.Tensor:
    """softmax(logits / T) restricted to the top-p nucleus and renormalised: a token is
    kept when the mass of the tokens more likely than it is < top_p."""
    p = torch.softmax(logits.double() / temperature, dim=-1)
    sorted_p, order = p.sort(descending=True)
    keep_sorted = (sorted_p.cumsum(-1) - sorted_p) < top_p
    keep = torch.zeros_like(keep_sorted).scatter(-1, order, keep_sorted)
    q = torch.where(keep, p, torch.zeros_like(p))
    return q / q.sum()


def within(freq: torch.Tensor, q: torch.Tensor, n: int) -> bool:
    """Every token's frequency within 5 binomial sigmas (+1 count) of q."""
    return bool(((freq - q).abs() <= 5 * (q * (1 - q) / n).sqrt() + 1.0 / n).all())


def test_first_token_frequencies_follow_temperature_and_top_p(tokenizer, tiny_model):
    # sharpen the random model (its logits are ~uniform) so the nucleus is a small set: the
    # largest factor whose nucleus still holds >= 3 tokens (which factor depends on the seed)
    ids, mask = encode(tokenizer, ["The Lord is"])
    T, top_p, N = 0.7, 0.8, 3000
    base = tiny_model.transformer.ln_f.weight.detach().clone()
    for factor in (30.0, 20.0, 14.0, 10.0, 7.0, 5.0):
        with torch.no_grad():
            tiny_model.transformer.ln_f.weight.copy_(base * factor)
            logits = tiny_model(input_ids=ids, attention_mask=mask).logits[0, -1]  # (V,)
        q = nucleus_probs(logits, T, top_p)
        if int((q > 0).sum()) >= 3:
            break
    assert 3 <= int((q > 0).sum()) <= len(q) // 2  # a non-trivial nucleus, or the test is empty

    torch.manual_seed(0)
    r = rollout(tiny_model, tokenizer, ids, mask, n=N, max_new_tokens=1, temperature=T, top_p=top_p)
    assert r.response_ids.shape == (N, 1)
    counts = torch.bincount(r.response_ids[:, 0], minlength=len(q)).double()
    assert counts[q == 0].sum() == 0  # nothing outside the nucleus, ever
    assert within(counts / N, q, N)
    # the same check rejects the untempered, unfiltered distribution: it has power
    assert not within(counts / N, torch.softmax(logits.double(), -1), N)
    assert not within(counts / N, nucleus_probs(logits, 1.0, top_p), N)


def first_eos_mask(row: list[int], eos: int) -> list[float]:
    end = row.index(eos) + 1 if eos in row else len(row)
    return [1.0] * end + [0.0] * (len(row) - end)


def test_masks_and_padding_when_eos_appears(tokenizer, tiny_model):
    model = eos_likely(tiny_model, tokenizer)
    ids, mask = encode(tokenizer)
    torch.manual_seed(0)
    r = rollout(model, tokenizer, ids, mask, n=4, greedy=True, max_new_tokens=12)
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    R = r.response_ids.shape[1]
    assert R <= 12 and r.response_mask.dtype == torch.float32
    rows = r.response_ids.tolist()
    ended_early = [row for row in rows if eos in row[:-1]]
    assert len(ended_early) >= 3  # the arrangement worked: the test exercises post-EOS tokens
    for row, m in zip(rows, r.response_mask.tolist()):
        assert m == first_eos_mask(row, eos)
        assert all(tok == pad for tok, keep in zip(row, m) if keep == 0)
    assert (r.greedy().response_ids[:, 0] == eos).all()  # EOS is the argmax
    assert (r.greedy().response_mask.sum(-1) == 1).all()
    # attention mask = prompt mask + response mask; positions count real tokens only
    assert torch.equal(r.attention_mask, torch.cat([r.prompt_mask, r.response_mask.long()], 1))
    P = r.prompt_ids.shape[1]
    for i in range(len(r)):
        start = int((r.prompt_mask[i] == 0).sum())  # number of left pads
        assert r.position_ids[i, start:].tolist() == list(range(P + R - start))
        assert (r.position_ids[i, :start] == 0).all()


def test_row_layout_and_views(tokenizer, tiny_model):
    ids, mask = encode(tokenizer)
    B, n = 3, 2
    r = rollout(tiny_model, tokenizer, ids, mask, n=n, greedy=True, max_new_tokens=5)
    assert len(r) == B * n + B and r.response_ids.shape[1] <= 5
    assert r.input_ids.shape == (len(r), ids.shape[1] + r.response_ids.shape[1])
    inputs = r.model_inputs()
    for key in ("input_ids", "attention_mask", "position_ids"):
        assert torch.equal(inputs[key], getattr(r, key)), key
    for i in range(B):
        for j in range(n):
            assert torch.equal(r.prompt_ids[i * n + j], ids[i]) and torch.equal(r.prompt_mask[i * n + j], mask[i])
        assert torch.equal(r.prompt_ids[B * n + i], ids[i])

    s, g = r.sampled(), r.greedy()
    assert (len(s), s.n, s.has_greedy) == (B * n, n, False)
    assert (len(g), g.n, g.num_prompts, g.has_greedy) == (B, 1, B, False)
    assert torch.equal(g.response_ids, r.response_ids[B * n :])
    with pytest.raises(ValueError, match="no greedy rows"):
        s.greedy()

    sub = r.select(torch.tensor([0, 7]))
    assert len(sub) == 2 and torch.equal(sub.response_ids, r.response_ids[[0, 7]])
    assert len(r.select(slice(2, 5))) == 3
    with pytest.raises(ValueError, match="expected"):
        Rollout(r.prompt_ids, r.prompt_mask, r.response_ids, r.response_mask, num_prompts=B, n=n, has_greedy=False)


def test_greedy_only_and_argument_checks(tokenizer, tiny_model):
    ids, mask = encode(tokenizer)
    r = rollout(tiny_model, tokenizer, ids, mask, n=0, greedy=True)
    assert len(r) == 3 and len(r.greedy()) == 3
    with pytest.raises(ValueError, match="temperature"):
        rollout(tiny_model, tokenizer, ids, mask, n=1, temperature=0.0)
    with pytest.raises(ValueError, match="n >= 1"):
        rollout(tiny_model, tokenizer, ids, mask, n=0)
