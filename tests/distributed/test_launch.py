"""The launch paths: `python -m remax train --num_processes 2` end to end on a tiny model
(torchrun underneath, gloo on CPU), and the shipped accelerate configs parse."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from remax.cli import split_num_processes, UsageError

ROOT = Path(__file__).resolve().parents[2]


def test_split_num_processes():
    assert split_num_processes(["--num_processes", "2", "--algo", "ppo"]) == (2, ["--algo", "ppo"])
    assert split_num_processes(["--num_processes=3"]) == (3, [])
    assert split_num_processes(["--algo", "remax"]) == (1, ["--algo", "remax"])
    with pytest.raises(UsageError, match="positive integer"):
        split_num_processes(["--num_processes", "two"])


@pytest.mark.parametrize("name, kind", [("ddp", "MULTI_GPU"), ("fsdp", "FSDP"), ("deepspeed_zero2", "DEEPSPEED"),
                                        ("deepspeed_zero3", "DEEPSPEED")])
def test_shipped_accelerate_configs_parse(name, kind):
    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(str(ROOT / "configs" / "accelerate" / f"{name}.yaml"))
    assert str(config.distributed_type).endswith(kind)
    if name == "fsdp":
        assert config.fsdp_config["fsdp_version"] == 2  # FSDP2; remax shards with fully_shard itself
    if name.startswith("deepspeed"):
        assert config.deepspeed_config["zero_stage"] == int(name[-1])


@pytest.mark.slow
def test_train_num_processes_2_end_to_end(tmp_path, tokenizer):
    from remax.models.tiny import tiny_causal_lm

    policy = tmp_path / "policy"
    tiny_causal_lm(tokenizer, seed=0).save_pretrained(policy)
    tokenizer.save_pretrained(policy)
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in ["The Lord is", "Love is", "And God said", "O give"]))
    reward = tmp_path / "r.py"
    reward.write_text("def score(prompts, responses):\n    return [r.count('e') / max(len(r), 1) for r in responses]\n")
    out = tmp_path / "run"
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    env.update(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    cmd = [sys.executable, "-m", "remax", "train", "--num_processes", "2", "--output_dir", str(out),
           "--model.policy", str(policy), "--model.device", "cpu", "--data.train_file", str(prompts),
           "--reward.function", f"{reward}:score", "--rollout.max_new_tokens", "4", "--train.steps", "2",
           "--train.batch_size", "4", "--log.save_every", "2", "--log.progress", "False"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("done: 2 steps") == 1  # rank 0 alone reports
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [1, 2]  # written once, by rank 0
    assert (out / "final" / "config.json").is_file() and (out / "checkpoints" / "step-2").is_dir()
    import torch

    state = torch.load(out / "checkpoints" / "step-2" / "trainer_state.pt", weights_only=True)
    assert len(state["run_state"]["rng"]["ranks"]) == 2  # both ranks' RNG streams
