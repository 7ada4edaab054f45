"""Prompt data: JSONL loading, seeded batching, left-padded encoding."""

from remax.data.prompts import DataError, PromptSampler, check_row, encode_prompts, load_jsonl, prompt_texts

__all__ = ["DataError", "PromptSampler", "check_row", "encode_prompts", "load_jsonl", "prompt_texts"]
