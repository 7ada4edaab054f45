"""Kill a LoRA run with SIGKILL after its first checkpoint, resume it with --resume auto,
and get the uninterrupted run's adapter bit for bit and every step logged once. The killed
and the resumed run are real `remax train` processes (one torch thread)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors.torch import load_file

DRIVER = textwrap.dedent('''
    import os, sys
    import torch
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS") or 1))  # as the suite's tests
    from remax.cli import main
    sys.exit(main(sys.argv[1:]))
''')

# distinct characters / 10; KILL_AT_CALL=k sends SIGKILL at the k-th reward call (step k)
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


def train_args(tmp, out, policy_dir, prompts_file, extra=()):
    (tmp / "reward.py").write_text(REWARD)
    return [
        "train", "--output_dir", str(out), "--model.policy", str(policy_dir), "--model.device", "cpu",
        "--data.train_file", str(prompts_file), "--reward.function", f"{tmp / 'reward.py'}:score",
        "--rollout.max_new_tokens", "6", "--train.steps", "4", "--train.batch_size", "2", "--train.lr", "3e-2",
        "--log.progress", "False", "--log.plot", "False", "--log.save_every", "2",
        "--lora.r", "4", "--lora.alpha", "8", "--train.seed", os.environ.get("REMAX_TEST_SEED_OFFSET", "0"), *extra,
    ]


def run(tmp, out, policy_dir, prompts_file, extra=(), **env):
    (tmp / "driver.py").write_text(DRIVER)
    args = train_args(tmp, out, policy_dir, prompts_file, extra)
    return subprocess.run([sys.executable, str(tmp / "driver.py"), *args], env={**os.environ, "HF_HUB_OFFLINE": "1", **env},
                          capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_kill_and_resume_with_lora_is_bitwise_identical(tmp_path, policy_dir, prompts_file):
    ref, out = tmp_path / "ref", tmp_path / "run"
    from remax.cli import main

    # the uninterrupted run in this process (one torch thread, as the driver's), to save a start-up
    assert main(train_args(tmp_path, ref, policy_dir, prompts_file)) == 0
    killed = run(tmp_path, out, policy_dir, prompts_file, KILL_AT_CALL="3")
    assert killed.returncode == -9, killed.stderr  # really killed after checkpoint step-2
    resumed = run(tmp_path, out, policy_dir, prompts_file, ["--resume", "auto"])
    assert resumed.returncode == 0, resumed.stderr
    assert "step-2 at step 2" in resumed.stderr

    got, want = load_file(out / "final/adapter_model.safetensors"), load_file(ref / "final/adapter_model.safetensors")
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)
    assert any(bool(v.any()) for k, v in want.items() if "lora_B" in k)  # the adapters did train
    keep = lambda m: {k: v for k, v in m.items() if not k.startswith("perf/")}  # noqa: E731
    rows = lambda d: [keep(json.loads(line)) for line in (d / "metrics.jsonl").read_text().splitlines()]  # noqa: E731
    assert [m["step"] for m in rows(out)] == [1, 2, 3, 4] and rows(out) == rows(ref)
