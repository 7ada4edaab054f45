"""PythonReward and load_callable: user functions, columns by name, clear errors."""

from __future__ import annotations

import textwrap
import uuid

import pytest
import torch

from remax.rewards import PythonReward, load_callable

REWARD_SOURCE = """
def exact_match(prompts, responses, answer):
    return [float(r.strip() == a) for r, a in zip(responses, answer)]

def length(prompts, responses, **kw):
    return [len(r) for r in responses]

class Scorer:
    def __call__(self, prompts, responses, *, bonus=None):
        bonus = bonus or [0.0] * len(prompts)
        return [b + len(p) for p, b in zip(prompts, bonus)]

scorer = Scorer()
NOT_CALLABLE = 3
"""


def _write(tmp_path, source: str = REWARD_SOURCE) -> tuple[str, str]:
    """Write `source` to a fresh module in tmp_path; return (module name, file path)."""
    name = f"rewards_{uuid.uuid4().hex[:8]}"  # fresh name: no sys.modules cache between tests
    path = tmp_path / f"{name}.py"
    path.write_text(textwrap.dedent(source))
    return name, str(path)


def test_module_spec(tmp_path, monkeypatch):
    name, _ = _write(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    reward = PythonReward(load_callable(f"{name}:exact_match"))
    r = reward(["q1", "q2"], [" 4", "5"], answer=["4", "6"])
    assert r.dtype == torch.float32 and r.tolist() == [1.0, 0.0]


def test_file_spec(tmp_path):
    _, path = _write(tmp_path)
    fn = load_callable(f"{path}:length")
    assert PythonReward(fn)(["a", "b"], ["xyz", ""]).tolist() == [3.0, 0.0]
    assert load_callable(f"{path}:length") is fn  # loading the same file twice reuses it


def test_callable_instance_and_keyword_only_column(tmp_path):
    _, path = _write(tmp_path)
    reward = PythonReward(load_callable(f"{path}:scorer"), name="scorer")
    assert reward(["ab", "c"], ["x", "y"]).tolist() == [2.0, 1.0]  # optional column absent
    assert reward(["ab", "c"], ["x", "y"], bonus=[1.0, 2.0], other=[0, 0]).tolist() == [3.0, 3.0]


def test_columns_passed_by_name_and_filtered_by_signature():
    seen = {}

    def named(prompts, responses, answer):
        seen["named"] = answer
        return [0.0] * len(prompts)

    def catch_all(prompts, responses, **kw):
        seen["catch_all"] = kw
        return [0.0] * len(prompts)

    def no_columns(p, r):  # names of the first two arguments do not matter
        return [1.0] * len(p)

    row = {"answer": ["a", "b"], "source": ["s", "t"]}
    PythonReward(named)(["p", "q"], ["x", "y"], **row)
    PythonReward(catch_all)(["p", "q"], ["x", "y"], **row)
    assert PythonReward(no_columns)(["p", "q"], ["x", "y"], **row).tolist() == [1.0, 1.0]
    assert seen["named"] == ["a", "b"]
    assert seen["catch_all"] == row


def test_missing_required_column():
    def named(prompts, responses, answer):
        return [0.0] * len(prompts)

    with pytest.raises(ValueError, match=r"reward 'f' needs column\(s\) \['answer'\].*columns: \['source'\]"):
        PythonReward(named, name="f")(["p"], ["x"], source=["s"])


@pytest.mark.parametrize(
    "output, match",
    [
        ([1.0], r"reward 'bad' returned 1 values; expected 2"),
        ([1.0, float("nan")], r"reward 'bad' returned 1 non-finite"),
        ([1.0, "x"], r"reward 'bad' returned a non-numeric value 'x'"),
    ],
)
def test_bad_outputs(output, match):
    with pytest.raises(ValueError, match=match):
        PythonReward(lambda p, r: output, name="bad")(["p", "q"], ["x", "y"])


def test_rejects_unusable_callables():
    async def coro(prompts, responses):
        return [0.0]

    with pytest.raises(ValueError, match="synchronous"):
        PythonReward(coro)
    with pytest.raises(ValueError, match=r"must take the responses: \(prompts, responses, \.\.\.\)"):
        PythonReward(lambda x: [0.0])  # one parameter, not named for what it gets: nothing to map it to
    with pytest.raises(ValueError, match="needs a callable"):
        PythonReward(3)


FORMAT = r"'package\.module:function' or 'path/to/file\.py:function'"


@pytest.mark.parametrize(
    "spec, match",
    [
        ("no_colon_here", r"must look like " + FORMAT),
        ("module:", r"must look like"),
        ("remax_no_such_module_xyz:f", r"module 'remax_no_such_module_xyz' not found.*" + FORMAT),
        ("remax.rewards:no_such_fn", r"'remax\.rewards' has no attribute 'no_such_fn'.*" + FORMAT),
        ("remax.rewards:KINDS", r"'KINDS' is a tuple, not callable.*" + FORMAT),
        ("does/not/exist.py:f", r"file 'does/not/exist\.py' not found.*" + FORMAT),
    ],
)
def test_bad_specs(spec, match):
    with pytest.raises(ValueError, match=match):
        load_callable(spec)


def test_bad_specs_in_files(tmp_path):
    _, path = _write(tmp_path)
    with pytest.raises(ValueError, match="has no attribute 'missing'"):
        load_callable(f"{path}:missing")
    with pytest.raises(ValueError, match="'NOT_CALLABLE' is a int, not callable"):
        load_callable(f"{path}:NOT_CALLABLE")


def test_missing_dependency_inside_module_is_not_hidden(tmp_path):
    _, path = _write(tmp_path, "import remax_dependency_that_is_absent\n\ndef f(p, r):\n    return [0.0]\n")
    # named, with the file's line and the install command: one line, not a traceback (issue 16)
    with pytest.raises(ValueError, match=r"\.py:1 imports 'remax_dependency_that_is_absent', which is not "
                                         r"installed; pip install remax_dependency_that_is_absent"):
        load_callable(f"{path}:f")
