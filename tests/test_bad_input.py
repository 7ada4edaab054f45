"""Bad input (issue #6, items 6 and 7): every case is ONE line on stderr,
`remax train: error: ...`, naming what is wrong and the fix; exit code 2; no traceback
unless --debug; and an output directory that already exists is left exactly as it was."""

from __future__ import annotations

import json
import re
import textwrap
from pathlib import Path

import pytest
import torch

from remax.cli import main, parse_train_args
from remax.config import Config, ConfigError

GOOD = ["The Lord is", "And God said", "Blessed are the", "Love is", "In the beginning", "O give thanks"]


@pytest.fixture(scope="module")
def assets(tmp_path_factory, tokenizer):
    """A tiny policy (128 positions) and a short-context one (16), prompts and a reward file."""
    from remax.models.tiny import tiny_causal_lm

    root = tmp_path_factory.mktemp("assets")
    for name, n_positions in (("policy", 128), ("short", 16)):
        tiny_causal_lm(tokenizer, n_positions=n_positions).save_pretrained(root / name)
        tokenizer.save_pretrained(root / name)
    (root / "prompts.jsonl").write_text("".join(json.dumps({"prompt": p}) + "\n" for p in GOOD))
    (root / "reward.py").write_text("def score(prompts, responses):\n    return [float(len(r)) for r in responses]\n")
    return root


@pytest.fixture()
def out(tmp_path):
    """An output directory that already holds a file: no bad input may touch it."""
    path = tmp_path / "run"
    path.mkdir()
    (path / "keep.txt").write_text("precious")
    return path


def args(assets: Path, out: Path, *extra: str, **flags: str) -> list[str]:
    base = {
        "--output_dir": str(out),
        "--model.policy": str(assets / "policy"),
        "--data.train_file": str(assets / "prompts.jsonl"),
        "--reward.function": f"{assets / 'reward.py'}:score",
        "--rollout.max_new_tokens": "4",
        "--train.steps": "1",
        "--train.batch_size": "2",
        "--log.progress": "False",
    }
    base.update({"--" + k.replace("__", "."): v for k, v in flags.items()})
    return ["train", *[x for kv in base.items() for x in kv], *extra]


def one_line_error(capsys, argv, *words, code=2) -> str:
    """Run `remax argv`; assert the exit code and a single stderr line holding `words`."""
    assert main(argv) == code
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("remax train: error: "), err
    for word in words:
        assert word in lines[0], (word, lines[0])
    assert "Traceback" not in err
    return lines[0]


def untouched(out: Path) -> None:
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]
    assert (out / "keep.txt").read_text() == "precious"


def write(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text))
    return path


# ------------------------------------------------------------------ 1, 2: data formats
def test_valid_parquet_file_trains(assets, tmp_path, capsys):
    import pandas as pd

    data = tmp_path / "train.parquet"
    pd.DataFrame({"prompt": GOOD, "answer": [str(i) for i in range(len(GOOD))]}).to_parquet(data)
    run = tmp_path / "run"
    assert main(args(assets, run, data__train_file=str(data))) == 0, capsys.readouterr().err
    assert (run / "final" / "config.json").is_file()


def test_corrupt_parquet_file_is_one_line(assets, out, tmp_path, capsys):
    data = tmp_path / "train.parquet"
    data.write_bytes(b"PAR1\x15\x04\x15\x10\x15\x14L\x15\x02\x15\x00\x00\x00" + bytes(range(256)) + b"PAR1")
    one_line_error(capsys, args(assets, out, data__train_file=str(data)), "train.parquet", "cannot be read as parquet")
    untouched(out)


def test_parquet_file_without_the_prompt_column_is_one_line(assets, out, tmp_path, capsys):
    import pandas as pd

    data = tmp_path / "train.parquet"
    pd.DataFrame({"text": GOOD}).to_parquet(data)
    one_line_error(capsys, args(assets, out, data__train_file=str(data)), "train.parquet", "no 'prompt' column",
                   "columns: text", "--data.prompt_column")
    untouched(out)


