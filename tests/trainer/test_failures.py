"""Nothing lost: failing rewards, NaN updates, signals, full disks, overwrite and resume
mistakes each end in one line, and whatever was saved stays loadable."""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch

from remax.cli import main
from remax.errors import RunStopped
from remax.trainer.checkpoint import load_trainer_state


def reward_file(tmp_path, body: str, name="bad_reward.py"):
    """A reward whose k-th call (k = 1, 2, ... = the step) runs `body`; otherwise
    the share of 'e' characters. A new file per test, so the call counter starts at 0."""
    path = tmp_path / name
    lines = ["import math, time", "calls = 0", "def score(prompts, responses):", "    global calls",
             "    calls += 1", "    k = calls", "    " + body,
             "    return [r.count('e') / max(len(r), 1) for r in responses]"]
    path.write_text("\n".join(lines) + "\n")
    return f"{path}:score"


def train_args(make_args, out, reward, steps=4, *extra):
    args = make_args(out, steps=steps)
    i = args.index("--reward.function")
    args[i + 1] = reward
    return ["train", *args, *extra]


def steps_logged(out):
    return [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]


def one_line(capsys):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


# ------------------------------------------------------------------ rewards
@pytest.mark.parametrize(
    "body, words",
    [
        ("if k == 3: raise ZeroDivisionError('bad row')", ["ZeroDivisionError", "bad_reward.py:", "bad row"]),
        ("if k == 3: return [math.nan] + [0.0] * (len(responses) - 1)", ["non-finite", "row 0: prompt"]),
        ("if k == 3: return [math.inf] * len(responses)", ["non-finite", "inf"]),
        ("if k == 3: return [1.0]", ["returned 1 values; expected"]),
        ("if k == 3: return ['good'] * len(responses)", ["non-numeric", "row 0: prompt"]),
    ],
    ids=["raises", "nan", "inf", "wrong-count", "strings"],
)
def test_failing_reward_saves_the_last_good_state_and_says_so(body, words, tmp_path, make_args, capsys):
    out = tmp_path / "run"
    code = main(train_args(make_args, out, reward_file(tmp_path, body)))
    line = one_line(capsys)
    assert code == 1
    for w in ["reward", "at step 3", "saved", "checkpoints/step-2", "--resume auto", *words]:
        assert w in line, (w, line)
    assert steps_logged(out) == [1, 2]  # the failed step is not logged
    assert load_trainer_state(out / "checkpoints/step-2")["run_state"]["step"] == 2  # save_every is 0 here

    # the reward fixed in place (a new process in real use: drop the loaded module) continues to the end
    fixed = reward_file(tmp_path, "pass")
    for name in [m for m in sys.modules if m.startswith("remax_reward_bad_reward")]:
        del sys.modules[name]
    assert main(train_args(make_args, out, fixed, 4, "--resume", "auto")) == 0
    assert steps_logged(out) == [1, 2, 3, 4]


def test_failure_at_the_first_step_has_nothing_to_save(tmp_path, make_args, capsys):
    out = tmp_path / "run"
    assert main(train_args(make_args, out, reward_file(tmp_path, "raise KeyError('x')"))) == 1
    line = one_line(capsys)
    assert "at step 1" in line and "nothing to resume" in line
    assert not (out / "checkpoints").exists()


def test_hanging_reward_times_out(tmp_path, make_args, capsys):
    out = tmp_path / "run"
    start = time.perf_counter()
    # the second call would hang for ten minutes: the run must stop at the timeout instead. The
    # event is asserted, not a time; the bound is 10x this test's ~3 s on an idle 2-core machine,
    # and far below the hang, so only a run that waited for the reward can break it.
    code = main(train_args(make_args, out, reward_file(tmp_path, "if k == 2: time.sleep(600)"), 4,
                           "--reward.timeout_s", "0.5"))
    assert code == 1 and time.perf_counter() - start < 30
    line = one_line(capsys)
    assert "no answer within reward.timeout_s=0.5 s" in line and "checkpoints/step-1" in line


def test_skip_batch_goes_on_and_counts(tmp_path, make_args, capsys):
    out = tmp_path / "run"
    body = "if k in (2, 3): return [math.nan] * len(responses)"
    assert main(train_args(make_args, out, reward_file(tmp_path, body), 4, "--reward.on_error", "skip_batch")) == 0
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in lines] == [1, 2, 3, 4]  # four updates from six batches
    assert [m["reward/skipped_batches"] for m in lines] == [0, 2, 2, 2]
    assert capsys.readouterr().err.count("batch skipped") == 2


