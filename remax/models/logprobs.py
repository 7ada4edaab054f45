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

Log-prob conventions under top-k / top-p (issue 15, item 1). The LOSS, the KL and the
old log-probs of a ratio use log pi_T(a) = log softmax(logits / T)[a] over the FULL
vocabulary: the policy being trained. A sampler with top-k / top-p draws from q, pi_T
restricted to its support S (the k largest logits, then the smallest set of those whose
probability reaches top_p) and renormalised: log q(a) = log pi_T(a) - log pi_T(S). When
the rollout engine's own log-probs are compared with the trainer's (truncated importance
sampling, `rollout/logprob_mismatch_*`), BOTH sides are in the sampler's convention, log q:
vLLM reports it (`logprobs_mode="processed_logprobs"`: after temperature and top-k /
top-p), and the trainer subtracts the log-mass of the support from its own logits
(`support=(top_k, top_p)` here, `sampling_log_mass`). With the engine's weights equal to
the trainer's the ratio is then 1 whatever top_p is; comparing log q with log pi_T would
instead read the nucleus mass pi_T(S) (0.9 at top_p 0.9) as a drift. The bias of
sampling from q rather than pi_T is the same for HF generate (which TIS never weights)
and vLLM, so both backends train the same thing. The support is computed as HF's and
vLLM's warpers do (temperature, then top-k keeping ties, then top-p over the top-k
renormalised, the most likely token always kept); the sampled token is counted in it,
so a token at the rounding edge of the nucleus keeps a finite log-prob.
"""

from __future__ import annotations

import inspect
from typing import Optional

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
    support: Optional[tuple[int, float]] = None,
):
    """(N, P) left-padded prompts + (N, R) responses -> (N, R) float32 log-probs.

    log softmax(logits / temperature) of each response token given everything before
    it; 0 where response_mask is 0. One forward pass; grad flows if enabled.

    `support=(top_k, top_p)`: returns (log-probs, log_mass) instead, log_mass (N, R), no
    grad, the log of pi_T's mass on the sampler's support (`sampling_log_mass`; 0 where
    the mask is 0), from the same forward: log-probs - log_mass is the sampler's own
    log q (module docstring). log_mass is None when top_k = 0 and top_p = 1 (q = pi_T)."""
    logits = response_logits(model, prompt_ids, prompt_mask, response_ids, response_mask)
    logits = logits.float() / temperature  # (N, R, V), float32 for a stable logsumexp
    # gather - logsumexp: no (N, R, V) log_softmax tensor is kept for backward
    token_logits = logits.gather(-1, response_ids.unsqueeze(-1)).squeeze(-1)  # (N, R)
    logprobs = token_logits - torch.logsumexp(logits, dim=-1)  # (N, R)
    # masked_fill, not a product: 0 * (-inf) would be nan
    logprobs = logprobs.masked_fill(response_mask == 0, 0.0)
    if support is None:
        return logprobs
    top_k, top_p = support
    if top_k <= 0 and top_p >= 1.0:
        return logprobs, None
    mass = sampling_log_mass(logits.detach(), response_ids, top_k, top_p)
    return logprobs, mass.masked_fill(response_mask == 0, 0.0)


@torch.no_grad()
def sampling_log_mass(logits: torch.Tensor, token_ids: torch.Tensor, top_k: int, top_p: float,
                      chunk_elements: int = 2**24) -> torch.Tensor:
    """(..., V) logits ALREADY divided by the temperature, (...) sampled ids -> (...) the
    log of softmax(logits)'s mass on the sampler's support S united with the sampled
    token: log sum_{b in S + {a}} pi_T(b) <= 0. S as HF's and vLLM's warpers build it:
    top-k keeps every logit >= the k-th largest (top_k 0: all), then top-p drops, over the
    top-k renormalised and in ascending order, the tokens whose cumulative probability is
    <= 1 - top_p, the most likely one always kept. Positions are done in chunks of about
    `chunk_elements` logits: the sort is (positions, V)."""
    V = logits.shape[-1]
    flat, ids = logits.reshape(-1, V), token_ids.reshape(-1)
    rows = max(1, chunk_elements // V)
    out = []
    for start in range(0, flat.shape[0], rows):
        z, a = flat[start : start + rows], ids[start : start + rows]  # (n, V), (n,)
        kept = torch.ones_like(z, dtype=torch.bool)
        if 0 < top_k < V:
            kth = z.topk(top_k, dim=-1).values[:, -1:]  # (n, 1)
            kept &= z >= kth
        if top_p < 1.0:
            masked = z.masked_fill(~kept, float("-inf"))
            sorted_z, order = masked.sort(dim=-1)  # ascending
            cum = sorted_z.softmax(-1).cumsum(-1)
            drop = cum <= 1.0 - top_p
            drop[:, -1] = False  # at least the most likely token
            kept &= ~torch.zeros_like(drop).scatter(-1, order, drop)
        kept.scatter_(-1, a[:, None], True)  # the sampled token counts in its own support
        out.append(torch.logsumexp(z.masked_fill(~kept, float("-inf")), -1) - torch.logsumexp(z, -1))
    return torch.cat(out).reshape(token_ids.shape) if out else logits.new_zeros(token_ids.shape)


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
