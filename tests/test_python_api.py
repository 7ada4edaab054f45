"""The Python API: `remax.train(config, **objects)` and the config dataclasses from the
top-level package, a light `import remax`, and examples/python_api.py run end to end."""

from __future__ import annotations

import ast
import dataclasses
import inspect
import runpy
import subprocess
import sys
import textwrap
import typing
from pathlib import Path

import pytest
import torch

import remax
import remax.trainer

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "python_api.py"


def test_import_remax_is_light_and_exports_load_on_use():
    code = textwrap.dedent('''
        import sys, remax
        heavy = [m for m in ("torch", "transformers", "peft", "yaml", "remax.config") if m in sys.modules]
        assert not heavy, heavy
        cfg = remax.Config(algo="remax")
        assert cfg.lora.r == 0 and isinstance(cfg.lora, remax.LoraConfig)
        assert "transformers" not in sys.modules, "a config must not pull transformers"
    ''')
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert remax.Trainer is sys.modules["remax.trainer.loop"].Trainer
    assert remax.evaluate is sys.modules["remax.trainer.evaluate"].evaluate
    with pytest.raises(AttributeError, match="no attribute 'Trainr'"):
        remax.Trainr  # noqa: B018
    assert {"train", "Trainer", "Config", "LoraConfig", "evaluate", "load_config"} <= set(dir(remax))


def test_every_config_field_is_documented():
    """The dataclasses are the documentation: a docstring under each option (the --help text)."""
    sections = typing.get_type_hints(remax.Config)
    for cls in (remax.Config, *[tp for tp in sections.values() if dataclasses.is_dataclass(tp)]):
        body = ast.parse(textwrap.dedent(inspect.getsource(cls))).body[0].body
        documented = {
            stmt.target.id for stmt, nxt in zip(body, body[1:])
            if isinstance(stmt, ast.AnnAssign) and isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant)
        }
        hints = typing.get_type_hints(cls)
        missing = {f.name for f in dataclasses.fields(cls) if not dataclasses.is_dataclass(hints[f.name])} - documented
        assert not missing, f"{cls.__name__}: {sorted(missing)}"


def test_train_is_the_trainer_and_reports_bad_settings_in_one_line(tokenizer, tiny_model, tmp_path):
    cfg = remax.Config(output_dir=str(tmp_path / "run"))
    cfg.lora.r = -2
    with pytest.raises(remax.ConfigError, match="--lora.r must be >= 0") as err:
        remax.train(cfg, policy=tiny_model, tokenizer=tokenizer, reward_fn=lambda p, r: [0.0] * len(r),
                    rows=[{"prompt": "Love is"}] * 4)
    assert "\n" not in str(err.value)


def test_python_api_example_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("REMAX_EXAMPLE_OUT", str(tmp_path / "run"))
    text = EXAMPLE.read_text()
    assert text.count("# %%") >= 5  # notebook cells
    ns = runpy.run_path(str(EXAMPLE), run_name="__main__")
    out = capsys.readouterr().out

    history = ns["history"]
    assert [m["step"] for m in history] == list(range(1, 31))
    assert all(m["rollout/reward_mean"] == m["rollout/reward_mean"] for m in history)  # no NaN
    final = tmp_path / "run" / "final"
    assert (final / "adapter_model.safetensors").is_file() and (final / "merged" / "model.safetensors").is_file()
    # the adapter on its base and the merged weights decode the same greedy text
    assert ns["after"].greedy == ns["after_merged"].greedy
    # The adapters trained: every B matrix left its zero init, and the trained policy's held-out
    # log-probs are no longer the base's. (This test used to assert that the greedy held-out reward
    # rose by 0.1; over seed offsets 0..9 and 1 or 2 threads that gain ranged from -1.0 to +0.40,
    # and the training reward's gain from -0.05 to +0.02: 30 steps on 6 prompts move this model's
    # text by chance, not by learning. Learning is asserted where it holds: tests/trainer/test_learning.py.)
    from safetensors.torch import load_file

    adapters = load_file(final / "adapter_model.safetensors")
    b_mats = [v for k, v in adapters.items() if "lora_B" in k]
    assert b_mats and all(bool(v.abs().sum() > 0) for v in b_mats)
    ids = ns["tokenizer"](ns["HELD_OUT"], return_tensors="pt", padding=True)
    with torch.no_grad():
        start = ns["tiny_causal_lm"](ns["tokenizer"], n_layer=2, n_embd=32, seed=0).eval()  # as the example built it
        moved = (ns["merged"](**ids).logits - start(**ids).logits).abs().max()
    assert moved > 1e-4, float(moved)
    assert "held-out reward" in out and "30 steps" in out
    # the example set the thread count; conftest restores the pool after the test
