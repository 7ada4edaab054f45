"""`remax serve-reward` as a user runs it: a separate process on a loopback port, then
`remax train --reward.kind http` against it; and its bad input, one line each."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys

import pytest

from remax.cli import main


def train_args(assets_dir, out, url, *extra):
    return ["train", "--output_dir", str(out), "--model.policy", str(assets_dir / "policy"),
            "--data.train_file", str(assets_dir / "prompts.jsonl"), "--reward.kind", "http", "--reward.url", url,
            "--rollout.max_new_tokens", "4", "--train.steps", "1", "--train.batch_size", "2",
            "--log.progress", "False", "--log.plot", "False", "--reward.retry_backoff_s", "0.01", *extra]


@pytest.mark.slow
def test_serve_reward_then_train_against_it(assets_dir, tmp_path, monkeypatch, capsys):
    (tmp_path / "rw.py").write_text("def seven(prompts, responses):\n    return [7.0] * len(responses)\n")
    server = subprocess.Popen(
        [sys.executable, "-m", "remax.cli", "serve-reward", "--kind", "python", "--function",
         f"{tmp_path / 'rw.py'}:seven", "--port", "0", "--token", "s3cret"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        banner = server.stdout.readline()
        match = re.search(r"on (http://127\.0\.0\.1:\d+) \(bearer token required\)", banner)
        assert match, banner + server.stderr.read()
        url, out = match.group(1), tmp_path / "run"
        monkeypatch.setenv("REMAX_REWARD_TOKEN", "s3cret")
        assert main(train_args(assets_dir, out, url)) == 0, capsys.readouterr().err
        metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        assert [m["rollout/reward_mean"] for m in metrics] == [7.0]  # scored by the server's function
    finally:
        server.terminate()
        server.wait(10)
    # The server is gone: resuming stops at start, in one line, before anything is written.
    capsys.readouterr()
    assert main(train_args(assets_dir, out, url, "--train.steps", "2", "--resume", "auto")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"reward server {url} check failed: no answer from {url}/health after 3 attempt(s)" in err[0]


def test_serve_reward_bad_input_is_one_line(capsys):
    assert main(["serve-reward", "--kind", "python"]) == 2
    assert capsys.readouterr().err.strip() == (
        "remax serve-reward: error: reward kind 'python' needs --function module:function (or path/to/file.py:function)")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        assert main(["serve-reward", "--kind", "vader", "--port", str(port)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"cannot listen on 127.0.0.1:{port}" in err[0] and "pass another --port" in err[0]
