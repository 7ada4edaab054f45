"""Kill a run with SIGKILL at several moments, resume it, and get the uninterrupted run
bit for bit: final weights bitwise equal, metrics.jsonl with every step exactly once
and the same values. Each run is a real `remax train` in its own process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors.torch import load_file

STEPS, SAVE_EVERY = 6, 2
PROMPTS = ["The Lord is", "And God said", "Blessed are the", "Love is", "In the beginning", "O give thanks"]

# A `remax train` process with one torch thread (results must not depend on the pool).
# KILL_IN_CHECKPOINT=step-N: die by SIGKILL after step-N's policy/ is written into the
# checkpoint's temporary directory and before its trainer state is.
DRIVER = textwrap.dedent('''
    import os, signal, sys
    import torch
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS") or 1))  # as the suite's tests
    import remax.trainer.checkpoint as ck
    target = os.environ.get("KILL_IN_CHECKPOINT")
    if target:
        original = ck.save_pretrained_dir
        def save_then_die(model, tokenizer, path):
            original(model, tokenizer, path)
            if f".{target}.tmp-" in str(path):
                os.kill(os.getpid(), signal.SIGKILL)
        ck.save_pretrained_dir = save_then_die
    from remax.cli import main
    sys.exit(main(sys.argv[1:]))
''')

# Reward: distinct characters / 10; KILL_AT_CALL=k sends SIGKILL at the k-th call (step k).
REWARD = textwrap.dedent('''
    import os, signal
    calls = 0
    def score(prompts, responses):
        global calls
        calls += 1
        if calls == int(os.environ.get("KILL_AT_CALL", "0")):
            os.kill(os.getpid(), signal.SIGKILL)
        return [len(set(r)) / 10 for r in responses]
''')


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tokenizer):
    from remax.models.tiny import tiny_causal_lm

    root = tmp_path_factory.mktemp("resume")
    tok = tokenizer
    tiny_causal_lm(tok, seed=0).save_pretrained(root / "policy")
    tok.save_pretrained(root / "policy")
    (root / "prompts.jsonl").write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    (root / "reward.py").write_text(REWARD)
    (root / "driver.py").write_text(DRIVER)
    return root


def run(root, out, algo, extra=(), **env):
    args = [
        "train", "--algo", algo, "--output_dir", str(out), "--model.policy", str(root / "policy"),
        "--train.seed", os.environ.get("REMAX_TEST_SEED_OFFSET", "0"),
        "--data.train_file", str(root / "prompts.jsonl"), "--reward.function", f"{root / 'reward.py'}:score",
        "--rollout.max_new_tokens", "6", "--train.steps", str(STEPS), "--train.batch_size", "2",
        "--train.lr", "1e-3", "--log.progress", "False", "--log.save_every", str(SAVE_EVERY), *extra,
    ]
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", **env}
    return subprocess.run([sys.executable, str(root / "driver.py"), *args], env=full_env,
                          capture_output=True, text=True, timeout=300)


def metrics(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def same_values(a, b):
    """Everything but timings and memory, which differ between processes."""
    keep = lambda m: {k: v for k, v in m.items() if not k.startswith("perf/")}  # noqa: E731
    return keep(a) == keep(b)


@pytest.fixture(scope="module")
def reference(setup):
    refs = {}
    for algo in ("remax", "ppo"):
        out = setup / f"ref-{algo}"
        done = run(setup, out, algo)
        assert done.returncode == 0, done.stderr
        refs[algo] = out
    return refs


@pytest.mark.parametrize(
    "algo, env, resumes_from",
    [
        ("remax", {"KILL_AT_CALL": "2"}, None),  # before the first checkpoint
        ("remax", {"KILL_AT_CALL": "3"}, 2),  # right after one (step-2 written, step 3 not logged)
        ("remax", {"KILL_AT_CALL": "4"}, 2),  # after one, with step 3 logged past it
        ("remax", {"KILL_IN_CHECKPOINT": "step-4"}, 2),  # in the middle of writing step-4
        ("ppo", {"KILL_AT_CALL": "4"}, 2),  # with a critic, its optimizer and GAE
    ],
    ids=["before-first-checkpoint", "right-after-checkpoint", "after-checkpoint-and-a-step",
         "mid-checkpoint-write", "ppo-after-checkpoint"],
)
def test_kill_and_resume_is_bitwise_identical(setup, reference, tmp_path, algo, env, resumes_from):
    out = tmp_path / "run"
    killed = run(setup, out, algo, **env)
    assert killed.returncode == -9, killed.stderr  # really killed, not a clean exit

    resumed = run(setup, out, algo, ["--resume", "auto"])
    assert resumed.returncode == 0, resumed.stderr
    if resumes_from is None:
        assert "starting from step 0" in resumed.stderr
    else:
        assert f"step-{resumes_from} at step {resumes_from}" in resumed.stderr

    ref = reference[algo]
    got, want = load_file(out / "final/model.safetensors"), load_file(ref / "final/model.safetensors")
    assert got.keys() == want.keys()
    assert all(torch.equal(got[k], want[k]) for k in want)  # bitwise
    got_m, want_m = metrics(out), metrics(ref)
    assert [m["step"] for m in got_m] == list(range(1, STEPS + 1))
    assert all(same_values(a, b) for a, b in zip(got_m, want_m))
    # no leftovers of the killed write; the pointer names the newest checkpoint
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["latest", "step-2", "step-4", "step-6"]
    assert (out / "checkpoints/latest").read_text().strip() == "step-6"


def test_resume_from_an_explicit_checkpoint_drops_what_came_after(setup, reference, tmp_path):
    """--resume PATH to an older checkpoint: later checkpoints, final/ and later metrics
    belong to the continuation being redone and are removed; the result is the same run."""
    out = tmp_path / "run"
    assert run(setup, out, "remax").returncode == 0
    resumed = run(setup, out, "remax", ["--resume", str(out / "checkpoints/step-2")])
    assert resumed.returncode == 0, resumed.stderr
    assert "removed 2 checkpoint(s) after step 2" in resumed.stderr
    got, want = load_file(out / "final/model.safetensors"), load_file(reference["remax"] / "final/model.safetensors")
    assert all(torch.equal(got[k], want[k]) for k in want)
    assert [m["step"] for m in metrics(out)] == list(range(1, STEPS + 1))


# ---------------------------------------------------------------- issue 15, item 11
def test_resume_refuses_a_changed_steps_under_a_cosine_schedule(tmp_path):
    from remax.config import Config, ConfigError, save_config
    from remax.trainer.resume import check_same_run

    saved = Config(output_dir=str(tmp_path))
    saved.train.lr_schedule, saved.train.steps = "cosine", 100
    save_config(saved, tmp_path / "config.yaml")
    now = Config(output_dir=str(tmp_path))
    now.train.lr_schedule, now.train.steps = "cosine", 150
    with pytest.raises(ConfigError, match="changed train.steps \\(100 -> 150\\) under --train.lr_schedule cosine"):
        check_same_run(now, tmp_path)
    now.train.lr_schedule = saved.train.lr_schedule = "constant"
    save_config(saved, tmp_path / "config.yaml")
    check_same_run(now, tmp_path)  # a constant schedule may run longer


def test_resume_refuses_another_process_count(tmp_path):
    from remax.config import ConfigError
    from remax.trainer.resume import check_same_world

    check_same_world(tmp_path, 2, 2)
    with pytest.raises(ConfigError, match="on 1 process\\(es\\): it was saved by 2"):
        check_same_world(tmp_path, 2, 1)


def test_train_seed_seeds_python_random_and_numpy(tokenizer, tmp_path):
    import random

    import numpy as np

    from remax.config import Config
    from remax.models.tiny import tiny_causal_lm
    from remax.trainer import Trainer

    c = Config(output_dir=str(tmp_path))
    c.model.device, c.train.seed, c.train.batch_size, c.rollout.max_new_tokens = "cpu", 7, 2, 4
    policy = tiny_causal_lm(tokenizer, seed=0)
    random.seed(1), np.random.seed(1)
    Trainer(c, policy=policy, tokenizer=tokenizer, reward_fn=lambda p, r: [0.0] * len(r),
            rows=[{"prompt": "a b"}, {"prompt": "c d"}])
    drawn = (random.random(), float(np.random.rand()))
    random.seed(7), np.random.seed(7)
    assert drawn == (random.random(), float(np.random.rand()))  # the Trainer seeded both with train.seed
