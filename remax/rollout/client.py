"""The `vllm_server` rollout backend: the trainer as a client of `remax serve-rollout`
(remax/rollout/server.py, which documents the protocol).

It is the in-process vLLM backend (remax/rollout/vllm.py) with the engine moved out:
- `generate` sends the prompts' token ids, the run's sampling settings and one seed per
  row (drawn from the trainer's torch RNG, so runs and resumed runs are reproducible) in
  ONE request, sampled and greedy rows together, and builds the same `Rollout`
  (`remax.rollout.vllm.to_rollout`), engine log-probs included.
- `submit` does the same without waiting: the seeds are drawn now, on the caller's
  thread; the request runs on a worker thread; `.result()` waits. This is what lets the
  trainer train while the server generates (`rollout.async_steps`, the prefetching source in
  remax/trainer/phases/rollout.py).
- `sync(policy, step)` pushes the weights over torch.distributed (gloo on CPU, NCCL on
  GPUs; a process group of 2 built on a TCPStore this process hosts, so it never touches a
  default group of the trainer's own), then every `rollout.verify_every` steps asks the server for its
  log-probs of the fixed probe and compares them with the trainer's, exactly as the
  in-process backend does: a difference above `rollout.verify_tol` raises EngineOutOfSync.
- the server's `version` (the step whose weights it holds) comes back with every rollout:
  the trainer logs `rollout/staleness` from it, a measurement rather than an assumption.

A server that is gone (connection refused or reset), slow (no answer within
`rollout.server_timeout_s`) or failing (HTTP 500) raises `RolloutServerError`, one line
naming the server and the fix; the loop stops at the step boundary with a checkpoint.
Only a single trainer process talks to a server (one weights channel); several processes
are refused at start.
"""

from __future__ import annotations

import datetime
import http.client
import json
import socket
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable, Optional
from urllib.parse import urlparse

import torch

from remax.config import ConfigError
from remax.errors import InputError
from remax.rollout.generate import Rollout
from remax.rollout.types import RolloutServerError, Sampling
from remax.rollout.vllm import (
    DEFAULT_TOL, PROBE_LEN, check_probe, check_rows, logprob_diff, make_probe, plain_weights, probe_diff, prompt_lists,
    to_rollout, trainer_probe_logprobs,
)
from remax.trainer.precision import check_engine_dtype, compute_dtype_name, resolve_mode


_ABANDONED: list[Any] = []  # weights channels given up on mid-broadcast (see `push`)


class PendingRollout:
    """A rollout the server is generating: `.result()` waits for it (and re-raises a failure
    as the one-line RolloutServerError); `.version`: the weights' step it came from."""

    def __init__(self, future: Future, backend: "VLLMServerBackend") -> None:
        self.future, self.backend, self.version = future, backend, None

    def result(self) -> Rollout:
        rollout, self.version = self.future.result()
        self.backend.version = self.version
        return rollout

    def done(self) -> bool:
        return self.future.done()


