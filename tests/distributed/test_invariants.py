"""The invariant matrix: for every registered algorithm (`remax.algos.list_algorithms()`,
so a new spec is covered without a new test), 2 gloo processes end 2 steps with the
weights of 1 process on the same global batch, and micro-batching leaves the update
unchanged. Cases and the one-process reference: `_matrix_worker.py`. One torchrun
launch trains every case (start-up and imports are paid once), beside the one-process
run; together about 30-60 s on 2 CPU cores.

Covered on the way: DAPO groups filtered and refilled with ranks keeping different
numbers of groups (padded with zero-weight rows), PPO and every ratio loss with 2 epochs x
2 minibatches, REINFORCE++'s and REINFORCE++-baseline's batch statistics, and a reward that
fails on rank 1 only (skip_batch: both ranks skip, same sampler position; stop: both stop
with the message, rank 0 saves). Tolerance as test_equivalence.py: float32 round-off,
magnified by Adam on coordinates with tiny gradients (lr 1e-3 here), stays far under 2e-5.
The spec x option pairs the trainer ignores: tests/trainer/test_ignored_options.py."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from remax.algos import list_algorithms
from .test_equivalence import _max_diff, run_ranks_and_reference

pytestmark = pytest.mark.slow
HERE = Path(__file__).parent
ATOL = 2e-5
ALGOS = list_algorithms()


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tokenizer):
    out = tmp_path_factory.mktemp("matrix")
    run_ranks_and_reference(HERE / "_matrix_worker.py", tokenizer, out, timeout=400)
    load = lambda name: torch.load(out / name)  # noqa: E731
    return load("ranks-rank0.pt"), load("ranks-rank1.pt"), load("reference-rank0.pt"), out


def _init(tokenizer):
    from remax.models.tiny import tiny_causal_lm

    return {f"policy.{k}": v for k, v in tiny_causal_lm(tokenizer, seed=0).state_dict().items()}


@pytest.mark.parametrize("algo", ALGOS)
def test_two_ranks_end_with_the_weights_of_one_process(runs, tokenizer, algo):
    rank0, rank1, one, _ = runs
    diff = _max_diff(rank0[algo]["weights"], one[algo]["weights"])
    print(f"{algo}: max |2 ranks - 1 process| = {diff:.2e}")
    assert diff < ATOL
    torch.testing.assert_close(rank0[algo]["loss"], one[algo]["loss"], rtol=1e-4, atol=1e-6)
    assert rank0[algo]["sampler"] == rank1[algo]["sampler"] == one[algo]["sampler"]
    init = _init(tokenizer)
    assert max((rank0[algo]["weights"][k] - init[k]).abs().max().item() for k in init) > 20 * ATOL  # it trained


@pytest.mark.parametrize("algo", ALGOS)
def test_every_rank_logs_the_global_batch_statistics(runs, algo):
    """A std, a correlation or a variance ratio of 2 ranks' rows is not the mean of the ranks'
    own: each rank logs the statistics of the gathered batch, equal to one process's."""
    rank0, rank1, one, _ = runs
    assert rank0[algo]["batch_stats"] == rank1[algo]["batch_stats"]  # one value for the whole run
    assert any("rollout/reward_std" in s for s in one[algo]["batch_stats"])
    for mine, ref in zip(rank0[algo]["batch_stats"], one[algo]["batch_stats"], strict=True):
        assert mine.keys() == ref.keys()
        for k in ref:
            assert mine[k] == pytest.approx(ref[k], rel=1e-6, abs=1e-9), k


@pytest.mark.parametrize("algo", ALGOS)
def test_micro_batching_leaves_the_update_unchanged(runs, algo):
    _, _, one, _ = runs
    assert _max_diff(one[algo]["weights"], one[algo]["whole"]) < ATOL  # micro-batches of 3 rows vs one of all


def test_dapo_filters_and_refills_alike_on_every_rank(runs):
    rank0, rank1, one, _ = runs
    stats = one["dapo"]["stats"]
    assert any(s["rollout/groups_dropped"] > 0 and s["rollout/refill_batches"] > 0 for s in stats)
    assert rank0["dapo"]["stats"] == rank1["dapo"]["stats"] == stats  # global counts, one decision


def test_a_reward_failing_on_one_rank_is_skipped_by_every_rank(runs):
    rank0, rank1, one, _ = runs
    case = "remax-reward-skip"
    assert rank0[case]["skipped"] == rank1[case]["skipped"] == one[case]["skipped"] >= 1
    assert rank0[case]["sampler"] == rank1[case]["sampler"] == one[case]["sampler"]
    assert _max_diff(rank0[case]["weights"], one[case]["weights"]) < ATOL


def test_a_reward_failing_on_one_rank_stops_every_rank(runs):
    rank0, rank1, one, out = runs
    case = "remax-reward-stop"
    for r in (rank0, rank1, one):
        assert "the reward server is down" in r[case]["stopped"] and "\n" not in r[case]["stopped"]
    assert "on rank 1" in rank0[case]["stopped"]  # the rank that did not fail says where it failed
    assert (out / f"{case}-ranks" / "checkpoints" / "step-1").is_dir()  # rank 0 saved the last good state
    assert _max_diff(rank0[case]["weights"], one[case]["weights"]) < ATOL
