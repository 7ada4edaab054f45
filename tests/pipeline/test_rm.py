"""`remax rm`: the Bradley-Terry loss by hand, TRL's pair formats, and end to end: a reward
model trained on a tiny model scores held-out pairs with the same numbers through the
trainer's own forward, `--reward.kind model` and `remax serve-reward`, and learns a
marker preference above chance over seeds."""

from __future__ import annotations

import json
import math
import random

import pytest
import torch

from remax.cli import main
from remax.data import DataError, PromptRows
from remax.pipeline.losses import bradley_terry, pair_accuracy
from remax.pipeline.rm import Pair, RMConfig, RMTask, common_prefix, parse_pair, rm_examples, rm_texts
from remax.rewards.base import ResponseText

WORDS = ["the", "lord", "is", "my", "shepherd", "light", "earth", "god", "said", "and", "was", "good", "night", "deep"]


# ------------------------------------------------------------------ the loss by hand
def test_bradley_terry_by_hand():
    chosen = torch.tensor([2.0, 0.0, 1.0])
    rejected = torch.tensor([1.0, 0.0, 3.0])
    margin = torch.tensor([0.0, 1.0, 0.5])
    # -log sigmoid(d) = log(1 + exp(-d)), d = chosen - rejected - margin = 1, -1, -2.5
    want = [math.log(1 + math.exp(-1.0)), math.log(1 + math.exp(1.0)), math.log(1 + math.exp(2.5))]
    assert bradley_terry(chosen, rejected, margin).tolist() == pytest.approx(want, abs=1e-6)
    assert bradley_terry(chosen, rejected).tolist() == pytest.approx(
        [math.log(1 + math.exp(-1.0)), math.log(2.0), math.log(1 + math.exp(2.0))], abs=1e-6)
    assert pair_accuracy(chosen, rejected).tolist() == [1.0, 0.5, 0.0]


def test_bradley_terry_gradient_by_hand():
    # d/dr_c [-log sigmoid(r_c - r_r - m)] = -(1 - sigmoid(d)) = -sigmoid(-d); at d = 0: -1/2
    chosen = torch.tensor([1.5], requires_grad=True)
    rejected = torch.tensor([0.5], requires_grad=True)
    bradley_terry(chosen, rejected, torch.tensor([1.0])).sum().backward()
    assert chosen.grad.item() == pytest.approx(-0.5)
    assert rejected.grad.item() == pytest.approx(0.5)


# ------------------------------------------------------------------ TRL's formats
def test_implicit_string_prompt_is_the_shared_beginning():
    assert common_prefix("And God said light", "And God said dark") == len("And God said")
    assert common_prefix("abc", "abd") == 2
    c = RMConfig()
    pair = parse_pair({"chosen": "And God said light", "rejected": "And God said dark", "margin": 2}, c, "f:1")
    assert pair == Pair("And God said", " light", " dark", 2.0)


def test_explicit_prompt_strings_and_chats():
    c = RMConfig()
    assert parse_pair({"prompt": "Hi", "chosen": " a", "rejected": " b"}, c, "f:1") == Pair("Hi", " a", " b")
    user = [{"role": "user", "content": "Hi"}]
    row = {"prompt": user, "chosen": [{"role": "assistant", "content": "good"}],
           "rejected": [{"role": "assistant", "content": "bad"}]}
    assert parse_pair(row, c, "f:1") == Pair(user, "good", "bad")
    implicit = {"chosen": user + [{"role": "assistant", "content": "good"}],
                "rejected": user + [{"role": "assistant", "content": "bad"}]}
    assert parse_pair(implicit, c, "f:1") == Pair(user, "good", "bad")


@pytest.mark.parametrize("row, message", [
    ({"chosen": "a"}, "f:1: no 'rejected' column (columns: chosen); rename it or pass --rejected_column"),
    ({"chosen": "same", "rejected": "same"}, "the same, so the pair states no preference"),
    ({"chosen": "a", "rejected": "b", "margin": "big"}, "column 'margin' must be a finite number, got 'big'"),
    ({"chosen": "a", "rejected": ""}, "empty text in column 'rejected'"),
    ({"prompt": "p", "chosen": [{"role": "user", "content": "x"}], "rejected": "b"},
     "column 'chosen' must be one assistant message"),
])
def test_bad_pairs_are_one_line(row, message):
    with pytest.raises(DataError, match=None) as err:
        parse_pair(row, RMConfig(), "f:1")
    assert message in str(err.value) and "\n" not in str(err.value)


