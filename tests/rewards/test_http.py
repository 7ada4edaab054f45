"""The reward server and its client over a real loopback socket: uvicorn serving the
FastAPI app on a thread, or a plain stdlib HTTP server for answers remax never gives
(garbage, wrong counts, 503s). No mocks: every request crosses a socket."""

from __future__ import annotations

import json
import math
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch

from remax.rewards import HttpReward, PythonReward, RewardServerError, build_reward
from remax.rewards.server import RunningServer, create_app
from remax.trainer.guards import RewardFailure, call_reward

CHAT = [{"role": "user", "content": "Hi"}]


def scored(prompts, responses, bonus):
    """len(response) + bonus, and +100 for a chat prompt: shows what reached the server."""
    return [len(r) + float(b) + (100 if isinstance(p, list) else 0) for p, r, b in zip(prompts, responses, bonus)]


@pytest.fixture(scope="module")
def server():
    with RunningServer(create_app(PythonReward(scored), token="t0k")) as running:
        yield running


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_scores_cross_the_wire_with_columns_and_chat_prompts(server):
    client = HttpReward(server.url, token="t0k")
    prompts, responses, bonus = ["a", CHAT, "b"], ["xyz", "ab", ""], [1, 2, 0.5]
    out = client(prompts, responses, bonus=bonus)
    assert out.tolist() == [4.0, 104.0, 0.5]
    assert torch.equal(out, PythonReward(scored)(prompts, responses, bonus=bonus))
    assert client.info == {"status": "ok", "reward": "scored", "token_required": True}


def test_the_token(server, monkeypatch):
    monkeypatch.delenv("REMAX_REWARD_TOKEN", raising=False)
    with pytest.raises(ValueError, match=r"check failed: the server requires a bearer token; set REMAX_REWARD_TOKEN to the server's --token"):
        HttpReward(server.url)
    with pytest.raises(ValueError, match=r"check failed: the server rejected the bearer token \(HTTP 401: missing or wrong bearer token\)"):
        HttpReward(server.url, token="wrong")
    monkeypatch.setenv("MY_TOKEN", "t0k")
    assert HttpReward(server.url, token_env="MY_TOKEN")(["a"], ["b"], bonus=[0]).tolist() == [1.0]


def test_a_server_that_is_down_is_retried_with_backoff_then_one_line():
    client = HttpReward(f"http://127.0.0.1:{free_port()}", retries=2, backoff_s=0.05, check=False)
    start = time.perf_counter()
    with pytest.raises(RewardServerError, match=r"no answer from http://127.0.0.1:\d+/score after 3 attempt\(s\) "
                                               r"\(connection refused\); is `remax serve-reward` running there"):
        client(["a"], ["b"])
    assert time.perf_counter() - start >= 0.05 + 0.1  # two waits: backoff_s, then 2 * backoff_s
    with pytest.raises(RewardFailure, match=r"^reward 'http://127.0.0.1:\d+' at step 3 raised RewardServerError: "
                                           r"no answer .*\(batch of 1, row 0: prompt 'a', response 'b'\)$"):
        call_reward(client, ["a"], ["b"], {}, step=3)


def test_a_slow_server_times_out():
    def sleepy(prompts, responses):
        time.sleep(0.6)
        return [0.0] * len(prompts)

    with RunningServer(create_app(PythonReward(sleepy))) as slow:
        client = HttpReward(slow.url, timeout_s=0.2, retries=1, backoff_s=0.0)
        with pytest.raises(RewardServerError, match=r"after 2 attempt\(s\) \(timed out after 0.2 s\)"):
            client(["a"], ["b"])


class Scripted(BaseHTTPRequestHandler):
    """Answers each request with the next (status, body) of the server's script."""

    def do_GET(self):
        self._answer()

    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self._answer()

    def _answer(self):
        script = self.server.script
        status, body = script.pop(0) if len(script) > 1 else script[0]
        self.server.hits += 1
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture()
def scripted():
    servers = []

    def start(*script):
        httpd = ThreadingHTTPServer(("127.0.0.1", 0), Scripted)
        httpd.script, httpd.hits = list(script), 0
        threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        servers.append(httpd)
        return httpd, HttpReward(f"http://127.0.0.1:{httpd.server_port}", retries=2, backoff_s=0.01, check=False)

    yield start
    for httpd in servers:
        httpd.shutdown()
        httpd.server_close()


