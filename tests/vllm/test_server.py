"""`remax serve-rollout` and its client (--rollout.backend vllm_server): a real server
process (the `rollout_server` fixture), no mocks. The rollouts equal the in-process
engine's row for row, the weights pushed over gloo pass the probe, a push that did not
take stops the run, and a server that is gone, slow or dead is one line."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading

import pytest
import torch
from test_vllm_train import ROWS, o_share, toy_config
from vllm_toy import MAX_NEW, toy_model, varied_model

from remax.config import Config
from remax.errors import RunStopped
from remax.rollout.backend import build_backend
from remax.rollout.types import EngineOutOfSync, RolloutServerError


def client(url: str, tokenizer, policy, **rollout):
    cfg = Config()
    cfg.rollout.backend, cfg.rollout.server_url, cfg.rollout.max_new_tokens, cfg.rollout.top_p = (
        "vllm_server", url, MAX_NEW, 1.0)
    cfg.data.max_prompt_tokens = 16
    for k, v in rollout.items():
        setattr(cfg.rollout, k, v)
    return build_backend(cfg, policy, tokenizer)


def prompts(tokenizer):
    enc = tokenizer(["the day is", "my heart is glad for", "a"], return_tensors="pt", padding=True)
    return enc["input_ids"], enc["attention_mask"]


def test_server_rollouts_equal_the_in_process_engine(rollout_server, engine, toy_tokenizer):
    policy = varied_model(toy_tokenizer, seed=3)  # varied: a fresh model repeats one token everywhere
    remote = client(rollout_server.url, toy_tokenizer, policy)
    try:
        engine.sync(policy, 0)
        synced = remote.sync(policy, 7)
        assert synced["rollout/engine_probe_diff"] <= 1e-4  # measured 1.4e-6: the push took
        ids, mask = prompts(toy_tokenizer)
        torch.manual_seed(11)
        local = engine.generate(ids, mask, n=3, greedy=True)
        torch.manual_seed(11)  # the same seeds per row: drawn by the trainer, sent with the request
        served = remote.generate(ids, mask, n=3, greedy=True)
        assert remote.version == 7  # the server reports the step whose weights sampled
        assert torch.equal(served.response_ids, local.response_ids)  # sampled (3 per prompt) and greedy rows
        assert torch.equal(served.response_mask, local.response_mask)
        assert torch.equal(served.prompt_ids, local.prompt_ids) and (served.num_prompts, served.n) == (3, 3)
        torch.testing.assert_close(served.engine_logprobs, local.engine_logprobs, atol=1e-5, rtol=0)
        assert served.engine_logprobs[9:].abs().sum() == 0 and served.engine_logprobs[:9].abs().sum() > 0
    finally:
        remote.close()


def test_a_push_that_did_not_take_is_caught_by_the_probe(rollout_server, toy_tokenizer, monkeypatch):
    first, second = varied_model(toy_tokenizer, seed=1), varied_model(toy_tokenizer, seed=2)
    remote = client(rollout_server.url, toy_tokenizer, first)
    try:
        assert remote.sync(first, 1)["rollout/engine_probe_diff"] <= 1e-4
        monkeypatch.setattr(remote, "push", lambda policy, version=-1: None)  # the server never hears of `second`
        with pytest.raises(EngineOutOfSync, match=r"rollout server at http://.*not the policy's at step 2") as err:
            remote.sync(second, 2)
        assert "\n" not in str(err.value)
    finally:
        remote.close()


def test_a_server_that_is_gone_or_slow_is_one_line(toy_tokenizer):
    policy = toy_model(toy_tokenizer)
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(RolloutServerError, match=r"not reachable \(connection refused.*remax serve-rollout") as err:
        client(f"http://127.0.0.1:{port}", toy_tokenizer, policy)
    assert "\n" not in str(err.value)

    silent = socket.socket()  # accepts connections and never answers: a stuck server
    silent.bind(("127.0.0.1", 0))
    silent.listen(4)
    try:
        with pytest.raises(RolloutServerError, match=r"did not answer GET /health within --rollout.server_timeout_s 0.5"):
            client(f"http://127.0.0.1:{silent.getsockname()[1]}", toy_tokenizer, policy, server_timeout_s=0.5)
    finally:
        silent.close()


def test_a_server_lost_mid_run_stops_with_a_checkpoint(rollout_server, toy_tokenizer, tmp_path, monkeypatch):
    cfg = toy_config(tmp_path / "run", steps=4)
    cfg.rollout.backend, cfg.rollout.server_url, cfg.log.save_every = "vllm_server", rollout_server.url, 1
    from remax.trainer import Trainer

    trainer = Trainer(cfg, policy=toy_model(toy_tokenizer), tokenizer=toy_tokenizer, reward_fn=o_share, rows=ROWS)
    real_step = trainer.step

    def step():  # after two steps the server is gone: its port now refuses connections
        if trainer.state.step == 2:
            dead = socket.socket()
            dead.bind(("127.0.0.1", 0))
            monkeypatch.setattr(trainer.backend, "port", dead.getsockname()[1])
            dead.close()
        return real_step()

    monkeypatch.setattr(trainer, "step", step)
    with pytest.raises(RunStopped) as err:
        trainer.train()
    message = str(err.value)
    assert "rollout server" in message and "not reachable" in message and "\n" not in message
    assert (tmp_path / "run" / "checkpoints" / "step-2").is_dir()
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in lines] == [1, 2]


def test_cli_train_with_a_rollout_server(rollout_server, toy_tokenizer, tmp_path):
    from remax.cli import main

    prompts_file = tmp_path / "prompts.jsonl"
    prompts_file.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    reward = tmp_path / "reward.py"
    reward.write_text("def o_share(prompts, responses):\n    return [r.count('o') / max(len(r), 1) for r in responses]\n")
    out = tmp_path / "run"
    code = main(["train", "--model.policy", str(rollout_server.path), "--data.train_file", str(prompts_file),
                 "--reward.function", f"{reward}:o_share", "--rollout.backend", "vllm_server",
                 "--rollout.server_url", rollout_server.url, "--rollout.max_new_tokens", "4",
                 "--train.steps", "2", "--train.batch_size", "4", "--output_dir", str(out), "--log.progress", "False"])
    assert code in (0, None)
    metrics = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1, 2]
    assert all(m["rollout/engine_probe_diff"] <= 1e-4 and m["rollout/staleness"] == 0 for m in metrics)
    assert all("rollout/logprob_mismatch_max" in m for m in metrics)


def test_serve_rollout_bad_input_is_one_line(tmp_path):
    for args, expected in ((["--model", str(tmp_path / "missing")], "is not a directory"),
                           (["--model", str(tmp_path), "--cpus", "zero"], "is not a core list")):
        run = subprocess.run([sys.executable, "-m", "remax.cli", "serve-rollout", *args], capture_output=True,
                             text=True, timeout=120)
        assert run.returncode == 2, run.stderr
        lines = run.stderr.strip().splitlines()
        assert len(lines) == 1 and expected in lines[0], run.stderr


def test_client_and_server_weights_channel_round_trip():
    """The channel's framing on its own: specs grouped per dtype, one flat buffer each."""
    from remax.rollout.client import _concurrently
    from remax.rollout.server import broadcast, flat_groups, join_group, receive_weights

    specs = [("a", [2, 3], torch.float32), ("b", [4], torch.int64), ("c", [1, 2], torch.float32)]
    assert flat_groups(specs) == {torch.float32: [0, 2], torch.int64: [1]}
    sent = {"a": torch.arange(6.0).view(2, 3), "b": torch.tensor([5, 6, 7, 8]), "c": torch.tensor([[9.0, 10.0]])}
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    got = {}

    def server() -> None:
        group = join_group("127.0.0.1", port, rank=1, backend="gloo")
        got.update(receive_weights(group, specs, torch.device("cpu")))

    def trainer(failed) -> None:
        group = join_group("127.0.0.1", port, rank=0, backend="gloo")
        for idx in flat_groups(specs).values():
            broadcast(group, torch.cat([sent[specs[i][0]].reshape(-1) for i in idx]))

    thread = threading.Thread(target=server)
    thread.start()
    _concurrently(lambda: None, trainer)
    thread.join(30)
    assert set(got) == set(sent) and all(torch.equal(got[k], sent[k]) for k in sent)
