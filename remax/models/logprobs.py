"""Per-token log-probabilities of responses under a causal LM.

`response_logprobs` gives log pi(a_t | x, a_<t) for every response token: the
`sum_t log pi_theta(a_t | x, a_<t)` of ReMax's loss (Li et al., arXiv 2310.10505,
Algorithm 1), and the policy / reference log-probs of the KL penalty. It runs with or
without grad: the trainer backpropagates through it.

Two details that matter with left-padded prompts:
- position_ids are passed explicitly (counted from the first real prompt token, as
  `generate` counts them): GPT-2 and others otherwise number pads as positions;
- `temperature` divides the logits, so log-probs describe the distribution the
  sampler drew from (the authors' code and verl do the same).
"""

from __future__ import annotations

import inspect

import torch

from remax.rollout.generate import Rollout, model_inputs


def _accepts(model, name: str) -> bool:
    """Does `model`'s forward take keyword `name`, looking through wrappers whose forward
    only passes **kwargs on (DDP / FSDP1 / DeepSpeed's `.module`, peft's base model):
    behind DDP `logits_to_keep` would otherwise be dropped and the lm-head would produce
    (prompt + response) x vocabulary logits."""
    for _ in range(8):  # wrappers nest a few levels at most (DDP(PeftModel(LoraModel(model))))
        try:
            params = inspect.signature(model.forward).parameters
        except (TypeError, ValueError):
            return False
        if name in params:
            return True
        if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
            return False
        inner = getattr(model, "module", None)
        if inner is None and hasattr(model, "get_base_model"):
            inner = model.get_base_model()
        if not isinstance(inner, torch.nn.Module) or inner is model:
            return False
        model = inner
    return False


def response_logits(model, prompt_ids, prompt_mask, response_ids, response_mask) -> torch.Tensor:
    """(N, R, V) logits that predict each response token: positions P-1 .. P+R-2."""
    R = response_ids.shape[1]
    inputs = model_inputs(prompt_ids, prompt_mask, response_ids, response_mask)  # each (N, P+R)
    if _accepts(model, "logits_to_keep"):
        # the lm-head runs on the last R+1 positions only, not on the whole prompt
        inputs["logits_to_keep"] = R + 1
    out = model(**inputs, use_cache=False)
    # the logit at position t predicts token t+1; the last position predicts nothing here
    return out.logits[:, -(R + 1) : -1]  # (N, R, V)


def response_logprobs(
    model,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    response_ids: torch.Tensor,
    response_mask: torch.Tensor,
    *,
    temperature: float = 1.0,
) -> torch.Tensor:
    """(N, P) left-padded prompts + (N, R) responses -> (N, R) float32 log-probs.

    log softmax(logits / temperature) of each response token given everything before
    it; 0 where response_mask is 0. One forward pass; grad flows if enabled."""
    logits = response_logits(model, prompt_ids, prompt_mask, response_ids, response_mask)
    logits = logits.float() / temperature  # (N, R, V), float32 for a stable logsumexp
    # gather - logsumexp: no (N, R, V) log_softmax tensor is kept for backward
    token_logits = logits.gather(-1, response_ids.unsqueeze(-1)).squeeze(-1)  # (N, R)
    logprobs = token_logits - torch.logsumexp(logits, dim=-1)  # (N, R)
    # masked_fill, not a product: 0 * (-inf) would be nan
    return logprobs.masked_fill(response_mask == 0, 0.0)


def rollout_logprobs(model, rollout: Rollout, temperature: float = 1.0) -> torch.Tensor:
    """`response_logprobs` on all rows of a Rollout -> (N, R) float32."""
    return response_logprobs(
        model,
        rollout.prompt_ids,
        rollout.prompt_mask,
        rollout.response_ids,
        rollout.response_mask,
        temperature=temperature,
    )
