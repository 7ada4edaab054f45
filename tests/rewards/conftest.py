"""Fixtures for the reward tests: tiny GPT-2 reward models saved to disk, so that
`RewardModelReward` loads them the way it loads a real one (from a path, offline)."""

from __future__ import annotations

from pathlib import Path

import pytest


def save_reward_model(
    path: Path,
    tokenizer,
    *,
    chat_template: str | None = None,
    drop_pad: bool = False,
    add_bos: bool = False,
    num_labels: int = 1,
    n_positions: int = 64,
) -> Path:
    """Save a random GPT2ForSequenceClassification and a copy of `tokenizer` to `path`.

    The copy goes through disk so that the session-wide tokenizer is never modified."""
    import torch
    from tokenizers import processors
    from transformers import AutoTokenizer, GPT2Config, GPT2ForSequenceClassification

    tokenizer.save_pretrained(path)
    tok = AutoTokenizer.from_pretrained(path)
    if chat_template is not None:
        tok.chat_template = chat_template
    if drop_pad:
        tok.pad_token = None
    if add_bos:  # like Llama tokenizers: BOS prepended whenever special tokens are added
        bos = (tok.bos_token, tok.bos_token_id)
        tok.backend_tokenizer.post_processor = processors.TemplateProcessing(
            single=f"{bos[0]} $A", special_tokens=[bos]
        )
    tok.save_pretrained(path)
    config = GPT2Config(
        vocab_size=len(tok),
        n_positions=n_positions,
        n_embd=32,
        n_layer=2,
        n_head=2,
        num_labels=num_labels,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,  # None when drop_pad: the loader must set it
    )
    with torch.random.fork_rng():  # seeded without touching the global RNG of other tests
        torch.manual_seed(0)
        model = GPT2ForSequenceClassification(config)
        # A larger head than the default init, so that scores differ clearly between texts.
        torch.nn.init.normal_(model.score.weight, std=1.0)
    model.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def make_reward_model(tokenizer):
    """`make_reward_model(path, **options)`: `save_reward_model` with the shared tokenizer."""
    return lambda path, **options: save_reward_model(path, tokenizer, **options)


@pytest.fixture(scope="session")
def reward_model_dir(tokenizer, tmp_path_factory) -> Path:
    return save_reward_model(tmp_path_factory.mktemp("rm_plain"), tokenizer)


@pytest.fixture(scope="session")
def assets_dir(tokenizer, tmp_path_factory) -> Path:
    """A tiny policy saved with its tokenizer, and six prompts: what `remax train` needs."""
    import json

    from remax.models.tiny import tiny_causal_lm

    root = tmp_path_factory.mktemp("train_assets")
    tiny_causal_lm(tokenizer, n_positions=128).save_pretrained(root / "policy")
    tokenizer.save_pretrained(root / "policy")
    prompts = ["The Lord is", "And God said", "Blessed are the", "Love is", "In the beginning", "O give thanks"]
    (root / "prompts.jsonl").write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts))
    return root
