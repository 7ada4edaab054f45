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

Several ranks (DDP) decide as one process holding the whole batch would (`fill_batch`):
every draw's kept-group counts are gathered, the first B kept groups in global draw order
are trained on, the refill decision is taken on the global count, and a rank that kept
fewer groups is padded with zero-weight rows, so all ranks run the same backwards.

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
from typing import Callable, Optional, Sequence

import torch

from remax.algos.masks import ended as response_ended
from remax.algos.variants import overlong_penalty
from remax.rollout import Rollout

Scored = tuple[Rollout, torch.Tensor, Optional[torch.Tensor]]  # (rollout, (B*n,) rewards, (B,) greedy rewards)


@dataclass
class Filled:
    samples: Rollout  # (k*n rows) the kept groups' sampled rows, has_greedy False
    rewards: torch.Tensor  # (k*n,) shaped
    greedy_rewards: Optional[torch.Tensor]  # (k,) shaped
    stats: dict[str, float] = field(default_factory=dict)
    valid: Optional[torch.Tensor] = None  # (k*n,) bool: False on zero-weight padding rows; None: all real


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
    gather_counts: Callable[[int], list[int]] = lambda k: [k],
    rank: int = 0,
    mask_truncated_eos: Optional[int | Sequence[int]] = None,
) -> Filled:
    """The batch to train on. `first`: this rank's share of this step's scored rollout;
    `draw(k)`: this rank's share of the k-th extra prompt batch (k = 1, 2, ...), rolled out
    and scored; `shape(rollout, rewards, greedy)`: reward shaping; `gather_counts(k)`: every
    rank's k, in rank order (the trainer's `dist.gather_counts`; one process: [k]), `rank`
    this rank's index; `mask_truncated_eos`: the EOS id(s), to mask responses that never reach
    any (None: off).

    Several ranks (rank r holds block r of each global draw) take the decisions of one
    process holding the whole batch: the kept-group counts of each draw are gathered, the
    first B kept groups in global draw order (block 0's, then block 1's, ...) are trained
    on, and the decision to draw again is taken on the global count, alike everywhere.
    The ranks then hold different numbers of kept groups; each is padded with whole groups
    of zero-weight rows (response mask 0, `Filled.valid` False) to the largest count, so
    every rank runs the same number of micro-batch backwards and minibatch steps, and
    the padding changes no loss, no normaliser and no gradient."""
    filled, local, counts = _fill(first, draw, group_filter, max_extra, shape, pad_token_id, gather_counts, rank)
    if mask_truncated_eos is not None:
        filled.samples, filled.stats["rollout/truncated_masked"] = mask_truncated(filled.samples, mask_truncated_eos)
    if counts is not None and max(counts) > local:
        filled = _pad_groups(filled, first, shape, max(counts) - local, pad_token_id)
    return filled


def real_rows(filled: Filled, seq_adv: Optional[torch.Tensor] = None):
    """(samples, rewards, greedy rewards, seq_adv) of `filled` without its zero-weight
    padding rows (whole groups at the end), for the step's metrics; a rank whose rows are
    all padding reports them as they are."""
    if filled.valid is None or not bool(filled.valid.any()):
        return filled.samples, filled.rewards, filled.greedy_rewards, seq_adv
    n = filled.samples.n
    k = int(filled.valid.sum()) // n
    f = _take_groups(filled.samples, filled.rewards, filled.greedy_rewards, torch.arange(k))
    return f.samples, f.rewards, f.greedy_rewards, None if seq_adv is None else seq_adv[: k * n]


def mask_truncated(samples: Rollout, eos_token_id: int | Sequence[int]) -> tuple[Rollout, float]:
    """Zero the response mask of rows with no EOS, any of the ids (cut at max_new_tokens);
    -> (rollout, their count)."""
    mask = samples.response_mask
    ended = response_ended(samples.response_ids, mask, eos_token_id)  # (N,)
    samples = dataclasses.replace(samples, response_mask=mask * ended.unsqueeze(-1).to(mask.dtype))
    return samples, float((~ended).sum())


def _fill(first, draw, group_filter, max_extra, shape, pad_token_id, gather_counts, rank):
    """-> (this rank's Filled, its kept-group count, every rank's kept-group count or None
    when no padding can be needed)."""
    rollout, rewards, greedy = first
    if group_filter is None:
        rewards, greedy = shape(rollout, rewards, greedy)
        return Filled(rollout.sampled(), rewards, greedy), rollout.num_prompts, None
    n, local_wanted = rollout.n, rollout.num_prompts
    kept: list[Filled] = []
    world = len(gather_counts(0))
    wanted = local_wanted * world  # B, the global batch's groups
    taken = [0] * world  # kept groups each rank trains on
    dropped = extra = 0
    while True:
        keep = group_filter(rewards, n).to(torch.bool)  # (B/W,) on the raw reward
        shaped, shaped_greedy = shape(rollout, rewards, greedy)
        ks = gather_counts(int(keep.sum()))  # every rank's kept groups in this draw
        need = wanted - sum(taken)
        for r, k in enumerate(ks):  # the first `need` kept groups of the global draw order
            t = min(k, need)
            if r == rank:
                kept.append(_take_groups(rollout, shaped, shaped_greedy, keep.nonzero().flatten()[:t]))
            taken[r] += t
            need -= t
        dropped += world * local_wanted - sum(ks)
        if not (sum(taken) < wanted and extra < max_extra):  # the same global counts on every rank
            break
        extra += 1
        rollout, rewards, greedy = draw(extra)
    count = sum(taken)
    stats = {"rollout/groups_kept": float(count), "rollout/groups_dropped": float(dropped),
             "rollout/refill_batches": float(extra), "rollout/prompts_drawn": float((extra + 1) * wanted)}
    if count == 0:  # nothing varied anywhere: train on the first draw as it was
        r0, rw0, g0 = first
        rw0, g0 = shape(r0, rw0, g0)
        return Filled(r0.sampled(), rw0, g0, stats), local_wanted, None
    parts = [k for k in kept if len(k.rewards)]
    if not parts:  # this rank kept nothing: all of its rows are padding (added by fill_batch)
        return _empty(first, stats), 0, taken
    return _concat(parts, stats, pad_token_id), taken[rank], taken


def _empty(first: Scored, stats: dict[str, float]) -> Filled:
    rollout, rewards, greedy = first
    f = _take_groups(rollout, rewards, greedy, torch.zeros(0, dtype=torch.long))
    return Filled(f.samples, f.rewards, f.greedy_rewards, stats)


def _pad_groups(filled: Filled, first: Scored, shape, groups: int, pad_id: int) -> Filled:
    """`filled` + `groups` zero-weight groups (copies of the first draw's first group with
    response mask 0 and valid False): the same row count as the ranks that kept more."""
    rollout, rewards, greedy = first
    shaped, shaped_greedy = shape(rollout, rewards, greedy)
    pad = _take_groups(rollout, shaped, shaped_greedy, torch.zeros(groups, dtype=torch.long))
    pad.samples = dataclasses.replace(pad.samples, response_mask=torch.zeros_like(pad.samples.response_mask))
    real = len(filled.rewards)
    valid = torch.cat([torch.ones(real, dtype=torch.bool), torch.zeros(len(pad.rewards), dtype=torch.bool)])
    parts = [p for p in (Filled(filled.samples, filled.rewards, filled.greedy_rewards), pad) if len(p.rewards)]
    out = _concat(parts, filled.stats, pad_id)
    out.valid = valid.to(out.rewards.device)
    return out


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
