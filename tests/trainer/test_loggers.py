"""Logging backends: report_to parsing, the samples table, TensorBoard event files read
back, a wandb offline run, and a resumed run that logs every step (and table) once."""

from __future__ import annotations

import json

import pytest

from remax.cli import main
from remax.config import ConfigError
from remax.trainer import loggers
from remax.trainer.loggers import markdown_table, parse_report_to, sample_rows, samples_due
from remax.trainer.metrics import reward_curve_figure


def test_parse_report_to():
    assert parse_report_to("tensorboard") == ["jsonl", "tensorboard"]
    assert parse_report_to(" TensorBoard , jsonl,,tensorboard") == ["jsonl", "tensorboard"]
    assert parse_report_to(["wandb", "jsonl"]) == ["jsonl", "wandb"]
    assert parse_report_to(["jsonl,wandb"]) == ["jsonl", "wandb"]  # a tyro list holding a comma string
    with pytest.raises(ConfigError, match="unknown backend 'tensorbord'; did you mean 'tensorboard'"):
        parse_report_to("jsonl,tensorbord")


def test_missing_backend_package_names_the_extra(monkeypatch):
    real = loggers.importlib.util.find_spec
    monkeypatch.setattr(loggers.importlib.util, "find_spec", lambda name: None if name == "wandb" else real(name))
    with pytest.raises(ConfigError, match=r"wandb package is not installed; pip install 'remax\[wandb\]'"):
        parse_report_to("tensorboard,wandb")


def test_samples_due():
    assert [s for s in range(1, 8) if samples_due(3, s)] == [3, 6]
    assert not any(samples_due(0, s) for s in range(1, 8))


def test_sample_rows_n2_and_limit():
    # 2 prompts x n=2 samples; prompt 0's greedy reward 0.5, prompt 1's -1
    rows = sample_rows(4, ["p0", "p1"], ["a", "b", "c", "d"], [1.0, 0.0, -1.0, -2.0], ["g0", "g1"], [0.5, -1.0],
                       n=2, limit=3)
    assert [(r["prompt"], r["sampled"], r["greedy"], r["reward"], r["greedy_reward"]) for r in rows] == [
        ("p0", "a", "g0", 1.0, 0.5), ("p0", "b", "g0", 0.0, 0.5), ("p1", "c", "g1", -1.0, -1.0)]
    assert {r["step"] for r in rows} == {4}
    no_greedy = sample_rows(1, ["p"], ["x"], [2.0], None, None, n=1, limit=0)
    assert no_greedy == [{"step": 1, "prompt": "p", "sampled": "x", "greedy": None, "reward": 2.0,
                          "greedy_reward": None}]
    table = markdown_table(no_greedy + [{**no_greedy[0], "sampled": "a|b\nc"}])
    assert table.splitlines()[2] == "| 1 | p | x |  | 2.0000 |  |"
    assert "a\\|b c" in table.splitlines()[3]
    chat = sample_rows(1, [[{"role": "user", "content": "hi"}]], ["x"], [0.0], None, None, n=1, limit=0)
    assert '[{"role": "user", "content": "hi"}]' in markdown_table(chat)  # a chat prompt as its JSON


def test_reward_curve_has_a_kl_panel():
    history = [{"step": 1, "rollout/reward_mean": 0.1, "rollout/baseline_reward_mean": 0.0, "kl/mean": 0.0},
               {"step": 2, "rollout/reward_mean": 0.3, "rollout/baseline_reward_mean": 0.2, "kl/mean": 0.02}]
    fig = reward_curve_figure(history, "remax")
    reward_ax, kl_ax = fig.axes
    assert [list(line.get_ydata()) for line in reward_ax.lines] == [[0.1, 0.3], [0.0, 0.2]]
    assert [list(line.get_ydata()) for line in kl_ax.lines] == [[0.0, 0.02]]
    assert "KL" in kl_ax.get_ylabel()


def tb_scalars(log_dir, tag):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir))
    acc.Reload()
    return [(e.step, e.value) for e in acc.Scalars(tag)], acc


