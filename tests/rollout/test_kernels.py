"""`rollout.hf_kernels onednn` (remax.rollout.kernels): the HF rollout's Linear / Conv1D
forwards run oneDNN's matmul on weights packed once per rollout."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from remax.config import Config, ConfigError
from remax.rollout.backend import HFBackend, build_backend
from remax.rollout.kernels import available, packed_linears, rollout_kernels
from remax.trainer.validate import validate_config
from remax.algos import get_algorithm
from .test_decode import encode, mid_stop, rollout, tiny

pytestmark = pytest.mark.skipif(not available(), reason="this torch build has no oneDNN linear operators")


def hand_modules():
    """y = W x + b with W = [[1, 2], [3, 4], [5, 6]], b = [1, 0, -1], as an nn.Linear and as
    GPT-2's Conv1D (which keeps W transposed)."""
    W, b = torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]), torch.tensor([1.0, 0.0, -1.0])
    linear = nn.Linear(2, 3)
    conv = Conv1D(3, 2)
    with torch.no_grad():
        linear.weight.copy_(W), linear.bias.copy_(b)
        conv.weight.copy_(W.t()), conv.bias.copy_(b)
    return linear, conv


def test_packed_forward_by_hand_and_restored(monkeypatch):
    import remax.rollout.kernels as kernels

    calls = []
    real = kernels.onednn_linear
    monkeypatch.setattr(kernels, "onednn_linear", lambda *a: calls.append(a[0].shape[0]) or real(*a))
    linear, conv = hand_modules()
    model = nn.ModuleList([linear, conv])
    x = torch.tensor([[1.0, 1.0], [2.0, 0.0], [0.0, 1.0], [-1.0, 1.0]])  # (4, 2); a third axis too: (1, 4, 2)
    # [1+2+1, 3+4+0, 5+6-1], [2+1, 6, 10-1], [2+1, 4, 6-1], [-1+2+1, -3+4, -5+6-1]
    want = torch.tensor([[4.0, 7.0, 10.0], [3.0, 6.0, 9.0], [3.0, 4.0, 5.0], [2.0, 1.0, 0.0]])
    with torch.no_grad(), packed_linears(model, rows=4) as count:
        assert count == 2 and "forward" in vars(linear) and "forward" in vars(conv)
        assert torch.equal(linear(x), want) and torch.equal(conv(x), want)
        assert torch.equal(conv(x[None]), want[None])
        assert calls == [4, 4, 4]  # oneDNN ran all three
        assert torch.equal(linear(x[:1]), want[:1]) and calls == [4, 4, 4]  # one row: torch's kernel
        wide = torch.ones(kernels.ROWS[1] + 1, 2)  # more rows than the window: torch's kernel
        assert torch.equal(conv(wide), want[:1].expand(len(wide), 3))  # every row is x's first
        assert calls == [4, 4, 4]
        with pytest.raises(RuntimeError, match="same dtype"):  # a non-fp32 input: the module's own forward and error
            linear(x.double())
    assert "forward" not in vars(linear) and "forward" not in vars(conv)  # restored


def test_restored_after_an_error_and_what_is_left_alone():
    linear, conv = hand_modules()
    with pytest.raises(RuntimeError, match="boom"), packed_linears(nn.ModuleList([linear, conv]), rows=4):
        raise RuntimeError("boom")
    assert "forward" not in vars(linear) and "forward" not in vars(conv)
    half = nn.Linear(2, 3).to(torch.bfloat16)  # not fp32
    patched = nn.Linear(2, 3)
    patched.forward = lambda x: x  # someone else's instance forward (accelerate's hooks do this)
    with packed_linears(nn.ModuleList([half, patched]), rows=4) as count:
        assert count == 0
    with torch.autocast("cpu", dtype=torch.bfloat16), packed_linears(nn.ModuleList([linear, conv]), rows=4) as count:
        assert count == 0  # under autocast: bf16 kernels, nothing packed
    with rollout_kernels("torch", nn.ModuleList([linear, conv]), rows=4) as count:
        assert count == 0 and "forward" not in vars(linear)
    with pytest.raises(ValueError, match="hf_kernels must be one of torch, onednn"):
        with rollout_kernels("mkl", linear, rows=4):
            pass


