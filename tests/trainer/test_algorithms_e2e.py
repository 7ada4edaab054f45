"""`remax train` end to end on a tiny model for the 2025-26 algorithms, a made-up
algorithm registered from this module, and the --preset recipes; the trainer never
names an algorithm."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

import remax.trainer.loop as loop
from remax.algos import ALGORITHMS, Algorithm, get_algorithm, list_algorithms, register_algorithm
from remax.cli import main

NEW = ["reinforce_pp", "reinforce_pp_baseline", "dr_grpo", "dapo", "gspo", "cispo"]


def _metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def _changed(out: Path, start: Path) -> float:
    trained = AutoModelForCausalLM.from_pretrained(out / "final")
    ref = AutoModelForCausalLM.from_pretrained(start)
    changed = [not torch.equal(a, b) for a, b in zip(trained.parameters(), ref.parameters())]
    return sum(changed) / len(changed)


@pytest.mark.parametrize("algo", NEW)
def test_train_new_algorithm(algo, tmp_path, make_args, policy_dir):
    out = tmp_path / "run"
    args = make_args(out, algo) + ["--log.plot", "False", "--loss.num_minibatches", "2"]
    assert main(["train", *args]) == 0
    lines = _metrics(out)
    assert [m["step"] for m in lines] == [1, 2]
    for m in lines:
        assert all(v == v for v in m.values()), m  # no NaN
        assert {"loss/policy", "kl/mean", "rollout/reward_mean", "grad/policy_norm"} <= set(m)
        assert ("loss/kl" in m) == (get_algorithm(algo).default_kl_placement == "loss")
        assert ("ppo/clip_frac" in m) == (get_algorithm(algo).loss == "ppo_clip")
        assert ("rollout/groups_kept" in m) == (algo == "dapo")
    if algo == "dapo":  # dynamic sampling accounts for every group it drew
        for m in lines:
            drawn = m["rollout/prompts_drawn"]
            assert drawn == 2 * (1 + m["rollout/refill_batches"])
            assert m["rollout/groups_kept"] + m["rollout/groups_dropped"] <= drawn
    assert _changed(out, policy_dir) > 0.5


def test_every_registered_algorithm_has_an_end_to_end_test():
    from .test_train_e2e import test_train_every_algorithm

    marks = [m for m in test_train_every_algorithm.pytestmark if m.name == "parametrize"]
    old = list(marks[0].args[1])
    assert sorted(old + NEW) == sorted(list_algorithms())


def _median_advantage(rewards, greedy_rewards, n):
    """A made-up baseline: the group's median reward."""
    grouped = rewards.reshape(-1, n)  # (B, n)
    return (grouped - grouped.median(-1, keepdim=True).values).reshape(-1)


def test_a_spec_registered_here_trains_with_no_trainer_change(tmp_path, make_args, policy_dir):
    spec = Algorithm(
        name="median_baseline", baseline="group_mean", min_samples=3, max_samples=None,
        needs_greedy=False, needs_critic=False, loss="cispo", default_kl_placement="token",
        advantage=_median_advantage, description="REINFORCE minus the group median", paper="this test",
    )
    register_algorithm(spec)
    try:
        out = tmp_path / "run"
        # a reward that differs between any two texts, so no group ties at any seed; no weight decay,
        # so only the spec's gradient can move a weight
        (tmp_path / "hash_reward.py").write_text(
            "def score(prompts, responses):\n    return [(sum(map(ord, r)) % 101) / 100 for r in responses]\n")
        args = make_args(out, "reinforce", steps=1) + ["--algo", "median_baseline", "--rollout.n_samples", "3",
                                                        "--log.plot", "False", "--train.weight_decay", "0"]
        args[args.index("--reward.function") + 1] = f"{tmp_path / 'hash_reward.py'}:score"
        assert main(["train", *args]) == 0
        (m,) = _metrics(out)
        assert m["loss/policy"] == m["loss/policy"] and m["adv/std"] > 0 and m["grad/policy_norm"] > 0
        assert _changed(out, policy_dir) > 0.9  # the update reached (nearly) every weight tensor
        from remax.cli import train_description

        assert "median_baseline: REINFORCE minus the group median (this test)" in train_description()
    finally:
        ALGORITHMS.remove("median_baseline")
    assert "median_baseline" not in list_algorithms()


def test_the_loop_never_names_an_algorithm():
    names = set(list_algorithms()) | {"ppo_clip", "policy_gradient", "gspo", "cispo"}
    phases = sorted((Path(loop.__file__).parent / "phases").glob("*.py"))
    assert len(phases) >= 5  # rollout, score, prepare, update, persist
    for path in [Path(loop.__file__), *phases]:
        tree = ast.parse(path.read_text())
        literals = {n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)}
        assert not literals & names, (path.name, literals & names)


def test_preset_remax_verl_trains_with_ppo_clip_minibatches(tmp_path, make_args):
    out = tmp_path / "run"
    args = make_args(out, steps=1) + ["--preset", "remax-verl", "--train.batch_size", "4", "--log.plot", "False"]
    assert main(["train", *args]) == 0
    (m,) = _metrics(out)
    assert "ppo/clip_frac" in m and "rollout/baseline_reward_mean" in m  # PPO clip on ReMax's greedy baseline
    from remax.config import load_config

    c = load_config(out / "config.yaml")
    assert (c.loss.num_minibatches, c.loss.kl_coef, c.loss.kl_placement) == (4, 0.001, "reward_to_go")



def test_readme_lists_every_algorithm_with_its_paper():
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    for name in list_algorithms():
        spec = get_algorithm(name)
        assert f"| `{name}` | {spec.description} | {spec.paper} |" in readme, name
