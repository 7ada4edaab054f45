"""`remax sft`: the completion-only loss by hand, the layout of each TRL format (prompt
tokens masked with -100), the same gradient however a batch is split (micro-batches,
two DDP processes), resume, LoRA, the CLI end to end (its output trains under
`remax train --model.policy`), and learning over seeds."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest
import torch

from remax.cli import main
from remax.data import DataError, PromptRows
from remax.pipeline.losses import IGNORE, completion_nll
from remax.pipeline.sft import SFTConfig, encode_row, load_sft_rows, run_sft, sft_examples, sft_segments

ROWS = [{"prompt": p, "completion": c} for p, c in [("The Lord is", " my shepherd"), ("And God said", " Let there be light"),
                                                     ("Love is", " patient"), ("O give", " thanks")]] * 4


# ------------------------------------------------------------------ the loss by hand
def test_completion_nll_by_hand():
    # V = 2. Position 0: logits (0, 0) -> p = (1/2, 1/2); position 1: (ln 3, 0) -> p = (3/4, 1/4)
    logits = torch.tensor([[[0.0, 0.0], [math.log(3.0), 0.0], [5.0, -5.0]]])  # (1, 3, 2)
    # position t predicts labels[t + 1]; labels[0] is never a target; -100 is no target
    nll, n = completion_nll(logits, torch.tensor([[IGNORE, IGNORE, 1]]))
    assert (nll.item(), n.item()) == (pytest.approx(math.log(4.0)), 1)  # -ln(1/4) at position 1
    nll, n = completion_nll(logits, torch.tensor([[7, 0, 1]]))
    assert (nll.item(), n.item()) == (pytest.approx(math.log(2.0) + math.log(4.0)), 2)  # -ln(1/2) - ln(1/4)
    nll, n = completion_nll(logits, torch.tensor([[IGNORE, IGNORE, IGNORE]]))
    assert (nll.item(), n.item()) == (0.0, 0)


def test_prompt_tokens_are_masked_and_the_completion_ends_with_eos(tokenizer):
    c = SFTConfig()
    ex = encode_row(sft_segments(ROWS[0], tokenizer, c, "prompt_completion", "row 0"), tokenizer, templated=False)
    from remax.data import encode_prompts

    ids, mask = encode_prompts(tokenizer, ["The Lord is"], 256)  # the prompt ids remax train rolls out from
    prompt = ids[0][mask[0].bool()].tolist()
    completion = tokenizer(" my shepherd", add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    assert ex.input_ids == prompt + completion
    assert ex.labels == [IGNORE] * len(prompt) + completion


def test_a_chat_prompt_is_rendered_as_remax_train_renders_it(chat_tokenizer):
    from remax.data import prompt_texts

    c = SFTConfig()
    user = [{"role": "user", "content": "Hi"}]
    row = {"prompt": user, "completion": [{"role": "assistant", "content": "Hello"}]}
    segments = sft_segments(row, chat_tokenizer, c, "prompt_completion", "row 0")
    assert segments == [("<user>Hi\n<assistant>", False), ("Hello\n", True)]
    assert segments[0][0] == prompt_texts(chat_tokenizer, [user], False)[0]  # the policy's prompt in remax train
    # a string completion after a chat prompt is one assistant turn; --chat_template wraps a string prompt
    assert sft_segments({"prompt": user, "completion": "Hello"}, chat_tokenizer, c, "prompt_completion", "r") == segments
    wrapped = SFTConfig(chat_template=True)
    assert sft_segments({"prompt": "Hi", "completion": "Hello"}, chat_tokenizer, wrapped, "prompt_completion", "r") == segments


def test_messages_train_every_assistant_turn_only(chat_tokenizer):
    messages = [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello"}, {"role": "user", "content": "Bye"},
                {"role": "assistant", "content": "Farewell"}]
    segments = sft_segments({"messages": messages}, chat_tokenizer, SFTConfig(), "messages", "row 0")
    assert segments == [("<system>Be kind.\n<user>Hi\n<assistant>", False), ("Hello\n", True),
                        ("<user>Bye\n<assistant>", False), ("Farewell\n", True)]
    ex = encode_row(segments, chat_tokenizer, templated=True)
    trained = [t for t, label in zip(ex.input_ids, ex.labels) if label != IGNORE]
    assert chat_tokenizer.decode(trained) == "Hello\nFarewell\n"
    assert chat_tokenizer.decode(ex.input_ids) == chat_tokenizer.apply_chat_template(messages, tokenize=False)


def test_format_detection_and_one_line_errors(tmp_path, tokenizer):
    rows, fmt = load_sft_rows(SFTConfig(), [{"messages": [{"role": "user", "content": "x"}]}])
    assert fmt == "messages"
    path = tmp_path / "chat.jsonl"
    path.write_text(json.dumps({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}) + "\n")
    assert load_sft_rows(SFTConfig(train_file=str(path)))[1] == "messages"
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "a", "answer": "b"}) + "\n")
    rows, fmt = load_sft_rows(SFTConfig(train_file=str(bad)))
    with pytest.raises(DataError, match=r"bad.jsonl:1: no 'completion' column \(columns: prompt, answer\); rename it or "
                                        r"pass --completion_column"):
        sft_examples(rows, tokenizer, SFTConfig(), fmt, 64)
    with pytest.raises(DataError, match="needs a tokenizer with a chat template"):
        sft_examples(PromptRows([{"messages": [{"role": "assistant", "content": "b"}]}]), tokenizer, SFTConfig(),
                     "messages", 64)
    with pytest.raises(DataError, match="no assistant message"):
        sft_segments({"messages": [{"role": "user", "content": "a"}]}, tokenizer, SFTConfig(), "messages", "r")


def test_rows_are_cut_at_max_length_and_emptied_rows_dropped(tokenizer):
    rows = PromptRows([{"prompt": "The Lord is", "completion": " my shepherd"},
                       {"prompt": "And God said " * 10, "completion": " light"}])
    examples = sft_examples(rows, tokenizer, SFTConfig(), "prompt_completion", 12)
    assert len(examples) == 1 and len(examples[0].input_ids) <= 12


# ------------------------------------------------------------------ the same update however split
def _final_weights(path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path).state_dict()


def _config(out, **kw):
    base = dict(output_dir=str(out), steps=3, batch_size=4, micro_batch_size=4, lr=1e-2, progress=False, seed=0)
    return SFTConfig(**{**base, **kw})


def test_micro_batches_give_the_same_update(tmp_path, tokenizer):
    from remax.models.tiny import tiny_causal_lm

    whole = run_sft(_config(tmp_path / "a", disable_dropout=True), model=tiny_causal_lm(tokenizer), tokenizer=tokenizer,
                    rows=ROWS)
    split = run_sft(_config(tmp_path / "b", micro_batch_size=1, disable_dropout=True), model=tiny_causal_lm(tokenizer),
                    tokenizer=tokenizer, rows=ROWS)
    # the loss is the global token mean and the gradient its gradient: the same logged loss and
    # gradient norm (which a per-micro-batch normaliser would scale) at every step
    logs = [[json.loads(line) for line in (tmp_path / d / "metrics.jsonl").read_text().splitlines()] for d in "ab"]
    for x, y in zip(*logs):
        assert x["loss/sft"] == pytest.approx(y["loss/sft"], rel=1e-5)
        assert x["grad/norm"] == pytest.approx(y["grad/norm"], rel=1e-4)
    a, b = _final_weights(whole), _final_weights(split)
    # Adam divides by sqrt(v): float rounding in nearly-zero gradients moves a weight by a
    # small share of one lr-sized step (measured 1.6e-5 at lr 1e-2 after 3 steps)
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-4
    assert any((a[k] - tiny_causal_lm(tokenizer).state_dict()[k]).abs().max() > 1e-3 for k in a)  # it did train


def test_resume_continues_bit_for_bit(tmp_path, tokenizer):
    from remax.models.tiny import tiny_causal_lm

    full = tmp_path / "full"
    run_sft(_config(full, steps=4, save_every=2), model=tiny_causal_lm(tokenizer), tokenizer=tokenizer, rows=ROWS)
    # a second run from the step-2 checkpoint (dropout on: its RNG is restored too)
    resumed = tmp_path / "resumed"
    run_sft(_config(resumed, steps=4, resume=str(full / "checkpoints" / "step-2")), model=tiny_causal_lm(tokenizer),
            tokenizer=tokenizer, rows=ROWS)
    a, b = _final_weights(full / "final"), _final_weights(resumed / "final")
    assert all(torch.equal(a[k], b[k]) for k in a)
    lines = [json.loads(line) for line in (resumed / "metrics.jsonl").read_text().splitlines()]
    first = [json.loads(line) for line in (full / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in lines] == [1, 2, 3, 4]
    assert [m["loss/sft"] for m in lines] == [m["loss/sft"] for m in first]
    with pytest.raises(Exception, match="already holds a run"):  # a second plain start is refused
        run_sft(_config(full, steps=4), model=tiny_causal_lm(tokenizer), tokenizer=tokenizer, rows=ROWS)


def test_lora_writes_a_merged_model_and_the_adapter(tmp_path, tokenizer):
    from remax.config import LoraConfig
    from remax.models import load_causal_lm
    from remax.models.tiny import tiny_causal_lm

    final = run_sft(_config(tmp_path / "lora", lora=LoraConfig(r=4, alpha=8)), model=tiny_causal_lm(tokenizer),
                    tokenizer=tokenizer, rows=ROWS)
    assert (final / "adapter" / "adapter_config.json").is_file()
    merged = load_causal_lm(final).state_dict()  # a plain causal LM (what remax train --model.policy loads)
    base = tiny_causal_lm(tokenizer).state_dict()
    changed = [k for k in base if not torch.equal(base[k], merged[k])]
    assert changed and all("c_attn" in k for k in changed)  # peft's GPT-2 default target, nothing else


# ------------------------------------------------------------------ end to end
@pytest.mark.slow
def test_cli_sft_then_remax_train_loads_it(tmp_path, base_dir, capsys):
    data = tmp_path / "sft.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    out = tmp_path / "sft"
    assert main(["sft", "--model", str(base_dir), "--train_file", str(data), "--output_dir", str(out), "--steps", "3",
                 "--batch_size", "4", "--lr", "1e-2", "--progress", "False"]) == 0
    assert "done: wrote" in capsys.readouterr().out
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1, 2, 3] and all(m["train/tokens"] > 0 for m in metrics)
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": r["prompt"]}) + "\n" for r in ROWS[:4]))
    reward = tmp_path / "r.py"
    reward.write_text("def score(prompts, responses):\n    return [float(len(r)) for r in responses]\n")
    assert main(["train", "--model.policy", str(out / "final"), "--data.train_file", str(prompts),
                 "--reward.function", f"{reward}:score", "--output_dir", str(tmp_path / "rl"), "--train.steps", "1",
                 "--train.batch_size", "2", "--rollout.max_new_tokens", "4", "--log.progress", "False"]) == 0
    # bad input is one line
    assert main(["sft", "--model", str(base_dir), "--train_file", str(prompts), "--output_dir", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "no 'completion' column" in err and "--completion_column" in err


@pytest.mark.slow
def test_two_processes_give_the_one_process_update(tmp_path, base_dir, tokenizer):
    from remax.models import load_causal_lm

    data = tmp_path / "sft.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    env.update(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    cmd = [sys.executable, "-m", "remax", "sft", "--num_processes", "2", "--output_dir", str(tmp_path / "two"),
           "--model", str(base_dir), "--train_file", str(data), "--steps", "2", "--batch_size", "4", "--lr", "1e-2",
           "--device", "cpu", "--disable_dropout", "True", "--save_every", "2", "--progress", "False"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("done: wrote") == 1  # rank 0 alone reports
    state = torch.load(tmp_path / "two" / "checkpoints" / "step-2" / "trainer_state.pt", weights_only=True)
    assert len(state["run_state"]["rng"]["ranks"]) == 2  # both ranks' RNG streams
    # the same run in one process, here: each rank took 2 of the 4 rows of a step
    one = run_sft(_config(tmp_path / "one", steps=2, disable_dropout=True, seed=0), model=load_causal_lm(base_dir),
                  tokenizer=tokenizer, rows=ROWS)
    logs = [[json.loads(line) for line in (tmp_path / d / "metrics.jsonl").read_text().splitlines()]
            for d in ("one", "two")]
    for x, y in zip(*logs):  # the global token mean and its gradient on both
        assert x["loss/sft"] == pytest.approx(y["loss/sft"], rel=1e-5)
        assert x["grad/norm"] == pytest.approx(y["grad/norm"], rel=1e-4)
        assert x["train/tokens"] == y["train/tokens"]
    a, b = _final_weights(one), _final_weights(tmp_path / "two" / "final")
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-4  # Adam's sqrt(v) and rounding, as above


@pytest.mark.slow
@pytest.mark.learning
def test_sft_learns_the_completion_of_unseen_prompts(tmp_path, tokenizer, seed_offset, record_outcome):
    import random

    from remax.models.tiny import tiny_causal_lm

    seed = 5 + seed_offset
    rng = random.Random(seed)
    words = ["the", "lord", "is", "my", "shepherd", "light", "earth", "god", "said", "and", "was", "good"]
    rows = [{"prompt": " ".join(rng.sample(words, 3)), "completion": " amen"} for _ in range(64)]
    config = _config(tmp_path / "learn", steps=40, batch_size=8, lr=1e-2, eval_fraction=0.25, seed=seed)
    final = run_sft(config, model=tiny_causal_lm(tokenizer, seed=seed), tokenizer=tokenizer, rows=rows)
    last = json.loads((tmp_path / "learn" / "metrics.jsonl").read_text().splitlines()[-1])
    # 16 held-out prompts (never trained on); ' amen' + EOS is 5 tokens. At init the loss is
    # about ln(300) = 5.7 nats/token and the greedy token accuracy about 0. Measured over
    # REMAX_TEST_SEED_OFFSET 0..4 x OMP_NUM_THREADS 1, 2: eval/loss 0.23-0.42, token accuracy 0.96-1.0.
    record_outcome("sft_heldout_completion_loss", last["eval/loss"], 1.5)
    record_outcome("sft_heldout_token_accuracy", last["eval/token_accuracy"], 0.8)
    assert last["eval/loss"] < 1.5 and last["eval/token_accuracy"] >= 0.8, last
    from remax.models import load_causal_lm, load_tokenizer

    model, tok = load_causal_lm(final), load_tokenizer(final)
    ids = tok(["god said light"], return_tensors="pt")
    out = model.generate(**ids, max_new_tokens=5, do_sample=False, pad_token_id=tok.pad_token_id)
    # final/ reloads and continues an unseen prompt towards ' amen'; its last character may still be
    # wrong within the bound above (at offset 5 a run gave ' ame' + EOS: 4 of 5 tokens right)
    assert tok.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True).startswith(" am")


def test_yaml_config_flags_and_epochs(tmp_path, tokenizer):
    from remax.cli import parse_pipeline_args
    from remax.pipeline.common import total_steps

    yaml_file = tmp_path / "sft.yaml"
    yaml_file.write_text("model: m\nlr: 1.0e-4\nepochs: 3\nlora: {r: 8, target_modules: [c_attn]}\n")
    config = parse_pipeline_args(SFTConfig, ["--config", str(yaml_file), "--lr", "3e-4", "--batch_size", "4"],
                                 prog="remax sft", description="")
    assert (config.model, config.lr, config.epochs, config.lora.r, config.lora.target_modules) == \
        ("m", 3e-4, 3, 8, ["c_attn"])
    assert total_steps(config, 10) == 3 * (10 // 4)  # epochs x full batches (the short tail is dropped)
    assert total_steps(SFTConfig(steps=7), 10) == 7


@pytest.mark.parametrize("args, message", [
    (["--train_file", "x.jsonl"], "no model to fine-tune; pass --model PATH"),
    (["--model", "MODEL"], "no training data; pass --train_file FILE"),
    (["--model", "MODEL", "--train_file", "missing.jsonl"], "prompt file 'missing.jsonl' not found; pass --train_file"),
    (["--model", "MODEL", "--train_file", "x.jsonl", "--eval_fraction", "1.5"], "--eval_fraction must be in [0, 1)"),
    (["--model", "MODEL", "--train_file", "x.jsonl", "--lora.r", "-1"], "--lora.r must be >= 0"),
    (["--model", "MODEL", "--train_file", "x.jsonl", "--batch_size", "0"], "--batch_size must be >= 1"),
    (["--model", "MODEL", "--lrr", "1"], "unknown option --lrr; did you mean --lr?"),
    (["--model", "MODEL", "--train_file", "x.jsonl", "--log.report_to", "tensorbord"],
     "--log.report_to: unknown backend 'tensorbord'; did you mean 'tensorboard'?"),
])
def test_bad_sft_input_is_one_line(args, message, tmp_path, base_dir, capsys):
    args = [str(base_dir) if a == "MODEL" else a for a in args]
    assert main(["sft", "--output_dir", str(tmp_path / "out"), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and message in err, err


def test_a_signal_stops_with_a_checkpoint_and_resume_finishes_the_same_run(tmp_path, tokenizer, monkeypatch):
    """A first SIGINT (Ctrl-C) ends the step in progress, saves checkpoints/step-N and stops
    in one line; --resume auto then gives the weights of the run that was never stopped."""
    import os
    import signal

    from remax.errors import RunStopped
    from remax.models.tiny import tiny_causal_lm
    from remax.pipeline import sft as sft_module

    full = run_sft(_config(tmp_path / "full", steps=4), model=tiny_causal_lm(tokenizer), tokenizer=tokenizer, rows=ROWS)

    class InterruptedTask(sft_module.SFTTask):
        calls = 0

        def loss(self, model, examples):
            InterruptedTask.calls += 1
            if InterruptedTask.calls == 2:  # inside step 2: the guard records it, the step finishes
                os.kill(os.getpid(), signal.SIGINT)
            return super().loss(model, examples)

    with monkeypatch.context() as patch:
        patch.setattr(sft_module, "SFTTask", InterruptedTask)
        with pytest.raises(RunStopped, match=r"stopped by SIGINT after step 2; saved .*step-2; continue with the same "
                                             r"command plus --resume auto"):
            run_sft(_config(tmp_path / "cut", steps=4), model=tiny_causal_lm(tokenizer), tokenizer=tokenizer, rows=ROWS)
    assert not (tmp_path / "cut" / "final").exists()
    resumed = run_sft(_config(tmp_path / "cut", steps=4, resume="auto"), model=tiny_causal_lm(tokenizer),
                      tokenizer=tokenizer, rows=ROWS)
    a, b = _final_weights(full), _final_weights(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_nan_losses_skip_the_update_and_three_in_a_row_stop(tmp_path, tokenizer, monkeypatch):
    from remax.errors import RunStopped
    from remax.models.tiny import tiny_causal_lm
    from remax.pipeline import sft as sft_module

    class NaNTask(sft_module.SFTTask):
        def loss(self, model, examples):
            total, stats = super().loss(model, examples)
            return total * float("nan"), stats

    monkeypatch.setattr(sft_module, "SFTTask", NaNTask)
    model = tiny_causal_lm(tokenizer)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(RunStopped, match=r"NaN/inf in 3 steps in a row \(up to step 3; those updates were skipped\); "
                                         r"lower --lr"):
        run_sft(_config(tmp_path / "nan", steps=6), model=model, tokenizer=tokenizer, rows=ROWS)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # no update was taken
    lines = [json.loads(line) for line in (tmp_path / "nan" / "metrics.jsonl").read_text().splitlines()]
    assert [m["train/nonfinite_steps"] for m in lines] == [1, 2, 3]


def test_tensorboard_logging(tmp_path, tokenizer):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from remax.models.tiny import tiny_causal_lm
    from remax.pipeline.common import ReportConfig

    config = _config(tmp_path / "tb", steps=2, log=ReportConfig(report_to=["tensorboard"]))
    run_sft(config, model=tiny_causal_lm(tokenizer), tokenizer=tokenizer, rows=ROWS)
    events = EventAccumulator(str(tmp_path / "tb" / "tensorboard"))
    events.Reload()
    assert [e.step for e in events.Scalars("loss/sft")] == [1, 2]