def test_skip_batch_stops_after_the_limit_in_a_row(tmp_path, make_args, capsys):
    out = tmp_path / "run"
    body = "if k >= 3: return [math.nan] * len(responses)"
    code = main(train_args(make_args, out, reward_file(tmp_path, body), 6,
                           "--reward.on_error", "skip_batch", "--reward.max_consecutive_skips", "2"))
    assert code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert "2 failed batches in a row" in err[-1] and "checkpoints/step-2" in err[-1]
    state = load_trainer_state(out / "checkpoints/step-2")["run_state"]
    assert state["step"] == 2 and state["skipped_batches"] == 2


# ------------------------------------------------------------- NaN updates
def _trainer(tmp_path, tokenizer, tiny_model, steps, **train):
    from remax.config import Config
    from remax.rewards import PythonReward
    from remax.trainer import Trainer

    cfg = Config(algo="remax", output_dir=str(tmp_path / "run"))
    cfg.rollout.max_new_tokens, cfg.train.steps, cfg.train.batch_size, cfg.train.lr = 5, steps, 2, 1e-2
    cfg.log.progress, cfg.log.plot = False, False
    for k, v in train.items():
        setattr(cfg.train, k, v)
    reward = PythonReward(lambda p, r: [x.count("e") / max(len(x), 1) for x in r], name="e_share")
    return Trainer(cfg, policy=tiny_model, tokenizer=tokenizer, reward_fn=reward, rows=[{"prompt": "Love is"}] * 4)


def test_nonfinite_gradient_skips_the_update(tmp_path, tokenizer, tiny_model):
    t = _trainer(tmp_path, tokenizer, tiny_model, steps=3)
    poison = {"on": True}
    param = next(t.policy.parameters())
    param.register_hook(lambda g: g * math_inf() if poison["on"] else g)
    before = [p.detach().clone() for p in t.policy.parameters()]
    m = t.step()
    assert m["train/skipped_updates"] == 1.0 and m["train/nonfinite_steps"] == 1
    assert all(torch.equal(a, b) for a, b in zip(before, t.policy.parameters()))  # weights untouched
    assert not t.optimizers["policy"].state  # Adam moments untouched too
    poison["on"] = False
    m = t.step()
    assert m["train/skipped_updates"] == 0.0 and t.state.nonfinite_streak == 0
    assert not all(torch.equal(a, b) for a, b in zip(before, t.policy.parameters()))


def math_inf():
    return float("inf")


def test_nonfinite_steps_in_a_row_stop_with_a_checkpoint(tmp_path, tokenizer, tiny_model):
    t = _trainer(tmp_path, tokenizer, tiny_model, steps=8, max_nonfinite_steps=2)
    next(t.policy.parameters()).register_hook(lambda g: g * math_inf() if t.state.step >= 2 else g)
    with pytest.raises(RunStopped, match="NaN/inf in 2 steps in a row") as info:
        t.train()
    assert "checkpoints/step-4" in str(info.value) and "--resume auto" in str(info.value)
    assert load_trainer_state(tmp_path / "run/checkpoints/step-4")["run_state"]["nonfinite_steps"] == 2


# ------------------------------------------------------------- full disk
def test_full_disk_keeps_the_previous_checkpoint(tmp_path, tokenizer, tiny_model):
    t = _trainer(tmp_path, tokenizer, tiny_model, steps=1)
    t.config.log.save_every = 1
    t.train()
    ckpts = tmp_path / "run/checkpoints"
    t.step()
    old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (4096, hard))  # every larger file write now fails: EFBIG
    try:
        with pytest.raises(RunStopped) as info:
            t.save_checkpoint()
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, old_handler)
    message = str(info.value)
    assert "could not write checkpoint" in message and f"{ckpts / 'step-1'} is intact" in message
    assert sorted(p.name for p in ckpts.iterdir()) == ["latest", "step-1"]  # no step-2, no temporary
    assert load_trainer_state(ckpts / "step-1")["run_state"]["step"] == 1


def test_keep_last(tmp_path, make_args):
    out = tmp_path / "run"
    assert main(["train", *make_args(out, steps=4), "--log.save_every", "1", "--log.keep_last", "2"]) == 0
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["latest", "step-3", "step-4"]


