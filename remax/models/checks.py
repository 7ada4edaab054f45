"""The checks every model, tokenizer and checkpoint a user brings goes through, so that a
wrong one is refused at load in one line that names the fix, instead of training on a
silently wrong objective or failing later with a traceback (issue 16):

- the architecture is a causal decoder: `config.architectures` names a causal-LM class
  (a saved `BertForMaskedLM` or `BertModel` is refused before its weights are read), and
  the model built does not attend to future tokens (position 0's logits must not move
  when a later token changes: this catches encoders loaded through a causal-LM class);
- a local directory holds a tokenizer (transformers otherwise builds an empty one);
- the tokenizer, the policy, the reference and the critic share one vocabulary;
- the weights can be read (a truncated safetensors file is one line, see `unreadable`);
- float16 on CPU is refused (Adam's eps underflows there: NaN weights within steps).

`load_causal_lm` and `load_tokenizer` (remax/models/loading.py) call these; the trainer
and `remax eval` call `check_vocab` once all models are loaded.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Any, Iterator, Optional

import torch

from remax.errors import InputError

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "vocab.txt", "tokenizer.model",
                   "spiece.model", "sentencepiece.bpe.model", "merges.txt")


def _model_load_error(message: str) -> Exception:
    from remax.models.loading import ModelLoadError

    return ModelLoadError(message)


def causal_lm_classes() -> set[str]:
    """Class names transformers builds for AutoModelForCausalLM."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    names: set[str] = set()
    for v in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values():
        names.update([v] if isinstance(v, str) else v)
    return names


def is_causal_name(name: str) -> bool:
    """A causal-LM class name: one transformers maps, or (custom code) one that says so."""
    return name in causal_lm_classes() or name.endswith(("ForCausalLM", "LMHeadModel"))


def check_architecture(config: Any, name: str, kind: str, flag: Optional[str]) -> None:
    """Refuse a config saved from a model that is not a causal LM (masked LM, bare encoder,
    classifier), before its weights are read."""
    archs = list(getattr(config, "architectures", None) or [])
    if archs and not any(is_causal_name(a) for a in archs):
        use = f" to {flag}" if flag else ""
        raise _model_load_error(
            f"cannot load {kind} {name!r}: it was saved as {archs[0]}, not a causal (decoder-only) language "
            f"model; ReMax samples responses left to right, so pass a *ForCausalLM model{use}"
        )


@torch.no_grad()
def check_attends_only_to_the_past(model: torch.nn.Module, name: str, kind: str, flag: Optional[str]) -> None:
    """One forward on 6 tokens and one with the last token changed: position 0's logits
    must not move. An encoder built through a causal-LM class (BERT with is_decoder
    false) sees the future and would make the objective silently wrong."""
    try:
        param = next(model.parameters())
        vocab = model.get_input_embeddings().weight.shape[0]
    except (StopIteration, AttributeError, NotImplementedError):
        return
    if vocab < 3:
        return
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(1, vocab, (1, 8), generator=gen)
    changed = ids.clone()
    changed[0, 1:] = 1 + (ids[0, 1:] % (vocab - 1))  # every token after position 0
    was_training = model.training
    model.eval()
    try:
        mask = torch.ones_like(ids).to(param.device)
        a = model(input_ids=ids.to(param.device), attention_mask=mask).logits[0, 0].float()
        b = model(input_ids=changed.to(param.device), attention_mask=mask).logits[0, 0].float()
    except Exception:  # a model whose forward needs more than input_ids: leave it to the run
        return
    finally:
        model.train(was_training)
    tol = 1e-5 if param.dtype == torch.float32 else 2e-2  # a causal model: equal up to rounding
    if float((a - b).abs().max()) > tol * (1.0 + float(a.abs().max())):
        decoder = getattr(model.config, "is_decoder", None)
        why = f" (config.is_decoder is {decoder})" if decoder is False else ""
        raise _model_load_error(
            f"cannot load {kind} {name!r}: {type(model).__name__} attends to future tokens{why} (position 0's "
            "logits change when a later token does), so it is not a causal language model; pass a "
            f"decoder-only *ForCausalLM model{' to ' + flag if flag else ''}"
        )


