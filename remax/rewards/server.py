"""`remax serve-reward`: any reward that `build_reward` builds (python / model / vader),
served over HTTP with FastAPI + uvicorn, so that one reward model on one machine can
score for several trainers, or a reward with heavy dependencies can live in its own
environment. The protocol is in remax/rewards/http.py (the client).

- Binds 127.0.0.1 by default: to serve other machines pass --host 0.0.0.0, and set a
  token (--token, or the REMAX_REWARD_TOKEN environment variable).
- Scoring is serialised by a lock: reward models and many Python rewards are not
  thread-safe, and one batch at a time is what a GPU wants anyway.
- An empty batch is answered without calling the reward (clients use it to check the
  token). A reward that raises or returns unusable scores answers HTTP 500 / 422 with a
  one-line {"detail": ...}, which the client reports.

FastAPI and uvicorn are an optional extra: `pip install 'remax[serve]'`.
"""

# No `from __future__ import annotations`: FastAPI reads the endpoint annotations, whose
# types are defined inside create_app, at definition time.
import hmac
import os
import socket
import sys
import threading
from dataclasses import dataclass
from typing import Any, Literal, Optional

from remax.errors import InputError
from remax.rewards.base import ResponseText, as_reward_tensor
from remax.rewards.http import DEFAULT_TOKEN_ENV


@dataclass
class ServeConfig:
    kind: Literal["python", "model", "vader"] = "python"
    """Reward to serve: 'python' (a function), 'model' (a sequence-classification reward model) or 'vader'."""
    function: Optional[str] = None
    """For kind=python: 'package.module:function' or 'path/to/file.py:function'."""
    model: Optional[str] = None
    """For kind=model: hub name or local path of an AutoModelForSequenceClassification."""
    device: str = "auto"
    """Device of a reward model: 'auto' (cuda if available, else cpu), 'cpu', 'cuda', 'cuda:1', ..."""
    batch_size: int = 32
    """Reward-model scoring batch size."""
    max_length: int = 1024
    """Reward-model input limit in tokens."""
    host: str = "127.0.0.1"
    """Address to listen on; 127.0.0.1 serves this machine only."""
    port: int = 8000
    """Port to listen on; 0 picks a free one (the address is printed)."""
    token: Optional[str] = None
    """Bearer token clients must send; defaults to the REMAX_REWARD_TOKEN environment variable; none: no check."""


def _missing_extra() -> InputError:
    return InputError("remax serve-reward needs FastAPI and uvicorn; install them with pip install 'remax[serve]'")


def create_app(reward_fn: Any, *, token: Optional[str] = None, name: Optional[str] = None) -> Any:
    """A FastAPI app serving `reward_fn` at POST /score, with GET /health."""
    try:
        from fastapi import Depends, FastAPI, HTTPException, Request
        from pydantic import BaseModel, Field
    except ImportError:
        raise _missing_extra() from None

    name = name or getattr(reward_fn, "name", None) or type(reward_fn).__name__
    lock = threading.Lock()

    class ScoreRequest(BaseModel):
        prompts: list[Any]  # strings, or chats (lists of {role, content} messages)
        responses: list[str]
        columns: dict[str, list[Any]] = Field(default_factory=dict)
        ended: Optional[list[Optional[bool]]] = None  # each response's ResponseText.ended (remax/rewards/http.py)

    def authorised(request: Request) -> None:
        if token is None:
            return
        sent = request.headers.get("authorization", "")
        scheme, _, value = sent.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(value.strip().encode(), token.encode()):
            raise HTTPException(401, "missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"})

    app = FastAPI(title="remax reward server", docs_url=None, redoc_url=None)

    @app.get("/health")
    def health() -> dict[str, Any]:
        return {"status": "ok", "reward": name, "token_required": token is not None}

    @app.post("/score", dependencies=[Depends(authorised)])
    def score(body: ScoreRequest) -> dict[str, list[float]]:
        if not body.prompts and not body.responses:
            return {"scores": []}
        try:
            with lock:
                out = reward_fn(body.prompts, _responses(body.responses, body.ended), **body.columns)
                scores = as_reward_tensor(out, len(body.prompts), name)
        except ValueError as err:  # a mismatched batch, unusable scores, a missing column
            raise HTTPException(422, _one_line(err)) from None
        except Exception as err:  # the reward itself failed
            raise HTTPException(500, f"reward {name!r} raised {type(err).__name__}: {_one_line(err)}") from None
        return {"scores": scores.tolist()}

    return app


def _responses(texts: list[str], ended: Optional[list[Optional[bool]]]) -> list[str]:
    """The responses as the client's reward saw them: ResponseTexts when `ended` came along."""
    if ended is None:
        return texts
    if len(ended) != len(texts):
        raise ValueError(f"'ended' has {len(ended)} values for {len(texts)} responses")
    return [ResponseText(t, e) for t, e in zip(texts, ended)]


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on (host, port), or a one-line InputError naming the fix."""
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError as err:
        raise InputError(f"cannot listen on {host}:{port} ({err.strerror or err}); pass another --port "
                         "(0 picks a free one) or --host") from None
    sock.listen(128)
    return sock


class RunningServer:
    """A uvicorn server on its own thread (notebooks, tests): `.url`, `.stop()`."""

    def __init__(self, app: Any, host: str = "127.0.0.1", port: int = 0) -> None:
        import uvicorn

        self.sock = bind(host, port)
        self.url = _url(host, self.sock.getsockname()[1])
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]},
                                       name="remax-reward-server", daemon=True)
        self.thread.start()
        while not self.server.started and self.thread.is_alive():
            self.thread.join(0.01)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        self.sock.close()

    def __enter__(self) -> "RunningServer":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def serve(config: ServeConfig) -> None:
    """Build the reward, bind, print the address, serve until Ctrl-C."""
    try:
        import uvicorn
    except ImportError:
        raise _missing_extra() from None
    from remax.rewards import build_reward

    token = config.token or os.environ.get(DEFAULT_TOKEN_ENV) or None
    device = _device(config) if config.kind == "model" else "cpu"
    try:
        reward = build_reward(config.kind, function=config.function, model=config.model, device=device,
                              batch_size=config.batch_size, max_length=config.max_length)
    except ValueError as err:  # build_reward names the trainer's flags: --reward.function -> --function
        raise InputError(_one_line(err).replace("--reward.", "--")) from None
    app = create_app(reward, token=token)
    sock = bind(config.host, config.port)
    url = _url(config.host, sock.getsockname()[1])
    guard = "bearer token required" if token else "no token: anyone who can reach it may use it"
    print(f"remax serve-reward: serving {getattr(reward, 'name', config.kind)!r} on {url} ({guard}); "
          f"train with --reward.kind http --reward.url {url}", flush=True)
    if token is None and config.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"remax serve-reward: warning: listening on {config.host} without a token; set --token or "
              f"{DEFAULT_TOKEN_ENV}", file=sys.stderr, flush=True)
    uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off")).run(sockets=[sock])


def _device(config: ServeConfig) -> str:
    """The reward model's device; a missing GPU is one line that names --device. (Only
    a reward model needs one: the others start without importing transformers.)"""
    from remax.models.loading import resolve_device

    try:
        return str(resolve_device(config.device))
    except InputError as err:
        raise InputError(str(err).replace("--model.device", "--device")) from None


def _url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split())[:300]
