"""A copy of the shared tokenizer with a small chat template, for chat-prompt tests."""

from __future__ import annotations

import pytest

# One line per message, then the assistant's tag: easy to write out by hand in a test.
CHAT_TEMPLATE = (
    "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<assistant>{% endif %}"
)


@pytest.fixture(scope="session")
def chat_tokenizer(tokenizer, tmp_path_factory):
    """The session tokenizer through disk (so the shared one is never changed), with CHAT_TEMPLATE."""
    from transformers import AutoTokenizer

    path = tmp_path_factory.mktemp("chat_tok")
    tokenizer.save_pretrained(path)
    tok = AutoTokenizer.from_pretrained(path, padding_side="left")
    tok.chat_template = CHAT_TEMPLATE
    return tok
