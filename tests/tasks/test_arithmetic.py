"""The arithmetic task (remax.tasks.arithmetic): problems, the exact-match reward, the
zero-advantage share of ReMax's right samples, and the task's pretraining on a tiny scale."""

from __future__ import annotations

import pytest
import torch

from remax.algos import get_algorithm
from remax.tasks.arithmetic import accuracy, exact_match, parse_answer, pretrain_arithmetic_model, problem, problems
from remax.trainer.diagnostics import baseline_diagnostics


def test_problems_are_disjoint_and_complete():
    p = problems(max_operand=9, n_train=30, n_heldout=20, seed=1)
    assert problem(12, 35) == ("12+35=", "47")
    assert (len(p.heldout), len(p.train), len(p.pretrain)) == (20, 30, 50)  # 10 x 10 pairs
    prompts = [q for part in (p.pretrain, p.train, p.heldout) for q, _ in part]
    assert len(set(prompts)) == 100
    assert all(int(a) == sum(map(int, q[:-1].split("+"))) for q, a in p.train)
    assert p.rows("heldout")[0] == {"prompt": p.heldout[0][0], "answer": p.heldout[0][1]}
    assert problems(max_operand=9, n_train=30, n_heldout=20, seed=1) == p  # deterministic
    with pytest.raises(ValueError, match="no pretraining problems"):
        problems(max_operand=4, n_train=20, n_heldout=5)


def test_exact_match():
    assert exact_match(["1+2="] * 5, ["3", " 3 ", "3+0", "03", ""], ["3"] * 5) == [1.0, 1.0, 0.0, 0.0, 0.0]
    assert exact_match([], ["47"], [47]) == [1.0]  # an int answer column
    assert parse_answer("47\n") == "47"
    with pytest.raises(ValueError, match="'answer' column"):
        exact_match(["1+2="], ["3"], [])


def test_right_samples_with_a_right_greedy_answer_have_zero_advantage():
    # 4 prompts, n = 2; greedy right on prompts 0 and 1, wrong on 2 and 3
    r = torch.tensor([1.0, 0.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0])
    b = torch.tensor([1.0, 1.0, 0.0, 0.0])
    adv = get_algorithm("remax").advantage(r, b, 2)
    assert adv.tolist() == [0.0, -1.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0]
    m = baseline_diagnostics(r, b.repeat_interleave(2))
    # 4 right samples of 8, 3 of them beside a right greedy answer (advantage 0): 3/4 of the right ones
    assert (m["baseline/right_frac"], m["baseline/right_tied_frac"]) == (4 / 8, 3 / 8)
    none = baseline_diagnostics(torch.zeros(4), torch.ones(4))  # none right: the keys are still there
    assert (none["baseline/right_frac"], none["baseline/right_tied_frac"]) == (0.0, 0.0)


def test_pretraining_stops_at_the_target_and_is_cached(tmp_path):
    p = problems(max_operand=9, n_train=20, n_heldout=20)
    logs = []
    model, tok, info = pretrain_arithmetic_model(str(tmp_path / "cache"), p, max_steps=20, check_every=10,
                                                 target=0.0, log=logs.append,
                                                 model_kwargs=dict(n_layer=1, n_embd=16, n_head=2))
    assert info["steps"] == 10 and not info["loaded_from_cache"]  # accuracy >= 0 at the first check
    assert len(tok) == 258 and tok.tokenize("12+35=") == list("12+35=")  # one token per character
    assert 0.0 <= accuracy(model, tok, p.heldout) <= 1.0
    _, _, again = pretrain_arithmetic_model(str(tmp_path / "cache"), p, max_steps=20, check_every=10, target=0.0,
                                            log=logs.append, model_kwargs=dict(n_layer=1, n_embd=16, n_head=2))
    assert again["loaded_from_cache"] and again["steps"] == 10
    _, _, full = pretrain_arithmetic_model(None, p, max_steps=20, check_every=10, target=1.01, log=logs.append,
                                           model_kwargs=dict(n_layer=1, n_embd=16, n_head=2))
    assert full["steps"] == 20  # an unreachable target: the whole schedule


@pytest.mark.slow
def test_the_rlvr_example_trains_with_the_command_it_prints(tmp_path):
    import json
    import shlex

    from remax.cli import main
    from remax.tasks.arithmetic import prepare

    cmd = prepare(str(tmp_path / "ex"), max_steps=10, log=lambda m: None,
                  model_kwargs=dict(n_layer=1, n_embd=16, n_head=2))
    rows = [json.loads(x) for x in (tmp_path / "ex" / "train.jsonl").read_text().splitlines()]
    assert len(rows) == 2000 and set(rows[0]) == {"prompt", "answer"}
    argv = shlex.split(cmd)[1:] + ["--train.steps", "2", "--train.batch_size", "4", "--train.micro_batch_size", "4",
                                   "--log.plot", "False"]
    assert argv[0] == "train" and main(argv) == 0
    metrics = [json.loads(x) for x in (tmp_path / "ex" / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(metrics) == 2
    for m in metrics:  # exact match: a 0/1 reward, and ReMax's right / tied shares are logged
        assert 0.0 <= m["rollout/reward_mean"] <= 1.0
        assert 0.0 <= m["baseline/right_tied_frac"] <= m["baseline/right_frac"] <= 1.0