def test_non_utf8_file_names_file_and_line(assets, out, tmp_path, capsys):
    data = tmp_path / "latin1.jsonl"
    data.write_bytes("".join(json.dumps({"prompt": p}) + "\n" for p in GOOD[:2]).encode()
                     + '{"prompt": "caf\xe9"}\n'.encode("latin-1"))
    one_line_error(capsys, args(assets, out, data__train_file=str(data)), "latin1.jsonl:3:", "not UTF-8", "0xe9")
    untouched(out)


# ------------------------------------------------------------------ 3, 4, 5: the YAML config
def test_yaml_syntax_error_names_file_and_line(assets, out, tmp_path, capsys):
    cfg = write(tmp_path / "run.yaml", """\
        train:
          steps: 2
         lr: [1e-6
        """)
    one_line_error(capsys, args(assets, out, "--config", str(cfg)), "run.yaml:3:", "YAML syntax error")
    untouched(out)


def test_yaml_numeric_strings_are_coerced(tmp_path):
    cfg = write(tmp_path / "run.yaml", """\
        train: {lr: 1e-6, critic_lr: 5E-6, steps: 1e3, adam_betas: [0.9, 1e-1]}
        rollout: {top_p: "0.95"}
        reward: {timeout_s: 30}
        """)
    c = parse_train_args(["--config", str(cfg)])
    assert c.train.lr == 1e-6 and isinstance(c.train.lr, float) and c.train.critic_lr == 5e-6
    assert c.train.steps == 1000 and isinstance(c.train.steps, int)
    assert c.train.adam_betas == (0.9, 0.1) and c.rollout.top_p == 0.95 and c.reward.timeout_s == 30.0


@pytest.mark.parametrize("yaml_text, words", [
    ("train: {steps: two}", ["train.steps", "expected an integer", "'two'"]),
    ("train: {steps: 2.5}", ["train.steps", "expected an integer"]),
    ("train: {lr: fast}", ["train.lr", "expected a number"]),
    ("train: {lr: .inf}", ["train.lr", "finite"]),
    ("algo: remx", ["algo", "remx", "did you mean 'remax'?"]),
    ("loss: {agg: token_sum}", ["loss.agg", "one of token_mean"]),
    ("log: {progress: maybe}", ["log.progress", "expected true or false"]),
    ("train: {adam_betas: [0.9]}", ["train.adam_betas", "a list of 2 numbers"]),
    ("loss: {advantage_clip: big}", ["loss.advantage_clip", "a number or null"]),
    ("model: my-model", ["'model'", "must be a mapping"]),
    ("- algo: remax", ["<root>", "must be a mapping"]),
])
def test_yaml_values_are_checked_against_field_types(assets, out, tmp_path, capsys, yaml_text, words):
    cfg = write(tmp_path / "run.yaml", yaml_text + "\n")
    one_line_error(capsys, args(assets, out, "--config", str(cfg)), "run.yaml", *words)
    untouched(out)


@pytest.mark.parametrize("yaml_text, words", [
    ("rollout: {temprature: 0.5}", ["unknown config key 'rollout.temprature'", "did you mean 'rollout.temperature'?"]),
    ("lr: 1e-6", ["unknown config key 'lr'", "did you mean 'train.lr'?"]),
    ("trian: {steps: 3}", ["unknown config key 'trian'", "did you mean 'train'?"]),
])
def test_unknown_yaml_keys_suggest_the_closest(assets, out, tmp_path, capsys, yaml_text, words):
    cfg = write(tmp_path / "run.yaml", yaml_text + "\n")
    one_line_error(capsys, args(assets, out, "--config", str(cfg)), *words)
    untouched(out)


