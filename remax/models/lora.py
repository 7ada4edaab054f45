"""LoRA adapters on the policy (Hu et al., arXiv 2106.09685), through peft.

With `--lora.r R` only low-rank adapters train: each adapted weight W becomes
W + (alpha / r) * B A, with A (r, in) random and B (out, r) zero at the start, so the
adapted policy starts equal to the base. Three things follow for ReMax-style training:

- pi_ref needs no second copy of the weights: it IS the base, i.e. the policy with its
  adapters switched off (peft's `disable_adapter()` context). `AdaptersOff` is that
  reference, behind the same seam as the deep copy of full fine-tuning: something the
  loop calls `response_logprobs` on (`remax.models.loading.make_reference` picks it).
- checkpoints and `final/` hold the adapter only (`adapter_model.safetensors`, loadable
  with `peft.PeftModel.from_pretrained(base, path)`); the frozen base is re-read from
  `model.policy` on resume. `merged_copy` / `merged_state_dict` give plain weights
  (W + scale * B A) for `final/merged/` and for rollout backends that need a plain model.
- PPO's critic is built from a merged, plain copy of the trunk (no adapters), see
  `remax.models.critic.ValueModel.from_policy`.

Departure from peft's defaults: none; `target_modules=None` takes peft's per-architecture
default (GPT-2: c_attn, Llama: q_proj, v_proj).
"""

from __future__ import annotations

import copy
import functools
import os
import warnings
from typing import Any

import torch
from torch import nn

from remax.config import ConfigError, LoraConfig
from remax.errors import InputError

ADAPTER_WEIGHTS = "adapter_model.safetensors"


def is_peft_model(model: Any) -> bool:
    """True for a peft PeftModel (a model with adapters that can be switched off)."""
    return hasattr(model, "peft_config") and hasattr(model, "disable_adapter") and hasattr(model, "get_base_model")


def check_lora_config(cfg: LoraConfig) -> None:
    """ConfigError, one line, for a LoRA setting that cannot work or would be silently ignored."""
    if cfg.r < 0:
        raise ConfigError(f"--lora.r must be >= 0 (0 turns LoRA off), got {cfg.r}")
    if cfg.r == 0:
        for name, value in (("target_modules", cfg.target_modules), ("save_merged", cfg.save_merged)):
            if value:
                raise ConfigError(f"--lora.{name} is set but LoRA is off (--lora.r 0); pass --lora.r 16 (or another rank)")
        return
    if cfg.alpha <= 0:
        raise ConfigError(f"--lora.alpha must be > 0, got {cfg.alpha}")
    if not 0 <= cfg.dropout < 1:
        raise ConfigError(f"--lora.dropout must be in [0, 1), got {cfg.dropout}")
    if cfg.target_modules is not None and not cfg.target_modules:
        raise ConfigError("--lora.target_modules is an empty list; name modules (e.g. q_proj v_proj), all-linear, or None")


def _linear_names(model: nn.Module) -> list[str]:
    """Distinct last names of the linear-like modules, to suggest as target_modules."""
    kinds = (nn.Linear, nn.Conv1d, nn.Embedding)
    names = {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, kinds) or type(m).__name__ == "Conv1D"}
    return sorted(names)


def apply_lora(policy: nn.Module, cfg: LoraConfig, task_type: str = "CAUSAL_LM") -> nn.Module:
    """With cfg.r > 0: wrap `policy` (in place: its modules gain adapters) as a peft model
    whose only trainable parameters are the adapters, returned in eval mode, as the loop
    runs it; the adapters' A matrices draw from torch's global RNG (seeded by train.seed).
    With cfg.r == 0 (LoRA off): `policy` itself, after checking the other fields.
    `task_type` "SEQ_CLS" (a reward model, `remax rm`): peft also trains and saves the
    classification head (its modules_to_save), which starts random."""
    import peft

    check_lora_config(cfg)
    if cfg.r == 0:
        return policy
    if is_peft_model(policy):
        raise ConfigError("the policy already has peft adapters; pass its base model, or set --lora.r 0 to train those adapters")
    targets: Any = cfg.target_modules
    if targets == ["all-linear"]:
        targets = "all-linear"  # peft's keyword is a string, not a module name
    peft_cfg = peft.LoraConfig(
        r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, target_modules=targets,
        bias="none", task_type=task_type,
    )
    try:
        with warnings.catch_warnings():
            # GPT-2's Conv1D stores W transposed; peft notices, says so, and handles it
            warnings.filterwarnings("ignore", message=".*fan_in_fan_out")
            # peft 0.21 asks transformers 5 a question under its deprecated name
            warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
            model = peft.get_peft_model(policy, peft_cfg)
    except ValueError as err:  # unknown targets, or an architecture peft has no default for
        first = (str(err).strip().splitlines() or ["ValueError"])[0][:200]
        raise ConfigError(
            f"cannot add LoRA adapters ({first}); pass --lora.target_modules with some of: "
            f"{' '.join(_linear_names(policy)[:12])}"
        ) from None
    return model.eval()


