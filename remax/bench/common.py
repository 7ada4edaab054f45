"""Shared pieces of `remax bench`: model sizes, prompts, one measured run per subprocess,
and the figures every bench reports (medians, ratios, FLOP floors, machine facts).

The public API, also meant for the quality bench:

    SIZES, ModelSize                  the model sizes (random-init GPT-2 configs, built here)
    prepare_model_dir(size, root)     tokenizer (trained on the KJV Bible) + model, save_pretrained
    bench_prompts(count, seed)        KJV verse prefixes, the demo's prompts
    trainer_config(...)               a remax Config for one benchmark run
    samples_rule(algo, prompts, n)    (prompts, n) for an algorithm at equal sampled responses
    run_worker(target, spec)          call "module:function"(spec) in a fresh python, get its dict
    measure_trainer(spec)             the worker behind speed and memory: warm-up + timed steps
    matmul_gflops(device)             the matmul rate that the FLOP floors are measured against
    median, machine_info, write_results, markdown_table

Why a subprocess per measured run: peak RSS is a process-wide high-water mark, so two
algorithms measured in one process would see each other's peaks; a fresh process per
(algorithm, repetition) keeps every figure clean, and interleaving those processes
(A B C A B C) spreads the noise of a shared machine over all algorithms alike.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

from remax.errors import InputError

PHASES = ("rollout", "score", "prepare", "update")


@dataclass(frozen=True)
class ModelSize:
    """A GPT-2-style shape; the weights are random, the tokenizer is trained locally."""

    n_layer: int
    n_embd: int
    n_head: int
    vocab_size: int
    n_positions: int = 256
    cuda_only: bool = False


SIZES: dict[str, ModelSize] = {
    "tiny": ModelSize(2, 64, 2, 512),  # ~0.1M: CI, seconds
    "mini": ModelSize(4, 256, 4, 2048),  # ~3.7M
    "small": ModelSize(6, 512, 8, 4096),  # ~21M
    "gpt2-small": ModelSize(12, 768, 12, 8192, 1024),  # GPT-2 small's trunk (85M) + an 8k vocab: ~92M
    "0.5b": ModelSize(24, 1280, 20, 8192, 1024, cuda_only=True),  # ~0.48B, GPU only
}


def check_size(name: str, device: str) -> ModelSize:
    """The ModelSize called `name`, or InputError (unknown name, or a GPU size without a GPU)."""
    if name not in SIZES:
        raise InputError(f"unknown model size {name!r}; choose one of: {', '.join(SIZES)}")
    size = SIZES[name]
    if size.cuda_only and resolve_device(device) != "cuda":
        raise InputError(f"size {name!r} runs only on a CUDA GPU and none is available here; "
                         "use --size gpt2-small (or smaller) on CPU")
    return size


def set_threads(threads: int) -> None:
    """torch's intra-op threads for this process; 0 keeps torch's default. On a CPU that
    other jobs share, one thread per process wastes less time in thread barriers."""
    if threads > 0:
        import torch

        torch.set_num_threads(threads)


def resolve_device(device: str) -> str:
    """'auto' -> 'cuda' when a GPU is visible, else 'cpu'; anything else as given."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


# ------------------------------------------------------------------ inputs
def prepare_model_dir(size: str, root: str | os.PathLike, seed: int = 0) -> Path:
    """`root/size`: a tokenizer trained on the KJV Bible and a random-init GPT-2 of that
    size, written with save_pretrained (TRL reloads its reference model from the path).
    Reused when it already exists: building is deterministic for a given seed."""
    path = Path(root) / f"{size}-seed{seed}"
    if (path / "done").is_file():
        return path
    from remax.demo.corpus import kjv_verses
    from remax.models.tiny import tiny_causal_lm, train_tokenizer

    shape = SIZES[size]
    tokenizer = train_tokenizer(kjv_verses(), vocab_size=shape.vocab_size)
    model = tiny_causal_lm(tokenizer, n_layer=shape.n_layer, n_embd=shape.n_embd, n_head=shape.n_head,
                           n_positions=shape.n_positions, seed=seed)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    (path / "done").write_text("ok\n")
    return path


def bench_prompts(count: int = 256, seed: int = 0) -> list[str]:
    """`count` distinct KJV verse prefixes of 3-5 words (the demo's prompts)."""
    from remax.demo.corpus import demo_prompts, kjv_verses

    return demo_prompts(kjv_verses(), n_train=count, n_eval=0, seed=seed)[0]


