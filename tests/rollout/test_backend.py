"""The rollout backend seam: build_backend, the HF backend, the log-prob mismatch meter."""

from __future__ import annotations

import pytest
import torch

from remax.config import Config, ConfigError
from remax.rollout import Rollout, generate_rollout
from remax.rollout.backend import HFBackend, add_logprob_mismatch, build_backend, logprob_mismatch_metrics


def encode(tokenizer, texts=("And God said", "Love")):
    enc = tokenizer(list(texts), return_tensors="pt", padding=True)
    return enc.input_ids, enc.attention_mask


def test_hf_backend_is_generate_rollout_with_the_config_settings(tokenizer, tiny_model):
    cfg = Config()
    cfg.rollout.max_new_tokens, cfg.rollout.temperature, cfg.rollout.top_p, cfg.rollout.top_k = 5, 0.7, 0.9, 20
    backend = build_backend(cfg, tiny_model, tokenizer)
    assert isinstance(backend, HFBackend)
    assert backend.sync(tiny_model, 0) == {}  # shares the policy's weights: nothing to push or check
    ids, mask = encode(tokenizer)
    torch.manual_seed(3)
    got = backend.generate(ids, mask, n=2, greedy=True)
    torch.manual_seed(3)
    want = generate_rollout(tiny_model, ids, mask, n=2, greedy=True, max_new_tokens=5, temperature=0.7, top_p=0.9,
                            top_k=20, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    assert torch.equal(got.response_ids, want.response_ids) and torch.equal(got.response_mask, want.response_mask)
    assert got.engine_logprobs is None and (got.n, got.has_greedy) == (2, True)
    backend.close()


def test_unknown_backend_is_one_config_error(tokenizer, tiny_model):
    cfg = Config()
    cfg.rollout.backend = "vlm"
    with pytest.raises(ConfigError, match="rollout.backend 'vlm' is not one of hf, vllm"):
        build_backend(cfg, tiny_model, tokenizer)


def test_logprob_mismatch_by_hand():
    # two micro-batches; the masked token's (huge) difference must not count
    acc: dict[str, float] = {}
    engine = torch.tensor([[-1.0, -2.0, -9.0]])
    trainer = torch.tensor([[-1.5, -2.0, 0.0]], requires_grad=True)
    add_logprob_mismatch(acc, engine, trainer, torch.tensor([[1.0, 1.0, 0.0]]))
    add_logprob_mismatch(acc, torch.tensor([[-0.1, -3.0]]), torch.tensor([[-0.3, -2.9]]), torch.tensor([[1.0, 1.0]]))
    m = logprob_mismatch_metrics(acc)
    # |diffs| on counted tokens: 0.5, 0.0, 0.2, 0.1 -> max 0.5, mean 0.8 / 4 = 0.2
    assert m["rollout/logprob_mismatch_max"] == pytest.approx(0.5)
    assert m["rollout/logprob_mismatch_mean"] == pytest.approx(0.2)
    assert all(k.startswith("_") for k in acc)  # private to the loop's accumulator


def test_no_engine_logprobs_no_metrics():
    acc: dict[str, float] = {}
    add_logprob_mismatch(acc, None, torch.zeros(2, 3), torch.ones(2, 3))
    assert acc == {} and logprob_mismatch_metrics(acc) == {}


def test_engine_logprobs_follow_the_rows(tokenizer):
    B, n, R = 2, 2, 3
    ids = torch.arange(B * (n + 1) * 2).view(-1, 2)
    lp = -torch.arange(B * (n + 1) * R, dtype=torch.float32).view(-1, R)  # row i holds -(3i .. 3i+2)
    r = Rollout(ids, torch.ones_like(ids), torch.zeros(len(ids), R, dtype=torch.long), torch.ones(len(ids), R),
                num_prompts=B, n=n, has_greedy=True, engine_logprobs=lp)
    assert torch.equal(r.sampled().engine_logprobs, lp[:4])
    assert torch.equal(r.greedy().engine_logprobs, lp[4:])
    assert torch.equal(r.select([1, 3]).engine_logprobs, lp[[1, 3]])
    with pytest.raises(ValueError, match="engine_logprobs"):
        Rollout(ids, torch.ones_like(ids), torch.zeros(len(ids), R, dtype=torch.long), torch.ones(len(ids), R),
                num_prompts=B, n=n, has_greedy=True, engine_logprobs=lp[:, :2])


def test_vllm_backend_without_vllm_is_one_line_naming_the_install(tokenizer, tiny_model):
    import importlib.util

    from remax.errors import InputError

    spec = importlib.util.find_spec("vllm")
    if spec is not None and spec.origin is not None:
        pytest.skip("vLLM is installed here: tests/vllm cover this backend")
    cfg = Config()
    cfg.rollout.backend = "vllm"
    with pytest.raises(InputError, match=r"needs vLLM.*pip install 'remax\[vllm\]'.*make vllm-venv") as err:
        build_backend(cfg, tiny_model, tokenizer)
    assert "\n" not in str(err.value)
