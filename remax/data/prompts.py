"""Prompt datasets: JSONL rows in, seeded batches of rows out, left-padded token ids.

A row is a dict with a prompt column; every other column is passed through to the
reward function by name (e.g. a reference `answer`). A prompt is a string, or a chat:
a list of {"role", "content"} messages, which always goes through the tokenizer's chat
template (with the generation prompt) and reaches the reward as the list itself, as in
TRL's conversational datasets. Other formats: `remax.data.sources`."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any, Optional

import torch

from remax.errors import InputError


class DataError(InputError):
    """Bad prompt data, reported as one line naming the file, the line and the fix."""


class PromptRows(list):
    """The rows of a prompt file, a plain list of dicts, plus `locations`: 'file:line' of
    each row, so that a bad row found later (an empty encoding) is reported where it is.
    The rows themselves gain no columns: the reward function sees exactly the file's."""

    def __init__(self, rows: list[dict[str, Any]] = (), locations: Optional[list[str]] = None):
        super().__init__(rows)
        self.locations = list(locations) if locations is not None else [f"row {i}" for i in range(len(self))]


# Leading bytes of formats that are often passed by mistake, and how to convert them.
_MAGIC = {
    b"PAR1": "a Parquet file",
    b"\x1f\x8b": "a gzip-compressed file",
    b"PK\x03\x04": "a zip archive",
    b"ARROW1": "an Arrow file",
}
_CONVERT = ("convert it to JSONL, one {\"prompt\": ...} object per line (e.g. with pandas: "
            "pd.read_parquet(path).to_json('prompts.jsonl', orient='records', lines=True))")


def load_jsonl(path: str | Path, prompt_column: str = "prompt") -> PromptRows:
    """Read prompt rows from a JSONL file; every row must hold a non-empty string
    `prompt_column`. Errors name the file and line (a binary or non-UTF-8 file, bad JSON,
    a missing column) and the fix."""
    path = Path(path)
    if not path.is_file():
        what = "is a directory" if path.is_dir() else "not found"
        raise DataError(f"prompt file {str(path)!r} {what}; pass a JSONL file with --data.train_file")
    data = path.read_bytes()
    for magic, what in _MAGIC.items():
        if data.startswith(magic):
            raise DataError(f"{path}: {what}, not JSONL text; {_CONVERT}")
    rows, locations = [], []
    for lineno, raw in enumerate(data.splitlines(), start=1):
        where = f"{path}:{lineno}"
        try:
            line = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
        except UnicodeDecodeError as err:
            raise DataError(
                f"{where}: not UTF-8 text (byte 0x{raw[err.start]:02x} at column {err.start + 1}); "
                "save the file as UTF-8 JSONL"
            ) from None
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(f"{where}: not valid JSON ({err.msg}); {_json_hint(path, lineno, line)}") from None
        check_row(row, prompt_column, where)
        rows.append(row)
        locations.append(where)
    if not rows:
        raise DataError(f"{path}: no prompts found; add lines like {{\"{prompt_column}\": \"...\"}}")
    return PromptRows(rows, locations)


def _json_hint(path: Path, lineno: int, line: str) -> str:
    """What a JSON error on this line most likely means."""
    if lineno == 1 and line.lstrip().startswith("["):
        return "this looks like one JSON array; write one object per line (JSONL) instead"
    if path.suffix.lower() in (".csv", ".tsv", ".parquet", ".arrow", ".txt"):
        return f"a {path.suffix} file is not JSONL; {_CONVERT}"
    return "each line must be one JSON object"


def check_row(row: Any, prompt_column: str, where: str) -> None:
    if not isinstance(row, dict):
        raise DataError(f"{where}: expected a JSON object like {{\"{prompt_column}\": \"...\"}}, got {type(row).__name__}")
    if prompt_column not in row:
        raise DataError(
            f"{where}: no {prompt_column!r} column (columns: {', '.join(map(str, row)) or 'none'}); "
            f"rename it or pass --data.prompt_column"
        )
    prompt = row[prompt_column]
    if isinstance(prompt, list) and prompt and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
        raise DataError(f"{where}: column {prompt_column!r} holds token ids (a list of integers); pre-tokenized "
                        "prompts are not supported: pass the prompt as text (or a chat: a list of {role, content} "
                        "messages)")
    if isinstance(prompt, list):
        _check_chat(prompt, prompt_column, where)
        return
    if not isinstance(prompt, str):
        raise DataError(f"{where}: column {prompt_column!r} must be a string, got {type(prompt).__name__} "
                        f"{prompt!r} (a chat prompt is a list of {{role, content}} messages)"[:300])
    if not prompt.strip():
        raise DataError(f"{where}: empty prompt in column {prompt_column!r}; remove the row or give it text")