def no_perf(m):
    return {k: v for k, v in m.items() if not k.startswith("perf/")}


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.slow
def test_backends_write_and_resume_logs_each_step_once(tmp_path, make_args):
    pytest.importorskip("tensorboard")
    pytest.importorskip("wandb")
    out = tmp_path / "run"
    args = ["train", *make_args(out, steps=4), "--log.report_to", "tensorboard,wandb", "--log.samples_every", "2",
            "--log.samples_rows", "0", "--log.save_every", "2"]
    assert main(args) == 0
    metrics = read_jsonl(out / "metrics.jsonl")
    samples = read_jsonl(out / "samples.jsonl")
    assert [r["step"] for r in samples] == [2, 2, 4, 4]  # batch_size 2, n 1: two rows each time
    assert all(isinstance(r["sampled"], str) and isinstance(r["greedy"], str) for r in samples)
    assert (out / "reward_curve.png").is_file()

    # TensorBoard: event files readable, each scalar equals metrics.jsonl's value
    reward, acc = tb_scalars(out / "tensorboard", "rollout/reward_mean")
    assert reward == [(m["step"], pytest.approx(m["rollout/reward_mean"], abs=1e-6)) for m in metrics]
    assert "kl/mean" in acc.Tags()["scalars"] and "step" not in acc.Tags()["scalars"]
    assert "samples/text_summary" in acc.Tags()["tensors"]

    # wandb offline: a run directory with the samples tables, no account involved
    (run_dir,) = (out / "wandb").glob("offline-run-*")
    assert list(run_dir.glob("run-*.wandb"))
    tables = sorted((run_dir / "files" / "media" / "table").glob("samples_*.table.json"))
    assert [t.name.split("_")[1] for t in tables] == ["2", "4"]
    t4 = json.loads(tables[-1].read_text())
    assert t4["columns"][:3] == ["step", "prompt", "sampled"] and [row[2] for row in t4["data"]] == [
        r["sampled"] for r in samples[2:]]

    # resume from step 2: steps 3-4 are redone; nothing is logged twice anywhere
    first_samples = samples
    assert main(args + ["--resume", str(out / "checkpoints" / "step-2")]) == 0
    again = read_jsonl(out / "metrics.jsonl")
    assert [m["step"] for m in again] == [1, 2, 3, 4]
    assert [no_perf(m) for m in again] == [no_perf(m) for m in metrics]  # bit-exact resume
    assert read_jsonl(out / "samples.jsonl") == first_samples
    reward_after, _ = tb_scalars(out / "tensorboard", "rollout/reward_mean")
    assert [s for s, _ in reward_after] == [1, 2, 3, 4] and reward_after == reward
    step_s, _ = tb_scalars(out / "tensorboard", "perf/step_s")  # timings differ: the redone steps' values
    assert step_s == [(m["step"], pytest.approx(m["perf/step_s"], rel=1e-6)) for m in again]
    assert len(list((out / "wandb").glob("offline-run-*"))) == 2  # a resumed run is a new wandb run


def test_fresh_overwrite_drops_old_samples_and_events(tmp_path, make_args):
    pytest.importorskip("tensorboard")
    out = tmp_path / "run"
    base = ["train", *make_args(out, steps=2), "--log.report_to", "tensorboard", "--log.plot", "False"]
    assert main(base + ["--log.samples_every", "1"]) == 0
    assert [r["step"] for r in read_jsonl(out / "samples.jsonl")] == [1, 1, 2, 2]
    assert main(base + ["--log.samples_every", "2", "--log.samples_rows", "1", "--overwrite", "True"]) == 0
    assert [r["step"] for r in read_jsonl(out / "samples.jsonl")] == [2]
    reward, _ = tb_scalars(out / "tensorboard", "rollout/reward_mean")
    assert [s for s, _ in reward] == [1, 2]  # one run's events only


def test_bad_report_to_is_one_line_before_any_output(tmp_path, make_args, capsys):
    out = tmp_path / "run"
    assert main(["train", *make_args(out), "--log.report_to", "jsonl,tensorbord"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "did you mean 'tensorboard'" in err
    assert not (out / "metrics.jsonl").exists()