class VLLMServerBackend:
    """See the module docstring."""

    def __init__(self, url: str, sampling: Sampling, *, device: torch.device, dtype: torch.dtype, vocab_size: int,
                 timeout_s: float = 600.0, verify_every: int = 1, verify_tol: Optional[float] = None,
                 probe_len: int = PROBE_LEN) -> None:
        parsed = urlparse(url if "://" in url else f"http://{url}")
        if parsed.scheme != "http" or not parsed.hostname:
            raise InputError(f"--rollout.server_url {url!r} is not an http://HOST:PORT address")
        if verify_every < 0:
            raise InputError(f"--rollout.verify_every must be >= 0 (0 turns the probe off), got {verify_every}")
        self.url, self.host, self.port = url, parsed.hostname, parsed.port or 80
        self.sampling, self.device, self.dtype, self.timeout_s = sampling, device, dtype, timeout_s
        self.verify_every, self.verify_tol = verify_every, verify_tol
        self.set_dtype(dtype)  # the server's dtype, once check_server has asked it
        self.probe = make_probe(vocab_size, probe_len)  # (L,) the same sequence the in-process backend uses
        self.version: Optional[int] = None  # the step whose weights the last rollout came from
        self.group: Any = None  # (store, process group): the weights channel, opened at the first push
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="remax-rollout-client")

    @classmethod
    def from_config(cls, config: Any, policy: Any, tokenizer: Any, sampling: Sampling) -> "VLLMServerBackend":
        r = config.rollout
        if not r.server_url:
            raise InputError("--rollout.backend vllm_server needs --rollout.server_url http://HOST:PORT "
                             "(start the server with `remax serve-rollout --model PATH`)")
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            raise InputError("--rollout.backend vllm_server serves one trainer process (one weights channel); "
                             "run the trainer in one process, or use --rollout.backend hf")
        param = next(policy.parameters())
        vocab = policy.get_output_embeddings().weight.shape[0]
        backend = cls(r.server_url, sampling, device=param.device, dtype=param.dtype, vocab_size=vocab,
                      timeout_s=r.server_timeout_s, verify_every=r.verify_every, verify_tol=r.verify_tol)
        backend.check_server(vocab, max_len=config.data.max_prompt_tokens + r.max_new_tokens,
                             mode=resolve_mode(config.train.mixed_precision, param.device))
        return backend

    def set_dtype(self, dtype: torch.dtype) -> None:
        """The engine's dtype: pushes are cast to it, the probe computed in it, and its
        tolerance (unless rollout.verify_tol sets one) follows it."""
        self.dtype = dtype
        self.tol = DEFAULT_TOL.get(dtype, 0.1) if self.verify_tol is None else self.verify_tol

    # ---------------------------------------------------------------- HTTP
    def _request(self, method: str, path: str, body: Optional[dict[str, Any]] = None,
                 timeout: Optional[float] = None) -> dict[str, Any]:
        """One request; every way it can fail is a one-line RolloutServerError."""
        what = f"{method} {path}"
        timeout = self.timeout_s if timeout is None else timeout
        conn = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
        try:
            data = None if body is None else json.dumps(body).encode()
            conn.request(method, path, body=data, headers={"Content-Type": "application/json"})
            response = conn.getresponse()
            payload = json.loads(response.read() or b"{}")
        except (socket.timeout, TimeoutError):
            raise RolloutServerError(
                f"the rollout server at {self.url} did not answer {what} within --rollout.server_timeout_s "
                f"{timeout:g} s; it is stuck or overloaded: check it, or raise the timeout") from None
        except ConnectionRefusedError:
            raise RolloutServerError(
                f"the rollout server at {self.url} is not reachable (connection refused on {what}); start it with "
                f"`remax serve-rollout --model PATH --port {self.port}`, or fix --rollout.server_url") from None
        except (OSError, http.client.HTTPException, ValueError) as err:
            raise RolloutServerError(
                f"the rollout server at {self.url} went away during {what} ({type(err).__name__}: {err}); "
                "restart it and resume the run with --resume auto") from None
        finally:
            conn.close()
        if response.status != 200:
            raise RolloutServerError(f"the rollout server at {self.url} failed on {what} (HTTP {response.status}): "
                                     f"{payload.get('detail', payload)}")
        return payload

    def check_server(self, vocab_size: int, max_len: int, mode: str = "no") -> dict[str, Any]:
        """GET /health at start: the server is up and runs this policy's vocabulary, in a dtype
        the run can use. The server's dtype (`remax serve-rollout --dtype`) becomes the
        engine's: a bfloat16 server beside a float32 or bf16-mixed trainer gets its pushes
        cast to bfloat16 and a bf16 probe (tolerance 0.1), as the colocated engine's
        rollout.vllm_dtype does; one that contradicts the run's mixed precision `mode`
        (float16 beside bf16, bfloat16 beside fp16) is refused."""
        info = self._request("GET", "/health", timeout=min(self.timeout_s, 30.0))
        dtype = info.get("dtype")
        if info.get("vocab_size") != vocab_size:
            raise InputError(f"the rollout server at {self.url} holds a model with {info.get('vocab_size')} tokens, "
                             f"the policy has {vocab_size}; start it with --model set to the policy's path")
        if dtype not in ("float32", "bfloat16", "float16"):
            raise InputError(f"the rollout server at {self.url} runs {dtype}, not float32 / bfloat16 / float16; "
                             f"restart it with --dtype {str(self.dtype).removeprefix('torch.')}")
        try:
            check_engine_dtype(dtype, mode, flag="the server's --dtype")
        except ConfigError:
            raise InputError(f"the rollout server at {self.url} runs {dtype}, and --train.mixed_precision {mode} "
                             f"computes in {compute_dtype_name(mode)}; restart it with --dtype {compute_dtype_name(mode)}"
                             ) from None
        self.set_dtype(getattr(torch, dtype))
        if info.get("max_model_len", max_len) <= self.sampling.max_new_tokens:  # a longer prompt: the server says so
            raise InputError(f"the rollout server at {self.url} holds {info['max_model_len']} positions, fewer than "
                             f"--rollout.max_new_tokens {self.sampling.max_new_tokens} + a prompt; restart it with "
                             f"--max_model_len {max_len}")
        return info

    # ------------------------------------------------------------ sampling
    def submit(self, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, *, n: int, greedy: bool) -> PendingRollout:
        """Start generating; seeds drawn now from this thread's torch RNG (the rollout stream)."""
        check_rows(n, greedy)
        B = prompt_ids.shape[0]
        seeds = torch.randint(2**31 - 1, (B * n + B,)).tolist()
        s = self.sampling
        body = {"prompts": prompt_lists(prompt_ids, prompt_mask), "n": n, "greedy": greedy, "seeds": seeds,
                "sampling": {"max_new_tokens": s.max_new_tokens, "temperature": s.temperature, "top_p": s.top_p,
                             "top_k": s.top_k, "pad_token_id": s.pad_token_id,
                             "eos_token_id": s.eos_token_id if isinstance(s.eos_token_id, int) else list(s.eos_token_id)}}

        def run() -> tuple[Rollout, int]:
            out = self._request("POST", "/generate", body)
            rows = list(zip(out["rows"], out["logprobs"]))
            return to_rollout(prompt_ids, prompt_mask, rows, sampling=s, n=n, greedy=greedy), int(out["version"])

        return PendingRollout(self.pool.submit(run), self)

    def generate(self, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, *, n: int, greedy: bool) -> Rollout:
        """(B, P) left-padded prompts -> Rollout with B*n sampled rows (+ B greedy rows): one request."""
        return self.submit(prompt_ids, prompt_mask, n=n, greedy=greedy).result()

    # --------------------------------------------------------- weight sync
    def _open_channel(self) -> None:
        """The trainer hosts a TCPStore on the address it reaches the server from; the
        server joins it as rank 1 (POST /init_comm) while this process joins as rank 0."""
        import torch.distributed as dist

        with socket.create_connection((self.host, self.port), timeout=min(self.timeout_s, 30.0)) as s:
            host = s.getsockname()[0]  # this machine's address as the server sees it
        timeout = datetime.timedelta(seconds=self.timeout_s)
        store = dist.TCPStore(host, 0, 2, is_master=True, wait_for_workers=False, timeout=timeout)
        backend = "nccl" if self.device.type == "cuda" else "gloo"
        body = {"host": host, "port": store.port, "backend": backend}

        group: list[Any] = []

        def join() -> None:  # blocks until the server joins: on a thread, so a refused request need not wait
            pg = dist.ProcessGroupNCCL(store, 0, 2) if backend == "nccl" else dist.ProcessGroupGloo(store, 0, 2, timeout)
            group.append((store, pg))

        thread = threading.Thread(target=join, name="remax-rollout-join", daemon=True)
        thread.start()
        self._request("POST", "/init_comm", body)  # answered once the server has joined
        thread.join(self.timeout_s)
        if not group:
            raise RolloutServerError(f"the rollout server at {self.url} answered /init_comm but the weights channel "
                                     f"did not open within {self.timeout_s:g} s; check that it can reach {host}")
        self.group = group[0]

    def push(self, policy: Any, version: int = -1) -> None:
        """The policy's weights to the server (one flat buffer per dtype, tied weights once),
        loaded there in place; `version`: the step they belong to."""
        self._send(*self._pack(policy, version))

    def _pack(self, policy: Any, version: int) -> tuple[dict[str, Any], list[tuple[Any, torch.Tensor]]]:
        """The request body and the flat buffers (copies: the policy may change after this)."""
        from remax.rollout.server import flat_groups

        tensors, aliases, seen = [], {}, {}
        for name, t in plain_weights(policy).items():
            key = (t.data_ptr(), t.shape, t.dtype)
            if key in seen:
                aliases[name] = seen[key]
                continue
            seen[key] = name
            tensors.append((name, t))
        # floating tensors travel in the server's dtype: cast as they are copied into the flat buffer
        specs = [(name, list(t.shape), self.dtype if t.is_floating_point() else t.dtype) for name, t in tensors]
        body = {"tensors": [[n, s, str(d).removeprefix("torch.")] for n, s, d in specs], "aliases": aliases,
                "version": version}
        return body, [(dtype, _flat([tensors[i][1] for i in idx], dtype, self.device))
                      for dtype, idx in flat_groups(specs).items()]

    def _send(self, body: dict[str, Any], flats: list[tuple[Any, torch.Tensor]]) -> None:
        from remax.rollout.server import broadcast

        if self.group is None:
            self._open_channel()

        def send(failed: threading.Event) -> None:
            for _, flat in flats:
                try:
                    broadcast(self.group, flat, abort=failed.is_set)
                except RuntimeError as err:
                    # a broken or abandoned channel: the next push opens a new one. Kept referenced: a process
                    # group destroyed with a broadcast pending would block in its destructor until its timeout
                    _ABANDONED.append(self.group)
                    self.group = None
                    raise RolloutServerError(f"the weights channel to the rollout server at {self.url} broke during "
                                             f"a push ({' '.join(str(err).split())[:200]}); restart the server and "
                                             "resume with --resume auto") from None

        _concurrently(lambda: self._request("POST", "/update_weights", body), send)

    def sync_later(self, policy: Any, step: int) -> Future:
        """`sync` off the caller's path: the weights are copied and the trainer's probe
        log-probs computed NOW (the policy may change next), the push and the server's probe
        run on the request worker, before any rollout submitted after this call. The
        future's result is sync's metrics, or EngineOutOfSync / RolloutServerError: the
        prefetching source waits for it before it trains on a batch from these weights."""
        packed = self._pack(policy, step)
        due = self.verify_every and step % self.verify_every == 0
        trainer = trainer_probe_logprobs(policy, self.probe, self.dtype) if due else None

        def run() -> dict[str, float]:
            self._send(*packed)
            if trainer is None:
                return {}
            out = self._request("POST", "/probe", {"probe": self.probe.tolist()})
            diff = logprob_diff(torch.tensor(out["logprobs"], dtype=torch.float64), trainer)
            return {"rollout/engine_probe_diff": check_probe(diff, self.tol, self.dtype, step,
                                                             engine=f"the rollout server at {self.url}")}

        return self.pool.submit(run)

    def probe_diff(self, policy: Any) -> float:
        """max |server - trainer| log-prob of the probe's tokens 1..L-1."""
        out = self._request("POST", "/probe", {"probe": self.probe.tolist()})
        return probe_diff(torch.tensor(out["logprobs"], dtype=torch.float64), policy, self.probe, self.dtype)

    def verify(self, policy: Any, step: int) -> float:
        return check_probe(self.probe_diff(policy), self.tol, self.dtype, step,
                           engine=f"the rollout server at {self.url}")

    def sync(self, policy: Any, step: int) -> dict[str, float]:
        """Push (as version `step`), then every verify_every steps check the probe."""
        self.push(policy, step)
        if self.verify_every and step % self.verify_every == 0:
            return {"rollout/engine_probe_diff": self.verify(policy, step)}
        return {}

    def close(self) -> None:
        """Leave the server running (it serves the next run); drop the weights channel."""
        self.pool.shutdown(wait=True, cancel_futures=True)
        if self.group is not None:
            self.group = None
            try:
                self._request("POST", "/close_comm", {}, timeout=5.0)
            except RolloutServerError:
                pass  # a server already gone has nothing to close


