"""A Hugging Face sequence-classification reward model (one output label) scoring
prompt + response, with its own tokenizer loaded from the same path.

The rule: the reward model reads exactly what ITS tokenizer and template produce for
(prompt, response), a finished response with its end, so that it scores the kind of
text it was trained on. Choices, which a score must not depend on how a batch was
split or padded:
- Text: the reward tokenizer's chat template when it has one (user = prompt,
  assistant = response; a chat prompt's own messages, then the response as the
  assistant's turn), else plain `prompt + response` (a chat's message contents joined
  by newlines). Templated text already holds its special tokens, so it is tokenized
  with `add_special_tokens=False`.
- The end of a response: the trainer's responses are `ResponseText`s that say whether
  the policy stopped on an EOS (`ended`). A finished one gets the end the reward model's
  own side writes: with a chat template, the template's closing of the assistant turn
  (e.g. `<|im_end|>`); without one, the reward tokenizer's EOS token appended, unless
  the tokenizer appends it by itself. A response cut at max_new_tokens stays open: the
  template is rendered with `continue_final_message` (no end-of-turn) and no EOS is
  added. A plain `str` (ended not known, e.g. a direct call) is formatted as before:
  the template as it renders, no EOS added.
- Too long: an input over `max_length` (capped at the model's position limit) is cut
  on the RIGHT, inside the response, so the head the template puts first (BOS, the
  system prompt, the prompt) is kept; each cut input is counted, and the trainer logs
  the count of the last call as `reward/rm_truncated` (`last_metrics`).
- Padding is on the right, and the score is read at each row's last real token, found
  from the lengths: the pad positions hold an id that no real token of the chunk has,
  and the model's `pad_token_id` is that id for the forward (transformers' head reads
  the rightmost token that is not `pad_token_id`). So pad == EOS (GPT-2, Llama) does not
  move the scoring position off a final EOS. Causal models see the same positions as
  for an unpadded example.
"""

from __future__ import annotations

import contextlib

from typing import Any

import torch

from remax.rewards.base import as_reward_tensor, check_batch, response_ended

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
        self.vocab_size = model.get_input_embeddings().num_embeddings
        self.truncated = 0
        self.last_metrics: dict[str, float] = {}  # of the last call; logged by the trainer (source_metrics)

    @property
    def uses_chat_template(self) -> bool:
        return uses_chat_template(self.tokenizer)

    def format_texts(self, prompts: list[Any], responses: list[str]) -> list[str]:
        """The exact strings the reward model reads, one per (prompt, response): `format_texts`."""
        return format_texts(self.tokenizer, prompts, responses)

    @torch.no_grad()
    def __call__(self, prompts: list[str], responses: list[str], **row: list[Any]) -> torch.Tensor:
        check_batch(prompts, responses, row, self.name)
        texts = self.format_texts(list(prompts), list(responses))
        self.truncated = 0
        scores = [self._score(texts[i : i + self.batch_size]) for i in range(0, len(texts), self.batch_size)]
        self.last_metrics = {"reward/rm_truncated": float(self.truncated)}
        values = torch.cat(scores) if scores else torch.zeros(0)
        return as_reward_tensor(values, len(prompts), self.name)

    def _score(self, texts: list[str]) -> torch.Tensor:
        """One forward pass over a chunk of texts -> (b,) float32 on CPU."""
        encoded = encode_texts(self.tokenizer, texts)
        self.truncated += sum(len(ids) > self.max_length for ids in encoded)
        rows = [ids[: self.max_length] for ids in encoded]  # cut on the right: the head stays
        if any(len(ids) == 0 for ids in rows):
            raise ValueError(f"reward model {self.name!r} got an empty prompt + response to score")
        with self.forward_context():  # the run's precision
            return sequence_scores(self.model, rows).float().cpu()  # (b,)

    def __repr__(self) -> str:
        return f"RewardModelReward({self.name!r}, device={str(self.device)!r})"


