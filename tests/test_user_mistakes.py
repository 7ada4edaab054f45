"""A new user's mistakes (issue 16), one table: every case is ONE line on stderr naming the
fix, with its exit code (2: bad input, nothing written; 1: a run stopped mid-way, the
last good state kept), and the output directory / checkpoints left as they were.

The next case is one line in CASES: an id, a setup `(tmp, assets) -> argv`, the words
the line must hold, and (optionally) the exit code, the check of what is on disk, and
whether it runs in a subprocess (for output that bypasses pytest's capture, like
transformers' load report)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pytest
import torch

from remax.cli import main
from test_bad_input import GOOD, args, untouched

ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------ assets
@pytest.fixture(scope="module")
def assets(tmp_path_factory, tokenizer):
    """Model directories a user might pass (good and wrong ones), data and reward files."""
    from transformers import BertConfig, BertForMaskedLM, BertLMHeadModel, BertModel

    from remax.models.tiny import tiny_causal_lm

    root = tmp_path_factory.mktemp("mistakes")
    tiny_causal_lm(tokenizer).save_pretrained(root / "policy")
    tokenizer.save_pretrained(root / "policy")
    # a tokenizer with added tokens, the embedding not resized
    grown = root / "grown"
    shutil.copytree(root / "policy", grown)
    big = type(tokenizer).from_pretrained(root / "policy")
    big.add_tokens([f"<extra_{i}>" for i in range(20)])
    big.save_pretrained(grown)
    # a directory holding only config.json + model.safetensors
    tiny_causal_lm(tokenizer).save_pretrained(root / "no_tokenizer")
    # a truncated model.safetensors
    shutil.copytree(root / "policy", root / "truncated")
    weights = root / "truncated" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    # references with fewer / more embeddings than the policy
    for name, delta in (("ref_small", -100), ("ref_big", 100)):
        from transformers import GPT2Config, GPT2LMHeadModel

        cfg = GPT2Config(vocab_size=len(tokenizer) + delta, n_positions=128, n_embd=32, n_layer=1, n_head=2)
        GPT2LMHeadModel(cfg).save_pretrained(root / name)
        tokenizer.save_pretrained(root / name)
    # encoders: a masked LM, a bare encoder, and an LM head that is not a decoder
    bert = BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                      intermediate_size=64, max_position_embeddings=128)
    for name, cls in (("bert_mlm", BertForMaskedLM), ("bert", BertModel), ("bert_lm_head", BertLMHeadModel)):
        torch.manual_seed(0)
        cls(bert).save_pretrained(root / name)
        tokenizer.save_pretrained(root / name)
    # a chat template that refuses roles other than user / assistant (as Llama's and Gemma's do)
    chat = root / "chat"
    shutil.copytree(root / "policy", chat)
    tok = type(tokenizer).from_pretrained(chat)
    tok.chat_template = (
        "{% for m in messages %}{% if m['role'] not in ['user', 'assistant'] %}"
        "{{ raise_exception('Conversation roles must be user or assistant') }}{% endif %}"
        "{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}{% if add_generation_prompt %}assistant:{% endif %}"
    )
    tok.save_pretrained(chat)

    (root / "prompts.jsonl").write_text("".join(json.dumps({"prompt": p}) + "\n" for p in GOOD))
    rewards = {
        "reward.py": "def score(prompts, responses):\n    return [float(len(r)) for r in responses]\n",
        "needs_answer.py": "def score(prompts, responses, answer):\n    return [0.0] * len(prompts)\n",
        "nan.py": "def score(prompts, responses):\n    return [float('nan')] * len(prompts)\n",
        "one_per_prompt.py": "def score(prompts, responses):\n    return [0.0] * (len(prompts) // 2)\n",
        "imports_missing.py": "import nosuchpkg_xyz\n\ndef score(prompts, responses):\n    return [0.0]\n",
    }
    for name, text in rewards.items():
        (root / name).write_text(text)
    return root


def run(assets: Path, out: Path, *extra: str, **flags: str) -> list[str]:
    """`remax train` on the module's assets (test_bad_input's argument builder)."""
    return args(assets, out, *extra, **flags)


def evaluate(assets: Path, tmp: Path, *extra: str, reward: str = "reward.py:score", policy: str = "policy") -> list[str]:
    return ["eval", "--policy", str(assets / policy), "--reference", str(assets / "policy"),
            "--data", str(assets / "prompts.jsonl"), "--reward.kind", "python",
            "--reward.function", str(assets / reward), "--out", str(tmp / "run"), "--n_prompts", "4",
            "--max_new_tokens", "4", "--device", "cpu", *extra]


def data_file(tmp: Path, *rows) -> str:
    path = tmp / "p.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in ({"prompt": "Hi"}, *rows)))
    return str(path)


def trained_then_truncated(tmp: Path, assets: Path) -> list[str]:
    """A 1-step run with a checkpoint whose weights are then cut in half; resumed."""
    constant = ("--log.save_every", "1", "--train.lr_schedule", "constant")  # so more steps may resume
    assert main(run(assets, tmp / "run", *constant)) == 0
    weights = tmp / "run" / "checkpoints" / "step-1" / "policy" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    return run(assets, tmp / "run", *constant, "--resume", "auto", "--train.steps", "2")


def chat_roles(tmp: Path, assets: Path) -> list[str]:
    rows = [{"prompt": [{"role": "user", "content": "Hi"}]}, {"prompt": [{"role": "tool", "content": "42"}]}]
    path = tmp / "chat.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return run(assets, tmp / "run", "--train.batch_size", "1", model__policy=str(assets / "chat"),
               data__train_file=str(path))


def output_file(tmp: Path, assets: Path) -> list[str]:
    (tmp / "run").write_text("not a directory")
    return run(assets, tmp / "run")


@dataclass
class Case:
    id: str
    setup: Callable[[Path, Path], list[str]]  # (tmp, assets) -> argv; tmp/run is the output directory
    words: tuple[str, ...]
    code: int = 2
    on_disk: str = "untouched"  # untouched: tmp/run as it was (absent or keep.txt); checkpoint: unchanged; any
    subprocess: bool = False
    prefix: str = ""  # "remax eval: error: " etc.; default from argv[0]


# Setups take (tmp, assets); `tmp / "run"` is the output directory.
CASES = [
    # --- wrong models
    Case("policy_without_tokenizer", lambda t, a: run(a, t / "run", model__policy=str(a / "no_tokenizer")),
         ("no tokenizer in", "no_tokenizer", "--model.tokenizer")),
    Case("policy_truncated_safetensors", lambda t, a: run(a, t / "run", model__policy=str(a / "truncated")),
         ("cannot load policy", "weights cannot be read", "truncated")),
    Case("resume_truncated_checkpoint", trained_then_truncated,
         ("checkpoint", "step-1", "is corrupt", "model.safetensors", "--resume PATH"), on_disk="checkpoint"),
    Case("policy_bert_masked_lm", lambda t, a: run(a, t / "run", model__policy=str(a / "bert_mlm")),
         ("saved as BertForMaskedLM", "not a causal (decoder-only) language model", "--model.policy")),
    Case("policy_bert_model", lambda t, a: run(a, t / "run", model__policy=str(a / "bert")),
         ("saved as BertModel", "not a causal")),
    Case("policy_attends_to_future", lambda t, a: run(a, t / "run", model__policy=str(a / "bert_lm_head")),
         ("BertLMHeadModel attends to future tokens", "is_decoder is False")),
    Case("tokenizer_larger_than_embedding", lambda t, a: run(a, t / "run", model__tokenizer=str(a / "grown")),
         ("the tokenizer has 320 tokens but the policy's embedding has 300 rows", "resize_token_embeddings")),
    Case("reference_fewer_embeddings", lambda t, a: run(a, t / "run", model__reference=str(a / "ref_small")),
         ("--model.reference has 200 token embeddings and the policy 300", "one shared vocabulary")),
    Case("reference_more_embeddings", lambda t, a: run(a, t / "run", model__reference=str(a / "ref_big")),
         ("--model.reference has 400 token embeddings", "one shared vocabulary")),
    Case("causal_lm_as_reward_model",
         lambda t, a: run(a, t / "run", "--reward.kind", "model", "--reward.model", str(a / "policy")),
         ("is a causal language model (GPT2LMHeadModel), not a reward model", "--reward.model"), subprocess=True),
    Case("float16_on_cpu", lambda t, a: run(a, t / "run", model__dtype="float16", model__device="cpu"),
         ("--model.dtype float16 on CPU", "bfloat16 or float32")),
    # --- runs
    Case("lr_1e3_diverges", lambda t, a: run(a, t / "run", train__lr="1e3", train__steps="20"),
         ("NaN/inf", "diverged", "lower --train.lr (now 1000)"), code=1, on_disk="any"),
    Case("output_dir_is_a_file", output_file, ("--output_dir", "is an existing file, not a directory"),
         on_disk="any"),
    Case("num_processes_batch_split", lambda t, a: ["train", "--num_processes", "2", *run(a, t / "run",
         train__batch_size="3")[1:]], ("--train.batch_size 3 does not split over 2 processes",)),
    # --- data and rewards
    Case("chat_role_refused_by_template", chat_roles,
         ("chat.jsonl:2:", "chat template refused this chat", "roles: tool", "Conversation roles must be user")),
    Case("reward_imports_missing_package",
         lambda t, a: run(a, t / "run", reward__function=f"{a / 'imports_missing.py'}:score"),
         ("imports_missing.py:1 imports 'nosuchpkg_xyz', which is not installed", "pip install nosuchpkg_xyz")),
    Case("pretokenized_ids", lambda t, a: run(a, t / "run", "--train.batch_size", "1",
                                              data__train_file=data_file(t, {"prompt": [309, 12, 7]})),
         ("p.jsonl:2:", "holds token ids", "pre-tokenized prompts are not supported", "pass the prompt as text")),
    Case("reward_wrong_count_names_greedy",
         lambda t, a: run(a, t / "run", "--train.batch_size", "4", reward__function=f"{a / 'one_per_prompt.py'}:score"),
         ("returned 4 values; expected 8", "4 sampled + 4 greedy baseline"), code=1, on_disk="any"),
    Case("reward_missing_column_at_load",
         lambda t, a: run(a, t / "run", reward__function=f"{a / 'needs_answer.py'}:score"),
         ("needs column(s) ['answer'] that the data does not have", "columns: none")),
    Case("plan_missing_local_path", lambda t, a: ["plan", "--model", str(t / "no-such-dir")],
         ("the path does not exist",), on_disk="any"),
    # --- eval goes through training's guards
    Case("eval_reward_missing_column", lambda t, a: evaluate(a, t, reward="needs_answer.py:score"),
         ("needs column(s) ['answer']",)),
    Case("eval_nan_reward", lambda t, a: evaluate(a, t, reward="nan.py:score"),
         ("reward", "in eval", "non-finite value(s)", "nothing was written")),
    Case("eval_wrong_count_reward", lambda t, a: evaluate(a, t, reward="one_per_prompt.py:score"),
         ("returned 4 values; expected 8", "4 sampled + 4 greedy baseline")),
    Case("eval_max_new_tokens_beyond_context",
         lambda t, a: evaluate(a, t, "--max_new_tokens", "200"),
         ("--max_new_tokens 200 does not fit the policy's context of 128 positions",)),
    Case("eval_policy_bert", lambda t, a: evaluate(a, t, policy="bert_mlm"),
         ("saved as BertForMaskedLM", "--policy")),
    # --- one run per output directory
    Case("output_dir_locked_by_live_run", lambda t, a: locked_by(t, a, os.getppid()),
         ("is in use by another remax run", f"pid {os.getppid()}", "wait for it to finish"), on_disk="lock"),
    Case("output_dir_locked_on_another_host", lambda t, a: locked_by(t, a, 1, host="elsewhere"),
         ("is in use by another remax run", "on elsewhere", "delete"), on_disk="lock"),
]


def locked_by(tmp: Path, assets: Path, pid: int, host: str = "") -> list[str]:
    import socket

    out = tmp / "run"
    out.mkdir(exist_ok=True)
    (out / "remax.lock").write_text(json.dumps({"pid": pid, "host": host or socket.gethostname(), "started": 0}))
    return run(assets, out, "--overwrite", "True")


def snapshot(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()} if path.is_dir() else {}


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_user_mistake_is_one_line(case: Case, assets, tmp_path, capsys):
    argv = case.setup(tmp_path, assets)
    out = tmp_path / "run"
    before = snapshot(out)
    if not before and not out.exists() and case.on_disk == "untouched":
        out.mkdir()
        (out / "keep.txt").write_text("precious")
    before = snapshot(out)
    if case.subprocess:
        env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
        proc = subprocess.run([sys.executable, "-m", "remax", *argv], capture_output=True, text=True, env=env,
                              timeout=300)
        code, err = proc.returncode, proc.stderr
    else:
        capsys.readouterr()
        code, err = main(argv), capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(case.prefix or f"remax {argv[0]}: error: "), err
    for word in case.words:
        assert word in lines[0], (word, lines[0])
    assert "Traceback" not in err
    assert code == case.code, err
    if case.on_disk in ("untouched", "checkpoint", "lock"):
        assert snapshot(out) == before  # nothing written, checkpoints byte for byte as they were


# ------------------------------------------------------------------ the lock, beyond one line
def test_stale_lock_of_a_dead_process_is_taken_over_and_released(assets, tmp_path, capsys):
    import socket

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    out = tmp_path / "run"
    out.mkdir()
    (out / "remax.lock").write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname(), "started": 0}))
    assert main(run(assets, out)) == 0, capsys.readouterr().err
    assert "taking over the lock of a run that is gone" in capsys.readouterr().err
    assert not (out / "remax.lock").exists() and (out / "final").is_dir()


def test_lock_is_released_after_a_refused_start(assets, tmp_path, capsys):
    """A run refused after taking the lock (the directory holds a run) leaves no lock behind."""
    out = tmp_path / "run"
    assert main(run(assets, out)) == 0
    assert main(run(assets, out)) == 2  # already holds a run
    assert "already holds a run" in capsys.readouterr().err
    assert not (out / "remax.lock").exists()


def test_second_concurrent_run_is_refused(assets, tmp_path, capsys):
    """Two real runs on one directory: the second is refused while the first runs; the first
    finishes with its own metrics only."""
    import time

    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    first = subprocess.Popen([sys.executable, "-m", "remax", *run(assets, out, "--overwrite", "True",
                              train__steps="40")], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while not (out / "remax.lock").exists() and first.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        assert (out / "remax.lock").exists(), first.communicate()
        assert main(run(assets, out, "--overwrite", "True")) == 2
        err = capsys.readouterr().err.strip()
        assert "is in use by another remax run" in err and f"pid {first.pid}" in err and err.count("\n") == 0
    finally:
        stdout, stderr = first.communicate(timeout=300)
    assert first.returncode == 0, stderr
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 41))
    assert not (out / "remax.lock").exists()


# ------------------------------------------------------------------ non-finite guard, beyond one line
def test_diverged_run_keeps_the_last_good_checkpoint(assets, tmp_path, capsys):
    out = tmp_path / "run"
    code = main(run(assets, out, "--log.save_every", "1", train__steps="20", train__lr="1e3"))
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 1 and "diverged" in err, err
    assert not (out / "final").exists()
    from remax.trainer.checkpoint import latest_checkpoint

    last = latest_checkpoint(out / "checkpoints")
    if last is not None:  # every checkpoint kept holds finite weights
        from safetensors.torch import load_file

        assert f"{last}" in err
        assert all(torch.isfinite(t).all() for t in load_file(last / "policy" / "model.safetensors").values())


def test_finite_weights_check_unit():
    from remax.trainer.guards import NonFiniteModel, check_finite_weights

    p = torch.nn.Parameter(torch.ones(3))
    opt = torch.optim.SGD([p], lr=1.0)
    check_finite_weights({"policy": opt}, 1)
    with torch.no_grad():
        p[1] = float("inf")
    with pytest.raises(NonFiniteModel, match="policy's weights became NaN/inf in the update of step 2"):
        check_finite_weights({"policy": opt}, 2)


def test_sampler_never_sees_non_finite_logits():
    from remax.rollout.logits import FiniteLogitsCheck, NonFiniteLogits

    check = FiniteLogitsCheck()
    ok = torch.zeros(2, 5)
    assert check(torch.zeros(2, 1, dtype=torch.long), ok) is ok
    for bad in (float("nan"), float("inf")):
        scores = ok.clone()
        scores[1, 2] = bad
        with pytest.raises(NonFiniteLogits):
            check(torch.zeros(2, 1, dtype=torch.long), scores)
