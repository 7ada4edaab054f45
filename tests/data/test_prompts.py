"""JSONL prompts, seeded batching with saveable state, left-padded encoding."""

from __future__ import annotations

import json

import pytest
import torch

from remax.data import DataError, PromptSampler, encode_prompts, load_jsonl


def write(path, lines):
    path.write_text("\n".join(lines) + "\n")
    return path


def test_load_jsonl_keeps_extra_columns(tmp_path):
    p = write(tmp_path / "p.jsonl", [json.dumps({"prompt": "a", "answer": 1}), "", json.dumps({"prompt": "b"})])
    assert load_jsonl(p) == [{"prompt": "a", "answer": 1}, {"prompt": "b"}]


@pytest.mark.parametrize("lines, message", [
    (["{not json"], "p.jsonl:1: not valid JSON"),
    ([json.dumps({"text": "a"})], "no 'prompt' column (columns: text)"),
    ([json.dumps({"prompt": 3})], "must be a string"),
    ([json.dumps([1, 2])], "expected a JSON object"),
    ([""], "no prompts found"),
])
def test_load_jsonl_errors_name_file_line_and_fix(tmp_path, lines, message):
    with pytest.raises(DataError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_jsonl(write(tmp_path / "p.jsonl", lines))


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="--data.train_file"):
        load_jsonl(tmp_path / "nope.jsonl")


def test_sampler_epochs_are_permutations_and_state_resumes():
    rows = [{"prompt": str(i)} for i in range(10)]
    s = PromptSampler(rows, batch_size=3, seed=1)
    epoch0 = [r["prompt"] for _ in range(3) for r in s.next_batch()]  # 9 rows, the tail of 1 is dropped
    assert len(set(epoch0)) == 9
    state = s.state_dict()
    assert state == {"epoch": 0, "position": 9}
    nxt = s.next_batch()  # starts epoch 1 with a new order
    assert s.state_dict() == {"epoch": 1, "position": 3}
    resumed = PromptSampler(rows, batch_size=3, seed=1)
    resumed.load_state_dict(state)
    assert resumed.next_batch() == nxt
    assert PromptSampler(rows, 3, seed=2).next_batch() != PromptSampler(rows, 3, seed=1).next_batch()


def test_sampler_rejects_batch_larger_than_data():
    with pytest.raises(DataError, match="lower --train.batch_size"):
        PromptSampler([{"prompt": "a"}], batch_size=2)


def test_encode_prompts_left_pads_and_keeps_the_end(tokenizer):
    long = "And God said, Let there be light: and there was light."
    ids, mask = encode_prompts(tokenizer, ["Love is", long], max_prompt_tokens=5)
    full = tokenizer(long)["input_ids"]
    short = tokenizer("Love is")["input_ids"]
    assert ids.shape == (2, 5)
    assert ids[1].tolist() == full[-5:]  # truncated from the left: the end of the prompt stays
    assert mask[0].tolist() == [0] * (5 - len(short)) + [1] * len(short)
    assert ids[0, 5 - len(short):].tolist() == short
    assert torch.all(ids[0, : 5 - len(short)] == tokenizer.pad_token_id)


def test_load_jsonl_keeps_line_numbers_without_adding_columns(tmp_path):
    p = write(tmp_path / "p.jsonl", [json.dumps({"prompt": "a", "x": 1}), "", json.dumps({"prompt": "b"})])
    rows = load_jsonl(p)
    assert rows == [{"prompt": "a", "x": 1}, {"prompt": "b"}]  # the reward sees only the file's columns
    assert rows.locations == [f"{p}:1", f"{p}:3"]


def test_load_jsonl_rejects_binary_and_non_utf8_files(tmp_path):
    parquet = tmp_path / "d.parquet"
    parquet.write_bytes(b"PAR1" + bytes(range(200)) + b"PAR1")
    with pytest.raises(DataError, match=r"d.parquet: a Parquet file, not JSONL text; convert it to JSONL"):
        load_jsonl(parquet)
    latin = tmp_path / "l.jsonl"
    latin.write_bytes(b'{"prompt": "a"}\n{"prompt": "caf\xe9"}\n')
    with pytest.raises(DataError, match=r"l.jsonl:2: not UTF-8 text \(byte 0xe9 at column 16\)"):
        load_jsonl(latin)
    bom = tmp_path / "bom.jsonl"
    bom.write_bytes(b'\xef\xbb\xbf{"prompt": "a"}\n')
    assert load_jsonl(bom) == [{"prompt": "a"}]
    array = write(tmp_path / "a.json", json.dumps([{"prompt": "a"}], indent=2).splitlines())
    with pytest.raises(DataError, match="one JSON array; write one object per line"):
        load_jsonl(array)


def test_load_jsonl_rejects_empty_prompts_with_their_line(tmp_path):
    p = write(tmp_path / "p.jsonl", [json.dumps({"prompt": "a"}), json.dumps({"prompt": "  "})])
    with pytest.raises(DataError, match=r"p.jsonl:2: empty prompt"):
        load_jsonl(p)


def test_validate_prompts_reports_the_longest_and_zero_token_rows(tokenizer, tmp_path):
    from remax.data import validate_prompts

    long = "And God said, Let there be light: and there was light."
    p = write(tmp_path / "p.jsonl", [json.dumps({"prompt": t}) for t in ["Love is", long, "Hi"]])
    n, where = validate_prompts(load_jsonl(p), tokenizer)
    assert (n, where) == (len(tokenizer(long)["input_ids"]), f"{p}:2")

    class Drops:  # a tokenizer that encodes one prompt to nothing
        def __call__(self, texts, add_special_tokens=True):
            return {"input_ids": [[] if t == "gone" else [1, 2] for t in texts]}

    with pytest.raises(DataError, match=r"row 1: the prompt encodes to zero tokens"):
        validate_prompts([{"prompt": "a"}, {"prompt": "gone"}], Drops())
    with pytest.raises(DataError, match=r"row 0: column 'prompt' must be a string"):
        validate_prompts([{"prompt": 1}], Drops())
