"""Reward functions by parameter name (issue 16): remax's, TRL's and verl's signatures, as
they are written in those projects, and the columns each needs found at load."""

from __future__ import annotations

import pytest

from remax.rewards.python import PythonReward, verl_reward, wrap_function

P, R = ["2+2=", "3+3="], ["4", "7"]
ROWS = {"answer": ["4", "6"], "other": ["x", "y"]}


def scores(fn, **row):
    return PythonReward(fn)(P, R, **row).tolist()


def test_remax_positional_any_names():
    assert scores(lambda p, r: [len(x) for x in r]) == [1.0, 1.0]
    assert scores(lambda prompts, responses, answer: [float(a == b) for a, b in zip(responses, answer)],
                  **ROWS) == [1.0, 0.0]


def test_trl_completions_and_kwargs_get_everything_trl_passes():
    seen = {}

    def reward(completions, **kwargs):
        seen.update(kwargs)
        return [float(c == a) for c, a in zip(completions, kwargs["answer"])]

    assert scores(reward, **ROWS) == [1.0, 0.0]
    assert seen["prompts"] == P and seen["other"] == ["x", "y"] and seen["trainer_state"].global_step == 0
    assert "completion_ids" not in seen  # no tokenizer given: not passed to **kwargs


def test_trl_full_signature_with_tokenizer_and_step(tokenizer):
    def reward(prompts, completions, completion_ids, trainer_state, answer, **kwargs):
        assert prompts == P and completions == R and "other" in kwargs
        assert completion_ids == [tokenizer(c, add_special_tokens=False)["input_ids"] for c in completions]
        return [float(trainer_state.global_step)] * len(prompts)

    fn = PythonReward(reward)
    fn.tokenizer = tokenizer
    fn.at_step(7)
    assert fn(P, R, **ROWS).tolist() == [7.0, 7.0]


def test_trl_keyword_columns_only_get_what_they_name():
    def reward(completions, answer):
        return [float(c == a) for c, a in zip(completions, answer)]

    assert scores(reward, **ROWS) == [1.0, 0.0]  # 'other' is not passed


def test_verl_compute_score_is_called_per_sample():
    calls = []

    def compute_score(data_source, solution_str, ground_truth, extra_info=None):
        calls.append((data_source, solution_str, ground_truth, extra_info))
        return {"score": float(solution_str == ground_truth), "acc": True}

    rows = {"data_source": ["gsm8k", "gsm8k"], "reward_model": [{"ground_truth": "4"}, {"ground_truth": "6"}],
            "extra_info": [{"i": 0}, {"i": 1}]}
    assert scores(compute_score, **rows) == [1.0, 0.0]
    assert calls[1] == ("gsm8k", "7", "6", {"i": 1})
    # a flat ground_truth column works too, and the explicit adapter is the same thing
    assert verl_reward(compute_score)(P, R, data_source=["a", "b"], ground_truth=["4", "7"]).tolist() == [1.0, 1.0]


@pytest.mark.parametrize("fn, columns, missing", [
    (lambda prompts, responses, answer: [0.0] * len(prompts), ["other"], "['answer']"),
    (lambda completions, answer, **kw: [0.0] * len(completions), [], "['answer']"),
    (lambda data_source, solution_str, ground_truth, extra_info=None: 0.0, ["data_source"], "['ground_truth']"),
    (lambda data_source, solution_str, ground_truth: 0.0, ["ground_truth"], "['data_source']"),
])
def test_missing_columns_are_known_from_the_signature(fn, columns, missing):
    with pytest.raises(ValueError, match=rf"needs column\(s\) {missing.replace('[', '.').replace(']', '.')}"):
        PythonReward(fn).check_columns(columns)


def test_verl_reward_model_column_stands_for_ground_truth():
    PythonReward(lambda data_source, solution_str, ground_truth: 0.0).check_columns(["data_source", "reward_model"])


def test_wrap_function_leaves_reward_objects_alone():
    class Scorer:
        def __call__(self, prompts, responses, **row):
            return [0.0] * len(prompts)

    s = Scorer()
    assert wrap_function(s) is s
    assert isinstance(wrap_function(lambda p, r: [0.0]), PythonReward)
    wrapped = PythonReward(lambda p, r: [0.0])
    assert wrap_function(wrapped) is wrapped


def test_trainer_takes_a_trl_reward_from_python(tokenizer, tiny_model, tmp_path):
    from remax.config import Config
    from remax.trainer import Trainer

    cfg = Config(output_dir=str(tmp_path / "run"))
    cfg.rollout.max_new_tokens = 3
    cfg.train.steps, cfg.train.batch_size, cfg.log.progress = 1, 2, False
    rows = [{"prompt": "Hi", "answer": "x"}, {"prompt": "Love is", "answer": "y"}]
    history = Trainer(cfg, policy=tiny_model, tokenizer=tokenizer, rows=rows,
                      reward_fn=lambda completions, answer, **kw: [float(len(c)) for c in completions]).train()
    assert len(history) == 1


def test_trainer_reports_a_missing_column_at_load(tokenizer, tiny_model, tmp_path):
    from remax.config import Config, ConfigError
    from remax.trainer import Trainer

    cfg = Config(output_dir=str(tmp_path / "run"))
    cfg.rollout.max_new_tokens = 3
    with pytest.raises(ConfigError, match=r"needs column\(s\) \['solution'\]"):
        Trainer(cfg, policy=tiny_model, tokenizer=tokenizer, rows=[{"prompt": "Hi"}] * 8,
                reward_fn=lambda prompts, responses, solution: [0.0] * len(prompts))
    assert not (tmp_path / "run").exists()
