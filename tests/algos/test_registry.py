"""registry: every algorithm spec, duplicates and unknown names, sample checks;
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


ALL = ["remax", "reinforce", "rloo", "grpo", "ppo",
       "reinforce_pp", "reinforce_pp_baseline", "dr_grpo", "dapo", "gspo", "cispo", "batch_mean"]


def test_every_spec():
    assert list_algorithms() == ALL
    table = {
        # name: (baseline, min, max, greedy, critic, loss, kl placement, on_policy)
        "remax": ("greedy", 1, None, True, False, "policy_gradient", "token", True),
        "reinforce": ("none", 1, None, False, False, "policy_gradient", "token", True),
        "rloo": ("leave_one_out", 2, None, False, False, "policy_gradient", "token", True),
        "grpo": ("group_mean_std", 2, None, False, False, "ppo_clip", "loss", False),
        "ppo": ("critic", 1, 1, False, True, "ppo_clip", "token", False),
        "reinforce_pp": ("none", 1, None, False, False, "ppo_clip", "reward_to_go", False),
        "reinforce_pp_baseline": ("group_mean_batch_std", 2, None, False, False, "ppo_clip", "loss", False),
        "dr_grpo": ("group_mean", 2, None, False, False, "ppo_clip", "loss", False),
        "dapo": ("group_mean_std", 2, None, False, False, "ppo_clip", "none", False),
        "gspo": ("group_mean_std", 2, None, False, False, "gspo", "loss", False),
        "cispo": ("group_mean_std", 2, None, False, False, "cispo", "loss", False),
        "batch_mean": ("batch_mean", 1, None, False, False, "policy_gradient", "token", True),
    }
    assert set(table) == set(ALL)
    for name, row in table.items():
        a = get_algorithm(name)
        assert (a.baseline, a.min_samples, a.max_samples, a.needs_greedy, a.needs_critic,
                a.loss, a.default_kl_placement, a.on_policy) == row, name
        assert (a.advantage is None) == (name == "ppo")
        assert a.description and a.paper and name in a.help_line() and a.paper in a.help_line()
    # the data that replaces a branch in the trainer
    spec = {n: get_algorithm(n) for n in ALL}
    assert (spec["dapo"].clip_eps, spec["dapo"].clip_eps_high, spec["dapo"].overlong_buffer) == (0.2, 0.28, 0.2)
    assert spec["dapo"].group_filter is not None and spec["dapo"].default_agg == "token_mean"
    assert (spec["gspo"].clip_eps, spec["gspo"].clip_eps_high) == (3e-4, 4e-4)
    assert (spec["cispo"].clip_eps, spec["cispo"].clip_eps_high) == (1.0, 0.28)
    assert spec["dr_grpo"].default_agg == "seq_mean_token_sum_norm"
    assert spec["reinforce_pp_baseline"].default_kl_estimator == "k2"
    assert [n for n in ALL if spec[n].token_postprocess is not None] == ["reinforce_pp"]
    assert [n for n in ALL if spec[n].group_filter is not None] == ["dapo"]
    assert all(spec[n].clip_eps_high is None for n in ["remax", "grpo", "ppo", "dr_grpo"])


def test_new_spec_advantages_and_hooks():
    r = torch.tensor([1.0, 3.0, 2.0, 2.0])  # two prompts, n = 2
    # Dr. GRPO: r - group mean, no std: [-1, 1, 0, 0]
    torch.testing.assert_close(get_algorithm("dr_grpo").advantage(r, None, 2), torch.tensor([-1.0, 1.0, 0.0, 0.0]))
    # REINFORCE++-baseline: [-1, 1, 0, 0] / unbiased std sqrt(2/3) = +-1.2247449
    torch.testing.assert_close(get_algorithm("reinforce_pp_baseline").advantage(r, None, 2),
                               torch.tensor([-1.2247449, 1.2247449, 0.0, 0.0]), atol=1e-5, rtol=0)
    # REINFORCE++: the raw reward, then the token returns whitened over the batch
    torch.testing.assert_close(get_algorithm("reinforce_pp").advantage(r, None, 2), r)
    g = torch.tensor([[1.0, 3.0], [5.0, 9.0]])
    m = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    # masked entries 1, 3, 5: mean 3, unbiased var ((-2)^2 + 0 + 2^2) / 2 = 4 -> std 2
    out = get_algorithm("reinforce_pp").token_postprocess(g, m, algos.masked_whiten)
    torch.testing.assert_close(out, torch.tensor([[-1.0, 0.0], [1.0, 0.0]]), atol=1e-6, rtol=0)
    # DAPO's filter: group 2 (2, 2) has no signal
    assert get_algorithm("dapo").group_filter(r, 2).tolist() == [True, False]
    # DAPO, GSPO and CISPO take GRPO's group-normalised advantages
    for name in ("dapo", "gspo", "cispo"):
        torch.testing.assert_close(get_algorithm(name).advantage(r, None, 2), get_algorithm("grpo").advantage(r, None, 2))


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


def test_batch_mean_advantages_by_hand():
    spec = get_algorithm("batch_mean")
    assert spec.batch_advantage  # the mean is the global batch's under DDP
    # n = 1, four prompts: mean (1 + 2 + 4 + 1) / 4 = 2 -> [-1, 0, 2, -1]
    r = torch.tensor([1.0, 2.0, 4.0, 1.0])
    torch.testing.assert_close(spec.advantage(r, None, 1), torch.tensor([-1.0, 0.0, 2.0, -1.0]))
    # groups are ignored: n = 2 gives the same numbers (RLOO would give [-1, 1, 3, -3])
    torch.testing.assert_close(spec.advantage(r, None, 2), torch.tensor([-1.0, 0.0, 2.0, -1.0]))
    # 0/1 rewards, 1 right of 4: the right one gets 1 - 1/4, each wrong one -1/4
    torch.testing.assert_close(spec.advantage(torch.tensor([0.0, 1.0, 0.0, 0.0]), None, 1),
                               torch.tensor([-0.25, 0.75, -0.25, -0.25]))
    # a constant offset added to every reward does not move the advantages
    torch.testing.assert_close(spec.advantage(r + 10.0, None, 1), spec.advantage(r, None, 1))
    spec.check_samples(1)  # one sample per prompt is its point


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
    with pytest.raises(ValueError, match="unknown algorithm 'dpo'; choose one of: remax, reinforce, rloo, grpo, ppo, reinforce_pp,"):
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
