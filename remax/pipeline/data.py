"""Rows for `remax sft` and `remax rm`: read with the prompt loader every command shares
(`remax.data.load_prompts`: JSONL, JSON, Parquet, CSV, saved datasets, Hub names, every
row checked and located as 'file:line'), a seeded held-out share (`remax.data.split_rows`),
and the chat pieces both commands need (TRL's dataset formats:
https://huggingface.co/docs/trl/dataset_formats).

A chat is cut into segments by rendering its prefixes with the tokenizer's chat template:
the text up to each assistant turn (with the generation prompt: exactly what the policy
reads before it answers in `remax train`), then the turn itself. Templates that do not
render a conversation prefix by prefix (a later message rewriting earlier text) are
refused in one line, since the trained positions could not be found.
"""

from __future__ import annotations

from typing import Any, Optional

from remax.data import DataError, PromptRows, check_row, load_prompts, split_rows


def load_rows(source: str, column: str, *, split: str = "train", subset: Optional[str] = None,
              flag: str = "--train_file", column_flag: str = "--prompt_column") -> PromptRows:
    """Rows of `source` (any format `remax train` reads), each holding `column` (a string or
    a chat). The loader's hints name `remax train`'s flags; they are renamed to this command's."""
    try:
        return load_prompts(source, column, split=split, subset=subset, flag=flag)
    except DataError as err:
        message = str(err).replace("--data.prompt_column", column_flag).replace("--data.split", "--split")
        raise DataError(message.replace("--data.subset", "--subset").replace("--data.train_file", flag)) from None


def given_rows(rows: list[dict[str, Any]], column: str) -> PromptRows:
    """Rows passed from Python: checked like a file's, located as 'row i'."""
    rows = PromptRows(list(rows))
    if not rows:
        raise DataError("no rows given; pass at least one row")
    for row, where in zip(rows, rows.locations):
        check_row(row, column, where)
    return rows


def hold_out(rows: PromptRows, fraction: float, seed: int) -> tuple[PromptRows, Optional[PromptRows]]:
    """(train, held-out): a seeded share `fraction` of the rows, or (rows, None) for 0."""
    if fraction == 0:
        return rows, None
    try:
        return split_rows(rows, fraction, seed)
    except DataError as err:
        raise DataError(str(err).replace("--data.eval_fraction", "--eval_fraction")) from None


def column_value(row: dict[str, Any], column: str, where: str, flag: str) -> Any:
    """row[column], or one line naming the row, the columns it has and the flag to pass."""
    if column not in row:
        raise DataError(f"{where}: no {column!r} column (columns: {', '.join(map(str, row)) or 'none'}); "
                        f"rename it or pass {flag}")
    return row[column]


def check_text(value: Any, column: str, where: str, *, chat_ok: bool = True) -> None:
    """A non-empty string, or (chat_ok) a non-empty list of {role, content} messages."""
    if isinstance(value, list) and chat_ok:
        check_row({column: value}, column, where)
        return
    if not isinstance(value, str):
        kinds = "a string or a list of {role, content} messages" if chat_ok else "a string"
        raise DataError(f"{where}: column {column!r} must be {kinds}, got {type(value).__name__} {value!r}"[:300])
    if not value.strip():
        raise DataError(f"{where}: empty text in column {column!r}; remove the row or give it text")


def render(tokenizer: Any, messages: list[dict[str, str]], where: str, generation_prompt: bool) -> str:
    """`messages` through the chat template, or one line naming the row."""
    if not getattr(tokenizer, "chat_template", None):
        raise DataError(f"{where}: a chat (a list of messages) needs a tokenizer with a chat template, and this one "
                        "has none; pass --tokenizer with one, or give plain-text rows")
    try:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)
    except Exception as err:  # templates raise on roles or orders they do not support
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        raise DataError(f"{where}: the tokenizer's chat template refused this chat ({reason}); fix the row") from None


def chat_segments(tokenizer: Any, messages: list[dict[str, str]], where: str) -> list[tuple[str, bool]]:
    """A whole conversation as (text, is an assistant turn) pieces whose concatenation is
    its rendering: the text before each assistant turn (ending with the generation
    prompt), then the turn as the template writes it (its end-of-turn included)."""
    if not any(m.get("role") == "assistant" for m in messages):
        raise DataError(f"{where}: the chat has no assistant message, so nothing to train on; add the assistant's "
                        "answer (role 'assistant')")
    segments: list[tuple[str, bool]] = []
    done = ""
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        before = render(tokenizer, messages[:i], where, True) if i else ""
        after = render(tokenizer, messages[: i + 1], where, False)
        if not (before.startswith(done) and after.startswith(before)):
            raise DataError(f"{where}: the chat template does not render this conversation prefix by prefix (turn {i} "
                            "rewrites earlier text), so the assistant's tokens cannot be located; pass --tokenizer "
                            "with another template, or give prompt/completion rows")
        segments += [(before[len(done):], False), (after[len(before):], True)]
        done = after
    tail = render(tokenizer, messages, where, False)[len(done):]
    return [s for s in segments + [(tail, False)] if s[0]]


def assistant_turns(value: Any, column: str, where: str) -> list[dict[str, str]]:
    """A completion as assistant messages: a string is one assistant turn; a chat must
    hold assistant messages only (TRL's conversational prompt-completion format)."""
    if isinstance(value, str):
        return [{"role": "assistant", "content": value}]
    bad = [m.get("role") for m in value if m.get("role") != "assistant"]
    if bad:
        raise DataError(f"{where}: column {column!r} holds a {bad[0]!r} message; a completion is the assistant's "
                        "answer only (the other turns belong in the prompt)")
    return list(value)


__all__ = ["assistant_turns", "chat_segments", "check_text", "column_value", "given_rows", "hold_out", "load_rows",
           "render"]