@pytest.mark.parametrize("extra, words", [
    (["--train.steps", "two"], ["--train.steps: expected an integer, got 'two'"]),
    (["--algo", "remx"], ["--algo", "did you mean 'remax'?"]),
    (["--log.progress", "yes"], ["--log.progress: expected True or False, got 'yes'"]),
    (["--train.adam_betas", "0.9"], ["--train.adam_betas needs 2 values"]),
    (["--train.lr"], ["--train.lr needs a value"]),
    (["--rollout.temprature", "0.5"], ["unknown option --rollout.temprature; did you mean --rollout.temperature?"]),
    (["--lr", "1e-5"], ["unknown option --lr; did you mean --train.lr?"]),
    (["stray"], ["unexpected argument 'stray'"]),
])
def test_bad_flags_are_one_line(assets, out, capsys, extra, words):
    one_line_error(capsys, args(assets, out, *extra), *words)
    untouched(out)


def test_help_still_works(capsys):
    with pytest.raises(SystemExit) as info:
        main(["train", "--help"])
    assert info.value.code == 0
    assert "--rollout.temperature" in capsys.readouterr().out


def test_debug_adds_the_traceback(assets, out, capsys, monkeypatch):
    assert main(args(assets, out, "--debug", "--train.lr", "0")) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and err.strip().splitlines()[-1].startswith("remax train: error: --train.lr")
    monkeypatch.setenv("REMAX_DEBUG", "1")
    assert main(args(assets, out, "--train.lr", "0")) == 2
    assert "Traceback" in capsys.readouterr().err
    untouched(out)


# ------------------------------------------------------------------ 6: out-of-range values
@pytest.mark.parametrize("flag, value, words", [
    ("train.lr", "0", ["--train.lr must be > 0"]),
    ("train.lr", "-1e-6", ["--train.lr must be > 0"]),
    ("train.lr", "nan", ["--train.lr: expected a finite number, got nan"]),
    ("train.critic_lr", "0", ["--train.critic_lr must be > 0"]),
    ("rollout.top_p", "1.5", ["--rollout.top_p must be in (0, 1]"]),
    ("rollout.top_p", "0", ["--rollout.top_p must be in (0, 1]"]),
    ("train.batch_size", "0", ["--train.batch_size must be at least 1"]),
    ("train.micro_batch_size", "0", ["--train.micro_batch_size must be at least 1"]),
    ("train.steps", "0", ["--train.steps must be at least 1"]),
    ("rollout.max_new_tokens", "0", ["--rollout.max_new_tokens must be at least 1"]),
    ("data.max_prompt_tokens", "0", ["--data.max_prompt_tokens must be at least 1"]),
    ("reward.batch_size", "0", ["--reward.batch_size must be at least 1"]),
    ("loss.kl_coef", "-0.1", ["--loss.kl_coef must be >= 0"]),
    ("loss.gamma", "0", ["--loss.gamma must be in (0, 1]"]),
    ("loss.gamma", "1.5", ["--loss.gamma must be in (0, 1]"]),
    ("log.keep_last", "-1", ["--log.keep_last must be >= 0"]),
    ("reward.max_consecutive_skips", "0", ["--reward.max_consecutive_skips must be at least 1"]),
    ("train.max_nonfinite_steps", "0", ["--train.max_nonfinite_steps must be at least 1"]),
    ("reward.timeout_s", "0", ["--reward.timeout_s must be > 0"]),
    ("reward.timeout_s", "-5", ["--reward.timeout_s must be > 0"]),
])
def test_out_of_range_values(assets, out, capsys, flag, value, words):
    one_line_error(capsys, args(assets, out, f"--{flag}", value), *words)
    untouched(out)


def test_resume_and_overwrite_together(assets, out, capsys):
    one_line_error(capsys, args(assets, out, "--resume", "auto", "--overwrite", "True"), "--resume", "--overwrite")
    untouched(out)


# ------------------------------------------------------------------ 7, 8: paths and devices
def test_missing_policy_path(assets, out, tmp_path, capsys):
    line = one_line_error(capsys, args(assets, out, model__policy=str(tmp_path / "no-such-model")),
                          "cannot load policy", "no-such-model", "--model.policy")
    assert "tokenizer" not in line
    untouched(out)


def test_missing_reward_model_path(assets, out, tmp_path, capsys):
    one_line_error(capsys, args(assets, out, "--reward.kind", "model", "--reward.model", str(tmp_path / "no-rm")),
                   "cannot load reward model", "no-rm", "--reward.model")
    untouched(out)


