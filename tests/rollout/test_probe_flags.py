"""The vLLM probe and generation leave the policy's module flags as they found them
(issue 15, item 6): the trainer keeps the model in eval mode with only its checkpointing
layers in training mode, which a plain `policy.train(False)` would reset, switching
gradient checkpointing off for the rest of the run."""

from __future__ import annotations

import copy
import sys
import types
from types import SimpleNamespace

import torch

from remax.rollout.generate import eval_mode
from remax.trainer.memory import enable_gradient_checkpointing


def flags(model):
    return [(name, m.training, getattr(m, "gradient_checkpointing", None)) for name, m in model.named_modules()]


def checkpointed(tiny_model):
    model = copy.deepcopy(tiny_model).eval()
    assert enable_gradient_checkpointing(model) > 0
    return model


def test_eval_mode_restores_every_flag(tiny_model):
    model = checkpointed(tiny_model)
    before = flags(model)
    assert any(training for _, training, _ in before) and not model.training  # the mixed state the trainer keeps
    with eval_mode(model):
        assert not any(m.training for m in model.modules())
    assert flags(model) == before


def test_the_vllm_probe_keeps_gradient_checkpointing_on(tiny_model, monkeypatch):
    """The probe's trainer side on CPU: a stand-in engine answers with the trainer's own
    log-probs, so only the flag handling is under test (tests/vllm runs the real one)."""
    from remax.models.logprobs import response_logprobs
    from remax.rollout.backend import Sampling
    from remax.rollout.vllm import VLLMBackend

    monkeypatch.setitem(sys.modules, "vllm", types.SimpleNamespace(SamplingParams=lambda **kw: kw))
    model = checkpointed(tiny_model)
    before = flags(model)

    class Engine:
        def generate(self, prompts, params, use_tqdm=False):
            ids = torch.tensor(prompts[0]["prompt_token_ids"])[None]
            with torch.no_grad(), eval_mode(model):
                lp = response_logprobs(model, ids[:, :1], torch.ones_like(ids[:, :1]), ids[:, 1:],
                                       torch.ones(1, ids.shape[1] - 1))[0]
            rows = [None] + [{int(t): SimpleNamespace(logprob=float(v))} for t, v in zip(ids[0, 1:], lp)]
            return [SimpleNamespace(prompt_logprobs=rows)]

    sampling = Sampling(max_new_tokens=4, temperature=1.0, top_p=1.0, top_k=0, eos_token_id=0, pad_token_id=0)
    backend = VLLMBackend(Engine(), sampling, device=torch.device("cpu"), dtype=torch.float32,
                          vocab_size=model.config.vocab_size, probe_len=12)
    assert backend.probe_diff(model) < 1e-5
    assert flags(model) == before  # today: every checkpointing layer had training=False