def samples_rule(algo: str, prompts: int, n: int) -> tuple[int, int]:
    """(prompts, n) for `algo` so that every algorithm trains on the same number of sampled
    responses per step (prompts * n). An algorithm that needs more samples per prompt
    (rloo / grpo: n >= 2, from its registered spec) gets its minimum n and proportionally
    fewer prompts. ReMax's greedy rows come on top: they are its real cost."""
    spec = get_algorithm_or_input_error(algo)
    if n >= spec.min_samples:
        return prompts, n
    need = spec.min_samples
    if (prompts * n) % need:
        raise InputError(f"--prompts {prompts} x n {n} must be a multiple of {need}: {algo} needs n >= {need}, "
                         f"so it runs prompts*n/{need} x {need} to match the other algorithms")
    return prompts * n // need, need


def get_algorithm_or_input_error(name: str):
    """The registered Algorithm spec, or InputError naming the registered choices."""
    from remax.algos import get_algorithm

    try:
        return get_algorithm(name)
    except ValueError as err:
        raise InputError(f"--algos: {err}") from None


def trainer_config(algo: str, *, prompts: int, n: int, max_new_tokens: int, kl_coef: float,
                   device: str, seed: int, output_dir: str, mixed_precision: str = "no"):
    """A remax Config for one benchmark run: one micro-batch per step (all rows at once),
    top-p 0.9 at temperature 1, PPO / GRPO at 1 epoch x 1 minibatch, no progress bar or plot."""
    from remax.config import Config

    cfg = Config(algo=algo, output_dir=output_dir, overwrite=True)
    cfg.model.device = device
    cfg.data.max_prompt_tokens = 32  # the prompts are 3-5 words
    cfg.rollout.n_samples, cfg.rollout.max_new_tokens = n, max_new_tokens
    cfg.train.batch_size, cfg.train.micro_batch_size = prompts, prompts * n
    cfg.train.seed = seed
    cfg.loss.kl_coef = kl_coef
    cfg.train.mixed_precision = mixed_precision  # the bench's --mixed_precision (no = fp32)
    cfg.log.progress, cfg.log.plot = False, False
    return cfg


# --------------------------------------------------------------- subprocess
TRAINER_WORKER = "remax.bench.common:measure_trainer"


def run_worker(target: str, spec: dict[str, Any], timeout_s: Optional[float] = None) -> dict[str, Any]:
    """Run `target` ("package.module:function") on `spec` in a fresh python process and
    return the dict it returns. A failing worker raises RuntimeError with its stderr tail."""
    with tempfile.TemporaryDirectory(prefix="remax-bench-") as tmp:
        spec_path, result_path = Path(tmp) / "spec.json", Path(tmp) / "result.json"
        spec_path.write_text(json.dumps({"target": target, "spec": spec, "result": str(result_path)}))
        env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
        proc = subprocess.run([sys.executable, "-m", "remax.bench.common", str(spec_path)], env=env,
                              capture_output=True, text=True, timeout=timeout_s)
        if proc.returncode != 0 or not result_path.is_file():
            tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-15:])
            raise RuntimeError(f"bench worker {target} failed (exit {proc.returncode}):\n{tail}")
        return json.loads(result_path.read_text())


def _worker_main(spec_path: str) -> int:
    import importlib

    job = json.loads(Path(spec_path).read_text())
    module, _, function = job["target"].partition(":")
    result = getattr(importlib.import_module(module), function)(job["spec"])
    Path(job["result"]).write_text(json.dumps(result))
    return 0


# ------------------------------------------------------------------ the worker
def peak_rss_mb() -> float:
    """This process's peak resident set size so far, MiB (VmHWM: see remax.trainer.metrics)."""
    from remax.trainer.metrics import peak_rss_mb as own_peak

    return own_peak()


def matmul_gflops(device: str, dim: int = 1024, seconds: float = 0.3) -> float:
    """fp32 GFLOP/s of a dim x dim x dim matmul on `device`, timed for about `seconds`:
    the rate the FLOP floors are divided by (2 * dim^3 FLOPs per matmul)."""
    import torch

    a = torch.randn(dim, dim, device=device)
    b = torch.randn(dim, dim, device=device)
    for _ in range(2):  # warm-up: thread pool, kernels
        a @ b
    _sync(device)
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        count += 1
    _sync(device)
    return 2 * dim**3 * count / (time.perf_counter() - start) / 1e9


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def matmul_params(model) -> int:
    """Parameters that take part in matmuls per token: all of them, shared (tied) tensors
    once, minus position embeddings (a lookup). The tied input embedding is counted as the
    LM head's matmul. Counting the head on prompt tokens too overstates the floor by ~1%."""
    seen, total = set(), 0
    for name, p in model.named_parameters(remove_duplicate=False):
        if p.data_ptr() in seen or name.endswith("wpe.weight"):
            continue
        seen.add(p.data_ptr())
        total += p.numel()
    return total