class AdaptersOff:
    """pi_ref as the policy with its adapters switched off: the frozen base, computed
    from the very tensors the policy holds, so no second copy of the weights exists.

    Callable like a model (`forward` keeps the base model's signature, so
    `response_logprobs` still passes `logits_to_keep`); `generate` decodes from the base.
    The policy's adapters are off only inside each call."""

    def __init__(self, policy: nn.Module):
        if not is_peft_model(policy):
            raise TypeError("AdaptersOff needs a peft model (the policy after apply_lora)")
        self.policy = policy
        self.config = policy.config

        @functools.wraps(policy.get_base_model().forward)
        def forward(*args, **kwargs):
            with policy.disable_adapter():
                return policy(*args, **kwargs)

        self.forward = forward

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    def generate(self, *args, **kwargs):
        with self.policy.disable_adapter():
            return self.policy.generate(*args, **kwargs)

    def parameters(self):
        """The policy's own tensors (shared, not copies), as `next(model.parameters())`
        device look-ups expect; pi_ref trains nothing, so nothing here is handed to an optimizer."""
        return self.policy.parameters()

    @property
    def device(self) -> torch.device:
        return next(self.policy.parameters()).device


def adapters_are_zero(policy: nn.Module) -> bool:
    """True when every active adapter adds nothing yet (B = 0, as apply_lora starts them)."""
    deltas = _lora_deltas(policy.get_base_model())
    return all(not bool(d.any()) for d in deltas.values())


def lora_reference(policy: nn.Module):
    """pi_ref for a peft policy. Adapters that add nothing yet (a fresh apply_lora, or a
    resumed run before its adapters are loaded): `AdaptersOff`, the base, with no copy.
    Adapters that already change the model (a trained adapter passed in from Python) mean
    the starting policy is base + adapters, which the base alone is not: then a frozen
    merged copy, which costs a copy of the weights but is the right pi_ref."""
    if adapters_are_zero(policy):
        return AdaptersOff(policy)
    ref = merged_copy(policy).eval()
    return ref.requires_grad_(False)


def _lora_deltas(base: nn.Module) -> dict[str, torch.Tensor]:
    """'<module>.base_layer.weight' -> the summed (alpha / r) * B A of its active adapters."""
    from peft.tuners.lora import LoraLayer

    deltas: dict[str, torch.Tensor] = {}
    for name, module in base.named_modules():
        if not isinstance(module, LoraLayer) or module.merged or module.disable_adapters:
            continue
        for adapter in module.active_adapters:
            if adapter in module.lora_A or adapter in getattr(module, "lora_embedding_A", {}):
                key = f"{name}.base_layer.weight"
                delta = module.get_delta_weight(adapter).detach()
                deltas[key] = deltas[key] + delta if key in deltas else delta
    return deltas


