"""Prompt data: loading (JSONL, Parquet, CSV, saved datasets, Hub names), chat prompts,
held-out splits, seeded batching, left-padded encoding."""

from remax.data.prompts import (
    DataError,
    PromptRows,
    PromptSampler,
    check_row,
    encode_prompts,
    load_jsonl,
    prompt_texts,
    validate_prompts,
)
from remax.data.sources import load_prompts
from remax.data.splits import PromptSplits, load_splits, split_rows

__all__ = [
    "DataError",
    "PromptRows",
    "PromptSampler",
    "PromptSplits",
    "check_row",
    "encode_prompts",
    "load_jsonl",
    "load_prompts",
    "load_splits",
    "prompt_texts",
    "split_rows",
    "validate_prompts",
]
