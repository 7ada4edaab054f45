"""The client side of a remote reward: `HttpReward` POSTs a batch to a `remax serve-reward`
server (remax/rewards/server.py) and reads the scores back. Standard library only, so
the trainer needs no HTTP package.

Protocol (JSON over HTTP):
    GET  /health  -> {"status": "ok", "reward": NAME, "token_required": bool}
    POST /score   {"prompts": [...], "responses": [...], "columns": {NAME: [...]},
                   "ended": [true | false | null, ...]}
                  -> {"scores": [float, ...]}   (one per response, in order)
`ended` (optional) carries each response's ResponseText.ended (stopped on an EOS, or cut
at max_new_tokens), so a served reward model closes a finished response exactly as a
local one (`--reward.kind model`) does; it is sent only when some response knows it.
An optional bearer token goes in `Authorization: Bearer TOKEN`; the client reads it from
an environment variable (default REMAX_REWARD_TOKEN) so that it never lands in config.yaml.

Failures: a refused connection, a timeout and HTTP 429 / 502 / 503 / 504 are retried
with exponential backoff (backoff_s, 2 * backoff_s, ...); a rejected token, another
HTTP error, an answer that is not JSON or lacks `scores` is not. Each ends as one
`RewardServerError` line, which the trainer's reward guard turns into its usual stop
(saving the last good state) or skipped batch. At construction the client checks the
server once (health, then an empty batch, which also checks the token), so a wrong
URL or token stops the run before anything is written.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any, Optional

import torch

from remax.rewards.base import as_reward_tensor, check_batch, response_ended

DEFAULT_TOKEN_ENV = "REMAX_REWARD_TOKEN"
RETRY_STATUS = (429, 502, 503, 504)


class RewardServerError(RuntimeError):
    """The reward server could not be reached or gave an unusable answer; one line."""


class HttpReward:
    """A `RewardFunction` scored by a remote `remax serve-reward` server at `url`."""

    def __init__(
        self,
        url: str,
        *,
        token: Optional[str] = None,
        token_env: str = DEFAULT_TOKEN_ENV,
        timeout_s: float = 60.0,
        retries: int = 2,
        backoff_s: float = 0.5,
        check: bool = True,
    ) -> None:
        parsed = urllib.parse.urlparse(url or "")
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise ValueError(f"--reward.url must look like http://HOST:PORT (a remax serve-reward server), got {url!r}")
        if not timeout_s > 0 or retries < 0 or backoff_s < 0:
            raise ValueError(
                f"reward http client needs request_timeout_s > 0, retries >= 0 and retry_backoff_s >= 0, "
                f"got {timeout_s}, {retries}, {backoff_s}"
            )
        self.url = url.rstrip("/")
        self.name = self.url
        self.token = token if token is not None else os.environ.get(token_env) or None
        self.token_env = token_env
        self.timeout_s, self.retries, self.backoff_s = float(timeout_s), int(retries), float(backoff_s)
        self.info: dict[str, Any] = {}
        if check:
            try:
                self.check()
            except RewardServerError as err:
                raise ValueError(f"reward server {self.url} check failed: {err}") from None

    def check(self) -> dict[str, Any]:
        """GET /health, then score an empty batch (which checks the token); the health answer."""
        info = self._request("GET", "/health")
        if not isinstance(info, dict) or info.get("status") != "ok":
            raise RewardServerError(f"/health answered {_short(info)}, not {{'status': 'ok'}}; "
                                    "is this a remax serve-reward server?")
        if info.get("token_required") and not self.token:
            raise RewardServerError(f"the server requires a bearer token; set {self.token_env} to the server's --token")
        self._scores([], [], {})
        self.info = info
        return info

    def __call__(self, prompts: list[Any], responses: list[str], **row: list[Any]) -> torch.Tensor:
        check_batch(prompts, responses, row, self.name)
        return as_reward_tensor(self._scores(prompts, responses, row), len(prompts), self.name)

    def _scores(self, prompts: list[Any], responses: list[str], row: dict[str, list[Any]]) -> list[Any]:
        payload: dict[str, Any] = {"prompts": list(prompts), "responses": list(responses), "columns": row}
        ended = [response_ended(r) for r in responses]
        if any(e is not None for e in ended):
            payload["ended"] = ended
        answer = self._request("POST", "/score", payload)
        scores = answer.get("scores") if isinstance(answer, dict) else None
        if not isinstance(scores, list):
            raise RewardServerError(f"/score answered {_short(answer)}, with no 'scores' list")
        return scores

    def _request(self, method: str, path: str, payload: Any = None) -> Any:
        """One JSON request with retries; the decoded JSON answer or RewardServerError."""
        request = self._build(method, path, payload)
        attempts = self.retries + 1
        for attempt in range(attempts):
            try:
                with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                    raw = response.read()
                break
            except urllib.error.HTTPError as err:
                detail = _detail(err)
                if err.code in (401, 403):
                    raise RewardServerError(
                        f"the server rejected the bearer token (HTTP {err.code}: {detail}); "
                        f"set {self.token_env} to the server's --token"
                    ) from None
                if err.code not in RETRY_STATUS or attempt + 1 == attempts:
                    raise RewardServerError(f"HTTP {err.code} from {path}: {detail}") from None
                reason = f"HTTP {err.code}"
            except (urllib.error.URLError, TimeoutError, ConnectionError, http.client.HTTPException, socket.timeout) as err:
                reason = _reason(err, self.timeout_s)
                if attempt + 1 == attempts:
                    raise RewardServerError(
                        f"no answer from {self.url}{path} after {attempts} attempt(s) ({reason}); "
                        "is `remax serve-reward` running there? check --reward.url and --reward.request_timeout_s"
                    ) from None
            time.sleep(self.backoff_s * 2**attempt)
        try:
            return json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise RewardServerError(f"{path} answered something that is not JSON: {_short(raw)}") from None

    def _build(self, method: str, path: str, payload: Any) -> urllib.request.Request:
        headers = {"Accept": "application/json"}
        data = None
        if payload is not None:
            try:
                data = json.dumps(payload, allow_nan=False).encode()
            except (TypeError, ValueError) as err:
                raise RewardServerError(f"the batch cannot be sent as JSON ({err}); give the dataset's "
                                        "extra columns plain values (strings, numbers, lists)") from None
            headers["Content-Type"] = "application/json"
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        return urllib.request.Request(self.url + path, data=data, headers=headers, method=method)

    def __repr__(self) -> str:
        return f"HttpReward({self.url!r})"


def _reason(err: BaseException, timeout_s: float) -> str:
    inner = getattr(err, "reason", err)
    if isinstance(inner, (TimeoutError, socket.timeout)) or "timed out" in str(inner):
        return f"timed out after {timeout_s:g} s"
    if isinstance(inner, ConnectionRefusedError):
        return "connection refused"
    return f"{type(inner).__name__}: {inner}"


def _detail(err: urllib.error.HTTPError) -> str:
    """The server's {"detail": ...} (FastAPI's error body), else the body's first line."""
    try:
        body = err.read()
    except Exception:  # the connection went away mid-answer
        return err.reason or "no detail"
    try:
        detail = json.loads(body).get("detail", body)
    except (ValueError, AttributeError):
        detail = body.decode("utf-8", "replace")
    if isinstance(detail, list) and detail and isinstance(detail[0], dict):  # pydantic validation errors
        first = detail[0]
        detail = f"{'.'.join(map(str, first.get('loc', [])))}: {first.get('msg', '')}"
    return " ".join(str(detail).split())[:200] or "no detail"


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value.decode("utf-8", "replace") if isinstance(value, bytes) else value)
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."