@pytest.mark.parametrize("spec, words", [
    ("{tmp}/missing.py:score", ["missing.py", "not found"]),
    ("{assets}/reward.py:nope", ["has no attribute 'nope'"]),
    ("nosuchmodule_xyz:score", ["module 'nosuchmodule_xyz' not found"]),
    ("{tmp}/broken.py:score", ["broken.py:1: SyntaxError"]),
])
def test_missing_reward_function_or_file(assets, out, tmp_path, capsys, spec, words):
    (tmp_path / "broken.py").write_text("def score(prompts, responses)\n    return 1\n")
    spec = spec.format(tmp=tmp_path, assets=assets)
    one_line_error(capsys, args(assets, out, reward__function=spec), *words)
    untouched(out)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
@pytest.mark.parametrize("device", ["cuda", "cuda:1"])
def test_cuda_device_without_cuda(assets, out, capsys, device):
    one_line_error(capsys, args(assets, out, model__device=device), "CUDA is not available", "--model.device cpu")
    untouched(out)


def test_unknown_device(assets, out, capsys):
    one_line_error(capsys, args(assets, out, model__device="gpu0"), "unknown device 'gpu0'")
    untouched(out)


# ------------------------------------------------------------------ 9: data checked at load
def test_empty_prompt_among_good_ones_fails_at_load_with_its_line(assets, out, tmp_path, capsys):
    data = tmp_path / "prompts.jsonl"
    rows = [{"prompt": GOOD[i % len(GOOD)]} for i in range(64)]
    rows.insert(41, {"prompt": ""})
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    one_line_error(capsys, args(assets, out, data__train_file=str(data)), "prompts.jsonl:42:", "empty prompt")
    untouched(out)


@pytest.mark.parametrize("row, words", [
    ({"prompt": 3}, ["p.jsonl:2:", "must be a string, got int"]),
    ({"prompt": None}, ["p.jsonl:2:", "must be a string, got NoneType"]),
    ({"text": "hi"}, ["p.jsonl:2:", "no 'prompt' column", "--data.prompt_column"]),
    (["a", "b"], ["p.jsonl:2:", "expected a JSON object"]),
])
def test_wrong_types_name_the_line(assets, out, tmp_path, capsys, row, words):
    data = tmp_path / "p.jsonl"
    data.write_text(json.dumps({"prompt": "ok"}) + "\n" + json.dumps(row) + "\n")
    one_line_error(capsys, args(assets, out, data__train_file=str(data)), *words)
    untouched(out)


def test_library_rows_are_validated_too(tokenizer, tiny_model, tmp_path):
    from remax.data import DataError
    from remax.trainer import Trainer

    cfg = Config(output_dir=str(tmp_path / "x"))
    rows = [{"prompt": "Hi"}] * 5 + [{"prompt": "   "}]
    with pytest.raises(DataError, match=r"row 5: empty prompt"):
        Trainer(cfg, policy=tiny_model, tokenizer=tokenizer, reward_fn=lambda p, r: [0.0] * len(p), rows=rows)
    assert not (tmp_path / "x").exists()


# ------------------------------------------------------------------ 10: context length
def long_prompts(tmp_path: Path) -> Path:
    data = tmp_path / "long.jsonl"
    long = "And God said, Let there be light: and there was light. " * 3
    data.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in GOOD[:3] + [long] + GOOD[3:]))
    return data


def test_prompt_plus_response_longer_than_the_context_stops_at_start(assets, out, tmp_path, capsys):
    line = one_line_error(
        capsys,
        args(assets, out, model__policy=str(assets / "short"), data__train_file=str(long_prompts(tmp_path)),
             rollout__max_new_tokens="6"),
        "long.jsonl:4", "exceeds the policy's context of 16 positions",
        "lower --data.max_prompt_tokens to 10", "--data.context_overflow truncate",
    )
    assert "max_new_tokens to -" not in line  # the prompt alone is too long: no such fix offered
    assert re.search(r"\+ --rollout.max_new_tokens 6 = \d+", line)
    untouched(out)


