"""The value model (critic) that PPO needs and ReMax does away with.

ReMax's headline claims (Li et al., arXiv 2310.10505, Sec. 1 and 5) are measured
against PPO: about half the GPU memory and about twice the speed, because ReMax has no
value model and no critic optimizer state. For that comparison to be honest the critic
here is what PPO implementations use: a full copy of the policy's transformer trunk
with its own parameters (never shared with the policy) plus a scalar linear head.
"""

from __future__ import annotations

import copy
import os

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AutoModel

from remax.models.lora import is_peft_model, merged_copy
from remax.models.loading import checked_from_pretrained, progress_bars, resolve_device, to_torch_dtype
from remax.rollout.generate import model_inputs

VALUE_HEAD_FILE = "value_head.safetensors"


def _plain_trunk_copy(policy: nn.Module) -> nn.Module:
    """A copy of the causal LM's transformer trunk (GPT-2: `.transformer`). A policy with
    LoRA adapters gives its merged weights (W + scale * B A) as plain modules: the critic
    trains all of its own weights and holds no adapters."""
    if is_peft_model(policy):
        return merged_copy(policy).base_model
    return copy.deepcopy(policy.base_model)


class ValueModel(nn.Module):
    """V(s) for every position: trunk hidden state -> Linear(hidden, 1)."""

    def __init__(self, trunk: nn.Module):
        super().__init__()
        self.trunk = trunk
        hidden = trunk.config.hidden_size
        param = next(trunk.parameters())
        self.head = nn.Linear(hidden, 1, device=param.device, dtype=param.dtype)
        # small init (OpenRLHF's choice) so that early values are near 0, like the returns
        nn.init.normal_(self.head.weight, std=1.0 / (hidden + 1))
        nn.init.zeros_(self.head.bias)

    @classmethod
    def from_policy(cls, policy: nn.Module) -> "ValueModel":
        """A critic initialised from the policy's trunk: a deep copy, so no parameter is
        shared with the policy; all of its parameters train, whatever the policy froze
        (with LoRA: the base trunk with the adapters merged in, no adapters of its own)."""
        trunk = _plain_trunk_copy(policy)
        trunk.requires_grad_(True)
        return cls(trunk).train(policy.training)

    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike,
        *,
        dtype: str | torch.dtype = "float32",
        device: str = "cpu",
        trust_remote_code: bool = False,
    ) -> "ValueModel":
        """Trunk via AutoModel (a policy checkpoint works too: its LM head is dropped);
        the head from `value_head.safetensors` in `path` if present, else freshly made."""
        trunk = checked_from_pretrained(
            "value model", AutoModel.from_pretrained, path,
            required="config.json", dtype=to_torch_dtype(dtype), trust_remote_code=trust_remote_code,
        )
        critic = cls(trunk.to(resolve_device(device)))
        head_file = os.path.join(os.path.expanduser(os.fspath(path)), VALUE_HEAD_FILE)
        if os.path.isfile(head_file):
            critic.head.load_state_dict(load_file(head_file, device=str(critic.head.weight.device)))
        return critic

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        """Trunk as a transformers checkpoint + the head as `value_head.safetensors`."""
        with progress_bars(False):
            self.trunk.save_pretrained(directory)
        head = {k: v.detach().contiguous().cpu() for k, v in self.head.state_dict().items()}
        save_file(head, os.path.join(os.fspath(directory), VALUE_HEAD_FILE))

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor
    ) -> torch.Tensor:
        """(N, L) ids, mask, positions -> (N, L) float32 values."""
        hidden = self.trunk(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False
        ).last_hidden_state  # (N, L, H)
        return self.head(hidden).sum(-1).float()  # (N, L): the one column, as a new tensor (FSDP2 warns of a view)


def response_values(
    critic: ValueModel,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    response_ids: torch.Tensor,
    response_mask: torch.Tensor,
) -> torch.Tensor:
    """(N, R) value of the state before each response token: positions P-1 .. P+R-2,
    i.e. V(x, a_<t) for t = 1..R, as GAE needs. 0 outside response_mask."""
    R = response_ids.shape[1]
    values = critic(**model_inputs(prompt_ids, prompt_mask, response_ids, response_mask))  # (N, P+R)
    values = values[:, -(R + 1) : -1]  # (N, R)
    return values.masked_fill(response_mask == 0, 0.0)
