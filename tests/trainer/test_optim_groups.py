"""AdamW does not decay biases and normalisation weights (issue 15, item 12), as the
ReMax authors' DeepSpeed-Chat parameter groups; `train.decay_norm_and_bias` (verl) decays all."""

from __future__ import annotations

import copy

import torch

from remax.trainer.optim import build_optimizer, parameter_groups


def test_biases_and_norm_weights_get_no_decay(tiny_model):
    groups = parameter_groups(tiny_model, 0.1)
    names = {id(p): n for n, p in tiny_model.named_parameters()}
    undecayed = sorted(names[id(p)] for p in groups[1]["params"])
    decayed = sorted(names[id(p)] for p in groups[0]["params"])
    assert "transformer.ln_f.weight" in undecayed and "transformer.h.0.ln_1.weight" in undecayed
    assert all(n.endswith("bias") or ".ln_" in n for n in undecayed)
    assert all(not n.endswith("bias") and ".ln_" not in n for n in decayed)
    assert "transformer.h.0.attn.c_attn.weight" in decayed and "transformer.wte.weight" in decayed
    assert len(decayed) + len(undecayed) == len(list(tiny_model.parameters()))


def test_a_decay_step_leaves_norm_gains_and_biases_alone(tiny_model):
    """Zero gradients: AdamW moves a weight only by its decay, lr * wd * w."""
    for flag, moved in ((False, False), (True, True)):
        model = copy.deepcopy(tiny_model)
        with torch.no_grad():
            model.transformer.ln_f.bias.fill_(0.5)
        opt = build_optimizer(model, lr=0.1, weight_decay=0.5, betas=(0.9, 0.95), decay_norm_and_bias=flag)
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        for p in model.parameters():
            p.grad = torch.zeros_like(p)
        opt.step()
        after = dict(model.named_parameters())
        for name in ("transformer.ln_f.weight", "transformer.ln_f.bias"):
            assert (not torch.equal(after[name], before[name])) == moved, name
        torch.testing.assert_close(after["transformer.h.0.mlp.c_fc.weight"],
                                   before["transformer.h.0.mlp.c_fc.weight"] * (1 - 0.1 * 0.5))
