"""Prompt files in every format `load_prompts` reads, through the real `datasets` readers
(no network: a Hub name is only checked to fail in one line while offline)."""

from __future__ import annotations

import json

import pytest

from remax.data import DataError, load_prompts

ROWS = [
    {"prompt": "The Lord is", "answer": "a"},
    {"prompt": "Love is", "answer": "b"},
    {"prompt": "And God said", "answer": "c"},
]


def write_format(tmp_path, fmt, rows):
    """`rows` saved as `fmt`; returns the path to pass to load_prompts."""
    import datasets
    import pandas as pd

    frame = pd.DataFrame(rows)
    if fmt == "parquet":
        frame.to_parquet(path := tmp_path / "p.parquet")
    elif fmt == "csv":
        frame.to_csv(path := tmp_path / "p.csv", index=False)
    elif fmt == "tsv":
        frame.to_csv(path := tmp_path / "p.tsv", index=False, sep="\t")
    elif fmt == "json":  # one JSON array
        (path := tmp_path / "p.json").write_text(json.dumps(rows))
    elif fmt == "jsonl":
        (path := tmp_path / "p.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif fmt == "saved":
        datasets.Dataset.from_list(rows).save_to_disk(path := tmp_path / "saved")
    elif fmt == "saved_dict":
        held = datasets.Dataset.from_list([{"prompt": "held out", "answer": "z"}])
        datasets.DatasetDict({"train": datasets.Dataset.from_list(rows), "test": held}).save_to_disk(
            path := tmp_path / "saved_dict")
    else:
        raise AssertionError(fmt)
    return path


@pytest.mark.parametrize("fmt", ["parquet", "csv", "tsv", "json", "jsonl", "saved", "saved_dict"])
def test_every_format_gives_the_same_rows_with_locations(tmp_path, fmt):
    path = write_format(tmp_path, fmt, ROWS)
    rows = load_prompts(path)
    assert rows == ROWS
    assert rows.locations[2] == (f"{path}:3" if fmt == "jsonl" else f"{path}, row 2")


def test_saved_dataset_dict_split_is_chosen_and_a_missing_one_listed(tmp_path):
    path = write_format(tmp_path, "saved_dict", ROWS)
    assert load_prompts(path, split="test") == [{"prompt": "held out", "answer": "z"}]
    with pytest.raises(DataError, match=r"no split 'validation' \(splits: train, test\); pass --data.split"):
        load_prompts(path, split="validation")


def test_parquet_under_another_name_is_read_as_parquet(tmp_path):
    path = write_format(tmp_path, "parquet", ROWS)
    renamed = path.rename(tmp_path / "prompts.jsonl")
    assert load_prompts(renamed) == ROWS


def test_chat_prompts_survive_parquet(tmp_path):
    chat = [{"prompt": [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "Hi"}]}] * 2
    assert load_prompts(write_format(tmp_path, "parquet", chat)) == chat


def test_first_bad_row_is_named_by_its_index(tmp_path):
    rows = ROWS + [{"prompt": "  ", "answer": "d"}]
    with pytest.raises(DataError, match=r"p\.parquet, row 3: empty prompt in column 'prompt'"):
        load_prompts(write_format(tmp_path, "parquet", rows))
    (tmp_path / "p.csv").write_text("prompt,answer\nThe Lord is,a\n,b\n")  # an empty cell reads as None
    with pytest.raises(DataError, match=r"p\.csv, row 1: column 'prompt' must be a string, got NoneType"):
        load_prompts(tmp_path / "p.csv")


def test_missing_prompt_column_names_the_columns(tmp_path):
    path = write_format(tmp_path, "parquet", [{"text": "x", "label": 1}])
    with pytest.raises(DataError, match=r"p\.parquet: no 'question' column \(columns: text, label\).*--data.prompt_column"):
        load_prompts(path, prompt_column="question")
    assert load_prompts(path, prompt_column="text") == [{"text": "x", "label": 1}]


def test_corrupt_files_are_one_line(tmp_path):
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(b"PAR1" + bytes(range(64)) + b"PAR1")
    with pytest.raises(DataError, match=r"bad\.parquet: cannot be read as parquet \(") as err:
        load_prompts(bad)
    assert "\n" not in str(err.value)
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(DataError, match=r"bad\.json: cannot be read as json"):
        load_prompts(tmp_path / "bad.json")


def test_paths_that_are_not_prompt_data(tmp_path, monkeypatch):
    with pytest.raises(DataError, match=r"'.*nope\.parquet' not found; pass --data.train_file with one of: \.jsonl"):
        load_prompts(tmp_path / "nope.parquet")
    with pytest.raises(DataError, match=r"is a directory but not a dataset written by save_to_disk"):
        load_prompts(tmp_path)
    # No network in tests: offline, a Hub name fails at once, in one line that names the fix.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DataError, match=r"'someone/no-such-dataset' is not a local file or folder, and loading it "
                                        r"as a Hugging Face Hub dataset failed .*--data.train_file"):
        load_prompts("someone/no-such-dataset")