def test_the_training_text_is_what_the_reward_model_reads(tokenizer, chat_tokenizer):
    # no template: prompt + response + EOS (a finished response), as RewardModelReward formats it
    pairs = [Pair("And God said", " light", " dark")]
    assert rm_texts(tokenizer, pairs) == (["And God said light<|endoftext|>"], ["And God said dark<|endoftext|>"])
    # a chat template: the user turn, then the response as the assistant's turn
    chosen, _ = rm_texts(chat_tokenizer, [Pair([{"role": "user", "content": "Hi"}], "yes", "no")])
    assert chosen == ["<user>Hi\n<assistant>yes\n"]


def test_a_cut_response_is_read_without_an_end(tokenizer):
    c = RMConfig()
    row = {"prompt": "And God said", "chosen": " light", "rejected": " dark", "rejected_ended": False}
    pair = parse_pair(row, c, "f:1")
    assert (pair.chosen_ended, pair.rejected_ended) == (True, False)
    assert rm_texts(tokenizer, [pair]) == (["And God said light<|endoftext|>"], ["And God said dark"])
    # from Python, a ResponseText's own `ended` (the trainer's decoded responses carry it)
    python_row = {"prompt": "p", "chosen": ResponseText(" a", ended=False), "rejected": " b"}
    assert parse_pair(python_row, c, "row 0").chosen_ended is False
    with pytest.raises(DataError, match="column 'chosen_ended' must be true or false, got 'yes'"):
        parse_pair({**row, "chosen_ended": "yes"}, c, "f:1")


def test_over_long_pairs_are_dropped(tokenizer):
    rows = PromptRows([{"chosen": "And God said light", "rejected": "And God said dark"},
                       {"chosen": "a " * 40 + "x", "rejected": "a " * 40 + "y"}])
    examples = rm_examples(rows, tokenizer, RMConfig(), max_length=16)
    assert len(examples) == 1 and examples[0].chosen[-1] == tokenizer.eos_token_id


