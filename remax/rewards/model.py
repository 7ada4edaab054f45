"""A Hugging Face sequence-classification reward model (one output label) scoring
prompt + response, with its own tokenizer loaded from the same path.

Choices, which a score must not depend on how a batch was split or padded:
- Text: the reward tokenizer's chat template when it has one (user = prompt,
  assistant = response; a chat prompt's own messages, then the response as the
  assistant's turn), else plain `prompt + response` (a chat's message contents joined
  by newlines). Templated text already holds its special tokens, so it is tokenized
  with `add_special_tokens=False`.
- Padding is on the right. Causal models then see the same positions as for an
  unpadded example, and the classification head reads the rightmost token that is not
  `config.pad_token_id` (transformers' rule for left and right padding alike), so
  `pad_token_id` is always set on the model config to the id the tokenizer pads with
  (EOS when the tokenizer has no pad token). Caveat of that rule: trailing tokens equal
  to the pad id are skipped, so with pad == EOS a text that ends in EOS is scored at
  the token before it, the same way in every batch.
- Truncation keeps the end: inputs longer than `max_length` (capped at the model's
  position limit) lose tokens from the left, so the response, which is what is being
  scored, survives.
"""

from __future__ import annotations

import contextlib

from typing import Any

import torch

from remax.rewards.base import as_reward_tensor, check_batch

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class RewardModelReward:
    """Scores with `AutoModelForSequenceClassification` (num_labels 1): `logits[:, 0]`."""

    def __init__(
        self,
        name_or_path: str,
        *,
        device: str = "cpu",
        batch_size: int = 32,
        max_length: int = 1024,
        dtype: str = "float32",
    ):
        # Imported here so that `import remax.rewards` does not pull in transformers.
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        from remax.models.loading import checked_from_pretrained

        if dtype not in _DTYPES:
            raise ValueError(f"reward model dtype must be one of {sorted(_DTYPES)}, got {dtype!r}")
        if batch_size < 1 or max_length < 1:
            raise ValueError(f"reward model needs batch_size >= 1 and max_length >= 1, got {batch_size}, {max_length}")
        self.name = str(name_or_path)
        self.device = torch.device(device)
        # around each forward: the trainer sets its precision's autocast here (train.mixed_precision)
        self.forward_context: Any = contextlib.nullcontext
        self.batch_size = batch_size
        refuse_causal_lm(self.name)  # before transformers builds a random head and prints its load report
        # checked loads: a missing path is one line naming --reward.model, not a hub error
        with quiet_transformers():
            model = checked_from_pretrained(
                "reward model", AutoModelForSequenceClassification.from_pretrained, self.name,
                required="config.json", flag="--reward.model", dtype=_DTYPES[dtype],
            )
        self.tokenizer = _load_tokenizer(AutoTokenizer, self.name)
        if model.config.num_labels != 1:
            raise ValueError(
                f"reward model {self.name!r} has num_labels={model.config.num_labels}; "
                "a reward model must have exactly one output label"
            )
        # The head finds the last real token by this id, so it must be the padding id.
        model.config.pad_token_id = self.tokenizer.pad_token_id
        self.model = model.to(self.device).eval()
        limit = getattr(model.config, "max_position_embeddings", None)
        self.max_length = min(max_length, limit) if isinstance(limit, int) and limit > 0 else max_length

    @property
    def uses_chat_template(self) -> bool:
        return bool(getattr(self.tokenizer, "chat_template", None))

    def format_texts(self, prompts: list[Any], responses: list[str]) -> list[str]:
        """The exact strings the reward model reads, one per (prompt, response); a prompt
        is a string or a chat (a list of {role, content} messages)."""
        if not self.uses_chat_template:
            return [(_joined(p) if isinstance(p, list) else p) + r for p, r in zip(prompts, responses)]
        return [
            self.tokenizer.apply_chat_template(
                (list(p) if isinstance(p, list) else [{"role": "user", "content": p}])
                + [{"role": "assistant", "content": r}],
                tokenize=False,
            )
            for p, r in zip(prompts, responses)
        ]

    @torch.no_grad()
    def __call__(self, prompts: list[str], responses: list[str], **row: list[Any]) -> torch.Tensor:
        check_batch(prompts, responses, row, self.name)
        texts = self.format_texts(list(prompts), list(responses))
        scores = [self._score(texts[i : i + self.batch_size]) for i in range(0, len(texts), self.batch_size)]
        values = torch.cat(scores) if scores else torch.zeros(0)
        return as_reward_tensor(values, len(prompts), self.name)

    def _score(self, texts: list[str]) -> torch.Tensor:
        """One forward pass over a chunk of texts -> (b,) float32 on CPU."""
        batch = self.tokenizer(
            texts,
            padding=True,
            truncation=True,
            max_length=self.max_length,
            add_special_tokens=not self.uses_chat_template,
            return_tensors="pt",
        ).to(self.device)
        if (batch["attention_mask"].sum(-1) == 0).any():
            raise ValueError(f"reward model {self.name!r} got an empty prompt + response to score")
        with self.forward_context():
            logits = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits  # (b, 1)
        return logits[:, 0].float().cpu()

    def __repr__(self) -> str:
        return f"RewardModelReward({self.name!r}, device={str(self.device)!r})"


def refuse_causal_lm(name: str) -> None:
    """A local directory saved from a causal LM (no classification head) is not a reward
    model: one line, before transformers initialises a random head for it."""
    import json
    import os

    try:
        with open(os.path.join(os.path.expanduser(name), "config.json")) as f:
            archs = json.load(f).get("architectures") or []
    except (OSError, ValueError, AttributeError):
        return
    from remax.models.checks import is_causal_name

    if archs and all(is_causal_name(a) and "ForSequenceClassification" not in a for a in archs):
        raise ValueError(
            f"reward model {name!r} is a causal language model ({archs[0]}), not a reward model (a "
            "*ForSequenceClassification with one label); pass a trained reward model to --reward.model, or score "
            "with --reward.kind python"
        )


def quiet_transformers():
    """transformers' warnings (a load report) off for the duration; restored after."""
    from contextlib import contextmanager

    from transformers.utils import logging as hf_logging

    @contextmanager
    def ctx():
        before = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()
        try:
            yield
        finally:
            hf_logging.set_verbosity(before)

    return ctx()


def _joined(messages: list[dict[str, str]]) -> str:
    """A chat as plain text for a reward model without a chat template."""
    return "\n".join(m["content"] for m in messages) + "\n"


def _load_tokenizer(auto_tokenizer: Any, name: str) -> Any:
    """The reward model's tokenizer, padding right and truncating left (see module doc)."""
    from remax.models.loading import checked_from_pretrained

    tokenizer = checked_from_pretrained("reward tokenizer", auto_tokenizer.from_pretrained, name, flag="--reward.model")
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ValueError(f"reward tokenizer {name!r} has neither a pad nor an EOS token to pad with")
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    tokenizer.truncation_side = "left"
    return tokenizer
