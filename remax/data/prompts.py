"""Prompt datasets: JSONL rows in, seeded batches of rows out, left-padded token ids.

A row is a dict with a prompt column; every other column is passed through to the
reward function by name (e.g. a reference `answer`)."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import torch

from remax.errors import InputError


class DataError(InputError):
    """Bad prompt data, reported as one line naming the file, the line and the fix."""


def load_jsonl(path: str | Path, prompt_column: str = "prompt") -> list[dict[str, Any]]:
    """Read prompt rows from a JSONL file; every row must hold a string `prompt_column`."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"prompt file {str(path)!r} not found; pass a JSONL file with --data.train_file")
    rows = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataError(f"{path}:{lineno}: not valid JSON ({err.msg}); each line must be one JSON object") from None
            check_row(row, prompt_column, f"{path}:{lineno}")
            rows.append(row)
    if not rows:
        raise DataError(f"{path}: no prompts found; add lines like {{\"{prompt_column}\": \"...\"}}")
    return rows


def check_row(row: Any, prompt_column: str, where: str) -> None:
    if not isinstance(row, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(row).__name__}")
    if prompt_column not in row:
        raise DataError(
            f"{where}: no {prompt_column!r} column (columns: {', '.join(row) or 'none'}); "
            f"rename it or pass --data.prompt_column"
        )
    if not isinstance(row[prompt_column], str):
        raise DataError(f"{where}: column {prompt_column!r} must be a string")


class PromptSampler:
    """Endless, seeded, epoch-shuffled batches of rows. Its state (epoch, position) is
    saved with a checkpoint so a resumed run sees the same prompts in the same order."""

    def __init__(self, rows: list[dict[str, Any]], batch_size: int, seed: int = 0, shuffle: bool = True):
        if batch_size > len(rows):
            raise DataError(
                f"batch_size {batch_size} is larger than the dataset ({len(rows)} prompts); lower --train.batch_size"
            )
        self.rows, self.batch_size, self.seed, self.shuffle = rows, batch_size, seed, shuffle
        self.epoch, self.position = 0, 0
        self._order = self._make_order()

    def _make_order(self) -> list[int]:
        order = list(range(len(self.rows)))
        if self.shuffle:
            random.Random(self.seed * 1_000_003 + self.epoch).shuffle(order)
        return order

    def next_batch(self) -> list[dict[str, Any]]:
        # Batches never straddle epochs: a short tail is dropped, so every batch has batch_size rows.
        if self.position + self.batch_size > len(self.rows):
            self.epoch, self.position = self.epoch + 1, 0
            self._order = self._make_order()
        idx = self._order[self.position : self.position + self.batch_size]
        self.position += self.batch_size
        return [self.rows[i] for i in idx]

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
        self._order = self._make_order()


def prompt_texts(tokenizer: Any, prompts: list[str], chat_template: bool) -> list[str]:
    """Apply the tokenizer's chat template (one user turn + generation prompt) if asked."""
    if not chat_template:
        return prompts
    if getattr(tokenizer, "chat_template", None) is None:
        raise DataError("--data.chat_template is set but the tokenizer has no chat template; unset it")
    return [
        tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
        for p in prompts
    ]


def encode_prompts(
    tokenizer: Any, prompts: list[str], max_prompt_tokens: int, chat_template: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompts -> left-padded (B, P) ids and mask. Long prompts keep their last tokens,
    which sit next to the response."""
    texts = prompt_texts(tokenizer, prompts, chat_template)
    # The chat template already holds any special tokens it needs.
    encoded = [tokenizer(t, add_special_tokens=not chat_template)["input_ids"][-max_prompt_tokens:] for t in texts]
    if any(len(e) == 0 for e in encoded):
        raise DataError("a prompt encodes to zero tokens; remove empty prompts from the data")
    width = max(len(e) for e in encoded)
    pad = tokenizer.pad_token_id
    ids = torch.full((len(encoded), width), pad, dtype=torch.long)  # (B, P)
    mask = torch.zeros((len(encoded), width), dtype=torch.long)  # (B, P)
    for i, e in enumerate(encoded):
        ids[i, width - len(e) :] = torch.tensor(e, dtype=torch.long)
        mask[i, width - len(e) :] = 1
    return ids, mask