# ------------------------------------------------------------------ end to end
def marker_pairs(n: int, seed: int) -> list[dict]:
    """A learnable preference: the chosen response holds the word 'joy', the rejected one
    does not; otherwise both are random words (their positions and lengths vary)."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        prompt = " ".join(rng.sample(WORDS, 3))
        chosen = rng.sample(WORDS, rng.randint(2, 4))
        chosen.insert(rng.randint(0, len(chosen)), "joy")
        rejected = rng.sample(WORDS, rng.randint(3, 5))
        rows.append({"prompt": prompt, "chosen": " " + " ".join(chosen), "rejected": " " + " ".join(rejected)})
    return rows


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def rm_args(base, data, out, seed, steps=40):
    return ["rm", "--model", str(base), "--train_file", str(data), "--output_dir", str(out), "--steps", str(steps),
            "--batch_size", "8", "--micro_batch_size", "4", "--lr", "3e-3", "--eval_fraction", "0.25",
            "--seed", str(seed), "--progress", "False"]


@pytest.mark.slow
def test_rm_end_to_end_scores_match_everywhere(tmp_path, base_dir, seed_offset, capsys):
    from transformers import AutoConfig, AutoModelForSequenceClassification

    from remax.config import RewardConfig
    from remax.data import split_rows
    from remax.models.loading import load_tokenizer
    from remax.rewards import reward_from_config
    from remax.rewards.http import HttpReward
    from remax.rewards.model import RewardModelReward
    from remax.rewards.server import RunningServer, create_app

    seed = 3 + seed_offset
    rows = [dict(r, rejected_ended=i % 3 != 0) for i, r in enumerate(marker_pairs(64, seed))]  # some responses cut
    data = write_jsonl(tmp_path / "pairs.jsonl", rows)
    out = tmp_path / "rm"
    assert main(rm_args(base_dir, data, out, seed, steps=12)) == 0
    assert "held-out pair accuracy" in capsys.readouterr().out
    final = out / "final"
    config = AutoConfig.from_pretrained(final)
    assert config.num_labels == 1 and config.architectures == ["GPT2ForSequenceClassification"]
    assert config.pad_token_id == load_tokenizer(final).pad_token_id is not None
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == list(range(1, 13)) and "eval/accuracy" in metrics[-1]

    # the held-out pairs, as run_rm split them (the same seeded split_rows)
    _, held = split_rows(PromptRows(rows), 0.25, seed)
    prompts = [r["prompt"] for r in held] * 2
    responses = [ResponseText(r["chosen"], ended=True) for r in held] + \
        [ResponseText(r["rejected"], ended=r["rejected_ended"]) for r in held]
    assert any(not r["rejected_ended"] for r in held)
    # 1. the trainer's own forward on the examples it trains on
    model = AutoModelForSequenceClassification.from_pretrained(final).eval()
    examples = rm_examples(held, load_tokenizer(final), RMConfig(), max_length=1024)
    with torch.no_grad():
        own = torch.cat(RMTask().scores(model, examples))
    # 2. --reward.kind model, as remax train builds it
    local = reward_from_config(RewardConfig(kind="model", model=str(final)), device="cpu")(prompts, responses)
    # 3. remax serve-reward --kind model, through the HTTP client remax train uses
    with RunningServer(create_app(RewardModelReward(str(final)))) as server:
        served = HttpReward(server.url)(prompts, responses)
    assert torch.allclose(local, own, atol=1e-5), (local, own)
    assert torch.allclose(served, local, atol=1e-6)
    # the logged held-out accuracy is the accuracy of these very scores
    k = len(held)
    assert metrics[-1]["eval/accuracy"] == pytest.approx(float(pair_accuracy(local[:k], local[k:]).mean()), abs=1e-6)
    assert metrics[-1]["eval/loss"] == pytest.approx(float(bradley_terry(local[:k], local[k:]).mean()), abs=1e-5)

    # and remax train takes it as its reward (one ReMax step against it)
    prompts_file = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": r["prompt"]} for r in held[:4]])
    assert main(["train", "--model.policy", str(base_dir), "--data.train_file", str(prompts_file),
                 "--reward.kind", "model", "--reward.model", str(final), "--output_dir", str(tmp_path / "rl"),
                 "--train.steps", "1", "--train.batch_size", "2", "--rollout.max_new_tokens", "4",
                 "--log.progress", "False"]) == 0
    step = json.loads((tmp_path / "rl" / "metrics.jsonl").read_text().splitlines()[0])
    assert math.isfinite(step["rollout/reward_mean"]) and math.isfinite(step["rollout/baseline_reward_mean"])


@pytest.mark.slow
@pytest.mark.learning
def test_rm_learns_a_marker_preference_above_chance(tmp_path, base_dir, seed_offset, record_outcome):
    from remax.pipeline.rm import run_rm

    seed = 11 + seed_offset
    config = RMConfig(model=str(base_dir), output_dir=str(tmp_path / "rm"), steps=40, batch_size=8, micro_batch_size=8,
                      lr=3e-3, eval_fraction=0.25, seed=seed, progress=False)
    result = run_rm(config, rows=marker_pairs(128, seed))
    # 32 held-out pairs never trained on; chance is 0.5 (the untrained head scores at random).
    # Measured over REMAX_TEST_SEED_OFFSET 0..4 x OMP_NUM_THREADS 1, 2: 1.0 in all ten runs.
    record_outcome("rm_heldout_accuracy", result["eval_accuracy"], 0.75)
    assert result["eval_pairs"] == 32
    assert result["eval_accuracy"] >= 0.75, result


def test_chat_pairs_score_alike_in_training_and_in_the_reward(tmp_path, tokenizer, chat_tokenizer):
    """The chat-template path (no EOS of its own: the template closes the turn; special
    tokens not added again), with implicit chat prompts and a margin column."""
    from transformers import AutoModelForSequenceClassification

    from remax.models.loading import load_tokenizer
    from remax.models.tiny import tiny_causal_lm
    from remax.pipeline.rm import run_rm
    from remax.rewards.model import RewardModelReward

    rows = []
    for i, r in enumerate(marker_pairs(8, 0)):
        user = [{"role": "user", "content": r["prompt"]}]
        rows.append({"chosen": user + [{"role": "assistant", "content": r["chosen"]}],
                     "rejected": user + [{"role": "assistant", "content": r["rejected"]}], "margin": i % 2})
    config = RMConfig(output_dir=str(tmp_path / "rm"), steps=2, batch_size=4, lr=1e-3, eval_fraction=0, progress=False)
    final = run_rm(config, rows=rows, model=tiny_causal_lm(tokenizer), tokenizer=chat_tokenizer)["path"]
    tok = load_tokenizer(final)
    assert tok.chat_template == chat_tokenizer.chat_template  # saved with the model
    pairs = [parse_pair(row, config, f"row {i}") for i, row in enumerate(rows)]
    examples = rm_examples(PromptRows(rows), tok, config, max_length=64)
    with torch.no_grad():
        own = torch.cat(RMTask().scores(AutoModelForSequenceClassification.from_pretrained(final).eval(), examples))
    reward = RewardModelReward(str(final))
    responses = [ResponseText(p.chosen, ended=True) for p in pairs] + [ResponseText(p.rejected, ended=True) for p in pairs]
    assert torch.allclose(reward([p.prompt for p in pairs] * 2, responses), own, atol=1e-5)


@pytest.mark.parametrize("args, message", [
    (["--train_file", "PAIRS"], "no base model; pass --model PATH"),
    (["--model", "MODEL"], "no preference pairs; pass --train_file FILE"),
    (["--model", "MODEL", "--train_file", "PROMPTS"], "PROMPTS:1: no 'chosen' column (columns: prompt); rename it or "
                                                       "pass --chosen_column"),
    (["--model", "MODEL", "--train_file", "PAIRS", "--eval_fraction", "0.99"], "leaves none to train on"),
])
def test_bad_rm_input_is_one_line(args, message, tmp_path, base_dir, capsys):
    pairs = write_jsonl(tmp_path / "pairs.jsonl", marker_pairs(4, 0))
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": "a"}])
    names = {"MODEL": str(base_dir), "PAIRS": str(pairs), "PROMPTS": str(prompts)}
    assert main(["rm", "--output_dir", str(tmp_path / "out"), *[names.get(a, a) for a in args]]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and message.replace("PROMPTS", str(prompts)) in err, err


def test_a_model_with_two_labels_is_refused(tmp_path, tokenizer):
    from transformers import GPT2Config, GPT2ForSequenceClassification

    from remax.pipeline.rm import load_reward_base

    two = GPT2ForSequenceClassification(GPT2Config(vocab_size=len(tokenizer), n_layer=1, n_embd=16, n_head=2,
                                                   num_labels=2))
    with pytest.raises(DataError, match="num_labels=2; a reward model has one"):
        load_reward_base(RMConfig(), two, torch.device("cpu"))


def test_serve_reward_hands_the_reward_each_responses_end():
    """remax serve-reward rebuilds ResponseTexts from the client's 'ended' list, so a served
    reward model closes a finished response and leaves a cut one open, as a local one does."""
    from remax.rewards.http import HttpReward
    from remax.rewards.server import RunningServer, create_app

    def seen(prompts, responses):
        return [{True: 1.0, False: 0.0, None: -1.0}[getattr(r, "ended", None)] for r in responses]

    with RunningServer(create_app(seen)) as server:
        client = HttpReward(server.url)
        mixed = [ResponseText("x", ended=True), ResponseText("y", ended=False), "z"]
        assert client(["p"] * 3, mixed).tolist() == [1.0, 0.0, -1.0]
        assert client(["p"] * 2, ["a", "b"]).tolist() == [-1.0, -1.0]  # plain strings: nothing sent, not known


def test_lora_reward_model_trains_the_head_merges_and_resumes(tmp_path, tokenizer):
    """--lora.r: adapters on the trunk, the head trained in full (peft's SEQ_CLS); final/ is
    a plain one-label classifier that scores as training read it; resume is bitwise."""
    from transformers import AutoModelForSequenceClassification

    from remax.config import LoraConfig
    from remax.models.tiny import tiny_causal_lm
    from remax.pipeline.rm import run_rm

    rows = marker_pairs(16, 1)

    def config(out, **kw):
        return RMConfig(output_dir=str(tmp_path / out), steps=4, batch_size=4, lr=1e-2, eval_fraction=0, progress=False,
                        lora=LoraConfig(r=4, alpha=8), **kw)

    full = run_rm(config("full", save_every=2), rows=rows, model=tiny_causal_lm(tokenizer), tokenizer=tokenizer)["path"]
    from safetensors.torch import load_file

    saved = load_file(full / "adapter" / "adapter_model.safetensors")
    assert any(".score." in k for k in saved) and any("lora_A" in k for k in saved)  # the head saved with the adapter
    merged = AutoModelForSequenceClassification.from_pretrained(full).eval()
    assert merged.config.num_labels == 1 and merged.config.pad_token_id == tokenizer.pad_token_id
    base = tiny_causal_lm(tokenizer).state_dict()
    trunk = {k.removeprefix("transformer."): v for k, v in merged.state_dict().items() if k.startswith("transformer.")}
    changed = {k for k, v in trunk.items() if not torch.equal(v, base["transformer." + k])}
    assert changed and all("c_attn" in k for k in changed)  # the adapted layers only, merged in
    examples = rm_examples(PromptRows(rows), tokenizer, RMConfig(), max_length=64)
    with torch.no_grad():
        chosen, rejected = RMTask().scores(merged, examples)
    reward = reward_scores(full, rows)
    assert torch.allclose(reward, torch.cat([chosen, rejected]), atol=1e-5)
    resumed = run_rm(config("resumed", resume=str(tmp_path / "full" / "checkpoints" / "step-2")), rows=rows,
                     model=tiny_causal_lm(tokenizer), tokenizer=tokenizer)["path"]
    a = AutoModelForSequenceClassification.from_pretrained(resumed).state_dict()
    assert all(torch.equal(v, a[k]) for k, v in merged.state_dict().items())  # the head came back too


def reward_scores(path, rows):
    """RewardModelReward's scores of rows' chosen then rejected responses, all finished."""
    from remax.rewards.model import RewardModelReward

    reward = RewardModelReward(str(path))
    responses = [ResponseText(r["chosen"], ended=True) for r in rows] + [ResponseText(r["rejected"], ended=True)
                                                                        for r in rows]
    return reward([r["prompt"] for r in rows] * 2, responses)
