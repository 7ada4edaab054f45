"""Chat prompts (a list of {role, content} messages): checked at load, rendered with the
tokenizer's chat template and the generation prompt, one clear line when there is none."""

from __future__ import annotations

import pytest
import torch

from remax.data import DataError, PromptRows, check_row, encode_prompts, prompt_texts, validate_prompts

CHAT = [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "Hi"}]


def test_chat_is_rendered_with_the_generation_prompt(chat_tokenizer):
    # CHAT_TEMPLATE (conftest) writes '<role>content' lines, then '<assistant>'.
    assert prompt_texts(chat_tokenizer, [CHAT], chat_template=False) == ["<system>Be kind.\n<user>Hi\n<assistant>"]
    # plain strings are left alone unless data.chat_template asks, then wrapped as one user turn
    assert prompt_texts(chat_tokenizer, ["Love is", CHAT], chat_template=False)[0] == "Love is"
    assert prompt_texts(chat_tokenizer, ["Love is"], chat_template=True) == ["<user>Love is\n<assistant>"]


def test_encoding_a_mixed_batch_matches_each_text_alone(chat_tokenizer):
    ids, mask = encode_prompts(chat_tokenizer, ["Love is", CHAT], max_prompt_tokens=64)
    plain = chat_tokenizer("Love is")["input_ids"]
    chat = chat_tokenizer("<system>Be kind.\n<user>Hi\n<assistant>", add_special_tokens=False)["input_ids"]
    assert ids.shape == (2, max(len(plain), len(chat)))
    for row, expected in zip(range(2), (plain, chat)):  # left padding: the tokens sit at the end
        assert ids[row, ids.shape[1] - len(expected):].tolist() == expected
        assert mask[row].sum() == len(expected)
    assert torch.equal(mask[:, -1], torch.ones(2, dtype=torch.long))


def test_a_tokenizer_without_a_chat_template_is_one_line(tokenizer):
    assert not getattr(tokenizer, "chat_template", None)
    rows = PromptRows([{"prompt": "Love is"}, {"prompt": CHAT}], ["p.jsonl:1", "p.jsonl:2"])
    with pytest.raises(DataError, match=r"^p\.jsonl:2: a chat prompt \(a list of messages\) needs a tokenizer with a "
                                        r"chat template, and this one has none; pass --model.tokenizer"):
        validate_prompts(rows, tokenizer)


@pytest.mark.parametrize("prompt, message", [
    ([], "empty chat"),
    ([{"role": "user"}], "chat message 0 .* must be"),
    (["Hi"], "chat message 0 .* must be"),
    ([{"role": "user", "content": "ok"}, {"role": 1, "content": "x"}], "chat message 1"),
    ([{"role": "user", "content": "  "}], "chat in column .prompt. has no text in any message"),
])
def test_bad_chats_name_the_row(prompt, message):
    with pytest.raises(DataError, match=rf"^f\.jsonl:7: {message}"):
        check_row({"prompt": prompt}, "prompt", "f.jsonl:7")
    check_row({"prompt": CHAT}, "prompt", "f.jsonl:7")  # a good chat passes


def test_training_on_chat_prompts_from_parquet(chat_tokenizer, tmp_path, capsys):
    """End to end: chats in a Parquet file, rendered by the policy tokenizer's chat template;
    the reward sees each chat as its list of messages (here it counts them)."""
    import json

    import pandas as pd

    from remax.cli import main
    from remax.models.tiny import tiny_causal_lm

    policy = tmp_path / "policy"
    tiny_causal_lm(chat_tokenizer, n_positions=128).save_pretrained(policy)
    chat_tokenizer.save_pretrained(policy)  # the chat template travels with the tokenizer
    pd.DataFrame({"prompt": [CHAT, CHAT[1:], CHAT, CHAT[1:]]}).to_parquet(tmp_path / "chats.parquet")
    (tmp_path / "r.py").write_text("def turns(prompts, responses):\n    return [float(len(p)) for p in prompts]\n")
    out = tmp_path / "run"
    code = main(["train", "--output_dir", str(out), "--model.policy", str(policy),
                 "--data.train_file", str(tmp_path / "chats.parquet"), "--reward.function", f"{tmp_path / 'r.py'}:turns",
                 "--rollout.max_new_tokens", "4", "--train.steps", "1", "--train.batch_size", "4",
                 "--log.progress", "False", "--log.plot", "False"])
    assert code == 0, capsys.readouterr().err
    metrics = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    assert metrics["rollout/reward_mean"] == 1.5  # (2 + 1 + 2 + 1) / 4 messages