def test_max_new_tokens_alone_too_long(assets, out, capsys):
    one_line_error(capsys, args(assets, out, model__policy=str(assets / "short"), rollout__max_new_tokens="16"),
                   "--rollout.max_new_tokens 16", "context of 16 positions")
    untouched(out)


def test_context_overflow_truncate_lowers_max_prompt_tokens_and_warns(assets, tmp_path):
    from remax.config import load_config

    run = tmp_path / "run"
    argv = args(assets, run, "--data.context_overflow", "truncate", model__policy=str(assets / "short"),
                data__train_file=str(long_prompts(tmp_path)), rollout__max_new_tokens="6")
    with pytest.warns(UserWarning, match=r"prompts now keep their last 10 tokens"):
        assert main(argv) == 0
    assert load_config(run / "config.yaml").data.max_prompt_tokens == 10


def test_short_prompts_fit_a_short_context_with_default_max_prompt_tokens(assets, tmp_path):
    # 256 + 2 > 16, but no prompt is that long (13 tokens at most): nothing to stop for
    assert main(args(assets, tmp_path / "run", model__policy=str(assets / "short"), rollout__max_new_tokens="2")) == 0


# ------------------------------------------------------------------ 11: safe loading
def test_yaml_is_never_run_as_code(assets, out, tmp_path, capsys):
    cfg = write(tmp_path / "run.yaml", "output_dir: !!python/object/apply:os.getcwd []\n")
    one_line_error(capsys, args(assets, out, "--config", str(cfg)), "run.yaml:1:", "YAML tag not allowed",
                   "never run as code")
    untouched(out)


def test_trust_remote_code_is_off_unless_configured():
    assert Config().model.trust_remote_code is False


def test_no_unsafe_torch_load_outside_checkpoint():
    root = Path(__file__).resolve().parents[1] / "remax"
    for path in root.rglob("*.py"):
        if path.name == "checkpoint.py":
            continue
        for call in re.findall(r"torch\.load\((.*?)\)", path.read_text(), flags=re.S):
            assert "weights_only=True" in call, path



def test_config_file_not_utf8_or_missing(assets, out, tmp_path, capsys):
    cfg = tmp_path / "run.yaml"
    cfg.write_bytes(b"train:\n  steps: 2\noutput_dir: caf\xe9\n")
    one_line_error(capsys, args(assets, out, "--config", str(cfg)), "run.yaml:3:", "not UTF-8")
    one_line_error(capsys, args(assets, out, "--config", str(tmp_path / "nope.yaml")), "nope.yaml", "not found")
    untouched(out)


def test_tyro_error_box_fallback_is_one_line():
    from remax.cli import summarise_tyro_error

    box = "\n".join([
        "╭─ Unrecognized options ─────────╮",
        "│ Unrecognized options: --x.y, 1 │",
        "│ ────────────────────────────── │",
        "│ Perhaps you meant:             │",
        "│     --x.z FLOAT                │",
        "│         Some help.             │",
        "│ ────────────────────────────── │",
        "│ For full helptext, run --help  │",
        "╰────────────────────────────────╯",
    ])
    assert summarise_tyro_error(box) == "Unrecognized options: --x.y, 1; did you mean --x.z?; see --help"


def test_library_config_values_get_the_same_type_checks(tokenizer, tiny_model, tmp_path):
    from remax.trainer import Trainer

    def make(**train):
        cfg = Config(output_dir=str(tmp_path / "x"))
        cfg.rollout.max_new_tokens = 4  # the tiny model's context is short
        for k, v in train.items():
            setattr(cfg.train, k, v)
        return Trainer(cfg, policy=tiny_model, tokenizer=tokenizer, reward_fn=lambda p, r: [0.0] * len(p),
                       rows=[{"prompt": "Hi"}] * 8)

    assert make(lr="1e-5").config.train.lr == 1e-5
    with pytest.raises(ConfigError, match=r"--train.steps: expected an integer, got 'two'"):
        make(steps="two")
    assert not (tmp_path / "x").exists()
