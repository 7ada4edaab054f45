"""Scores a policy on held-out prompts: mean reward of sampled and of greedy responses.
Generation goes through the same `generate_rollout` as training (one call: sampled and
greedy rows together), and scoring through the same reward call. The sampled rows' tokens
are kept, so that `remax eval` (remax/eval.py) can score them under a reference too."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

import torch

from remax.algos.masks import ended as response_ended
from remax.data import encode_prompts
from remax.models.loading import eos_token_ids
from remax.rewards.base import ResponseText
from remax.rollout import Rollout, generate_rollout
from remax.trainer.guards import call_reward


@dataclass
class EvalResult:
    prompts: list[str]
    sampled: list[str]  # one sampled response per prompt
    greedy: list[str]  # the greedy response per prompt
    sampled_rewards: torch.Tensor  # (B,)
    greedy_rewards: torch.Tensor  # (B,)
    sampled_lengths: Optional[torch.Tensor] = None  # (B,) response tokens, up to and including EOS
    greedy_lengths: Optional[torch.Tensor] = None  # (B,)
    samples: list[Rollout] = field(default_factory=list)  # the sampled rows, one Rollout per batch

    def metrics(self) -> dict[str, float]:
        return {
            "eval/reward_mean": float(self.sampled_rewards.mean()),
            "eval/greedy_reward_mean": float(self.greedy_rewards.mean()),
        }


def decode_responses(tokenizer: Any, response_ids: torch.Tensor, response_mask: torch.Tensor,
                     eos_token_id: Optional[int | Sequence[int]] = None) -> list[ResponseText]:
    """Text of each response's masked tokens (up to and including the first EOS), special
    tokens dropped, as `ResponseText`s whose `ended` says whether the response stopped on
    one of the EOS ids (default: `eos_token_ids(tokenizer)`) or was cut at max_new_tokens;
    a reward model uses it to end the text as its own tokenizer / template does."""
    eos = eos_token_ids(tokenizer) if eos_token_id is None else eos_token_id
    lengths = response_mask.sum(-1).long().tolist()
    finished = response_ended(response_ids, response_mask, eos).tolist()
    texts = tokenizer.batch_decode([ids[:n].tolist() for ids, n in zip(response_ids, lengths)], skip_special_tokens=True)
    return [ResponseText(t, ended=bool(e)) for t, e in zip(texts, finished)]


@torch.no_grad()
def evaluate(
    policy: Any,
    tokenizer: Any,
    prompts: list[str],
    reward_fn: Callable[..., Any],
    *,
    max_new_tokens: int = 32,
    temperature: float = 1.0,
    top_p: float = 1.0,
    batch_size: int = 32,
    max_prompt_tokens: int = 256,
    seed: int | None = 0,
    extra: Optional[dict[str, list[Any]]] = None,
) -> EvalResult:
    """One sampled and one greedy response per prompt, scored in one reward call.
    `seed` fixes the sampled responses (the global RNG is left as it was); None: unseeded.
    `extra`: the rows' other columns, one list per column, passed to the reward as in training."""
    with torch.random.fork_rng():
        if seed is not None:
            torch.manual_seed(seed)
        return _evaluate(policy, tokenizer, prompts, reward_fn, max_new_tokens, temperature, top_p,
                         batch_size, max_prompt_tokens, extra or {})


def _evaluate(policy, tokenizer, prompts, reward_fn, max_new_tokens, temperature, top_p, batch_size,
              max_prompt_tokens, extra) -> EvalResult:
    sampled, greedy, lengths, samples = [], [], [], []
    device = next(policy.parameters()).device
    eos = eos_token_ids(tokenizer, policy)  # the tokenizer's and the generation_config's stop ids
    for i in range(0, len(prompts), batch_size):
        chunk = prompts[i : i + batch_size]
        ids, mask = encode_prompts(tokenizer, chunk, max_prompt_tokens)
        ro = generate_rollout(policy, ids.to(device), mask.to(device), n=1, greedy=True,
                              max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                              eos_token_id=eos, pad_token_id=tokenizer.pad_token_id)
        texts = decode_responses(tokenizer, ro.response_ids, ro.response_mask, eos)
        sampled += texts[: len(chunk)]
        greedy += texts[len(chunk) :]
        lengths.append(ro.response_mask.sum(-1).cpu())  # (2b,) sampled rows, then greedy rows
        samples.append(ro.sampled())
    both = {k: list(v) + list(v) for k, v in extra.items()}
    # training's reward guard: a raise, NaN / inf or a wrong count is one RewardFailure line
    scores = call_reward(reward_fn, prompts + prompts, sampled + greedy, both, step="eval", greedy=len(prompts))
    b = len(prompts)
    per_chunk = [(n[: len(n) // 2], n[len(n) // 2 :]) for n in lengths]
    return EvalResult(prompts, sampled, greedy, scores[:b], scores[b:],
                      sampled_lengths=torch.cat([s for s, _ in per_chunk]) if per_chunk else torch.zeros(0),
                      greedy_lengths=torch.cat([g for _, g in per_chunk]) if per_chunk else torch.zeros(0),
                      samples=samples)
