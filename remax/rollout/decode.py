"""The HF rollout's decode loop (`rollout.hf_decoder fast`): each prompt prefilled once,
its KV cache shared by its n sampled rows and its greedy row, finished rows out of the
batch.

`model.generate` with the rows of `generate_rollout` (issue 19, item 1) pays three costs
that a ReMax rollout does not need:
- every row is prefilled on its own: a prompt's n sampled rows and its greedy row read
  the same prompt n + 1 times;
- a row that has emitted EOS keeps running through every layer until the longest row
  ends (its tokens are thrown away);
- per-token overhead of the general loop (stopping criteria, processor lists, kwargs
  plumbing).

Here the B prompts go through ONE forward; the transformers cache API then repeats
their keys / values to B * (n + g) rows (`Cache.batch_repeat_interleave`, g = 1 with a
greedy row) and drops the rows that have ended (`Cache.batch_select_indices`), so the
decode batch shrinks as rows finish. Everything else is what `generate` does, step for
step: float32 logits of the last position, the NaN/inf guard, argmax on greedy rows,
and on sampled rows transformers' own warpers in `generate`'s order (temperature, top-k,
top-p; `_get_logits_processor`), softmax and `torch.multinomial` on the global RNG.
Positions are counted from the first real prompt token as `generate` counts them.

Departures from `generate` (none changes a distribution):
- the first token's logits are those of the prompt's single prefill, shared by its rows;
- `multinomial` draws for the live sampled rows only, so the same seed gives other
  samples than `generate` does (the distribution is the same; a run stays reproducible
  and a resumed run bitwise equal, since the draws depend on the RNG state alone).

Models whose cache cannot be repeated / selected (a cache class without those methods)
fall back to `generate` in `generate_rollout`.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import torch
from transformers import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

from remax.rollout.logits import FiniteLogitsCheck


def sampling_warpers(temperature: float, top_k: int, top_p: float) -> list:
    """transformers' warpers as `generate(do_sample=True)` builds them for these settings
    (same classes, same order, same min_tokens_to_keep=1)."""
    warpers = []
    if temperature != 1.0:
        warpers.append(TemperatureLogitsWarper(temperature))
    if top_k != 0:
        warpers.append(TopKLogitsWarper(top_k=top_k, min_tokens_to_keep=1))
    if top_p < 1.0:
        warpers.append(TopPLogitsWarper(top_p=top_p, min_tokens_to_keep=1))
    return warpers


def _cache_of(out: Any) -> Any:
    cache = getattr(out, "cache", None)
    return cache if cache is not None else getattr(out, "past_key_values", None)


def shareable_cache(cache: Any) -> bool:
    """Can the rows of this cache be repeated and dropped in place?"""
    return all(hasattr(cache, name) for name in ("batch_repeat_interleave", "batch_select_indices"))


class _Forward:
    """One model call with the keywords this model takes (looked up once: `cache` in
    transformers 5, `past_key_values` before; `logits_to_keep` where supported)."""

    def __init__(self, model) -> None:
        from remax.models.logprobs import _accepts  # the same look-through-wrappers check as the log-probs

        self.model = model
        self.cache_key = "cache" if _accepts(model, "cache") else "past_key_values"
        self.keep = {"logits_to_keep": 1} if _accepts(model, "logits_to_keep") else {}

    def __call__(self, ids, mask, positions, cache) -> tuple[torch.Tensor, Any]:
        kwargs = {self.cache_key: cache} if cache is not None else {}
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True,
                         **self.keep, **kwargs)
        # float32 copy of the last position's logits, as generate takes them
        return out.logits[:, -1].to(dtype=torch.float32, copy=True), _cache_of(out)  # (rows, V)


def prefill(model, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor) -> tuple[_Forward, torch.Tensor, Any]:
    """One forward over the B prompts: (forward, (B, V) float32 next-token logits, cache)."""
    forward = _Forward(model)
    positions = (prompt_mask.cumsum(-1) - 1).masked_fill(prompt_mask == 0, 0)  # (B, P), generate's
    logits, cache = forward(prompt_ids, prompt_mask, positions, None)
    return forward, logits, cache


def next_tokens(scores: torch.Tensor, is_greedy: torch.Tensor, warpers: list) -> torch.Tensor:
    """(rows, V) float32 logits -> (rows,) ids: argmax on greedy rows, a draw from the
    warped softmax on the others (one `multinomial` call for all of them)."""
    scores = FiniteLogitsCheck()(None, scores)
    tokens = scores.argmax(-1)  # (rows,) first index on ties, as argmax decoding
    sampled = (~is_greedy).nonzero().squeeze(-1)
    if sampled.numel():
        warped = scores.index_select(0, sampled)
        for warper in warpers:
            warped = warper(None, warped)
        draws = torch.multinomial(torch.softmax(warped, dim=-1), num_samples=1).squeeze(1)
        tokens = tokens.index_copy(0, sampled, draws)
    return tokens


@torch.no_grad()
def decode_shared_prefix(
    model,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    *,
    n: int,
    greedy: bool,
    max_new_tokens: int,
    temperature: float,
    top_p: float,
    top_k: int,
    eos_token_id: int | Sequence[int],
    pad_token_id: int,
) -> Optional[torch.Tensor]:
    """(B, P) left-padded prompts -> (B*n + B*g, R) response ids in `Rollout`'s row order
    (sampled rows i*n + j, then greedy rows B*n + i), pad after the first EOS, R the
    longest row (<= max_new_tokens). None if the model's cache cannot be shared (the
    caller then uses `generate`). The model must already be in eval mode."""
    B, device = prompt_ids.shape[0], prompt_ids.device
    k = n + int(greedy)  # rows per prompt
    forward, logits, cache = prefill(model, prompt_ids, prompt_mask)  # (B, V)
    if cache is None or not shareable_cache(cache):
        return None
    # decode rows, prompt-major: row i*k + j is prompt i's sample j (j < n) or its greedy row (j == n)
    cache.batch_repeat_interleave(k)
    logits = logits.repeat_interleave(k, dim=0)  # (B*k, V)
    mask = prompt_mask.repeat_interleave(k, dim=0)  # (B*k, P), grows by one column per step
    position = prompt_mask.sum(-1).repeat_interleave(k)  # (B*k,) the next token's position
    is_greedy = torch.arange(B * k, device=device) % k == n  # (B*k,)
    live = torch.arange(B * k, device=device)  # decode row -> internal row
    eos = torch.as_tensor([eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id), device=device)
    warpers = sampling_warpers(temperature, top_k, top_p)

    out = torch.full((B * k, max_new_tokens), pad_token_id, dtype=torch.long, device=device)
    steps = 0
    for t in range(max_new_tokens):
        tokens = next_tokens(logits, is_greedy, warpers)  # (rows,)
        out[live, t] = tokens
        steps = t + 1
        going = ~torch.isin(tokens, eos)  # (rows,)
        if t == max_new_tokens - 1 or not bool(going.any()):
            break
        if not bool(going.all()):  # rows that ended leave the batch, their cache rows too
            keep = going.nonzero().squeeze(-1)
            cache.batch_select_indices(keep)
            tokens, mask, position = tokens[keep], mask[keep], position[keep]
            is_greedy, live = is_greedy[keep], live[keep]
        mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=1)  # (rows, P+t+1)
        logits, cache = forward(tokens[:, None], mask, position[:, None], cache)
        position = position + 1

    # internal prompt-major rows -> Rollout's layout: samples first (i*n + j), then greedy rows
    internal = torch.arange(B * k, device=device).view(B, k)
    order = torch.cat([internal[:, :n].reshape(-1), internal[:, n:].reshape(-1)])  # (B*k,)
    return out[order, :steps]  # (B*k, R)
