"""The vLLM push of an FSDP-sharded policy (issue 17, item 2), on the shared real engine.

2 gloo processes shard a model with remax's `shard_model` and run `plain_weights` (what
`VLLMBackend.push` sends; `full_named_tensors` gathers each shard whole): the pushed tensors
are the unsharded model's bit for bit and the engine passes the probe against it. A push
of the shards as a rank holds them without the gather (its own rows, the others' zero)
fails the probe: EngineOutOfSync, the difference far above the tolerance.
(A 2-rank run with an engine per rank is not tested here: vLLM's in-process engine
starts its own world-size-1 process group, which cannot sit beside torchrun's.)"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from remax.rollout.types import EngineOutOfSync
from vllm_toy import varied_model

HERE = Path(__file__).resolve().parent
SEED = 11


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def pushed(tmp_path_factory):
    out = tmp_path_factory.mktemp("fsdp-push") / "push.pt"
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_PORT")}
    env.update(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(_free_port()), str(HERE / "_fsdp_push_worker.py"), str(SEED), str(out)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    return torch.load(out)


def _holding(weights, tokenizer):
    """A module holding `weights` (what the engine gets when it is pushed)."""
    model = varied_model(tokenizer, seed=0)
    model.load_state_dict(weights)
    return model


def test_fsdp_push_sends_whole_tensors_and_a_sharded_push_fails_the_probe(engine, toy_tokenizer, pushed):
    trainer = varied_model(toy_tokenizer, seed=SEED)  # the policy the ranks hold in shards, whole
    whole = trainer.state_dict()
    assert pushed["pushed"].keys() == whole.keys()
    assert all(torch.equal(pushed["pushed"][k], whole[k]) for k in whole)  # gathered bit for bit

    engine.push(_holding(pushed["own_shard"], toy_tokenizer))  # no gather: one rank's rows only
    diff = engine.probe_diff(trainer)
    assert diff > 100 * engine.tol  # measured 2.6 (the gathered push: 1.4e-6; tol 1e-4)
    with pytest.raises(EngineOutOfSync, match="not the policy's"):
        engine.verify(trainer, 1)

    engine.push(_holding(pushed["pushed"], toy_tokenizer))  # the gathered tensors
    good = engine.verify(trainer, 2)
    print(f"probe: sharded push {diff:.3g}, gathered push {good:.2e} (tol {engine.tol:g})")
    assert good <= engine.tol
