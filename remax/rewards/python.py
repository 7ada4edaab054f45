"""Rewards written as plain Python functions, and loading them from a
"package.module:function" or "path/to/file.py:function" spec.

The function is called as `fn(prompts, responses, **columns)`. Dataset columns are
passed by keyword, but only those the function's signature names, unless it takes
`**kwargs`; so `def f(prompts, responses, answer)` and `def f(prompts, responses, **kw)`
both work on a dataset that also has other columns.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import os
import sys
from typing import Any, Callable

import torch

from remax.rewards.base import as_reward_tensor, check_batch

SPEC_FORMAT = "'package.module:function' or 'path/to/file.py:function'"


class PythonReward:
    """Wraps a synchronous callable `fn(prompts, responses, **columns) -> numbers` as a
    `RewardFunction`; its output is checked by `as_reward_tensor`."""

    def __init__(self, fn: Callable[..., Any], name: str | None = None):
        if not callable(fn):
            raise ValueError(f"PythonReward needs a callable, got {type(fn).__name__}")
        if inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(getattr(fn, "__call__", None)):
            raise ValueError("PythonReward wraps synchronous functions; got an async one")
        self.fn = fn
        self.name = name or getattr(fn, "__qualname__", None) or repr(fn)
        # None means "pass every column" (**kwargs, or a signature we cannot read).
        self.accepted, self.required = _column_params(fn, self.name)

    def __call__(self, prompts: list[str], responses: list[str], **row: list[Any]) -> torch.Tensor:
        check_batch(prompts, responses, row, self.name)
        missing = [c for c in self.required if c not in row]
        if missing:
            raise ValueError(
                f"reward '{self.name}' needs column(s) {missing} that the dataset does not have "
                f"(columns: {sorted(row)})"
            )
        columns = row if self.accepted is None else {k: v for k, v in row.items() if k in self.accepted}
        return as_reward_tensor(self.fn(list(prompts), list(responses), **columns), len(prompts), self.name)

    def __repr__(self) -> str:
        return f"PythonReward({self.name})"


def _column_params(fn: Callable[..., Any], name: str) -> tuple[set[str] | None, list[str]]:
    """(names of column parameters or None for all, names of those without defaults)."""
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):  # some builtins and C extensions have no signature
        return None, []
    kinds = inspect.Parameter
    positional = [p for p in params if p.kind in (kinds.POSITIONAL_ONLY, kinds.POSITIONAL_OR_KEYWORD)]
    if len(positional) < 2 and not any(p.kind is kinds.VAR_POSITIONAL for p in params):
        raise ValueError(f"reward '{name}' must accept (prompts, responses, ...) as its first two arguments")
    # The first two positional parameters receive prompts and responses, whatever their names.
    columns = [
        p
        for p in params
        if p not in positional[:2] and p.kind in (kinds.POSITIONAL_OR_KEYWORD, kinds.KEYWORD_ONLY)
    ]
    required = [p.name for p in columns if p.default is p.empty]
    if any(p.kind is kinds.VAR_KEYWORD for p in params):
        return None, required
    return {p.name for p in columns}, required


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
        # Only our module (or a parent package) being absent is a spec error; a missing
        # dependency *inside* the user's module should surface as itself.
        if e.name is None or not (name == e.name or name.startswith(e.name + ".")):
            raise
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
    except BaseException:
        del sys.modules[mod_name]
        raise
    return module
