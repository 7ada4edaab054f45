"""Prompt data: JSONL loading, seeded batching, left-padded encoding."""

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

__all__ = [
    "DataError",
    "PromptRows",
    "PromptSampler",
    "check_row",
    "encode_prompts",
    "load_jsonl",
    "prompt_texts",
    "validate_prompts",
]
