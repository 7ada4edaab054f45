"""Checks a Config against the chosen algorithm before anything is loaded, so a bad
setting fails in a second with one line that names the fix."""

from __future__ import annotations

from typing import Any

from remax.config import Config, ConfigError


def resolve_kl(config: Config, spec: Any) -> tuple[str, str]:
    """'auto' placement -> the algorithm's default; 'auto' estimator -> k3 for a KL loss, else k1."""
    placement = config.loss.kl_placement
    if placement == "auto":
        placement = spec.default_kl_placement
    estimator = config.loss.kl_estimator
    if estimator == "auto":
        estimator = "k3" if placement == "loss" else "k1"
    return placement, estimator


def validate_config(config: Config, spec: Any, *, have_policy: bool = False, have_rows: bool = False) -> None:
    c = config
    try:
        spec.check_samples(c.rollout.n_samples)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    if not have_policy and not c.model.policy:
        raise ConfigError("no policy model given; pass --model.policy NAME_OR_PATH (or model.policy in the YAML)")
    if not have_rows and not c.data.train_file:
        raise ConfigError("no prompts given; pass --data.train_file prompts.jsonl (one {\"prompt\": ...} per line)")
    checks = [
        (c.train.steps >= 1, "--train.steps must be at least 1"),
        (c.train.batch_size >= 1, "--train.batch_size must be at least 1"),
        (c.train.micro_batch_size >= 1, "--train.micro_batch_size must be at least 1"),
        (c.rollout.temperature > 0, "--rollout.temperature must be > 0 (the greedy baseline is built in; do not set 0)"),
        (0 < c.rollout.top_p <= 1, "--rollout.top_p must be in (0, 1]"),
        (c.rollout.top_k >= 0, "--rollout.top_k must be >= 0 (0 turns it off)"),
        (c.rollout.max_new_tokens >= 1, "--rollout.max_new_tokens must be at least 1"),
        (c.loss.epochs >= 1 and c.loss.num_minibatches >= 1, "--loss.epochs and --loss.num_minibatches must be >= 1"),
        (c.loss.num_minibatches <= c.train.batch_size * c.rollout.n_samples,
         "--loss.num_minibatches exceeds the rows per step (batch_size x n_samples); lower it"),
        (c.loss.advantage_clip is None or c.loss.advantage_clip > 0, "--loss.advantage_clip must be > 0 or None"),
        (c.loss.kl_coef >= 0, "--loss.kl_coef must be >= 0"),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)
    placement, _ = resolve_kl(c, spec)
    if placement == "reward_to_go" and c.loss.gamma != 1.0:
        raise ConfigError("kl_placement reward_to_go has no discount; pass --loss.gamma 1.0 or --loss.kl_placement token")
