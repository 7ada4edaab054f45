"""Several nodes on one machine: `remax train --nnodes 2 --node_rank 0|1 --master_addr 127.0.0.1`,
one process per "node" (gloo on CPU), each launched as its own command with its own
output_dir, as on two machines. The run ends with the weights of one process on the whole
global batch (the shard-seeded reference of _worker.py, in this process; tolerance 2e-5 as in
test_equivalence.py), and only global rank 0 (node 0) writes: node 1's output_dir is never
created, and node 0's holds metrics, a checkpoint and final/ once.

The launcher's flags are checked before torchrun starts (one line each), tested without a launch.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from remax.cli import UsageError, split_launch_flags
from .test_equivalence import ATOL, _env, free_port

PROMPTS = ["The Lord is", "And God said", "Blessed are the", "Love is", "In the beginning", "O give thanks",
           "He maketh me", "The wicked are"]


def test_launch_flags_build_torchrun_arguments():
    launch, rest = split_launch_flags(["--nnodes", "2", "--node_rank=1", "--master_addr", "10.0.0.1", "--algo", "ppo"])
    assert rest == ["--algo", "ppo"] and launch.num_processes == 2 and launch.relaunch  # one process per node
    assert launch.torchrun_args() == ["--nnodes", "2", "--node_rank", "1", "--nproc_per_node", "1",
                                      "--master_addr", "10.0.0.1", "--master_port", "29500"]
    launch, _ = split_launch_flags(["--num_processes", "16", "--nnodes", "2", "--node_rank", "0",
                                    "--master_addr", "h0", "--master_port", "1234"])
    assert launch.nproc_per_node == 8 and launch.torchrun_args()[-1] == "1234"
    launch, _ = split_launch_flags(["--num_processes", "2"])
    assert launch.torchrun_args() == ["--standalone", "--nproc_per_node", "2"]
    assert not split_launch_flags(["--algo", "remax"])[0].relaunch


@pytest.mark.parametrize("args, message", [
    (["--nnodes", "2", "--master_addr", "h"], "needs --node_rank"),
    (["--nnodes", "2", "--node_rank", "2", "--master_addr", "h"], "out of range"),
    (["--nnodes", "2", "--node_rank", "0"], "needs --master_addr"),
    (["--nnodes", "2", "--node_rank", "0", "--master_addr", "h", "--num_processes", "3"], "does not divide"),
    (["--nnodes", "0"], "positive integer"),
    (["--node_rank", "1"], "needs --nnodes > 1"),
    (["--master_port", "70000"], "1..65535"),
    (["--nnodes"], "needs a value"),
])
def test_bad_launch_flags_are_one_line(args, message):
    with pytest.raises(UsageError, match=message):
        split_launch_flags(args)


def test_bad_launch_flag_stops_the_cli_before_launch(capsys):
    from remax.cli import main

    assert main(["train", "--nnodes", "2", "--master_addr", "127.0.0.1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--node_rank" in err


def _flags(policy: Path, prompts: Path, reward: Path, seed: int) -> list[str]:
    """The flags of _worker.make_config('remax', steps=2): uneven micro-batches, lr 3e-3 constant."""
    return ["--algo", "remax", "--model.policy", str(policy), "--model.device", "cpu", "--data.train_file", str(prompts),
            "--reward.function", f"{reward}:score", "--rollout.max_new_tokens", "6", "--rollout.n_samples", "2",
            "--train.steps", "2", "--train.batch_size", "4", "--train.micro_batch_size", "3", "--train.seed", str(seed),
            "--train.lr", "3e-3", "--train.lr_schedule", "constant", "--train.warmup_steps", "0",
            "--log.save_every", "2", "--log.progress", "False", "--log.plot", "False"]


@pytest.mark.slow
def test_two_nodes_on_localhost_end_with_the_weights_of_one_process(tmp_path, tokenizer, seed_offset):
    from transformers import AutoModelForCausalLM

    from remax.cli import parse_train_args
    from remax.models.tiny import tiny_causal_lm
    from ._worker import trainer_class

    policy = tmp_path / "policy"
    tiny_causal_lm(tokenizer, seed=0).save_pretrained(policy)
    tokenizer.save_pretrained(policy)
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    reward = tmp_path / "r.py"
    reward.write_text("def score(prompts, responses):\n    return [r.count('e') / max(len(r), 1) for r in responses]\n")
    flags = _flags(policy, prompts, reward, seed_offset)
    port = str(free_port())
    nodes = []
    for node in (0, 1):
        cmd = [sys.executable, "-m", "remax", "train", "--nnodes", "2", "--node_rank", str(node), "--master_addr",
               "127.0.0.1", "--master_port", port, "--output_dir", str(tmp_path / f"node{node}"), *flags]
        nodes.append(subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))

    # meanwhile, one process on the whole global batch, each half drawn with its rank's seed
    config = parse_train_args([*flags, "--output_dir", str(tmp_path / "one")])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        trainer_class(reference=True)(config).train()
    finally:
        torch.set_num_threads(threads)

    logs = [p.communicate(timeout=240) for p in nodes]
    for p, (out, err) in zip(nodes, logs):
        assert p.returncode == 0, err[-3000:]
    assert "".join(out for out, _ in logs).count("done: 2 steps") == 1  # rank 0 alone reports

    node0, node1 = tmp_path / "node0", tmp_path / "node1"
    assert not node1.exists()  # node 1 (global rank 1) wrote nothing, not even its output_dir
    lines = (node0 / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [1, 2]  # written once
    assert (node0 / "final" / "config.json").is_file() and (node0 / "checkpoints" / "step-2").is_dir()
    assert sorted(p.name for p in (node0 / "checkpoints").iterdir()) == ["latest", "step-2"]  # no partial writes
    state = torch.load(node0 / "checkpoints" / "step-2" / "trainer_state.pt", weights_only=True)
    assert len(state["run_state"]["rng"]["ranks"]) == 2  # both nodes' RNG streams

    two = AutoModelForCausalLM.from_pretrained(node0 / "final").state_dict()
    one = AutoModelForCausalLM.from_pretrained(tmp_path / "one" / "final").state_dict()
    init = tiny_causal_lm(tokenizer, seed=0).state_dict()
    assert two.keys() == one.keys()
    diff = max((two[k] - one[k]).abs().max().item() for k in two)
    moved = max((two[k] - init[k]).abs().max().item() for k in two)
    print(f"2 nodes vs 1 process: max |diff| = {diff:.2e}; moved {moved:.2e}")  # shown with pytest -s
    assert diff < ATOL and moved > 100 * ATOL
