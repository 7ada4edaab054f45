"""Batch statistics and the decisions on rows / steps, with two ranks simulated by two
threads in lockstep (issue 15, items 3, 4, 7); the real 2-process runs are test_invariants.py."""

from __future__ import annotations

import torch

from remax.algos import get_algorithm
from remax.rollout import Rollout
from remax.trainer.batch_fill import fill_batch
from remax.trainer.phases.update import minibatches

from .test_dist_math import Lockstep


def test_reinforce_pp_baseline_takes_the_global_batch_std():
    spec = get_algorithm("reinforce_pp_baseline")
    rewards = torch.tensor([0.0, 1.0, 0.2, 0.4, 0.9, 0.1, 0.5, 0.5])  # 4 groups of 2; ranks hold 2 each
    one = spec.advantages(rewards, None, 2)
    halves = Lockstep(2).run(lambda r, reduce: spec.advantages(rewards[4 * r: 4 * r + 4], None, 2, reduce=reduce))
    torch.testing.assert_close(torch.cat(halves), one)  # per rank it was 0.548 vs 0.713 (issue 15)
    assert not torch.allclose(spec.advantages(rewards[:4], None, 2), one[:4])  # the per-rank std differs


def test_batch_mean_takes_the_global_batch_mean():
    spec = get_algorithm("batch_mean")
    rewards = torch.tensor([0.0, 0.0, 1.0, 0.0, 1.0, 1.0, 1.0, 0.0])  # n = 1; rank 0 holds 1 right of 4, rank 1 3 of 4
    one = spec.advantages(rewards, None, 1)  # global mean 0.5
    halves = Lockstep(2).run(lambda r, reduce: spec.advantages(rewards[4 * r: 4 * r + 4], None, 1, reduce=reduce))
    torch.testing.assert_close(torch.cat(halves), one)
    torch.testing.assert_close(one, rewards - 0.5)
    assert not torch.allclose(spec.advantages(rewards[:4], None, 1), one[:4])  # per rank the mean is 0.25


def _rollout(rewards_per_group, n=2, width=3):
    b = len(rewards_per_group)
    rows = b * n
    return Rollout(prompt_ids=torch.arange(rows * 2).view(rows, 2), prompt_mask=torch.ones(rows, 2, dtype=torch.long),
                   response_ids=torch.arange(rows * width).view(rows, width), response_mask=torch.ones(rows, width),
                   num_prompts=b, n=n, has_greedy=False), torch.tensor(rewards_per_group).flatten()


def _fill(rank, reduce, draws):
    """Rank `rank` of 2: its block of each global draw (a list of per-group reward pairs)."""
    def block(d):
        groups = draws[d][2 * rank: 2 * rank + 2]
        rollout, rewards = _rollout(groups)
        return rollout, rewards, None

    def gather_counts(k):
        onehot = torch.zeros(2)
        onehot[rank] = k
        return [int(v) for v in reduce(onehot)]

    return fill_batch(block(0), block, group_filter=get_algorithm("dapo").group_filter, max_extra=3,
                      shape=lambda r, rw, g: (rw, g), gather_counts=gather_counts, rank=rank)


def test_dapo_fill_decides_on_global_counts_and_pads_ranks_to_one_row_count():
    # B = 4 groups; draw 0: rank 0 keeps 0 of its 2 groups, rank 1 keeps 2 (taken: 0, 2); draw 1: each keeps
    # some, the first 2 in global order are rank 0's first and rank 1's first (taken: 1, 3): rank 0 is padded
    same, varied = [0.3, 0.3], [0.1, 0.9]
    draws = [[same, same, varied, varied], [varied, same, varied, varied], [varied] * 4, [varied] * 4]
    ranks = Lockstep(2).run(lambda r, reduce: _fill(r, reduce, draws))
    assert len(ranks[0].rewards) == len(ranks[1].rewards)  # the same micro-batch backwards on both ranks
    real = [int(f.valid.sum()) if f.valid is not None else len(f.rewards) for f in ranks]
    assert real == [1 * 2, 3 * 2] and ranks[0].valid is not None and ranks[1].valid is None
    assert sum(real) == 4 * 2  # the first B = 4 kept groups of the global draw order, as one process
    for f in ranks:
        assert f.stats["rollout/refill_batches"] == 1.0 and f.stats["rollout/groups_kept"] == 4.0
        if f.valid is not None:  # padding rows weigh nothing
            assert float(f.samples.response_mask[~f.valid].sum()) == 0.0
    one = fill_batch((*_rollout(draws[0]), None), lambda k: (*_rollout(draws[k]), None),
                     group_filter=get_algorithm("dapo").group_filter, max_extra=3, shape=lambda r, rw, g: (rw, g))
    assert one.stats == ranks[0].stats and len(one.rewards) == 8


def test_minibatches_split_rows_evenly_into_the_number_asked():
    parts = minibatches(6, 4, torch.Generator().manual_seed(0))  # Tensor.chunk gave 3 chunks of 2
    assert [len(p) for p in parts] == [2, 2, 1, 1]
    assert sorted(torch.cat(parts).tolist()) == list(range(6))
    assert [len(p) for p in minibatches(3, 4, torch.Generator().manual_seed(0))] == [1, 1, 1]