def _check_chat(messages: list, prompt_column: str, where: str) -> None:
    """A chat prompt: a non-empty list of {"role": str, "content": str} with some text."""
    if not messages:
        raise DataError(f"{where}: empty chat (no messages) in column {prompt_column!r}; remove the row or add a message")
    for j, m in enumerate(messages):
        if not (isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)):
            raise DataError(f"{where}: chat message {j} in column {prompt_column!r} must be "
                            f"{{\"role\": \"...\", \"content\": \"...\"}}, got {m!r}"[:300])
    if not any(m["content"].strip() for m in messages):
        raise DataError(f"{where}: chat in column {prompt_column!r} has no text in any message; give it text")


def validate_prompts(
    rows: list[dict[str, Any]],
    tokenizer: Any,
    prompt_column: str = "prompt",
    chat_template: bool = False,
) -> tuple[int, str]:
    """Check every row before training (its type, a non-empty prompt that encodes to at
    least one token) and return (length in tokens, 'file:line') of the longest prompt,
    for the context-length check. All prompts are tokenized once, in one batched call.
    Locations come from `rows.locations` (PromptRows from load_jsonl), else 'row i'."""
    locations = getattr(rows, "locations", None) or [f"row {i}" for i in range(len(rows))]
    if not rows:
        raise DataError("no prompt rows given; pass at least one {\"prompt\": ...} row")
    for row, where in zip(rows, locations):
        check_row(row, prompt_column, where)
    encoded = _encode(tokenizer, [row[prompt_column] for row in rows], chat_template, locations)
    lengths = [len(e) for e in encoded]
    for n, where in zip(lengths, locations):
        if n == 0:
            raise DataError(f"{where}: the prompt encodes to zero tokens; remove the row or give it text")
    longest = max(range(len(rows)), key=lengths.__getitem__)
    return lengths[longest], locations[longest]


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


def _templated(prompt: Any, chat_template: bool) -> bool:
    return chat_template or isinstance(prompt, list)


def prompt_texts(tokenizer: Any, prompts: list[Any], chat_template: bool, locations: Optional[list[str]] = None) -> list[str]:
    """The text the policy reads for each prompt: a chat (a list of messages) through the
    tokenizer's chat template with the generation prompt; a string through it as one user
    turn when `chat_template`, else as it is."""
    if any(_templated(p, chat_template) for p in prompts) and not getattr(tokenizer, "chat_template", None):
        if chat_template:
            raise DataError("--data.chat_template is set but the tokenizer has no chat template; unset it")
        first = next(i for i, p in enumerate(prompts) if isinstance(p, list))
        where = locations[first] if locations else f"row {first}"
        raise DataError(f"{where}: a chat prompt (a list of messages) needs a tokenizer with a chat template, and "
                        "this one has none; pass --model.tokenizer with one, or give plain-text prompts")
    return [_render(tokenizer, p, i, locations) if _templated(p, chat_template) else p for i, p in enumerate(prompts)]


def _render(tokenizer: Any, prompt: Any, i: int, locations: Optional[list[str]]) -> str:
    """One prompt through the chat template; a template that refuses it (Llama / Mistral /
    Gemma templates raise on roles or orders they do not support) names the row."""
    messages = prompt if isinstance(prompt, list) else [{"role": "user", "content": prompt}]
    try:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    except Exception as err:
        where = locations[i] if locations else f"row {i}"
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        roles = ", ".join(str(m.get("role")) for m in messages if isinstance(m, dict))
        raise DataError(f"{where}: the tokenizer's chat template refused this chat (roles: {roles}): {reason}; "
                        "fix the row (e.g. merge a system message into the first user turn) or pass "
                        "--model.tokenizer with a template that accepts it") from None


def _encode(tokenizer: Any, prompts: list[Any], chat_template: bool, locations: Optional[list[str]] = None) -> list[list[int]]:
    """Token ids of each prompt's text. Templated text already holds its special tokens,
    so it is encoded without adding them; one batched call per kind."""
    texts = prompt_texts(tokenizer, prompts, chat_template, locations)
    flags = [_templated(p, chat_template) for p in prompts]
    encoded: list[list[int]] = [[] for _ in prompts]
    for templated in (False, True):
        idx = [i for i, f in enumerate(flags) if f == templated]
        if idx:
            ids = tokenizer([texts[i] for i in idx], add_special_tokens=not templated)["input_ids"]
            for i, e in zip(idx, ids):
                encoded[i] = list(e)
    return encoded


def encode_prompts(
    tokenizer: Any, prompts: list[Any], max_prompt_tokens: int, chat_template: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompts (strings or chats) -> left-padded (B, P) ids and mask. Long prompts keep
    their last tokens, which sit next to the response."""
    encoded = [e[-max_prompt_tokens:] for e in _encode(tokenizer, prompts, chat_template)]
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
