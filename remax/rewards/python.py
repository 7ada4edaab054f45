"""Rewards written as plain Python functions, and loading them from a
"package.module:function" or "path/to/file.py:function" spec.

A function is called by what its parameters are named, so the reward functions of TRL
and verl work as they are:

- remax: `f(prompts, responses, **columns)`: the first two positional parameters get
  the prompts and the responses, whatever their names;
- TRL: `f(completions, **kwargs)` or `f(prompts, completions, completion_ids,
  trainer_state, **columns)`: any parameter named `prompts`, `completions` (or
  `responses`), `completion_ids` (the responses re-encoded by the policy's tokenizer,
  without EOS) or `trainer_state` (an object with `global_step`) gets that, by keyword,
  and `**kwargs` gets all of them plus the columns, as TRL passes them;
- verl: `compute_score(data_source, solution_str, ground_truth, extra_info=None)`, one
  response per call, returning a number or a dict with "score": detected by its
  `solution_str` parameter (or wrapped explicitly with `verl_reward(fn)`). `ground_truth`
  comes from a `ground_truth` column, else from verl's `reward_model` column
  ({"ground_truth": ...}); `data_source` and `extra_info` from those columns.

Dataset columns are passed by keyword, but only those the signature names, unless it
takes `**kwargs`. The columns a function needs (parameters without defaults) are known
from its signature, so a missing one is reported when the data is loaded.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import os
import sys
from types import SimpleNamespace
from typing import Any, Callable

import torch

from remax.rewards.base import as_reward_tensor, check_batch

SPEC_FORMAT = "'package.module:function' or 'path/to/file.py:function'"

ROLE_NAMES = ("prompts", "completions", "responses", "completion_ids", "trainer_state")
TRL_ONLY = {"completions", "completion_ids", "trainer_state"}
VERL_NAMES = ("data_source", "solution_str", "ground_truth", "extra_info")
# import name -> pip name, where they differ (for a reward file's missing dependency)
PIP_NAMES = {"sklearn": "scikit-learn", "yaml": "pyyaml", "cv2": "opencv-python", "PIL": "pillow",
             "bs4": "beautifulsoup4", "Levenshtein": "python-Levenshtein", "dateutil": "python-dateutil"}


class PythonReward:
    """Wraps a synchronous callable as a `RewardFunction` `(prompts, responses, **columns)
    -> (B,) tensor`, mapping its parameters by name (module doc); its output is checked by
    `as_reward_tensor`. `style` is "positional" (remax), "named" (TRL) or "verl"."""

    def __init__(self, fn: Callable[..., Any], name: str | None = None, style: str | None = None):
        if not callable(fn):
            raise ValueError(f"PythonReward needs a callable, got {type(fn).__name__}")
        if inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(getattr(fn, "__call__", None)):
            raise ValueError("PythonReward wraps synchronous functions; got an async one")
        self.fn = fn
        self.name = name or getattr(fn, "__qualname__", None) or repr(fn)
        self.tokenizer: Any = None  # the policy's, set by the trainer: completion_ids
        self.step = 0
        # accepted: column names passed (None: all); required: columns without defaults
        self.style, self.names, self.var_kw, self.accepted, self.required = _read_signature(fn, self.name, style)

    def at_step(self, step: int) -> None:
        self.step = step

    def check_columns(self, columns: list[str]) -> None:
        """ValueError naming the columns the signature needs and `columns` lacks."""
        have = set(columns)
        missing = [c for c in self.required if c not in have]
        if self.style == "verl" and "ground_truth" in missing and "reward_model" in have:
            missing.remove("ground_truth")  # verl's layout: reward_model = {"ground_truth": ...}
        if missing:
            raise ValueError(
                f"reward '{self.name}' needs column(s) {missing} that the data does not have (columns: "
                f"{sorted(have) or 'none'}); add them, or give those parameters defaults"
            )

    def __call__(self, prompts: list[str], responses: list[str], **row: list[Any]) -> torch.Tensor:
        check_batch(prompts, responses, row, self.name)
        self.check_columns(list(row))
        n = len(prompts)
        if self.style == "verl":
            return as_reward_tensor([_verl_score(self._verl_call(prompts, responses, row, i)) for i in range(n)],
                                    n, self.name)
        columns = row if self.accepted is None else {k: v for k, v in row.items() if k in self.accepted}
        if self.style == "positional":
            return as_reward_tensor(self.fn(list(prompts), list(responses), **columns), n, self.name)
        roles = {"prompts": list(prompts), "completions": list(responses), "responses": list(responses),
                 "trainer_state": SimpleNamespace(global_step=self.step)}
        wanted = [r for r in ROLE_NAMES if r in self.names or (self.var_kw and r != "responses")]
        if "completion_ids" in wanted:
            if self.tokenizer is not None:
                roles["completion_ids"] = [list(x) for x in self.tokenizer(list(responses), add_special_tokens=False)["input_ids"]]
            elif "completion_ids" in self.names:
                raise ValueError(f"reward '{self.name}' takes completion_ids, which needs the policy's tokenizer")
            else:
                wanted.remove("completion_ids")
        kwargs = {r: roles[r] for r in wanted}
        kwargs.update({k: v for k, v in columns.items() if k not in kwargs})
        return as_reward_tensor(self.fn(**kwargs), n, self.name)

    def _verl_call(self, prompts: list[str], responses: list[str], row: dict[str, list[Any]], i: int) -> Any:
        if "ground_truth" in row:
            truth = row["ground_truth"][i]
        else:
            rm = row.get("reward_model", [None] * len(prompts))[i]
            truth = rm.get("ground_truth") if isinstance(rm, dict) else None
        values = {"data_source": row.get("data_source", [None] * len(prompts))[i], "solution_str": responses[i],
                  "ground_truth": truth, "extra_info": row.get("extra_info", [None] * len(prompts))[i]}
        kwargs = {k: v for k, v in values.items() if k in self.names or self.var_kw}
        if self.var_kw:
            kwargs.update({k: v[i] for k, v in row.items() if k not in kwargs})
        return self.fn(**kwargs)

    def __repr__(self) -> str:
        return f"PythonReward({self.name})"


def verl_reward(fn: Callable[..., Any], name: str | None = None) -> PythonReward:
    """verl's `compute_score(data_source, solution_str, ground_truth, extra_info)` as a remax
    reward: called once per response (a number, or a dict with "score"). A function with a
    `solution_str` parameter is detected without it; this is the explicit form."""
    return PythonReward(fn, name=name, style="verl")


def wrap_function(fn: Any) -> Any:
    """A plain function (or method, or functools.partial) -> PythonReward, so that every
    signature above works from Python too; reward objects (models, servers, mixes,
    PythonRewards) are returned as they are."""
    import functools

    if isinstance(fn, PythonReward):
        return fn
    if inspect.isfunction(fn) or inspect.ismethod(fn) or isinstance(fn, functools.partial):
        return PythonReward(fn)
    return fn


def _verl_score(value: Any) -> Any:
    if isinstance(value, dict):
        return value.get("score", value)  # verl's dict results carry the reward under "score"
    return value


def _read_signature(fn: Callable[..., Any], name: str, style: str | None):
    """(style, parameter names, takes **kwargs, accepted columns or None, required columns)."""
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):  # some builtins and C extensions have no signature
        return style or "positional", set(), True, None, []
    kinds = inspect.Parameter
    names = {p.name for p in params}
    var_kw = any(p.kind is kinds.VAR_KEYWORD for p in params)
    named = [p for p in params if p.kind in (kinds.POSITIONAL_OR_KEYWORD, kinds.KEYWORD_ONLY)]
    positional = [p for p in params if p.kind in (kinds.POSITIONAL_ONLY, kinds.POSITIONAL_OR_KEYWORD)]
    if style is None:
        if "solution_str" in names:
            style = "verl"
        elif names & TRL_ONLY or (len(positional) < 2 and not any(p.kind is kinds.VAR_POSITIONAL for p in params)):
            style = "named"
        else:
            style = "positional"
    if style == "verl":
        required = [p.name for p in named if p.default is p.empty and p.name in ("data_source", "ground_truth")]
        return style, names, var_kw, None, required
    if style == "named":
        if not (names & {"completions", "responses"} or var_kw):
            raise ValueError(
                f"reward '{name}' must take the responses: (prompts, responses, ...) as its first two arguments "
                "(remax), a parameter named completions (TRL) or solution_str (verl), or **kwargs"
            )
        columns = [p for p in named if p.name not in ROLE_NAMES]
    else:
        # The first two positional parameters receive prompts and responses, whatever their names.
        columns = [p for p in named if p not in positional[:2]]
    required = [p.name for p in columns if p.default is p.empty]
    return style, names, var_kw, (None if var_kw else {p.name for p in columns}), required


def load_callable(spec: str) -> Callable[..., Any]:
    """Import `fn` from "package.module:function" or "path/to/file.py:function".

    The attribute may be dotted ("module:Class.method"). Every failure is a one-line
    ValueError that names the expected format."""
    target, sep, attr = spec.rpartition(":")
    if not sep or not target or not attr:
        raise ValueError(f"reward function spec {spec!r} must look like {SPEC_FORMAT}")
    module = _load_file(target, spec) if target.endswith(".py") else _import_module(target, spec)
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ValueError(
                f"reward function spec {spec!r}: {target!r} has no attribute {attr!r} "
                f"(expected {SPEC_FORMAT})"
            )
        obj = getattr(obj, part)
    if not callable(obj):
        raise ValueError(
            f"reward function spec {spec!r}: {attr!r} is a {type(obj).__name__}, not callable "
            f"(expected {SPEC_FORMAT})"
        )
    return obj


def _import_module(name: str, spec: str) -> Any:
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as e:
        # Our module (or a parent package) absent is a spec error; a dependency the user's
        # module imports and that is not installed is named with its pip install.
        if e.name is None:
            raise
        if not (name == e.name or name.startswith(e.name + ".")):
            raise ValueError(_missing_dependency(spec, e, name)) from None
        raise ValueError(
            f"reward function spec {spec!r}: module {name!r} not found; is it on PYTHONPATH? "
            f"(expected {SPEC_FORMAT})"
        ) from e


def _load_file(path: str, spec: str) -> Any:
    if not os.path.isfile(path):
        raise ValueError(f"reward function spec {spec!r}: file {path!r} not found (expected {SPEC_FORMAT})")
    path = os.path.abspath(path)
    # A unique module name per path, registered in sys.modules so that dataclasses,
    # pickling and repeated loads of the same file behave as for a normal import.
    digest = hashlib.sha1(path.encode()).hexdigest()[:10]
    mod_name = f"remax_reward_{os.path.splitext(os.path.basename(path))[0]}_{digest}"
    if mod_name in sys.modules:
        return sys.modules[mod_name]
    module_spec = importlib.util.spec_from_file_location(mod_name, path)
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[mod_name] = module
    try:
        module_spec.loader.exec_module(module)
    except SyntaxError as err:  # the file cannot be read as Python: bad input, one line
        del sys.modules[mod_name]
        raise ValueError(
            f"reward function spec {spec!r}: {err.filename or path}:{err.lineno}: SyntaxError: {err.msg}; fix the file"
        ) from None
    except ModuleNotFoundError as err:  # the file imports a package that is not installed
        del sys.modules[mod_name]
        if err.name is None:
            raise
        raise ValueError(_missing_dependency(spec, err, path)) from None
    except BaseException:
        del sys.modules[mod_name]
        raise
    return module


def _missing_dependency(spec: str, err: ModuleNotFoundError, where: str) -> str:
    import traceback

    top = err.name.split(".")[0]
    frames = [f for f in traceback.extract_tb(err.__traceback__) if not f.filename.startswith("<frozen")]
    line = f"{frames[-1].filename}:{frames[-1].lineno}" if frames else where
    return (f"reward function spec {spec!r}: {line} imports {err.name!r}, which is not installed; "
            f"pip install {PIP_NAMES.get(top, top)} (into the environment remax runs in)")
