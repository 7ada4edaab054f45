"""examples/remax_minimal.py computes the same ReMax loss as the library."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

from remax.algos import policy_gradient_loss, remax_returns, response_mask
from remax.models import response_logprobs

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "remax_minimal.py"


def load_example():
    spec = importlib.util.spec_from_file_location("remax_minimal", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_example_is_short_and_standalone():
    text = EXAMPLE.read_text()
    assert len(text.splitlines()) < 250
    assert "import remax" not in text and "from remax" not in text


def test_example_loss_equals_library_loss():
    ex = load_example()
    torch.manual_seed(0)
    tok = ex.build_tokenizer()
    policy, reference = ex.build_model(tok, seed=0).eval(), ex.build_model(tok, seed=1).eval()
    p_ids, p_mask, sampled, greedy = ex.rollout(policy, tok, ex.PROMPTS, max_new_tokens=8)
    eos = tok.eos_token_id
    s_mask = ex.response_mask(sampled, eos)
    assert torch.equal(s_mask, response_mask(sampled, eos))
    r = ex.reward(ex.decode(tok, sampled, s_mask))
    b = ex.reward(ex.decode(tok, greedy, ex.response_mask(greedy, eos))) + 0.25  # any baseline

    # the example, with grad
    lp_ex = ex.logprobs(policy, p_ids, p_mask, sampled, s_mask)
    with torch.no_grad():
        ref_ex = ex.logprobs(reference, p_ids, p_mask, sampled, s_mask)
    loss_ex = ex.remax_loss(lp_ex, ref_ex, s_mask, r, b, kl_coef=0.1)
    (g_ex,) = torch.autograd.grad(loss_ex, policy.transformer.wte.weight)

    # the library
    lp = response_logprobs(policy, p_ids, p_mask, sampled, s_mask)
    with torch.no_grad():
        ref = response_logprobs(reference, p_ids, p_mask, sampled, s_mask)
    G = remax_returns(r, b, lp, ref, s_mask, kl_coef=0.1)
    loss = policy_gradient_loss(lp, G, s_mask, "token_mean")
    (g,) = torch.autograd.grad(loss, policy.transformer.wte.weight)

    torch.testing.assert_close(lp_ex, lp, rtol=1e-5, atol=1e-6)
    assert abs(loss_ex.item()) > 1e-4
    torch.testing.assert_close(loss_ex, loss, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(g_ex, g, rtol=1e-4, atol=1e-7)
