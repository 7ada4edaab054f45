"""rollout.async_steps 1 with a real rollout server (the `rollout_server` fixture, on its own
core; the trainer here on another): the batch of step t+1 is generated while step t
trains, from the weights before step t's update. The toy task is learnt, the staleness
the server reports is logged, resume is exact at checkpoints, and an unclipped loss
without TIS is refused."""

from __future__ import annotations

import json
import os

import pytest
import torch
from test_vllm_train import ROWS, o_share, toy_config
from vllm_toy import toy_model

from remax.config import ConfigError
from remax.trainer import Trainer


@pytest.fixture
def trainer_core(rollout_server):
    """The trainer on a core the server does not run on (where there are two)."""
    before = os.sched_getaffinity(0)
    if len(rollout_server.cores) >= 2:
        os.sched_setaffinity(0, {rollout_server.cores[1]})
    yield
    os.sched_setaffinity(0, before)


def async_config(out, url: str, steps: int):
    cfg = toy_config(out, steps)
    cfg.rollout.backend, cfg.rollout.server_url, cfg.rollout.async_steps = "vllm_server", url, 1
    cfg.rollout.verify_tol = 1e-3  # toy_config's lr 1e-2 grows the logits: see test_vllm_train
    return cfg


def run(cfg, tokenizer):
    return Trainer(cfg, policy=toy_model(tokenizer, seed=0), tokenizer=tokenizer, reward_fn=o_share, rows=ROWS).train()


@pytest.mark.slow
@pytest.mark.learning
def test_remax_learns_the_toy_task_one_step_off_policy(rollout_server, trainer_core, toy_tokenizer, tmp_path,
                                                       record_outcome, seed_offset):
    cfg = async_config(tmp_path / "run", rollout_server.url, steps=40)
    cfg.train.seed += seed_offset
    history = run(cfg, toy_tokenizer)
    r = [m["rollout/reward_mean"] for m in history]
    first, last = sum(r[:5]) / 5, sum(r[-5:]) / 5
    record_outcome("gain", last - first, 0.2)
    # measured (40 steps, seed offsets 0..4, OMP_NUM_THREADS 1, server and trainer on a core each): gains
    # 0.34, 0.79, 0.83, 0.36, 0.84; the bound leaves 1.7x to the smallest (benchmarks/README.md, "Issue 19")
    assert last > first + 0.2, (first, last, r)
    # every batch but the first came from the weights one update old, as the server reported
    assert [m["rollout/staleness"] for m in history] == [0.0] + [1.0] * 39
    assert all("rollout/is_weight_mean" in m for m in history)  # TIS (auto: token) weighted the batches
    # the engine's log-probs are the sampling weights': on-policy (step 1) they match the trainer's to float
    # rounding; one update old, the gap TIS corrects is orders of magnitude larger
    assert history[0]["rollout/logprob_mismatch_max"] < 1e-3
    # (measured: step 1 1.3e-7 .. 1.5e-7; the stale steps' median far above, their minimum 1.9e-5 .. 5e-2)
    stale = sorted(m["rollout/logprob_mismatch_mean"] for m in history[1:])
    assert stale[len(stale) // 2] > 10 * history[0]["rollout/logprob_mismatch_mean"]
    # every push checked: W_0 on the spot (reported at step 1), W_1 .. W_38 off the trainer's path, each
    # reported with the batch it generated (steps 3 .. 40); W_39 feeds no batch and is not pushed
    probes = [m["rollout/engine_probe_diff"] for m in history if "rollout/engine_probe_diff" in m]
    assert len(probes) == 39 and "rollout/engine_probe_diff" not in history[1] and max(probes) <= 1e-3


def test_resume_is_exact_at_a_checkpoint(rollout_server, trainer_core, toy_tokenizer, tmp_path):
    whole = async_config(tmp_path / "whole", rollout_server.url, steps=6)
    whole.log.save_every = 3
    history = run(whole, toy_tokenizer)
    # steps 1-3 and 4-6: a batch generated on the spot after each checkpoint (staleness 0), then prefetched ones
    assert [m["rollout/staleness"] for m in history] == [0.0, 1.0, 1.0, 0.0, 1.0, 1.0]

    part = async_config(tmp_path / "part", rollout_server.url, steps=3)
    part.log.save_every = 3
    run(part, toy_tokenizer)
    resumed = async_config(tmp_path / "part", rollout_server.url, steps=6)
    resumed.log.save_every, resumed.resume = 3, "auto"
    run(resumed, toy_tokenizer)

    lines = [json.loads(x) for x in (tmp_path / "part" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in lines] == [1, 2, 3, 4, 5, 6]
    for a, b in zip(history, lines):
        assert a["rollout/reward_mean"] == b["rollout/reward_mean"] and a["loss/policy"] == b["loss/policy"], (a, b)
    from safetensors.torch import load_file

    w1 = load_file(tmp_path / "whole" / "final" / "model.safetensors")
    w2 = load_file(tmp_path / "part" / "final" / "model.safetensors")
    assert all(torch.equal(w1[k], w2[k]) for k in w1)  # bitwise


def test_an_unclipped_loss_without_tis_is_refused(tmp_path):
    cfg = async_config(tmp_path / "run", "http://127.0.0.1:9", steps=2)
    cfg.loss.tis = "off"
    with pytest.raises(ConfigError, match=r"async_steps 1 trains on rollouts one update old.*policy_gradient.*TIS") as e:
        Trainer(cfg, policy=object(), rows=ROWS, reward_fn=o_share, tokenizer=object())
    assert "\n" not in str(e.value)
    cfg.loss.tis, cfg.rollout.backend = "auto", "vllm"
    with pytest.raises(ConfigError, match=r"needs the engine in a process of its own"):
        Trainer(cfg, policy=object(), rows=ROWS, reward_fn=o_share, tokenizer=object())