@pytest.mark.parametrize("kind", ["gpt2", "llama", "qwen2"])
def test_rollout_with_packed_kernels_equals_torch_kernels(tokenizer, kind):
    """Left-padded prompts, rows ending at different steps (a second stop id), n=3 + greedy:
    greedy rows equal token for token; the same seed gives the same samples (the
    probabilities differ by rounding only); logits of a whole forward within 1e-4."""
    model = tiny(kind, tokenizer)
    ids, mask = encode(tokenizer)
    eos = [tokenizer.eos_token_id, mid_stop(model, tokenizer, ids, mask, 10)]
    modules = sum(type(m) in (nn.Linear, Conv1D) for m in model.modules())
    runs = {}
    for kernels in ("torch", "onednn"):
        torch.manual_seed(0)
        with rollout_kernels(kernels, model, rows=ids.shape[0] * 4) as count:
            assert count == (modules if kernels == "onednn" else 0)
            runs[kernels] = rollout(model, tokenizer, ids, mask, eos, n=3, greedy=True, max_new_tokens=10, top_p=0.9)
            with torch.no_grad():
                logits = model(input_ids=ids, attention_mask=mask).logits
            runs[kernels + "/logits"] = logits
    assert torch.equal(runs["onednn"].greedy().response_ids, runs["torch"].greedy().response_ids)
    assert torch.equal(runs["onednn"].response_ids, runs["torch"].response_ids)
    lengths = runs["onednn"].response_mask.sum(-1)
    assert lengths.min() < lengths.max()  # rows left the batch mid-decode
    diff = (runs["onednn/logits"] - runs["torch/logits"]).abs().max()
    assert diff < 1e-4


def test_backend_from_the_config(tokenizer, tiny_model, monkeypatch):
    import contextlib

    import remax.rollout.backend as backend_module

    ids, mask = encode(tokenizer)
    cfg = Config()
    cfg.rollout.max_new_tokens, cfg.rollout.hf_kernels = 5, "onednn"
    backend = build_backend(cfg, tiny_model, tokenizer)
    assert isinstance(backend, HFBackend) and backend.kernels == "onednn"
    seen = []

    @contextlib.contextmanager
    def spy(name, model, rows):  # the real function, its yielded count recorded
        with rollout_kernels(name, model, rows) as count:
            seen.append((name, rows, count))
            yield count

    monkeypatch.setattr(backend_module, "rollout_kernels", spy)
    torch.manual_seed(3)
    got = backend.generate(ids, mask, n=2, greedy=True)
    modules = sum(type(m) in (nn.Linear, Conv1D) for m in tiny_model.modules())
    assert seen == [("onednn", ids.shape[0] * 3, modules)] and modules > 0
    torch.manual_seed(3)
    want = build_backend(Config(), tiny_model, tokenizer)
    assert want.kernels == "torch"  # the default
    want.sampling = backend.sampling
    assert torch.equal(got.response_ids, want.generate(ids, mask, n=2, greedy=True).response_ids)
    assert all("forward" not in vars(m) for m in tiny_model.modules())  # the policy is left as found
    on_meta = tiny("gpt2", tokenizer).to("meta")
    with pytest.raises(ConfigError, match="packs weights for CPU matmuls, and the policy is on meta"):
        HFBackend(on_meta, backend.sampling, kernels="onednn")


@pytest.mark.parametrize("setting, message", [
    ({"backend": "vllm"}, "sets the hf backend's kernels; --rollout.backend vllm runs its own"),
    ({"mixed_precision": "bf16"}, "under --train.mixed_precision bf16 the rollout runs autocast's kernels"),
])
def test_combinations_refused_in_one_line(setting, message):
    cfg = Config(output_dir="/tmp/remax-unused")
    cfg.model.policy, cfg.data.train_file = "some/model", "prompts.jsonl"
    cfg.rollout.hf_kernels = "onednn"
    cfg.rollout.backend = setting.get("backend", "hf")
    cfg.train.mixed_precision = setting.get("mixed_precision", "no")
    with pytest.raises(ConfigError, match=message):
        validate_config(cfg, get_algorithm("remax"))


def test_lora_policy_rollout_equals_torch_kernels(tokenizer):
    """A LoRA policy (peft): base layers and adapter matrices run packed, the adapters'
    nonzero update included."""
    from remax.config import LoraConfig
    from remax.models.lora import apply_lora

    model = apply_lora(tiny("llama", tokenizer), LoraConfig(r=4, alpha=8))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)  # a trained adapter: B != 0
    model.eval()
    ids, mask = encode(tokenizer)
    runs = {}
    for kernels in ("torch", "onednn"):
        torch.manual_seed(0)
        with rollout_kernels(kernels, model, rows=ids.shape[0] * 2) as count:
            runs[kernels] = rollout(model, tokenizer, ids, mask, tokenizer.eos_token_id, n=1, greedy=True,
                                    max_new_tokens=8, top_p=0.9)
            runs[kernels + "/count"] = count
    assert runs["onednn/count"] > 0
    assert torch.equal(runs["onednn"].response_ids, runs["torch"].response_ids)
