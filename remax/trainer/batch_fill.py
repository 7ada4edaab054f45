"""From a scored rollout to the batch the update trains on: DAPO's dynamic sampling and
overlong reward shaping (Yu et al., arXiv 2503.14476, sec. 3.2 and 3.4), driven by the
algorithm's spec. For every other algorithm `fill_batch` passes the sampled rows through.

Dynamic sampling: a group (the n samples of one prompt) whose rewards are all equal has
zero advantage under group normalisation, so it adds nothing but noise to the batch.
`spec.group_filter` says which groups to keep; while fewer than B groups are kept, more
prompt batches are drawn from the sampler (at most `max_extra` per step), and the first
B kept groups, in draw order, form the batch. Deterministic under a seed: the draws come
from the seeded sampler and the rollout RNG, and the sampler's position, checkpointed at
the step boundary, already counts them, so a resumed run draws the same prompts. If no
group at all has varied rewards, the first draw is used as it is (no policy-gradient
signal, as GRPO would have had). Departure: the filter sees the raw reward, before the
overlong penalty (the paper filters on accuracy).

Overlong shaping (eq. 13): with a buffer of L_cache tokens before max_new_tokens, a
response longer than max_new_tokens - L_cache gets a penalty ramping linearly to -1
(`remax.algos.variants.overlong_penalty`), added to the reward of sampled and greedy
rows alike, so a baseline and its samples take the same reward path.

Overlong filtering (sec. 3.4, `loss.mask_truncated`): a response cut at max_new_tokens
without an EOS gets a zero loss mask, so a truncated answer is neither pushed up nor down.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch

from remax.algos.variants import overlong_penalty
from remax.rollout import Rollout

Scored = tuple[Rollout, torch.Tensor, Optional[torch.Tensor]]  # (rollout, (B*n,) rewards, (B,) greedy rewards)


@dataclass
class Filled:
    samples: Rollout  # (k*n rows) the kept groups' sampled rows, has_greedy False
    rewards: torch.Tensor  # (k*n,) shaped
    greedy_rewards: Optional[torch.Tensor]  # (k,) shaped
    stats: dict[str, float] = field(default_factory=dict)


def shape_rewards(rollout: Rollout, rewards: torch.Tensor, greedy: Optional[torch.Tensor],
                  max_len: int, buffer: int) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Add DAPO's overlong penalty (buffer > 0) to sampled and greedy rewards, by length."""
    if buffer <= 0:
        return rewards, greedy
    lengths = rollout.sampled().response_mask.sum(-1)  # (B*n,)
    rewards = rewards + overlong_penalty(lengths, max_len, buffer).to(rewards.dtype)
    if greedy is not None:
        greedy_len = rollout.greedy().response_mask.sum(-1)  # (B,)
        greedy = greedy + overlong_penalty(greedy_len, max_len, buffer).to(greedy.dtype)
    return rewards, greedy


def fill_batch(
    first: Scored,
    draw: Callable[[int], Scored],
    *,
    group_filter: Optional[Callable[[torch.Tensor, int], torch.Tensor]],
    max_extra: int,
    shape: Callable[[Rollout, torch.Tensor, Optional[torch.Tensor]], tuple[torch.Tensor, Optional[torch.Tensor]]],
    pad_token_id: int = 0,
    decide: Callable[[bool], bool] = lambda flag: flag,
    mask_truncated_eos: Optional[int] = None,
) -> Filled:
    """The batch to train on. `first`: this step's scored rollout; `draw(k)`: the k-th
    extra prompt batch (k = 1, 2, ...), rolled out and scored; `shape(rollout, rewards, greedy)`: reward
    shaping; `decide(flag)`: the decision to draw again, taken alike on every rank;
    `mask_truncated_eos`: the EOS id, to mask responses that never reach it (None: off)."""
    filled = _fill(first, draw, group_filter, max_extra, shape, pad_token_id, decide)
    if mask_truncated_eos is not None:
        filled.samples, filled.stats["rollout/truncated_masked"] = mask_truncated(filled.samples, mask_truncated_eos)
    return filled


def mask_truncated(samples: Rollout, eos_token_id: int) -> tuple[Rollout, float]:
    """Zero the response mask of rows with no EOS (cut at max_new_tokens); -> (rollout, their count)."""
    mask = samples.response_mask
    ended = ((samples.response_ids == eos_token_id) & mask.bool()).any(-1)  # (N,)
    samples = dataclasses.replace(samples, response_mask=mask * ended.unsqueeze(-1).to(mask.dtype))
    return samples, float((~ended).sum())