# ------------------------------------------------------- the run directory
def test_overwrite_removes_the_whole_old_run_first(tmp_path, make_args):
    out = tmp_path / "run"
    assert main(["train", *make_args(out, steps=4), "--log.save_every", "1"]) == 0
    (out / "notes.txt").write_text("mine")
    (out / "checkpoints/.step-9.tmp-123").mkdir()  # leftover of a killed write
    assert main(["train", *make_args(out, steps=2), "--overwrite", "True", "--log.save_every", "1"]) == 0
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["latest", "step-1", "step-2"]
    assert steps_logged(out) == [1, 2]
    assert (out / "notes.txt").read_text() == "mine"  # not the run's: left alone


def test_plain_rerun_of_a_stopped_run_is_refused(tmp_path, make_args, capsys):
    out = tmp_path / "run"
    reward = reward_file(tmp_path, "if k == 2: raise ValueError('x')")
    assert main(train_args(make_args, out, reward)) == 1
    capsys.readouterr()
    assert main(train_args(make_args, out, reward)) == 2
    assert "--resume auto" in one_line(capsys)


def test_resume_refuses_a_changed_config_and_allows_more_steps(tmp_path, make_args, capsys, seed_offset):
    out = tmp_path / "run"
    constant = ["--train.lr_schedule", "constant"]  # more steps change a cosine schedule's horizon: refused
    assert main(["train", *make_args(out, steps=2), *constant, "--log.save_every", "1"]) == 0
    before = (out / "metrics.jsonl").read_text()
    changed = str(seed_offset + 7)
    assert main(["train", *make_args(out, steps=3), *constant, "--resume", "auto", "--train.seed", changed]) == 2
    line = one_line(capsys)
    assert "changed train.seed" in line and f"(checkpoint: {seed_offset}, now: {changed})" in line
    assert (out / "metrics.jsonl").read_text() == before  # nothing touched
    assert main(["train", *make_args(out, steps=3), "--resume", "auto"]) == 2  # the default cosine schedule
    assert "changed train.steps (2 -> 3)" in one_line(capsys)
    assert main(["train", *make_args(out, steps=3), *constant, "--resume", "auto", "--log.save_every", "1"]) == 0
    assert steps_logged(out) == [1, 2, 3]


@pytest.mark.parametrize("damage", ["missing", "corrupt", "no-state"])
def test_resume_from_a_bad_checkpoint_is_one_line(damage, tmp_path, make_args, capsys):
    out = tmp_path / "run"
    assert main(["train", *make_args(out, steps=2), "--log.save_every", "1"]) == 0
    ckpt = out / "checkpoints/step-2"
    if damage == "corrupt":
        (ckpt / "trainer_state.pt").write_bytes(b"not a checkpoint")
    elif damage == "no-state":
        (ckpt / "trainer_state.pt").unlink()
    target = str(out / "checkpoints/step-7") if damage == "missing" else str(ckpt)
    before = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert main(["train", *make_args(out, steps=3), "--resume", target]) == 2
    line = one_line(capsys)
    assert {"missing": "not found", "corrupt": "is corrupt", "no-state": "not a complete checkpoint"}[damage] in line
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == before


# ----------------------------------------------------------------- signals
SLOW_REWARD = '''
import time
def score(prompts, responses):
    time.sleep(0.4)
    return [r.count("e") / max(len(r), 1) for r in responses]
'''


def _start_slow_run(tmp_path, make_args):
    (tmp_path / "slow.py").write_text(SLOW_REWARD)
    out = tmp_path / "run"
    args = train_args(make_args, out, f"{tmp_path / 'slow.py'}:score", 50)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "remax.cli", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not ((out / "metrics.jsonl").is_file() and (out / "metrics.jsonl").read_text()):
        assert proc.poll() is None and time.time() < deadline, proc.communicate()
        time.sleep(0.05)
    return proc, out


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_finishes_the_step_checkpoints_and_says_how_to_resume(sig, tmp_path, make_args):
    proc, out = _start_slow_run(tmp_path, make_args)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + sig
    last = err.strip().splitlines()[-1]
    assert f"stopped by {signal.Signals(sig).name} after step" in last and "--resume auto" in last
    done = steps_logged(out)
    assert done == list(range(1, len(done) + 1))
    assert (out / "checkpoints" / f"step-{len(done)}").is_dir()  # the step that was running finished
    assert not (out / "final").exists()


def test_second_ctrl_c_aborts_at_once(tmp_path, make_args):
    proc, out = _start_slow_run(tmp_path, make_args)
    proc.send_signal(signal.SIGINT)
    time.sleep(0.1)  # inside the 0.4 s reward of the step being finished
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert err.strip().splitlines()[-1] == "remax train: aborted; checkpoints already written are intact"
    assert "Traceback" not in err
