"""Matmul kernels for the HF rollout on CPU (`rollout.hf_kernels`).

A decode step multiplies a few rows (8-16 at `remax bench speed`'s setting) by every
weight matrix of the model. With torch's default fp32 kernels (MKL's sgemm) such short
matmuls run far below the square-matmul rate: 0.28-0.45 of it at 8-16 rows on the AMD
EPYC this project is measured on (benchmarks/README.md, "Issue 19: HF rollout"). oneDNN,
which torch also ships, runs the same product on weights reordered ("packed") once into
the blocked layout its kernel streams: 0.47-0.53 of MKL's time for all of a decode step's
matmuls there, packing excluded. That packing is what torch.compile's CPU freezing and
vLLM's CPU backend do; here it is done per rollout, since the optimizer changes the
weights every step (packing every matrix costs about as much as 2-5 decode steps).
Measured end to end (gpt2-small, 8 prompts, 32 tokens, idle machine): ReMax's rollout
2.67x -> 2.08x its FLOP floor, REINFORCE's 4.35x -> 3.41x (benchmarks/README.md, "Issue
19: rollout kernels").

`hf_kernels onednn` packs every plain `nn.Linear` and GPT-2 `Conv1D` of the policy when a
rollout starts and runs their forward on the packed copy until it ends, for calls of 3 to
32 rows (`ROWS`: at one or two rows and at a prefill's many, torch's kernel is as fast or
faster); `torch` (the default) leaves the model alone. The packing is a fixed cost per
rollout: it pays on rollouts of more than a few decode steps (32 tokens: yes; rows that all
end after a handful of tokens: no, measured in benchmarks/README.md). The products are the
same up to rounding (|difference| ~1e-6 on logits), so greedy rows equal `generate`'s
except at a near-tie of the top two logits, and the sampled rows come from the same
distribution to that precision; the trainer's log-probs are computed with its own kernels,
as with a vLLM engine. Under FSDP the rollout runs inside `Dist.generation`, so the packed
copies are taken from the gathered weights (tests/distributed/test_fsdp.py).

What is not packed (its own forward runs): a module whose weight is not a plain fp32 CPU
tensor (bf16 / fp16 weights, FSDP's DTensor shards, quantized layers), any module when the
rollout runs under autocast (`train.mixed_precision bf16`), and any call whose input is not
fp32. The ops are torch's own oneDNN operators (`torch.ops.mkldnn._reorder_linear_weight`,
`_linear_pointwise`: what inductor emits for a frozen CPU linear); `available()` checks
they exist in this build, and the config check refuses `onednn` where they do not.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch import nn

KERNELS = ("torch", "onednn")  # rollout.hf_kernels
# Row counts that run packed; others keep the module's own forward. Measured on this
# project's AMD EPYC (all of gpt2-small's matmuls, oneDNN / MKL time, 7 interleaved
# repetitions): 1 row 1.28, 2 rows 1.01, 4-16 rows 0.72-0.76 (dense) and 0.47-0.53 (packed),
# 48 rows 0.97; a prefill's hundreds of rows run at MKL's square-matmul rate.
ROWS = (3, 32)


def available() -> bool:
    """Does this torch build have oneDNN and the two linear operators used here?"""
    ops = getattr(torch.ops, "mkldnn", None)
    return (torch.backends.mkldnn.is_available() and ops is not None
            and hasattr(ops, "_reorder_linear_weight") and hasattr(ops, "_linear_pointwise"))


def _conv1d_class():
    try:
        from transformers.pytorch_utils import Conv1D
    except ImportError:  # pragma: no cover - transformers is a dependency
        return None
    return Conv1D


def _plain_fp32_cpu(weight: torch.Tensor) -> bool:
    return (type(weight.data) is torch.Tensor and weight.dtype == torch.float32 and weight.device.type == "cpu")


def _weight_out_in(module: nn.Module) -> torch.Tensor | None:
    """The (out, in) weight of a plain Linear / Conv1D whose forward can run packed, else None."""
    conv1d = _conv1d_class()
    if type(module) is nn.Linear and _plain_fp32_cpu(module.weight):
        return module.weight.detach()
    if conv1d is not None and type(module) is conv1d and _plain_fp32_cpu(module.weight):
        return module.weight.detach().t().contiguous()  # Conv1D keeps (in, out)
    return None


def onednn_linear(x: torch.Tensor, packed: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """(rows, in) @ packed (out, in)^T + bias -> (rows, out), oneDNN's kernel."""
    return torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")


def _packed_forward(module: nn.Module, packed: torch.Tensor, out_features: int):
    original = type(module).forward
    bias = None if module.bias is None else module.bias.detach()

    def forward(x: torch.Tensor) -> torch.Tensor:
        if x.dtype != torch.float32 or x.device.type != "cpu" or not ROWS[0] <= x.numel() // x.shape[-1] <= ROWS[1]:
            return original(module, x)  # a prefill's many rows, a last row or two: torch's kernel is as fast
        rows = x.reshape(-1, x.shape[-1])  # (rows, in)
        y = onednn_linear(rows, packed, bias)  # (rows, out)
        return y.view(*x.shape[:-1], out_features)

    return forward


@contextlib.contextmanager
def packed_linears(model: nn.Module, rows: int) -> Iterator[int]:
    """Within the block, every eligible Linear / Conv1D of `model` runs oneDNN's matmul on
    a copy of its weight packed for `rows` rows (a hint: other row counts run correctly);
    yields how many modules were switched. Forwards are restored on exit, also on error.
    Under autocast nothing is switched (its bf16 casts must keep happening). Nothing is
    kept between rollouts: frozen weights (LoRA's base layers) are packed again too, which
    costs time but no memory beyond the rollout."""
    if torch.is_autocast_enabled("cpu") or not available():
        yield 0
        return
    switched = []
    try:
        for module in model.modules():
            if "forward" in vars(module):  # someone else's patched forward: left alone
                continue
            weight = _weight_out_in(module)
            if weight is None:
                continue
            packed = torch.ops.mkldnn._reorder_linear_weight(weight, max(int(rows), 1))
            module.forward = _packed_forward(module, packed, weight.shape[0])
            switched.append(module)
        yield len(switched)
    finally:
        for module in switched:
            del module.forward


@contextlib.contextmanager
def rollout_kernels(name: str, model: nn.Module, rows: int) -> Iterator[int]:
    """`rollout.hf_kernels` NAME for one rollout of `rows` decode rows; yields the number of
    modules running packed (0 for 'torch')."""
    if name not in KERNELS:
        raise ValueError(f"hf_kernels must be one of {', '.join(KERNELS)}, got {name!r}")
    if name == "torch":
        yield 0
        return
    with torch.no_grad(), packed_linears(model, rows) as count:
        yield count


__all__ = ["KERNELS", "available", "packed_linears", "rollout_kernels"]