def _fill(first, draw, group_filter, max_extra, shape, pad_token_id, decide) -> Filled:
    rollout, rewards, greedy = first
    if group_filter is None:
        rewards, greedy = shape(rollout, rewards, greedy)
        return Filled(rollout.sampled(), rewards, greedy)
    n, wanted = rollout.n, rollout.num_prompts
    kept: list[Filled] = []
    count = dropped = extra = 0
    while True:
        keep = group_filter(rewards, n).to(torch.bool)  # (B,) on the raw reward
        shaped, shaped_greedy = shape(rollout, rewards, greedy)
        groups = keep.nonzero().flatten()[: wanted - count]
        kept.append(_take_groups(rollout, shaped, shaped_greedy, groups))
        count += len(groups)
        dropped += int((~keep).sum())
        if not decide(count < wanted and extra < max_extra):
            break
        extra += 1
        rollout, rewards, greedy = draw(extra)
    stats = {"rollout/groups_kept": float(count), "rollout/groups_dropped": float(dropped),
             "rollout/refill_batches": float(extra), "rollout/prompts_drawn": float((extra + 1) * wanted)}
    if count == 0:  # nothing varied: train on the first draw as it was
        r0, rw0, g0 = first
        rw0, g0 = shape(r0, rw0, g0)
        return Filled(r0.sampled(), rw0, g0, stats)
    return _concat([k for k in kept if len(k.rewards)], stats, pad_token_id)


def _take_groups(rollout: Rollout, rewards: torch.Tensor, greedy: Optional[torch.Tensor],
                 groups: torch.Tensor) -> Filled:
    """The sampled rows of prompts `groups` (k,), layout kept: k prompts x n samples (the
    groups kept beyond B are neither trained on nor counted as dropped)."""
    n = rollout.n
    rows = (groups.unsqueeze(-1) * n + torch.arange(n, device=groups.device)).flatten()  # (k*n,)
    rows = rows.to(rollout.prompt_ids.device)
    s = rollout.sampled()
    sub = Rollout(
        prompt_ids=s.prompt_ids[rows], prompt_mask=s.prompt_mask[rows],
        response_ids=s.response_ids[rows], response_mask=s.response_mask[rows],
        num_prompts=len(groups), n=n, has_greedy=False,
        engine_logprobs=None if s.engine_logprobs is None else s.engine_logprobs[rows],
    )
    g = None if greedy is None else greedy[groups.to(greedy.device)]
    return Filled(sub, rewards[rows.to(rewards.device)], g)


def _concat(parts: list[Filled], stats: dict[str, float], pad_id: int) -> Filled:
    """Stack kept groups from several draws: prompts are left-padded, responses
    right-padded to a common width (mask 0 on the padding, so nothing changes)."""
    if len(parts) == 1:
        return Filled(parts[0].samples, parts[0].rewards, parts[0].greedy_rewards, stats)
    P = max(p.samples.prompt_ids.shape[1] for p in parts)
    R = max(p.samples.response_ids.shape[1] for p in parts)

    def left(x, width, value):
        return torch.nn.functional.pad(x, (width - x.shape[1], 0), value=value)

    def right(x, width, value):
        return torch.nn.functional.pad(x, (0, width - x.shape[1]), value=value)

    s = [p.samples for p in parts]
    engine = None
    if all(x.engine_logprobs is not None for x in s):
        engine = torch.cat([right(x.engine_logprobs, R, 0.0) for x in s])
    samples = Rollout(
        prompt_ids=torch.cat([left(x.prompt_ids, P, pad_id) for x in s]),
        prompt_mask=torch.cat([left(x.prompt_mask, P, 0) for x in s]),
        response_ids=torch.cat([right(x.response_ids, R, pad_id) for x in s]),
        response_mask=torch.cat([right(x.response_mask, R, 0.0) for x in s]),
        num_prompts=sum(x.num_prompts for x in s), n=s[0].n, has_greedy=False, engine_logprobs=engine,
    )
    greedy = None if parts[0].greedy_rewards is None else torch.cat([p.greedy_rewards for p in parts])
    return Filled(samples, torch.cat([p.rewards for p in parts]), greedy, stats)