def _flat(tensors: list[torch.Tensor], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """(sum of numels,) the tensors flattened into ONE new buffer of `dtype` on `device`:
    each copied (and cast) into its slice, with no intermediate full-size copy."""
    flat = torch.empty(sum(t.numel() for t in tensors), dtype=dtype, device=device)
    offset = 0
    for t in tensors:
        flat[offset: offset + t.numel()].copy_(t.detach().reshape(-1))
        offset += t.numel()
    return flat


def _concurrently(remote: Callable[[], Any], local: Callable[[threading.Event], Any]) -> Any:
    """Run `remote` (an HTTP request that makes the server join a collective) on a thread
    while `local(failed)` (this side of the collective) runs here; `failed` is set when the
    request fails, so that `local` stops waiting for a peer that will not come. The
    request's failure wins, as it says why the collective failed. Returns local's result."""
    errors: list[BaseException] = []
    failed = threading.Event()

    def target() -> None:
        try:
            remote()
        except BaseException as err:  # noqa: BLE001 - re-raised below, on the caller's thread
            errors.append(err)
            failed.set()

    thread = threading.Thread(target=target, name="remax-rollout-comm", daemon=True)
    thread.start()
    try:
        result = local(failed)
    except BaseException:
        thread.join()
        if errors:
            raise errors[0] from None
        raise
    thread.join()
    if errors:
        raise errors[0]
    return result


__all__ = ["PendingRollout", "VLLMServerBackend"]
