"""Every spec x option pair the trainer ignores is refused or warned, naming the option
(issue 15, item 8). Parametrised over the registry, so a new spec is covered.

Empirical, not a copy of the rules: for each algorithm and each option set away from its
default, either validation refuses it (ConfigError) or warns naming it, or one training
step with it ends with other weights than the step without it. An option that is
accepted silently and changes nothing fails the test. The reference model differs from
the policy (at policy == reference every KL estimator and its gradient are 0, so KL
options would look ignored), and 3 of 8 prompts have a constant reward (DAPO drops
their groups, so its refill limit acts). Data-dependent no-ops (an overlong penalty when
every response has the same length) are not options a spec ignores and are left out."""

from __future__ import annotations

import warnings

import pytest
import torch

from remax.algos import list_algorithms
from remax.config import Config, ConfigError

PROMPTS = ["The Lord is", "And God said", "Blessed are the", "Love is", "In the beginning", "O give thanks",
           "He maketh me", "The wicked are"]
CONSTANT = {"And God said", "Love is", "He maketh me"}
CANDIDATES = {  # a value; a tuple: the first that differs from what the spec resolves the option to
    "loss.kl_coef": 0.5, "loss.kl_estimator": ("k2", "k3"), "loss.kl_placement": ("none", "token"), "loss.gamma": 0.8,
    "loss.advantage_clip": 0.05, "loss.agg": ("seq_mean_token_sum", "token_mean"), "loss.clip_eps": 0.01,
    "loss.clip_eps_high": 0.01,
    "loss.epochs": 2, "loss.num_minibatches": 2, "loss.lam": 0.5, "loss.value_clip_eps": 0.01, "loss.vf_coef": 0.3,
    "loss.whiten_advantages": False, "train.critic_lr": 1e-2, "loss.refill_max_batches": 0,
}


def reward(prompts, responses, **_):
    return [0.5 if p in CONSTANT else (sum(map(ord, r)) % 101) / 101 for p, r in zip(prompts, responses)]


def _config(algo, tmp_path, key=None, value=None):
    from remax.algos import get_algorithm

    spec = get_algorithm(algo)
    c = Config(algo=algo, output_dir=str(tmp_path / f"{algo}-{key}"))
    c.model.device = "cpu"
    c.rollout.max_new_tokens = 4
    c.rollout.n_samples = 1 if spec.max_samples == 1 else 2
    c.train.batch_size, c.train.micro_batch_size, c.train.steps = 4, 8, 1
    c.train.lr, c.train.lr_schedule, c.train.warmup_steps = 3e-3, "constant", 0
    c.log.progress = c.log.plot = False
    if key is not None:
        section, leaf = key.split(".")
        setattr(getattr(c, section), leaf, value)
    return c


def _differing(algo, tmp_path, key, values):
    """The candidate value unlike the one the spec resolves `key` to (kl / agg defaults)."""
    if not isinstance(values, tuple):
        return values
    from remax.algos import get_algorithm
    from remax.trainer.validate import resolve_kl, resolve_loss

    c, spec = _config(algo, tmp_path), get_algorithm(algo)
    placement, estimator = resolve_kl(c, spec)
    resolved = {"loss.kl_estimator": estimator, "loss.kl_placement": placement,
                "loss.agg": resolve_loss(c, spec)[1].agg}[key]
    return next(v for v in values if v != resolved)


def _step_weights(config, tokenizer):
    from remax.models import make_reference
    from remax.models.tiny import tiny_causal_lm
    from remax.trainer import Trainer

    torch.manual_seed(0)
    t = Trainer(config, policy=tiny_causal_lm(tokenizer, seed=0), tokenizer=tokenizer, reward_fn=reward,
                rows=[{"prompt": p} for p in PROMPTS])
    t.reference = make_reference(tiny_causal_lm(tokenizer, seed=1))
    t.step()
    models = [t.policy] + ([t.critic] if t.critic is not None else [])
    return torch.cat([p.detach().flatten() for m in models for p in m.parameters()])


@pytest.mark.parametrize("algo", list_algorithms())
def test_every_option_a_spec_ignores_is_refused_or_warned(algo, tokenizer, tmp_path):
    base = _step_weights(_config(algo, tmp_path), tokenizer)
    silent_noops = []
    for key, value in CANDIDATES.items():
        value = _differing(algo, tmp_path, key, value)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                weights = _step_weights(_config(algo, tmp_path, key, value), tokenizer)
            except ConfigError as err:
                assert f"--{key}" in str(err) or key.split(".")[1] in str(err), str(err)  # names the option
                continue
        if any(f"--{key}" in str(w.message) for w in caught):
            continue  # warned, naming it
        if torch.equal(weights, base):
            silent_noops.append(f"{key}={value}")
    assert not silent_noops, f"{algo}: accepted silently and changed nothing: {silent_noops}"


@pytest.mark.parametrize("algo, flags, option", [
    ("remax", {"loss.kl_placement": "loss", "loss.kl_estimator": "k1"}, "kl_estimator k1"),
    ("dapo", {"loss.kl_coef": 0.1}, "--loss.kl_coef"),
    ("ppo", {"loss.advantage_clip": 5.0}, "--loss.advantage_clip"),
    ("remax", {"loss.epochs": 2}, "--loss.epochs"),
    ("grpo", {"loss.clip_eps": 0.1}, "--loss.clip_eps"),
])
def test_the_issue_examples_are_refused_in_one_line(algo, flags, option, tmp_path):
    from remax.algos import get_algorithm
    from remax.trainer.validate import validate_config

    c = _config(algo, tmp_path)
    for key, value in flags.items():
        section, leaf = key.split(".")
        setattr(getattr(c, section), leaf, value)
    with pytest.raises(ConfigError) as err:
        validate_config(c, get_algorithm(algo), have_policy=True, have_rows=True)
    assert option in str(err.value) and "\n" not in str(err.value)


def test_a_critic_option_left_for_another_algorithm_is_warned(tmp_path):
    from remax.algos import get_algorithm
    from remax.trainer.validate import validate_config

    c = _config("remax", tmp_path, "loss.lam", 0.5)
    with pytest.warns(UserWarning, match="--loss.lam 0.5 does nothing with --algo remax"):
        validate_config(c, get_algorithm("remax"), have_policy=True, have_rows=True)
