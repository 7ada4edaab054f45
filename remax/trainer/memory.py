"""Memory options: gradient checkpointing, a bf16 or CPU-offloaded reference model.

- `train.gradient_checkpointing`: transformers' per-layer checkpointing (non-reentrant
  torch.utils.checkpoint): each decoder layer keeps only its input and recomputes the rest
  in backward. Same gradients, activation memory from (8h + 2I) to ~h elements per token
  per layer (see remax/plan.py), ~1/3 more compute in the update. transformers only
  checkpoints a layer in training mode, while this trainer keeps every module in eval
  mode (no dropout); so only the checkpointing layers themselves are flagged as
  training (their dropout submodules stay off), and generation, which runs without
  grad, keeps its KV cache.
- `model.reference_dtype`: the frozen reference in bfloat16 / float16 halves its memory;
  its log-probs are still computed in float32 from the logits (remax/models/logprobs.py).
- `model.reference_offload`: the reference lives in CPU memory and visits the device only
  for its one no-grad forward per step (policy memory - reference memory at the peak,
  at the cost of a host-to-device copy of its weights each step).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def enable_gradient_checkpointing(model: nn.Module) -> int:
    """Checkpoint every decoder layer of `model` (a causal LM or a ValueModel); returns
    how many layers were switched on (0: the architecture does not support it)."""
    target = getattr(model, "trunk", model)  # ValueModel: its transformer trunk
    if not getattr(target, "supports_gradient_checkpointing", False):
        return 0
    from transformers.modeling_layers import GradientCheckpointingLayer

    # transformers 5 renamed it activation_checkpointing_enable; older releases have only the first name
    if hasattr(target, "activation_checkpointing_enable"):
        target.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        target.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    # the decoder layers only: a model-level flag in training mode would also drop generate's cache
    layers = [m for m in target.modules() if isinstance(m, GradientCheckpointingLayer) and m.gradient_checkpointing]
    for layer in layers:
        layer.training = True  # the layer alone: its dropouts stay in eval mode
    return len(layers)


class OffloadedModel(nn.Module):
    """A frozen model kept on `home` (CPU) and moved to the inputs' device for each call."""

    def __init__(self, model: nn.Module, home: str = "cpu"):
        super().__init__()
        self.model = model.to(home)
        self.home = torch.device(home)
        self.config = getattr(model, "config", None)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        device = next((v.device for v in list(args) + list(kwargs.values()) if isinstance(v, torch.Tensor)), self.home)
        self.model.to(device)
        try:
            return self.model(*args, **kwargs)
        finally:
            self.model.to(self.home)


def checkpoint_layers(*models: Any) -> None:
    """`enable_gradient_checkpointing` on each model given (None skipped); ConfigError if
    the policy's architecture cannot checkpoint."""
    from remax.config import ConfigError

    for model in models:
        if model is not None and enable_gradient_checkpointing(model) == 0:
            raise ConfigError(f"{type(model).__name__} does not support gradient checkpointing; "
                              "set --train.gradient_checkpointing False")


def prepare_reference(reference: nn.Module, policy: nn.Module, dtype: str, offload: bool) -> nn.Module:
    """The reference in `dtype` ('same' keeps the policy's), on CPU between uses if `offload`."""
    from remax.config import ConfigError

    if dtype == "same" and not offload:
        return reference
    own = {p.data_ptr() for p in policy.parameters()}
    if any(p.data_ptr() in own for p in reference.parameters()):
        raise ConfigError("--model.reference_dtype / --model.reference_offload need a separate reference copy; with "
                          "LoRA the reference is the policy's own frozen base, so leave them at 'same' / False")
    if dtype != "same":
        reference = reference.to(DTYPES[dtype])
    return OffloadedModel(reference) if offload else reference


__all__ = ["OffloadedModel", "checkpoint_layers", "enable_gradient_checkpointing", "prepare_reference"]