@pytest.mark.parametrize("body, message", [
    (b"<html>oops</html>", r"answered something that is not JSON: '<html>oops</html>'"),
    ({"result": 1}, r"/score answered \{'result': 1\}, with no 'scores' list"),
])
def test_garbage_answers(scripted, body, message):
    httpd, client = scripted((200, body))
    with pytest.raises(RewardServerError, match=message):
        client(["a"], ["b"])
    assert httpd.hits == 1  # not retried: a second try would get the same garbage


@pytest.mark.parametrize("scores, message", [
    ([1.0], r"returned 1 values; expected 2 \(one per response\)"),
    ([1.0, "x"], r"returned a non-numeric value 'x' \(str\) at index 1; row 1"),
])
def test_wrong_counts_and_non_numbers_go_through_the_reward_guard(scripted, scores, message):
    _, client = scripted((200, {"scores": scores}))
    with pytest.raises(RewardFailure, match=rf"reward 'http://127.0.0.1:\d+' at step 1: {message}"):
        call_reward(client, ["a", "c"], ["b", "d"], {}, step=1)


def test_busy_answers_are_retried_and_errors_are_not(scripted):
    httpd, client = scripted((503, {"detail": "busy"}), (200, {"scores": [1.5, 2.5]}))
    assert client(["a", "c"], ["b", "d"]).tolist() == [1.5, 2.5]
    assert httpd.hits == 2
    httpd, client = scripted((500, {"detail": "boom"}))
    with pytest.raises(RewardServerError, match=r"^HTTP 500 from /score: boom$"):
        client(["a"], ["b"])
    assert httpd.hits == 1


def test_the_server_reports_what_went_wrong_in_the_reward():
    def boom(prompts, responses):
        return [1 / 0]

    def nan(prompts, responses):
        return [math.nan] * len(prompts)

    for fn, message in ((boom, r"HTTP 500 from /score: reward '.*boom' raised ZeroDivisionError: division by zero"),
                        (nan, r"HTTP 422 from /score: reward '.*nan' returned 1 non-finite value")):
        with RunningServer(create_app(PythonReward(fn))) as running:
            with pytest.raises(RewardServerError, match=message):
                HttpReward(running.url)(["a"], ["b"])


def test_a_reward_model_served_scores_as_it_does_locally(reward_model_dir):
    local = build_reward("model", model=str(reward_model_dir))
    prompts, responses = ["The Lord is", "Love is"], [" my shepherd", " kind"]
    with RunningServer(create_app(local)) as running:
        remote = build_reward("http", url=running.url)(prompts, responses)
    assert torch.allclose(remote, local(prompts, responses))


def test_training_stops_with_its_last_good_state_when_the_server_fails(assets_dir, tmp_path, capsys):
    """Step 2's reward call fails on the server: the run saves step 1 and says how to resume."""
    from remax.cli import main

    calls = []

    def fails_on_the_second_batch(prompts, responses):
        calls.append(len(prompts))
        if len(calls) == 2:
            raise RuntimeError("reward model out of memory")
        return [0.0] * len(prompts)

    out = tmp_path / "run"
    with RunningServer(create_app(PythonReward(fails_on_the_second_batch, name="fails_on_the_second_batch"))) as running:
        code = main(["train", "--output_dir", str(out), "--model.policy", str(assets_dir / "policy"),
                     "--data.train_file", str(assets_dir / "prompts.jsonl"), "--reward.kind", "http",
                     "--reward.url", running.url, "--rollout.max_new_tokens", "4", "--train.steps", "3",
                     "--train.batch_size", "2", "--log.progress", "False", "--log.plot", "False"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1, err
    assert (f"reward '{running.url}' at step 2 raised RewardServerError: HTTP 500 from /score: reward "
            "'fails_on_the_second_batch' raised RuntimeError: reward model out of memory") in err[0]
    assert f"saved {out / 'checkpoints' / 'step-1'}; continue with the same command plus --resume auto" in err[0]
    assert calls == [4, 4]  # sampled + greedy rows of 2 prompts, in one call per step


def test_a_server_as_one_source_of_a_mix(server, tmp_path):
    (tmp_path / "r.py").write_text("def one(prompts, responses):\n    return [1.0] * len(prompts)\n")
    mix = build_reward("mix", http={"token": "t0k"}, sources=[
        {"name": "remote", "kind": "http", "url": server.url, "weight": 2.0},
        {"name": "one", "kind": "python", "function": f"{tmp_path / 'r.py'}:one", "weight": -1.0},
    ])
    assert mix(["a", "b"], ["xyz", ""], bonus=[0, 1]).tolist() == [2 * 3.0 - 1, 2 * 1.0 - 1]
    assert mix.last_components["remote"].tolist() == [3.0, 1.0]
