"""`remax train --rollout.hf_kernels onednn` end to end on a tiny model: the rollouts come
from packed oneDNN matmuls, the update from the trainer's own kernels, so a run equals the
one with torch's kernels (the same tokens sampled, hence the same updates)."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from remax.cli import main
from remax.rollout.kernels import available


@pytest.mark.skipif(not available(), reason="this torch build has no oneDNN linear operators")
def test_train_with_onednn_rollout_kernels_equals_torch_kernels(tmp_path, make_args):
    runs = {}
    for kernels in ("torch", "onednn"):
        out = tmp_path / kernels
        assert main(["train", *make_args(out), "--log.plot", "False", "--rollout.hf_kernels", kernels]) == 0
        metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        runs[kernels] = (metrics, AutoModelForCausalLM.from_pretrained(out / "final"))
    for key in ("rollout/reward_mean", "rollout/response_len_mean", "loss/policy"):
        assert [m[key] for m in runs["onednn"][0]] == [m[key] for m in runs["torch"][0]], key
    for a, b in zip(runs["onednn"][1].parameters(), runs["torch"][1].parameters()):
        assert torch.equal(a, b)
