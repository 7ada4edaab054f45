"""The arithmetic behind the Dist seam, with two ranks simulated by two threads that
all-reduce in lockstep (the real 2-process run is test_equivalence.py)."""

from __future__ import annotations

import threading

import pytest
import torch

from remax.algos import aggregate, masked_whiten
from remax.trainer.distributed import Dist, global_normalisers, masked_whiten_global, rank_seed, shard_bounds


class Lockstep:
    """all_reduce_sum for `world` threads: every rank's tensor summed, returned to all."""

    def __init__(self, world: int):
        self.world, self.slots, self.barrier = world, [None] * world, threading.Barrier(world)

    def run(self, fn):
        out = [None] * self.world

        def rank(r):
            out[r] = fn(r, lambda t: self._reduce(r, t))

        threads = [threading.Thread(target=rank, args=(r,)) for r in range(self.world)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return out

    def _reduce(self, r, t):
        self.slots[r] = t.clone()
        self.barrier.wait()
        total = sum(self.slots)
        self.barrier.wait()
        return total


def test_normalisers_make_averaged_rank_losses_equal_the_global_loss():
    # rank 0: 2 rows, 3 tokens; rank 1: 2 rows, 5 tokens -> global 8 tokens, 4 rows; world 2
    values = [torch.tensor([[1.0, 2.0, 0.0], [3.0, 0.0, 0.0]]), torch.tensor([[1.0, 1.0, 1.0], [2.0, 2.0, 0.0]])]
    masks = [torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]]), torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])]
    norms = Lockstep(2).run(lambda r, reduce: global_normalisers(masks[r].sum(), 2, 2, reduce))
    assert [float(n["num_tokens"]) for n in norms] == [4.0, 4.0]  # 8 tokens / 2 ranks
    assert [n["num_seqs"] for n in norms] == [2.0, 2.0]  # 4 rows / 2 ranks
    rank_losses = [aggregate(values[r], masks[r], "token_mean", **norms[r]) for r in range(2)]
    # DDP averages: (6/4 + 7/4) / 2 = 13/8 = the token mean over both ranks' 8 tokens (sum 13)
    assert sum(rank_losses) / 2 == pytest.approx(13 / 8)
    assert float(aggregate(torch.cat(values), torch.cat(masks), "token_mean")) == pytest.approx(13 / 8)
    seq = [aggregate(values[r], masks[r], "seq_mean_token_sum", **norms[r]) for r in range(2)]
    assert sum(seq) / 2 == pytest.approx(13 / 4)  # 4 sequences


def test_whitening_uses_the_global_mean_and_unbiased_variance():
    values = [torch.tensor([[1.0, 2.0]]), torch.tensor([[3.0, 4.0]])]
    masks = [torch.ones(1, 2), torch.ones(1, 2)]
    out = Lockstep(2).run(lambda r, reduce: masked_whiten_global(values[r], masks[r], reduce))
    # mean 2.5, unbiased variance (2.25 + 0.25 + 0.25 + 2.25) / 3 = 5/3
    std = (5 / 3) ** 0.5
    torch.testing.assert_close(out[0], torch.tensor([[-1.5 / std, -0.5 / std]]))
    torch.testing.assert_close(torch.cat(out), masked_whiten(torch.cat(values), torch.cat(masks)))


def test_shards_and_seeds():
    assert [shard_bounds(8, 2, r) for r in range(2)] == [(0, 4), (4, 8)]
    seeds = {rank_seed(0, step, rank) for step in range(50) for rank in range(8)}
    assert len(seeds) == 400  # no two (step, rank) pairs share rollout noise
    assert rank_seed(1, 0, 0) != rank_seed(0, 0, 0)


def test_one_process_dist_is_the_identity():
    d, rows, t = Dist(), [{"p": 1}, {"p": 2}], torch.tensor([1.0, 2.0])
    assert d.shard(rows) is rows and d.all_reduce_sum(t) is t and (d.rank, d.world, d.is_main) == (0, 1, True)
    assert d.loss_normalisers(t.sum(), 2) == {"num_tokens": t.sum(), "num_seqs": 2}
    assert d.gather_rng({"torch": 1}) == {"torch": 1} and d.own_rng({"ranks": [{"a": 0}, {"a": 1}]}) == {"a": 0}
    assert d.from_main(True) is True and d.full_state_dict("policy") is None


def test_kl_metrics_are_the_whole_batch_ratios():
    """Rank 0: KL sum 2 over 2 tokens (1 sequence); rank 1: 2 over 6 tokens (1 sequence).
    The batch's kl/mean is 4 / 8 = 0.5 on both ranks (the mean of the ranks' own means, 1
    and 1/3, would be 2/3), kl/seq_mean 4 / 2 = 2; one process keeps its own sums."""
    from remax.trainer.phases.update import kl_metrics

    sums = [(2.0, 2.0, 1), (2.0, 6.0, 1)]
    got = Lockstep(2).run(lambda r, reduce: kl_metrics(*sums[r], reduce))
    assert got == [{"kl/mean": 0.5, "kl/seq_mean": 2.0}] * 2
    assert kl_metrics(2.0, 6.0, 1, Dist().all_reduce_sum) == {"kl/mean": 2.0 / 6.0, "kl/seq_mean": 2.0}