@contextmanager
def held_back_warnings() -> Iterator[list]:
    """transformers' log records (warnings, load reports) during a load, held back: the
    caller re-emits them (`release`) only if it keeps the model, so a refused model's
    error stays the one line on stderr."""
    import logging

    logger = logging.getLogger("transformers")
    held: list[logging.LogRecord] = []

    class Hold(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            held.append(record)

    handlers, propagate = logger.handlers[:], logger.propagate
    logger.handlers, logger.propagate = [Hold()], False
    try:
        yield held
    finally:
        logger.handlers, logger.propagate = handlers, propagate


def release(held: list) -> None:
    import logging

    logger = logging.getLogger("transformers")
    for record in held:
        logger.handle(record)


def check_tokenizer_dir(name: str, hint: str) -> None:
    """A local directory given as the tokenizer must hold tokenizer files."""
    path = os.path.expanduser(name)
    if os.path.isdir(path) and not any(os.path.isfile(os.path.join(path, f)) for f in TOKENIZER_FILES):
        raise _model_load_error(f"no tokenizer in {name} (no tokenizer.json or tokenizer_config.json); {hint}")


def check_tokenizer_not_empty(tokenizer: Any, name: str, hint: str) -> None:
    if len(tokenizer) < 2 or not tokenizer("a", add_special_tokens=False)["input_ids"]:
        raise _model_load_error(f"the tokenizer in {name} is empty (it encodes text to no tokens); {hint}")


def embedding_rows(model: Any) -> Optional[int]:
    try:
        return int(model.get_input_embeddings().weight.shape[0])
    except (AttributeError, NotImplementedError, TypeError):
        return None


def check_vocab(tokenizer: Any, policy: Any, others: dict[str, Any] = (), policy_flag: str = "--model.policy") -> None:
    """The tokenizer's ids must index the policy's embedding, and every other model
    (`others`: flag -> model, e.g. the reference and the critic) must have as many
    embedding rows as the policy: the KL and the values compare them token by token."""
    rows = embedding_rows(policy)
    if rows is None:
        return
    n = len(tokenizer)
    if n > rows:
        raise InputError(
            f"the tokenizer has {n} tokens but the policy's embedding has {rows} rows ({policy_flag}): token ids "
            f">= {rows} would index past it; call model.resize_token_embeddings(len(tokenizer)) and save the model, "
            "or pass the tokenizer it was trained with"
        )
    for flag, model in dict(others).items():
        other = embedding_rows(getattr(model, "trunk", model))
        if model is None or other is None or other == rows:
            continue
        raise InputError(
            f"{flag} has {other} token embeddings and the policy {rows}: the KL needs one shared vocabulary (it "
            "compares them token by token); pass a model of the policy's family, or resize it with "
            "model.resize_token_embeddings"
        )


def check_dtype_on_device(dtype: str, device: torch.device, flag: str) -> None:
    if dtype == "float16" and device.type == "cpu":
        raise InputError(
            f"{flag} float16 on CPU: Adam's eps underflows in float16 and the weights turn NaN within steps; "
            f"use {flag} bfloat16 or float32 on CPU (float16 needs a GPU)"
        )


def unreadable(err: BaseException) -> bool:
    """A weights file that cannot be read: truncated or corrupt safetensors / torch pickles."""
    import pickle

    try:
        from safetensors import SafetensorError
    except ImportError:  # pragma: no cover
        SafetensorError = ()  # type: ignore[assignment]
    return isinstance(err, (SafetensorError, EOFError, pickle.UnpicklingError)) or (
        isinstance(err, RuntimeError) and "PytorchStreamReader" in str(err)
    )


__all__ = ["check_architecture", "check_attends_only_to_the_past", "check_dtype_on_device", "check_tokenizer_dir",
           "check_tokenizer_not_empty", "check_vocab", "embedding_rows", "is_causal_name", "unreadable"]
