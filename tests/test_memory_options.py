"""Memory options on CPU: gradient checkpointing gives the same gradients while keeping
fewer activations; a bf16 reference gives log-probs close to fp32; an offloaded reference
gives the same log-probs and goes back to its home device."""

from __future__ import annotations

import copy

import pytest
import torch

from remax.config import Config, ConfigError
from remax.models import response_logprobs
from remax.trainer import Trainer
from remax.trainer.memory import OffloadedModel, enable_gradient_checkpointing, prepare_reference

PROMPTS = ["The Lord is", "And God said", "Blessed are the", "Love is"]


def vowel_share(prompts, responses):
    return [sum(c in "aeiou" for c in r) / max(len(r), 1) for r in responses]


def batch(tokenizer, response_len=12):
    enc = tokenizer(PROMPTS, padding=True, return_tensors="pt")
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(2, len(tokenizer), (len(PROMPTS), response_len), generator=g)
    mask = torch.ones(len(PROMPTS), response_len)
    mask[0, 7:] = 0  # one response that ended early
    return enc["input_ids"], enc["attention_mask"], ids, mask


def loss_grads_and_saved_bytes(model, tokenizer):
    """Gradient of a log-prob loss, and the bytes autograd saved for backward."""
    saved = []

    def pack(t):
        saved.append(t.numel() * t.element_size())
        return t

    model.zero_grad(set_to_none=True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        logp = response_logprobs(model, *batch(tokenizer))
    logp.sum().backward()
    return torch.cat([p.grad.flatten() for p in model.parameters()]), sum(saved)


def test_gradient_checkpointing_same_gradients_fewer_saved_activations(tiny_model, tokenizer):
    plain = copy.deepcopy(tiny_model).eval()
    ckpt = copy.deepcopy(tiny_model).eval()
    assert enable_gradient_checkpointing(ckpt) == 2  # both decoder layers
    assert not any(m.training for m in ckpt.modules() if isinstance(m, torch.nn.Dropout))  # dropout stays off
    g_plain, saved_plain = loss_grads_and_saved_bytes(plain, tokenizer)
    g_ckpt, saved_ckpt = loss_grads_and_saved_bytes(ckpt, tokenizer)
    assert g_plain.abs().max() > 1e-3
    torch.testing.assert_close(g_ckpt, g_plain, rtol=1e-5, atol=1e-7)
    # the layers' internals are recomputed in backward instead of being kept
    assert saved_ckpt < 0.7 * saved_plain


def make_trainer(model, tokenizer, tmp_path, algo="remax", **model_opts):
    cfg = Config(algo=algo, output_dir=str(tmp_path / "run"))
    cfg.rollout.max_new_tokens, cfg.train.batch_size, cfg.log.progress = 6, 2, False
    cfg.train.gradient_checkpointing = model_opts.pop("gradient_checkpointing", False)
    for k, v in model_opts.items():
        setattr(cfg.model, k, v)
    return Trainer(cfg, policy=copy.deepcopy(model), tokenizer=tokenizer, reward_fn=vowel_share,
                   rows=[{"prompt": p} for p in PROMPTS])


def test_trainer_step_with_gradient_checkpointing_matches_without(tiny_model, tokenizer, tmp_path):
    grads = []
    for on in (False, True):
        torch.manual_seed(0)
        t = make_trainer(tiny_model, tokenizer, tmp_path / str(on), algo="ppo", gradient_checkpointing=on)
        t.step()
        grads.append(torch.cat([p.grad.flatten() for p in list(t.policy.parameters()) + list(t.critic.parameters())]))
    assert all(getattr(layer, "gradient_checkpointing", False) for layer in t.critic.trunk.h)
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-4, atol=1e-7)


def test_bf16_reference_logprobs_close_to_fp32(tiny_model, tokenizer, tmp_path):
    t = make_trainer(tiny_model, tokenizer, tmp_path, reference_dtype="bfloat16")
    assert {p.dtype for p in t.reference.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in t.policy.parameters()} == {torch.float32}
    inputs = batch(tokenizer)
    with torch.no_grad():
        ref16 = response_logprobs(t.reference, *inputs)
        ref32 = response_logprobs(tiny_model, *inputs)
    assert ref16.dtype == torch.float32
    # bf16 keeps 8 bits of mantissa: logits of a tiny model (|z| < ~1) round by < ~1e-2, the
    # log-softmax by about as much; far below the ~6 nats of a uniform 300-token choice
    assert (ref16 - ref32).abs().max() < 0.05
    assert (ref16 - ref32).abs().max() > 0  # it really is a different dtype
    t.step()  # and training runs with it


def test_offloaded_reference_same_logprobs_and_back_home(tiny_model, tokenizer, tmp_path):
    t = make_trainer(tiny_model, tokenizer, tmp_path, reference_offload=True)
    assert isinstance(t.reference, OffloadedModel)
    inputs = batch(tokenizer)
    with torch.no_grad():
        torch.testing.assert_close(response_logprobs(t.reference, *inputs), response_logprobs(tiny_model, *inputs))
    assert {p.device.type for p in t.reference.parameters()} == {"cpu"}
    t.step()


def test_reference_options_refused_when_the_reference_shares_the_policy(tiny_model):
    with pytest.raises(ConfigError, match="separate reference copy"):
        prepare_reference(tiny_model, tiny_model, "bfloat16", False)
    assert prepare_reference(tiny_model, tiny_model, "same", False) is tiny_model
