"""2 processes (gloo, DDP through accelerate) end with the weights of 1 process on the same global batch.

One launch of `torchrun --nproc_per_node 2` trains remax (n=2 samples sharing a greedy row)
and ppo (critic, GAE with whitening, 2 epochs) for 3 steps each with uneven micro-batches,
then resumes the remax run from its step-2 checkpoint with 2 ranks. A one-process run of
the same 3 steps on the whole global batch, with the same rollouts (see _worker.py), runs
beside it.

Tolerance: the two runs compute the same sums in a different order (two half-batch
gradients all-reduced vs one accumulation over all rows; prompts padded to different
widths), so float32 round-off (~1e-7 relative per operation) is all that may differ.
Adam divides by sqrt(v), which can magnify round-off on coordinates whose gradient is
tiny, so weights are compared with atol 2e-5: under 1% of a single step's largest update
(lr 3e-3), and the test checks that the weights moved by far more than that.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.slow
HERE = Path(__file__).parent
ATOL = 2e-5


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    for var in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(var, None)
    return env


def ranks_command(worker: Path, mode: str, tok_dir: Path, out: Path) -> list[str]:
    """`worker MODE TOK_DIR OUT` on 2 gloo processes (torchrun on a free local port)."""
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
            "--master_port", str(free_port()), str(worker), mode, str(tok_dir), str(out)]


def run_ranks_and_reference(worker: Path, tokenizer, out: Path, timeout: int) -> None:
    """`worker ranks` on 2 gloo processes (torchrun) and `worker reference` in one process,
    side by side (3 processes, about the wall time of the slower), both writing into `out`."""
    tokenizer.save_pretrained(out / "tok")
    ranks = ranks_command(worker, "ranks", out / "tok", out)
    one = [sys.executable, str(worker), "reference", str(out / "tok"), str(out)]
    procs = [subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for cmd in (ranks, one)]
    for p in procs:
        log, _ = p.communicate(timeout=timeout)
        assert p.returncode == 0, log[-3000:]


@pytest.fixture(scope="module")
def weights(tmp_path_factory, tokenizer):
    out = tmp_path_factory.mktemp("dist")
    run_ranks_and_reference(HERE / "_worker.py", tokenizer, out, timeout=300)
    return torch.load(out / "weights-ranks.pt"), torch.load(out / "weights-reference.pt")


def _max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k] - b[k]).abs().max().item() for k in a)


@pytest.mark.parametrize("algo", ["remax", "ppo"])
def test_two_ranks_end_with_the_weights_of_one_process(weights, tokenizer, algo):
    ranks, one = weights
    diff = _max_diff(ranks[algo], one[algo])
    print(f"{algo}: max |2 ranks - 1 process| = {diff:.2e}")  # shown with pytest -s
    assert diff < ATOL
    torch.testing.assert_close(ranks[algo + "/loss"], one[algo + "/loss"], rtol=1e-4, atol=1e-6)
    from remax.models.tiny import tiny_causal_lm

    init = {f"policy.{k}": v for k, v in tiny_causal_lm(tokenizer, seed=0).state_dict().items()}
    moved = max((ranks[algo][k] - init[k]).abs().max().item() for k in init)
    assert moved > 100 * ATOL  # the runs trained: equal weights are not equal initial weights


def test_two_ranks_resume_from_a_checkpoint_to_the_same_weights(weights):
    ranks, _ = weights
    assert _max_diff(ranks["remax-resumed"], ranks["remax"]) < ATOL