class FlopFloor:
    """Floor FLOPs per phase, counted from what the trainer actually runs.

    A forward pre-hook on every watched model (policy, reference, critic) adds
    2 * params * real tokens for a forward without grad and 6 * params * real tokens for
    one with grad (forward + backward), real tokens = the attention mask's sum (padding and
    tokens after EOS excluded). Generation is counted from the Rollout instead:
    2 * params per generated token (every row, greedy ones included) and per prompt token."""

    def __init__(self, models: dict[str, Any]) -> None:
        self.phase: Optional[str] = None
        self.flops: dict[str, float] = {}
        self.params = {name: matmul_params(m) for name, m in models.items()}
        for name, model in models.items():
            model.register_forward_pre_hook(self._hook(self.params[name]), with_kwargs=True)

    def _hook(self, params: int):
        def count(module, args, kwargs):
            if self.phase in (None, "rollout"):  # generate's steps: counted from the Rollout
                return
            import torch

            mask = kwargs.get("attention_mask")
            tokens = float(mask.sum()) if mask is not None else float(kwargs["input_ids"].numel())
            self.add(self.phase, (6 if torch.is_grad_enabled() else 2) * params * tokens)

        return count

    def add(self, phase: str, flops: float) -> None:
        self.flops[phase] = self.flops.get(phase, 0.0) + flops


def _watch(trainer, floor: FlopFloor, tokens: dict[str, float]) -> None:
    """Wrap the trainer's phase methods (on the instance: the loop is untouched) so that
    the hooks know the phase, and the rollout's token counts are recorded."""
    for phase in PHASES:
        method = getattr(trainer, phase)

        def wrapped(*args, _method=method, _phase=phase):
            floor.phase = _phase
            try:
                out = _method(*args)
            finally:
                floor.phase = None
            if _phase == "rollout":
                tokens["generated"] = float(out.response_mask.sum())
                tokens["sampled"] = float(out.sampled().response_mask.sum())
                tokens["prompt"] = float(out.prompt_mask.sum())
                floor.add("rollout", 2 * floor.params["policy"] * (tokens["generated"] + tokens["prompt"]))
            return out

        setattr(trainer, phase, wrapped)
    source_next = trainer.source.next

    def next_batch(*args, **kwargs):  # the step's batch, also when prefetched (async_steps 1: no rollout call)
        rollout, metrics = source_next(*args, **kwargs)
        tokens["generated"] = float(rollout.response_mask.sum())
        tokens["sampled"] = float(rollout.sampled().response_mask.sum())
        tokens["prompt"] = float(rollout.prompt_mask.sum())
        return rollout, metrics

    trainer.source.next = next_batch


def analytic_bytes(trainer) -> dict[str, float]:
    """Model-state bytes the algorithm must hold, from the live objects: every parameter an
    optimizer updates costs weight + grad + 2 AdamW moments (16 bytes in fp32), every
    frozen one (the reference) its weight only. PPO: 16N + 4N + 16N = 36N; ReMax: 20N."""
    trained = {id(p) for opt in trainer.optimizers.values() for g in opt.param_groups for p in g["params"]}
    seen, total = set(), 0.0
    models = [trainer.policy, trainer.reference] + ([trainer.critic] if trainer.critic is not None else [])
    for model in models:
        for p in model.parameters():
            if id(p) in seen:
                continue
            seen.add(id(p))
            total += p.numel() * p.element_size() * (4 if id(p) in trained else 1)
    policy = sum(p.numel() for p in trainer.policy.parameters())  # N: every policy tensor once
    return {"analytic_mb": total / 2**20, "policy_params_total": policy}