def uses_chat_template(tokenizer: Any) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def appends_eos(tokenizer: Any) -> bool:
    """Whether `tokenizer` ends an encoding with its EOS by itself."""
    eos = tokenizer.eos_token_id
    ids = tokenizer("a", add_special_tokens=True)["input_ids"]
    return eos is not None and bool(ids) and ids[-1] == eos


def format_texts(tokenizer: Any, prompts: list[Any], responses: list[str]) -> list[str]:
    """The exact strings a reward model with this tokenizer reads, one per (prompt,
    response); a prompt is a string or a chat (a list of {role, content} messages). A
    response's `ended` (ResponseText) decides its end, see the module docstring. Shared
    with `remax rm` (remax/pipeline/rm.py), which trains on the very same layout."""
    ended = [response_ended(r) for r in responses]
    if not uses_chat_template(tokenizer):
        eos = tokenizer.eos_token if tokenizer.eos_token and not appends_eos(tokenizer) else ""
        return [(_joined(p) if isinstance(p, list) else p) + r + (eos if e else "")
                for p, r, e in zip(prompts, responses, ended)]
    return [
        tokenizer.apply_chat_template(
            (list(p) if isinstance(p, list) else [{"role": "user", "content": p}])
            + [{"role": "assistant", "content": str(r)}],
            tokenize=False, continue_final_message=e is False,  # a cut response: the turn stays open
        )
        for p, r, e in zip(prompts, responses, ended)
    ]


def encode_texts(tokenizer: Any, texts: list[str]) -> list[list[int]]:
    """Token ids of formatted texts, uncut: templated text already holds its special tokens."""
    return tokenizer(texts, add_special_tokens=not uses_chat_template(tokenizer), truncation=False,
                     verbose=False)["input_ids"]


def sequence_scores(model: Any, rows: list[list[int]]) -> torch.Tensor:
    """(b,) `logits[:, 0]` of a one-label sequence-classification model, read at each
    row's last real token: rows are padded on the right with an id none of them holds,
    which is the model's `pad_token_id` for this forward only (transformers' head reads
    the rightmost token that is not `pad_token_id`), so pad == EOS cannot move the
    position. Differentiable: `remax rm` trains through it, scoring runs it under no_grad."""
    core = getattr(model, "module", model)  # a DDP wrapper runs the forward; the model holds the config
    vocab_size = core.get_input_embeddings().num_embeddings
    width = max(len(ids) for ids in rows)
    fill = _unused_id(rows, vocab_size)
    input_ids = torch.tensor([ids + [fill] * (width - len(ids)) for ids in rows])  # (b, T)
    attention = torch.tensor([[1] * len(ids) + [0] * (width - len(ids)) for ids in rows])  # (b, T)
    config = core.config.get_text_config() if hasattr(core.config, "get_text_config") else core.config
    configs = list({id(c): c for c in (core.config, config)}.values())
    saved = [c.pad_token_id for c in configs]
    device = next(core.parameters()).device
    try:
        for c in configs:
            c.pad_token_id = fill
        logits = model(input_ids=input_ids.to(device), attention_mask=attention.to(device)).logits
    finally:
        for c, v in zip(configs, saved):
            c.pad_token_id = v
    return logits[:, 0]  # (b,)


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


def _unused_id(rows: list[list[int]], vocab_size: int) -> int:
    """The smallest token id below vocab_size that none of `rows` holds."""
    used = {t for ids in rows for t in ids}
    return next(i for i in range(vocab_size) if i not in used)


def _load_tokenizer(auto_tokenizer: Any, name: str) -> Any:
    """The reward model's tokenizer, padding right and truncating right (see module doc)."""
    from remax.models.loading import checked_from_pretrained

    tokenizer = checked_from_pretrained("reward tokenizer", auto_tokenizer.from_pretrained, name, flag="--reward.model")
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ValueError(f"reward tokenizer {name!r} has neither a pad nor an EOS token to pad with")
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    tokenizer.truncation_side = "right"
    return tokenizer
