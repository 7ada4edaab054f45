"""--preset: each preset sets exactly its listed values; --config and flags override it;
--help shows it; an unknown name is one line with the closest."""

from __future__ import annotations

import pytest
import yaml

from remax.cli import main, parse_train_args
from remax.config import Config, ConfigError, all_keys, to_dict
from remax.presets import PRESETS, describe, preset_values


def _flat(config: Config) -> dict:
    out = {}
    for key in all_keys():
        value = config
        for part in key.split("."):
            value = getattr(value, part)
        out[key] = value
    return out


AUTHORS = {  # the ReMax authors' scripts (issue 11)
    "algo": "remax", "loss.kl_placement": "token", "loss.kl_estimator": "k1", "loss.kl_coef": 0.05,
    "loss.gamma": 0.99, "loss.advantage_clip": 5.0, "train.lr": 1e-6, "train.adam_betas": (0.9, 0.95),
    "rollout.top_p": 0.9, "train.weight_decay": 0.1, "train.decay_norm_and_bias": False, "train.lr_schedule": "cosine",
    "train.warmup_steps": 0, "train.grad_clip": 1.0, "data.max_prompt_tokens": 256, "rollout.max_new_tokens": 256,
    "rollout.temperature": 1.0, "rollout.top_k": 0,
}
VERL = {  # verl's ReMax
    "algo": "remax", "loss.kl_placement": "reward_to_go", "loss.kl_estimator": "k1", "loss.kl_coef": 0.001,
    "loss.gamma": 1.0, "loss.advantage_clip": None, "loss.policy_loss": "ppo_clip", "loss.clip_eps": 0.2,
    "loss.epochs": 1, "loss.num_minibatches": 4, "loss.agg": "token_mean",
    # verl's actor / rollout defaults, not remax's (issue 15, item 12)
    "train.lr": 1e-6, "train.weight_decay": 0.01, "train.decay_norm_and_bias": True, "train.adam_betas": (0.9, 0.999),
    "train.lr_schedule": "constant", "train.warmup_steps": 0, "train.grad_clip": 1.0,
    "rollout.temperature": 1.0, "rollout.top_p": 1.0, "rollout.top_k": 0,
}


@pytest.mark.parametrize("name, expected", [("remax-authors", AUTHORS), ("remax-verl", VERL)])
def test_preset_sets_exactly_its_values(name, expected):
    assert preset_values(name) == expected
    got, default = _flat(parse_train_args(["--preset", name])), _flat(Config())
    assert {k: got[k] for k in expected} == expected
    assert {k for k in got if got[k] != default[k]} <= set(expected)  # nothing else moves
    assert {k: default[k] for k in got if k not in expected} == {k: got[k] for k in got if k not in expected}


def test_precedence_defaults_preset_config_flags(tmp_path):
    cfg = tmp_path / "run.yaml"
    cfg.write_text(yaml.safe_dump({"loss": {"kl_coef": 0.2}, "train": {"steps": 7}}))
    c = parse_train_args(["--preset", "remax-authors", "--config", str(cfg), "--loss.gamma", "1.0"])
    assert c.loss.kl_coef == 0.2  # the file beats the preset
    assert c.loss.gamma == 1.0  # a flag beats both
    assert c.loss.advantage_clip == 5.0 and c.train.adam_betas == (0.9, 0.95)  # the rest of the preset stays
    assert c.train.steps == 7
    c = parse_train_args(["--preset=remax-verl", "--loss.num_minibatches", "2"])
    assert c.loss.num_minibatches == 2 and c.loss.policy_loss == "ppo_clip"
    assert to_dict(parse_train_args([])) == to_dict(Config())  # no preset: the defaults


def test_help_with_a_preset_shows_what_it_sets(capsys):
    with pytest.raises(SystemExit) as info:
        main(["train", "--preset", "remax-verl", "--help"])
    assert info.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "preset remax-verl sets: algo=remax, loss.kl_placement=reward_to_go" in out
    assert "loss.num_minibatches=4" in out and "(default: 4)" in out  # and the option defaults follow it
    assert describe("remax-authors").startswith("preset remax-authors sets: algo=remax, loss.kl_placement=token")


def test_help_lists_every_algorithm_with_its_paper(capsys):
    from remax.algos import get_algorithm, list_algorithms

    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    for name in list_algorithms():
        assert " ".join(get_algorithm(name).help_line().split()) in out, name
    assert "--preset NAME (remax-authors, remax-verl)" in out


@pytest.mark.parametrize("argv, words", [
    (["--preset", "remax-author"], ["unknown preset 'remax-author'", "did you mean 'remax-authors'?"]),
    (["--preset", "trl"], ["unknown preset 'trl'", "choose one of: remax-authors, remax-verl"]),
    (["--preset"], ["--preset needs a name"]),
])
def test_bad_preset_is_one_line(argv, words, capsys):
    assert main(["train", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and all(w in err for w in words), err
    with pytest.raises(ConfigError):
        parse_train_args(argv)


def test_every_preset_key_is_a_config_option():
    keys = set(all_keys())
    for name, values in PRESETS.items():
        assert set(values) <= keys, (name, set(values) - keys)
