"""A chat tokenizer for the pipeline tests: the session tokenizer plus the small chat
template of the data tests (one line per message, then the assistant's tag)."""

from __future__ import annotations

import pytest

CHAT_TEMPLATE = (
    "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<assistant>{% endif %}"
)


@pytest.fixture(scope="session")
def chat_tokenizer(tokenizer, tmp_path_factory):
    from transformers import AutoTokenizer

    path = tmp_path_factory.mktemp("pipeline_chat_tok")
    tokenizer.save_pretrained(path)
    tok = AutoTokenizer.from_pretrained(path, padding_side="left")
    tok.chat_template = CHAT_TEMPLATE
    return tok