@torch.no_grad()
def merged_state_dict(policy: nn.Module) -> dict[str, torch.Tensor]:
    """The policy's weights as a plain model's state dict: adapters merged in (W + scale * B A),
    the plain key names (`transformer.h.0.attn.c_attn.weight`), no lora_* tensors. For a rollout
    backend that loads a plain model (vLLM's load_weights) and for `final/merged/`. The policy
    itself is not changed; only the adapted weights are new tensors. A plain model's own
    state dict (detached) when the policy has no adapters.

    A policy sharded by FSDP (its parameters DTensors): the same sums on the shards (DTensor
    ops), each result gathered whole; a collective, so every rank must call it, in step."""
    if not is_peft_model(policy):
        return {k: v.detach() for k, v in policy.state_dict().items()}
    base = policy.get_base_model()
    deltas = _lora_deltas(base)
    whole = _Gathered()
    out = {}
    for key, value in base.state_dict().items():
        if ".lora_" in key:  # lora_A / lora_B / lora_embedding_* / lora_magnitude_vector
            continue
        value = value.detach()
        merged = whole(value + deltas[key].to(value.dtype), shared=False) if key in deltas else whole(value)
        out[key.replace(".base_layer.", ".")] = merged
    return out


class _Gathered:
    """FSDP shards (DTensors) -> whole tensors; any other tensor as it is. A weight tied
    under two names (GPT-2's embedding and LM head: one DTensor) is gathered once and
    both names get the one tensor, as in the unsharded state dict, so that
    save_pretrained still writes it once."""

    def __init__(self) -> None:
        self.done: dict[int, torch.Tensor] = {}  # a parameter's local storage -> its whole tensor

    def __call__(self, tensor: torch.Tensor, shared: bool = True) -> torch.Tensor:
        from torch.distributed.tensor import DTensor

        if not isinstance(tensor, DTensor):
            return tensor
        if not shared:  # a new sum: its storage is freed afterwards and may be reused, so never a key
            return tensor.full_tensor()
        key = tensor.to_local().data_ptr()  # the parameter's own shard, alive through the loop
        if key not in self.done:
            self.done[key] = tensor.full_tensor()
        return self.done[key]


def merged_copy(policy: nn.Module) -> nn.Module:
    """A plain transformers model (no peft wrapper, no adapters) equal to the policy now:
    a deep copy with the adapters merged in; the policy is not changed. A deep copy for a
    policy without adapters."""
    clone = copy.deepcopy(policy)
    return clone.merge_and_unload() if is_peft_model(clone) else clone


def load_adapter_into(policy: nn.Module, directory: str | os.PathLike) -> None:
    """Copy the adapter tensors of `directory/adapter_model.safetensors` (as written by
    save_pretrained) into `policy`'s adapters, bit for bit; a missing, extra or misshapen
    adapter tensor is an InputError (a checkpoint of another LoRA setting)."""
    from peft import get_peft_model_state_dict, set_peft_model_state_dict
    from safetensors.torch import load_file

    path = os.path.join(os.fspath(directory), ADAPTER_WEIGHTS)
    if not os.path.isfile(path):
        raise InputError(f"no {ADAPTER_WEIGHTS} in {os.fspath(directory)!r}: the checkpoint was not written with LoRA; "
                         "resume with the LoRA settings it was written with")
    try:
        tensors = load_file(path)
    except Exception as err:  # a truncated file: safetensors' SafetensorError
        from remax.models.checks import unreadable

        if not unreadable(err):
            raise
        raise InputError(f"{path} is corrupt ({str(err).strip()[:160]}); pass an earlier checkpoint to --resume PATH, "
                         "or start again") from None
    own = get_peft_model_state_dict(policy)
    if set(tensors) != set(own) or any(tensors[k].shape != own[k].shape for k in own):
        odd = sorted(set(tensors) ^ set(own)) or [k for k in own if tensors[k].shape != own[k].shape]
        raise InputError(f"{path}: adapter weights {odd[:3]} do not match this model's adapters; "
                         "resume with the same --lora settings")
    device = next(policy.parameters()).device
    result = set_peft_model_state_dict(policy, {k: v.to(device) for k, v in tensors.items()})
    if result.unexpected_keys:
        raise InputError(f"{path}: adapter weights {result.unexpected_keys[:3]} were not loaded; resume with the same --lora settings")


__all__ = [
    "ADAPTER_WEIGHTS",
    "AdaptersOff",
    "apply_lora",
    "check_lora_config",
    "adapters_are_zero",
    "is_peft_model",
    "load_adapter_into",
    "lora_reference",
    "merged_copy",
    "merged_state_dict",
]