def measure_trainer(spec: dict[str, Any]) -> dict[str, Any]:
    """Worker: build a remax Trainer from spec["model_dir"] with the VADER reward and KJV
    prompts, run spec["warmup"] steps, then time spec["steps"] steps. Returns per-step
    perf/* seconds, token counts and floor FLOPs, plus peak memory (CUDA allocator peak,
    or peak RSS on CPU), the RSS before the model was loaded, and the matmul rate.

    spec keys: algo, model_dir, prompts, n, max_new_tokens, kl_coef, device, seed, warmup, steps
    (and mixed_precision: no, bf16 or fp16; no when absent)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from remax.rewards import VaderReward
    from remax.trainer import Trainer

    device = resolve_device(spec["device"])
    server = _rollout_server(spec)  # backend vllm_server: the engine's process, on a core of its own
    set_threads(spec.get("threads", 0))
    torch.manual_seed(spec["seed"])
    gflops = matmul_gflops(device)
    rows = [{"prompt": p} for p in bench_prompts(256, spec["seed"])]
    reward = VaderReward()
    base_mb = peak_rss_mb()  # imports, prompts, reward: what any run pays before a model
    policy = AutoModelForCausalLM.from_pretrained(spec["model_dir"], dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(spec["model_dir"])
    with tempfile.TemporaryDirectory(prefix="remax-bench-run-") as out:
        cfg = trainer_config(spec["algo"], prompts=spec["prompts"], n=spec["n"], device=device,
                             max_new_tokens=spec["max_new_tokens"], kl_coef=spec["kl_coef"],
                             seed=spec["seed"], output_dir=out, mixed_precision=spec.get("mixed_precision", "no"))
        cfg.rollout.backend, cfg.rollout.async_steps = spec.get("backend", "hf"), spec.get("async_steps", 0)
        cfg.rollout.hf_kernels = spec.get("hf_kernels", "torch")
        cfg.rollout.server_url = server[1] if server else None
        try:
            trainer = Trainer(cfg, policy=policy, tokenizer=tokenizer, reward_fn=reward, rows=rows)
            models = {"policy": trainer.policy, "reference": trainer.reference}
            if trainer.critic is not None:
                models["critic"] = trainer.critic
            floor = FlopFloor(models)
            steps = _run_steps(trainer, floor, spec["warmup"], spec["steps"])
            trainer.source.close()  # an async run's last prefetch
            trainer.backend.close()
        finally:
            if server:
                server[0].terminate()
                server[0].wait(60)
    peak = torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else peak_rss_mb()
    return {"algo": spec["algo"], "prompts": spec["prompts"], "n": spec["n"], "device": device,
            "params": floor.params, "matmul_gflops": gflops, "base_rss_mb": base_mb, "peak_mem_mb": peak,
            "mixed_precision": trainer.dist.precision.mode,  # what the run resolved, not what was asked
            **analytic_bytes(trainer), "steps": steps}


def _rollout_server(spec: dict[str, Any]):
    """For spec["backend"] == "vllm_server": `remax serve-rollout` on the first core this
    worker may use, the worker pinned to the others (2+ cores); (Popen, url), else None.
    An async run's rollout floor counts only the batches generated on the spot: the
    prefetched ones are not the trainer's rollout phase (perf/rollout_s is the wait)."""
    if spec.get("backend", "hf") != "vllm_server":
        return None
    from remax.rollout.server import spawn

    cores = sorted(os.sched_getaffinity(0))
    pin = str(cores[0]) if len(cores) >= 2 else None
    server = spawn(spec["model_dir"], cpus=pin, max_model_len=256)
    if pin is not None:
        os.sched_setaffinity(0, set(cores[1:]))
    return server


def _run_steps(trainer, floor: FlopFloor, warmup: int, steps: int) -> list[dict[str, Any]]:
    tokens: dict[str, float] = {}
    _watch(trainer, floor, tokens)
    out = []
    for i in range(warmup + steps):
        floor.flops = {}
        metrics = trainer.step()
        if i < warmup:
            continue
        record = {k: v for k, v in metrics.items() if k.startswith("perf/")}
        record.update({f"tokens/{k}": v for k, v in tokens.items()})
        record.update({f"flops/{k}": v for k, v in floor.flops.items()})
        out.append(record)
    return out


# ------------------------------------------------------------------ figures
def median(values: Iterable[float]) -> float:
    values = list(values)
    return float(statistics.median(values)) if values else float("nan")


def machine_info(device: str) -> dict[str, Any]:
    """Cores, CPU model (/proc/cpuinfo), GPU name, torch / transformers versions, UTC date."""
    import torch
    import transformers

    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {"cores": os.cpu_count(), "cpu": cpu, "torch": torch.__version__,
            "transformers": transformers.__version__, "python": platform.python_version(),
            "torch_threads": torch.get_num_threads(), "device": device,
            "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}
    if device == "cuda":
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub Markdown table; floats get 3 significant figures (2 decimals when >= 100)."""

    def cell(v: Any) -> str:
        if isinstance(v, float):
            return "n/a" if v != v else (f"{v:.0f}" if abs(v) >= 100 else f"{v:.3g}")
        return str(v)

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def write_results(out_dir: str | os.PathLike, stem: str, markdown: str, raw: dict[str, Any]) -> tuple[Path, Path]:
    """out_dir/stem.md and out_dir/stem.json (raw figures); returns both paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    md, js = out / f"{stem}.md", out / f"{stem}.json"
    md.write_text(markdown + "\n")
    js.write_text(json.dumps(raw, indent=1) + "\n")
    return md, js


def command_line(prog: str, argv: Sequence[str]) -> str:
    return " ".join([prog, *argv])


def default_work_dir() -> str:
    """Where built model directories are cached between bench runs."""
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(root, "remax", "bench-models")


if __name__ == "__main__":
    sys.exit(_worker_main(sys.argv[1]))
