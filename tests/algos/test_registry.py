"""registry: the five algorithm specs, duplicates and unknown names, sample checks;
and that remax.algos imports torch only."""

import ast
import dataclasses
import pathlib
import subprocess
import sys

import pytest
import torch

import remax.algos as algos
from remax.algos import (
    AGGREGATIONS,
    KL_ESTIMATORS,
    Algorithm,
    get_algorithm,
    list_algorithms,
    register_algorithm,
)
from remax.algos import registry as registry_module
from remax.algos._registry import Registry


def test_the_five_specs():
    assert list_algorithms() == ["remax", "reinforce", "rloo", "grpo", "ppo"]
    table = {
        # name: (baseline, min, max, greedy, critic, loss, kl placement, on_policy)
        "remax": ("greedy", 1, None, True, False, "policy_gradient", "token", True),
        "reinforce": ("none", 1, None, False, False, "policy_gradient", "token", True),
        "rloo": ("leave_one_out", 2, None, False, False, "policy_gradient", "token", True),
        "grpo": ("group_mean_std", 2, None, False, False, "ppo_clip", "loss", False),
        "ppo": ("critic", 1, 1, False, True, "ppo_clip", "token", False),
    }
    for name, row in table.items():
        a = get_algorithm(name)
        assert (a.baseline, a.min_samples, a.max_samples, a.needs_greedy, a.needs_critic,
                a.loss, a.default_kl_placement, a.on_policy) == row, name
        assert (a.advantage is None) == (name == "ppo")
        assert a.description


def test_spec_advantages():
    r = torch.tensor([1.0, 2.0, 4.0, 0.0])
    greedy = torch.tensor([2.0, 1.0])
    torch.testing.assert_close(get_algorithm("remax").advantage(r, greedy, 2),
                               torch.tensor([1 - 2, 2 - 2, 4 - 1, 0 - 1.0]))
    torch.testing.assert_close(get_algorithm("reinforce").advantage(r, None, 2), r)
    torch.testing.assert_close(get_algorithm("rloo").advantage(r, None, 2),
                               torch.tensor([1 - 2, 2 - 1, 4 - 0, 0 - 4.0]))
    # n = 2: group std = |a - b| / sqrt(2), so the advantages are +-1/sqrt(2)
    torch.testing.assert_close(get_algorithm("grpo").advantage(r, None, 2),
                               torch.tensor([-1, 1, 1, -1.0]) * 0.5**0.5, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="greedy"):
        get_algorithm("remax").advantage(r, None, 2)


def test_check_samples():
    get_algorithm("remax").check_samples(1)
    get_algorithm("remax").check_samples(8)
    get_algorithm("rloo").check_samples(2)
    with pytest.raises(ValueError, match="rloo needs n_samples >= 2, got 1; pass --rollout.n_samples 2"):
        get_algorithm("rloo").check_samples(1)
    with pytest.raises(ValueError, match="grpo needs n_samples >= 2"):
        get_algorithm("grpo").check_samples(1)
    with pytest.raises(ValueError, match="ppo needs n_samples == 1, got 4; pass --rollout.n_samples 1"):
        get_algorithm("ppo").check_samples(4)


def test_duplicate_and_unknown_names():
    with pytest.raises(ValueError, match="'remax' is already registered"):
        register_algorithm(dataclasses.replace(get_algorithm("remax")))
    with pytest.raises(ValueError, match="unknown algorithm 'dpo'; choose one of: remax, reinforce, rloo, grpo, ppo"):
        get_algorithm("dpo")
    with pytest.raises(ValueError, match="already registered"):
        KL_ESTIMATORS.register("k1", lambda d: d)
    with pytest.raises(ValueError, match="already registered"):
        AGGREGATIONS.register("token_mean", lambda *a: 0)


def test_register_new_algorithm(monkeypatch):
    spec = dataclasses.replace(get_algorithm("remax"), name="remax_n4", min_samples=4)
    monkeypatch.setattr(registry_module, "ALGORITHMS", Registry("algorithm"))  # a clean table
    assert register_algorithm(spec) is spec
    assert get_algorithm("remax_n4").min_samples == 4
    assert list_algorithms() == ["remax_n4"]
    with pytest.raises(ValueError, match="remax_n4 needs n_samples >= 4"):
        spec.check_samples(2)


def test_spec_is_frozen_and_validated():
    with pytest.raises(dataclasses.FrozenInstanceError):
        get_algorithm("remax").min_samples = 2
    with pytest.raises(ValueError, match="baseline 'median'"):
        dataclasses.replace(get_algorithm("remax"), baseline="median")
    with pytest.raises(ValueError, match="default_kl_placement 'end'"):
        dataclasses.replace(get_algorithm("remax"), default_kl_placement="end")
    with pytest.raises(ValueError, match="needs an advantage function"):
        dataclasses.replace(get_algorithm("remax"), advantage=None)
    assert isinstance(get_algorithm("ppo"), Algorithm)


def test_import_does_not_pull_transformers():
    code = "import remax.algos, sys; assert 'transformers' not in sys.modules, 'transformers imported'"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr


def test_algos_sources_import_torch_and_stdlib_only():
    allowed = {"torch", "__future__", "typing", "dataclasses", "math", "collections"}
    for path in pathlib.Path(algos.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module]
            else:
                continue  # relative imports stay inside remax.algos
            for name in names:
                assert name.split(".")[0] in allowed, f"{path.name} imports {name}"
                assert not name.startswith("torch.distributed"), f"{path.name} imports {name}"
