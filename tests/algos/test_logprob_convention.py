"""One log-prob convention for the rollout engine and the trainer (issue 15, item 1): TIS
and rollout/logprob_mismatch_* compare the log-probs of the distribution the sampler drew
from (temperature, then top-k, then top-p, renormalised), which vLLM reports with
logprobs_mode="processed_logprobs". With equal weights the weights are 1 under top_p 0.9,
top_k 20, temperature 0.7, not the nucleus mass."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import LogitsProcessorList, TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

from remax.algos.variants import apply_truncated_is
from remax.config import Config
from remax.models.logprobs import response_logits, response_logprobs, sampling_log_mass
from remax.rollout.backend import HFBackend, build_backend

T, TOP_K, TOP_P = 0.7, 20, 0.9


def warped_logprobs(logits, ids, temperature=T, top_k=TOP_K, top_p=TOP_P):
    """The reference sampler: transformers' own warpers, as HF generate applies them."""
    warpers = LogitsProcessorList([TemperatureLogitsWarper(temperature)]
                                  + ([TopKLogitsWarper(top_k)] if top_k else []) + [TopPLogitsWarper(top_p)])
    flat = logits.reshape(-1, logits.shape[-1]).float()
    processed = warpers(None, flat.clone()).log_softmax(-1)  # (n, V)
    return processed.gather(-1, ids.reshape(-1, 1)).reshape(ids.shape)


@pytest.mark.parametrize("top_k, top_p", [(TOP_K, TOP_P), (0, TOP_P), (5, 1.0), (0, 0.3)])
def test_log_mass_matches_the_warpers(top_k, top_p, seed_offset):
    torch.manual_seed(seed_offset)
    logits = 3 * torch.randn(64, 50)
    warpers_lp = LogitsProcessorList([TemperatureLogitsWarper(T)] + ([TopKLogitsWarper(top_k)] if top_k else [])
                                     + ([TopPLogitsWarper(top_p)] if top_p < 1 else []))(None, logits.clone())
    ids = torch.multinomial(warpers_lp.softmax(-1), 1)[:, 0]  # (64,) drawn from the sampler
    want = warpers_lp.log_softmax(-1).gather(-1, ids[:, None])[:, 0]
    full = (logits / T).log_softmax(-1).gather(-1, ids[:, None])[:, 0]
    mass = sampling_log_mass(logits / T, ids, top_k, top_p, chunk_elements=500)  # several chunks
    torch.testing.assert_close(full - mass, want, atol=1e-5, rtol=0)
    assert (mass <= 1e-6).all() and (mass < -1e-3).any()  # a real truncation


def test_a_token_outside_the_support_keeps_a_finite_log_prob():
    logits = torch.tensor([[5.0, 4.0, -3.0, -4.0]])
    mass = sampling_log_mass(logits, torch.tensor([3]), top_k=1, top_p=1.0)
    want = torch.logsumexp(logits[0, [0, 3]], 0) - torch.logsumexp(logits[0], 0)
    assert float(mass[0]) == pytest.approx(float(want))


class WarpedEngine(HFBackend):
    """HF generate plus 'engine log-probs' of an engine holding the same weights that
    reports the sampler's distribution, as vLLM's processed_logprobs does."""

    def generate(self, prompt_ids, prompt_mask, *, n, greedy):
        ro = super().generate(prompt_ids, prompt_mask, n=n, greedy=greedy)
        with torch.no_grad():
            logits = response_logits(self.policy, ro.prompt_ids, ro.prompt_mask, ro.response_ids, ro.response_mask)
        engine = warped_logprobs(logits, ro.response_ids).masked_fill(ro.response_mask == 0, 0.0)
        engine[ro.num_prompts * ro.n :] = 0.0  # greedy rows: no engine log-probs, as vLLM's
        ro.engine_logprobs = engine
        return ro


def test_tis_weights_are_one_at_synced_weights_under_top_p_and_top_k(tokenizer, tiny_model, seed_offset):
    enc = tokenizer(["And God said", "Love is", "The Lord is"], return_tensors="pt", padding=True)
    cfg = Config()
    cfg.rollout.max_new_tokens, cfg.rollout.temperature, cfg.rollout.top_p, cfg.rollout.top_k = 12, T, TOP_P, TOP_K
    backend = WarpedEngine(tiny_model, build_backend(cfg, tiny_model, tokenizer).sampling)
    torch.manual_seed(seed_offset)
    ro = backend.generate(enc.input_ids, enc.attention_mask, n=4, greedy=False)
    logp, mass = response_logprobs(tiny_model, ro.prompt_ids, ro.prompt_mask, ro.response_ids, ro.response_mask,
                                   temperature=T, support=(TOP_K, TOP_P))
    m = ro.response_mask
    adv = torch.ones_like(m)
    weighted, stats = apply_truncated_is(adv, logp, ro.engine_logprobs, m, "token", 2.0, mass)
    assert ((weighted - adv).abs() * m).max() < 1e-4
    assert stats["rollout/is_weight_mean"] == pytest.approx(1.0, abs=1e-4)
    # the two conventions mixed read the nucleus mass as a drift: what today's trainer did
    _, mixed = apply_truncated_is(adv, logp, ro.engine_logprobs, m, "token", 2.0)
    assert mixed["rollout/is_weight_mean"] < 0.99


@pytest.mark.parametrize("algo, epochs", [("remax", 1), ("grpo", 2)])  # one pass; old log-probs before the update
def test_the_trainer_reports_no_mismatch_at_synced_weights(algo, epochs, tokenizer, tiny_model, tmp_path):
    from remax.trainer import Trainer

    cfg = Config(algo=algo, output_dir=str(tmp_path / "run"))
    cfg.loss.epochs = epochs
    cfg.rollout.n_samples, cfg.rollout.max_new_tokens = 2, 8
    cfg.rollout.temperature, cfg.rollout.top_p, cfg.rollout.top_k = T, TOP_P, TOP_K
    cfg.train.batch_size, cfg.train.steps, cfg.log.progress, cfg.loss.tis = 2, 1, False, "token"
    model = copy.deepcopy(tiny_model)
    backend = WarpedEngine(model, build_backend(cfg, model, tokenizer).sampling)
    t = Trainer(cfg, policy=model, tokenizer=tokenizer, backend=backend,
                reward_fn=lambda p, r: [float(len(x)) for x in r], rows=[{"prompt": "And God said"}, {"prompt": "Love"}])
    m = t.step()
    assert m["rollout/logprob_mismatch_max"] < 1e-4
    assert m["rollout/is_weight_mean"] == pytest.approx(1.0, abs=1e-4)
