"""Named presets: config values that reproduce another implementation's ReMax exactly.

A preset is just config values (dotted keys of `remax.config.Config`), nothing else.
`remax train --preset NAME` applies them with this precedence, lowest first:

    defaults  <  --preset NAME  <  --config run.yaml  <  --section.field flags

so a YAML file or a flag always overrides a preset (what TRL users expect of a recipe).
`remax train --preset NAME --help` lists the values it sets, and shows them as the
defaults of the options.

- remax-authors: the ReMax authors' scripts (Li et al., arXiv 2310.10505; their public
  code, OPT-1.3B / Llama2-7B: liziniu/ReMax, step3_rlhf_finetuning/training_scripts/
  llama2/run_llama2_7b.sh and opt/run_opt_1.3b.sh for the flags, rlhf_engine.py for the
  optimizer, remax_trainer.py for the return): per-token k1 KL in the return with beta
  0.05, discount 0.99 (their loop discounts the last token once), advantage r - b clipped
  to 5, lr 1e-6, weight decay 0.1 (biases and norm weights undecayed: utils/utils.py's
  parameter groups), Adam betas (0.9, 0.95) (rlhf_engine.py), cosine schedule without
  warmup, gradient clipping 1.0 (utils/ds_utils.py), prompts and answers of 256 tokens,
  temperature 1.0 and top-p 0.9 (ALGORITHM.md's reference points).
- remax-verl: verl's ReMax (`algorithm.adv_estimator=remax`; volcengine/verl,
  verl/trainer/config/ppo_trainer.yaml and its actor/actor.yaml, optim/fsdp.yaml and
  rollout/rollout.yaml defaults; examples/remax_trainer/ for the KL): k1 KL in the reward
  with coefficient 0.001 (`kl_ctrl.kl_coef`), the return-to-go of the per-token rewards
  minus the greedy response's raw score (no clip, no discount), the PPO-clip actor loss
  (clip 0.2) over 4 minibatches of one epoch, aggregated token-mean; actor optimizer
  lr 1e-6, weight decay 0.01 on every parameter (one AdamW group), betas (0.9, 0.999),
  constant lr (warmup_style constant, no warmup), grad clip 1.0; rollout temperature 1.0,
  top_p 1.0, top_k off (-1).
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

from remax.config import ConfigError, closest

PRESETS: dict[str, dict[str, Any]] = {
    "remax-authors": {
        "algo": "remax",
        "loss.kl_placement": "token",
        "loss.kl_estimator": "k1",
        "loss.kl_coef": 0.05,
        "loss.gamma": 0.99,
        "loss.advantage_clip": 5.0,
        "train.lr": 1e-6,
        "train.weight_decay": 0.1,
        "train.decay_norm_and_bias": False,
        "train.adam_betas": (0.9, 0.95),
        "train.lr_schedule": "cosine",
        "train.warmup_steps": 0,
        "train.grad_clip": 1.0,
        "data.max_prompt_tokens": 256,
        "rollout.max_new_tokens": 256,
        "rollout.temperature": 1.0,
        "rollout.top_p": 0.9,
        "rollout.top_k": 0,
    },
    "remax-verl": {
        "algo": "remax",
        "loss.kl_placement": "reward_to_go",
        "loss.kl_estimator": "k1",
        "loss.kl_coef": 0.001,
        "loss.gamma": 1.0,
        "loss.advantage_clip": None,
        "loss.policy_loss": "ppo_clip",
        "loss.clip_eps": 0.2,
        "loss.epochs": 1,
        "loss.num_minibatches": 4,
        "loss.agg": "token_mean",
        "train.lr": 1e-6,
        "train.weight_decay": 0.01,
        "train.decay_norm_and_bias": True,
        "train.adam_betas": (0.9, 0.999),
        "train.lr_schedule": "constant",
        "train.warmup_steps": 0,
        "train.grad_clip": 1.0,
        "rollout.temperature": 1.0,
        "rollout.top_p": 1.0,
        "rollout.top_k": 0,
    },
}


def preset_values(name: str) -> dict[str, Any]:
    """The dotted key -> value table of preset `name`; ConfigError with the closest name."""
    if name not in PRESETS:
        near = closest(name, PRESETS)
        hint = f"did you mean {near!r}?" if near else f"choose one of: {', '.join(PRESETS)}"
        raise ConfigError(f"--preset: unknown preset {name!r}; {hint}")
    return dict(PRESETS[name])


def preset_base(name: Optional[str]) -> dict[str, Any]:
    """Preset `name` as the nested dict that `load_config(path, base=...)` starts from."""
    nested: dict[str, Any] = {}
    for key, value in (preset_values(name) if name else {}).items():
        *sections, leaf = key.split(".")
        node = nested
        for part in sections:
            node = node.setdefault(part, {})
        node[leaf] = list(value) if isinstance(value, tuple) else value
    return nested


def describe(name: str) -> str:
    """One line for `--help`: what preset `name` sets."""
    sets = ", ".join(f"{k}={_show(v)}" for k, v in preset_values(name).items())
    return f"preset {name} sets: {sets} (a --config file and flags override them)"


def _show(value: Any) -> str:
    if isinstance(value, tuple):
        return " ".join(str(v) for v in value)
    return str(value)


def split_preset_flag(args: Sequence[str]) -> tuple[Optional[str], list[str]]:
    """Take `--preset NAME` (or `--preset=NAME`) out of the arguments."""
    rest, name, it = [], None, iter(args)
    for a in it:
        if a == "--preset":
            name = next(it, None)
            if name is None or name.startswith("--"):
                raise ConfigError(f"--preset needs a name; choose one of: {', '.join(PRESETS)}")
        elif a.startswith("--preset="):
            name = a.split("=", 1)[1]
        else:
            rest.append(a)
    if name is not None:
        preset_values(name)  # an unknown name: one line, now
    return name, rest
