"""remax: ReMax (Li et al., arXiv 2310.10505, ICML 2024) and the algorithms it is
compared with (REINFORCE, RLOO, GRPO, PPO) for Hugging Face causal language models.

The Python API mirrors `remax train`: build a `remax.Config` (the same typed dataclasses
whose field docstrings are the CLI's --help; `remax.load_config("run.yaml")` reads the
same YAML), then

    import remax
    cfg = remax.Config(algo="remax", output_dir="runs/x")
    cfg.train.steps = 50
    cfg.lora.r = 16                      # optional: train LoRA adapters only
    history = remax.train(cfg, policy=model, tokenizer=tok, reward_fn=my_fn, rows=rows)

Any of policy / tokenizer / reward_fn / rows may be given as objects instead of the
config's paths; `remax.Trainer` is the object behind `train` (its `.policy` after training);
`remax.evaluate` scores a policy on held-out prompts. See examples/python_api.py.

`remax.algos` holds the math as pure tensor functions (it imports torch only); everything
else (config, trainer, models, ...) is imported on first use, so `import remax` is light.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# name -> the module that defines it, imported on first access (PEP 562)
_LAZY = {
    "Config": "remax.config",
    "ModelConfig": "remax.config",
    "DataConfig": "remax.config",
    "RolloutConfig": "remax.config",
    "RewardConfig": "remax.config",
    "LossConfig": "remax.config",
    "TrainConfig": "remax.config",
    "LogConfig": "remax.config",
    "LoraConfig": "remax.config",
    "ConfigError": "remax.config",
    "load_config": "remax.config",
    "save_config": "remax.config",
    "Trainer": "remax.trainer.loop",
    "evaluate": "remax.trainer.evaluate",
}


def train(config: Any, **objects: Any) -> list[dict[str, float]]:
    """Train as `remax train` does, from a `remax.Config`; returns the metrics of every step.

    `objects` (all optional) replace the config's paths with ready objects: `policy` (a
    causal LM, trained in place; with config.lora.r > 0 it gains adapters), `tokenizer`
    (left padding), `reward_fn(prompts, responses, **columns) -> scores` and `rows` (a
    list of dicts with the prompt column). Writes output_dir as the CLI does (metrics.jsonl,
    checkpoints/, final/). Bad settings raise remax.ConfigError with one line."""
    from remax.trainer.loop import train as _train

    return _train(config, **objects)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value  # later look-ups skip this function
        return value
    raise AttributeError(f"module 'remax' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = ["__version__", "train", *_LAZY]
