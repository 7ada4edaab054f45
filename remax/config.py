"""Typed run configuration: one source of truth for every default.

Each field's docstring is its `--help` text. A run is configured from a YAML file
(`remax train --config run.yaml`) whose nested keys mirror these dataclasses, then
dotted command-line overrides (`--rollout.temperature 0.7`). Defaults follow the ReMax
authors' scripts (lr 1e-6, KL 0.05, top-p 0.9, 256/256 tokens) unless a field says not.
"""

from __future__ import annotations

import dataclasses
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


def from_dict(cls: type, data: dict[str, Any], where: str = "") -> Any:
    """Build dataclass `cls` from nested dicts; unknown keys raise ConfigError."""
    if not isinstance(data, dict):
        raise ConfigError(f"config section {where or '<root>'!r} must be a mapping, got {type(data).__name__}")
    hints = _field_types(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        path = f"{where}.{key}" if where else key
        if key not in known:
            raise ConfigError(f"unknown config key {path!r}; known keys here: {', '.join(sorted(known))}")
        tp = hints[key]
        if _is_dataclass_type(tp):
            kwargs[key] = from_dict(tp, value or {}, path)
        elif isinstance(value, list) and _origin(tp) is tuple:
            kwargs[key] = tuple(value)
        else:
            kwargs[key] = value
    return cls(**kwargs)


def _origin(tp: Any) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return typing.get_origin(args[0]) if len(args) == 1 else None
    return origin


def load_config(path: str | Path) -> Config:
    """Read a YAML file into a Config (missing keys keep their defaults)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} not found; pass an existing YAML file to --config")
    with open(path) as f:
        data = yaml.safe_load(f) or {}
    return from_dict(Config, data)


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
