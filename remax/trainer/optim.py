"""AdamW with the authors' defaults and a warmup + decay schedule.

Parameter groups as DeepSpeed-Chat builds them (the ReMax authors' code base,
`utils/utils.py: get_optimizer_grouped_parameters`, and DeepSpeed-Chat's later
`no_decay_name_list` of bias / layer_norm / layernorm / norm / ln_f weights): every bias
and every weight of a normalisation layer (LayerNorm, RMSNorm, any module whose class
name ends in "Norm" or "RMSNorm") gets weight_decay 0; the rest gets `weight_decay`.
Decaying a norm's gain pulls it towards 0, i.e. towards switching the layer off, which is
not a regulariser anyone asked for. Found by module type, not by parameter name, so it
holds for every architecture (the authors' name list, "LayerNorm.weight", misses OPT's
and Llama's norms). `decay_norm_and_bias=True` puts everything in one group, as verl
and a plain `torch.optim.AdamW(model.parameters())` do.
"""

from __future__ import annotations

import math
from typing import Any, Iterable

import torch
from torch import nn


def _is_norm(module: nn.Module) -> bool:
    return isinstance(module, (nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._BatchNorm)) or \
        type(module).__name__.endswith(("Norm", "RMSNorm", "LayerNorm", "NormLayer"))


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """[{params decayed, weight_decay}, {biases and norm weights, weight_decay 0}], trainable
    parameters only, each parameter once (tied weights are shared, not repeated)."""
    no_decay: set[int] = set()
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if _is_norm(module) or name == "bias" or name.endswith("_bias"):
                no_decay.add(id(p))
    decay, plain, seen = [], [], set()
    for p in model.parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        (plain if id(p) in no_decay else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": plain, "weight_decay": 0.0}]


def build_optimizer(params: nn.Module | Iterable[torch.nn.Parameter], lr: float, weight_decay: float,
                    betas: tuple[float, float], decay_norm_and_bias: bool = False) -> torch.optim.AdamW:
    """AdamW over a model's trainable parameters, biases and norm weights undecayed (see the
    module docstring); an iterable of parameters (or decay_norm_and_bias) is one group."""
    if isinstance(params, nn.Module) and not decay_norm_and_bias:
        groups = [g for g in parameter_groups(params, weight_decay) if g["params"]]
        return torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay, betas=tuple(betas))
    if isinstance(params, nn.Module):
        params = params.parameters()
    params = [p for p in params if p.requires_grad]
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, betas=tuple(betas))


def lr_factor(step: int, total: int, warmup: int, schedule: str) -> float:
    """Multiplier of the base lr at optimizer step `step` (0-based)."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    progress = min(max(progress, 0.0), 1.0)
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    if schedule == "linear":
        return 1.0 - progress
    return 1.0


def build_scheduler(opt: torch.optim.Optimizer, total: int, warmup: int, schedule: str):
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, total, warmup, schedule))
