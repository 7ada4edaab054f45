"""Loading the policy, its tokenizer and the frozen reference policy pi_ref.

ReMax (Li et al., arXiv 2310.10505) needs exactly two copies of the LM: the policy
pi_theta being trained and a frozen pi_ref (the starting model) for the KL penalty;
with LoRA one copy serves both (see `lora.py`). PPO adds a critic (see `critic.py`). Everything here is a thin, explicit layer over
`transformers` Auto classes so that a failure names the model and says what to do.
"""

from __future__ import annotations

import copy
import os
from contextlib import contextmanager
from typing import Callable, Iterator, TypeVar

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.utils import logging as hf_logging

from remax.errors import InputError

T = TypeVar("T")

DTYPES: dict[str, torch.dtype | str] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
    # the checkpoint's own dtype (config.json); note that transformers 5 uses "auto" by
    # default, which is why load_causal_lm always passes a dtype
    "auto": "auto",
}


class ModelLoadError(InputError, OSError):
    """A model, tokenizer or device that cannot be had, explained in one line (an OSError
    too, as from_pretrained's own not-found errors are)."""


def resolve_device(device: str) -> torch.device:
    """Map "auto" to cuda if available, else cpu; anything else to torch.device(device),
    checked to exist here, so a run without the GPU it names stops at start in one line."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError, TypeError):
        raise ModelLoadError(f"unknown device {device!r}; use 'auto', 'cpu', 'cuda' or 'cuda:N' (--model.device)") from None
    if dev.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            why = "this torch was built without CUDA" if torch.version.cuda is None else "no GPU is visible"
            raise ModelLoadError(f"device {device!r} asked for, but CUDA is not available ({why}); "
                                 "pass --model.device cpu (or auto)")
        if dev.index is not None and dev.index >= count:
            raise ModelLoadError(f"device {device!r} asked for, but only {count} GPU(s) are visible "
                                 f"(cuda:0 .. cuda:{count - 1}); pass one of those or --model.device auto")
    elif dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ModelLoadError(f"device {device!r} asked for, but MPS is not available; pass --model.device cpu (or auto)")
    return dev


POSITION_LIMIT_KEYS = ("max_position_embeddings", "n_positions", "n_ctx", "max_sequence_length", "seq_length")


def max_positions(*models: torch.nn.Module) -> int | None:
    """The longest sequence (prompt + response) all of `models` allow, from their configs
    (max_position_embeddings, n_positions, ...); None when no config names a limit."""
    limits = []
    for model in models:
        config = getattr(model, "config", None)
        if config is not None and hasattr(config, "get_text_config"):
            config = config.get_text_config()
        for key in POSITION_LIMIT_KEYS:
            value = getattr(config, key, None)
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                limits.append(value)
                break
    return min(limits) if limits else None


def _looks_like_path(name: str) -> bool:
    # hub ids are "name" or "org/name"; anything else can only be a local path, and
    # transformers would answer with a puzzling "Repo id must be in the form ..."
    return name.startswith((".", "/", "~")) or name.count("/") > 1 or (os.sep != "/" and os.sep in name)


@contextmanager
def progress_bars(enabled: bool) -> Iterator[None]:
    """transformers 5 draws a "Loading weights" tqdm bar on stderr for every load; the
    switch is global, so it is flipped for the duration of the load and restored."""
    was_enabled = hf_logging.is_progress_bar_enabled()
    if was_enabled and not enabled:
        hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled and not enabled:
            hf_logging.enable_progress_bar()


def checked_from_pretrained(
    kind: str,
    loader: Callable[..., T],
    name_or_path: str | os.PathLike,
    *,
    required: str | None = None,
    progress_bar: bool = False,
    flag: str | None = None,
    **kwargs,
) -> T:
    """`loader(name_or_path, **kwargs)` (a from_pretrained), a not-found turned into one
    clear line that names the model and says what to pass instead. `required`: a file
    a local directory must hold (transformers reports a missing config.json puzzlingly);
    `flag`: the option that named it, quoted in the fix. Failures raise ModelLoadError
    (an OSError and a remax InputError). Quiet by default: no weight-loading progress bar
    unless `progress_bar`."""
    name = os.path.expanduser(os.fspath(name_or_path))
    hint = f"{flag + ': ' if flag else ''}pass a hub id or a local path written by save_pretrained"
    if (_looks_like_path(name) or os.path.isfile(name)) and not os.path.isdir(name):  # a local file, too
        what = "a file, not a directory" if os.path.isfile(name) else "not a local directory (and not a hub id)"
        raise ModelLoadError(f"cannot load {kind} {name!r}: {what}; {hint}")
    if required and os.path.isdir(name) and not os.path.isfile(os.path.join(name, required)):
        raise ModelLoadError(f"cannot load {kind} {name!r}: a local directory without {required}; {hint}")
    try:
        with progress_bars(progress_bar):
            return loader(name, **kwargs)
    except OSError as err:
        where = "a local directory" if os.path.isdir(name) else "not a local directory and not reachable on the hub"
        raise ModelLoadError(f"cannot load {kind} {name!r}: {where} ({_first_line(err)}); {hint}") from err
    except ValueError as err:  # an unknown model type, custom code not trusted, a bad config.json
        if "trust_remote_code" in str(err):
            hint = "it ships its own code; pass --model.trust_remote_code True only if you trust it"
        raise ModelLoadError(f"cannot load {kind} {name!r} ({_first_line(err)}); {hint}") from err
    except Exception as err:  # SafetensorError, EOFError, ...: none of them an OSError
        from remax.models.checks import unreadable

        if not unreadable(err):
            raise
        raise ModelLoadError(f"cannot load {kind} {name!r}: its weights cannot be read ({_first_line(err)[:160]}: "
                             "a truncated or corrupt file); copy or download it again") from None


def _first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0]


def load_tokenizer(name_or_path: str | os.PathLike, *, trust_remote_code: bool = False, flag: str | None = None,
                   missing_hint: str | None = None):
    """AutoTokenizer with left padding (prompts are left-padded for generation).

    `padding_side="left"` is passed at construction, not assigned afterwards. If the
    tokenizer has no pad token, its EOS token is used as pad (GPT-2, Llama): harmless
    here because masks come from the first EOS (`remax.algos.masks.response_mask`) and
    from the prompt attention mask, never from comparing ids with pad."""
    from remax.models.checks import check_tokenizer_dir, check_tokenizer_not_empty

    name = os.fspath(name_or_path)
    hint = missing_hint or _tokenizer_hint(flag)
    check_tokenizer_dir(name, hint)  # else transformers builds an empty tokenizer from config.json
    tok = checked_from_pretrained(
        "tokenizer", AutoTokenizer.from_pretrained, name_or_path,
        padding_side="left", trust_remote_code=trust_remote_code, flag=flag,
    )
    check_tokenizer_not_empty(tok, name, hint)
    if tok.pad_token is None:
        if tok.eos_token is None:
            raise ModelLoadError(f"tokenizer {os.fspath(name_or_path)!r} has neither a pad nor an EOS token")
        tok.pad_token = tok.eos_token
    return tok


def _tokenizer_hint(flag: str | None) -> str:
    if flag == "--model.policy":
        return "pass --model.tokenizer NAME_OR_PATH (the tokenizer the policy was trained with)"
    if flag == "--model.tokenizer":
        return "pass a directory holding the tokenizer's files (tokenizer.save_pretrained) to --model.tokenizer"
    return "save the tokenizer into it with tokenizer.save_pretrained(DIR)"


def to_torch_dtype(dtype: str | torch.dtype) -> torch.dtype | str:
    """Map "float32" | "bfloat16" | "float16" | "auto" (or a torch.dtype) to what from_pretrained takes."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; choose one of {sorted(DTYPES)}")
    return DTYPES[dtype]


def load_causal_lm(
    name_or_path: str | os.PathLike,
    *,
    dtype: str | torch.dtype = "float32",
    device: str = "cpu",
    trust_remote_code: bool = False,
    progress_bar: bool = False,
    kind: str = "model",
    flag: str | None = None,
):
    """AutoModelForCausalLM from a hub name or a local save_pretrained directory, on
    `device` ("auto" allowed), in `dtype`, with no progress bar on stderr unless
    `progress_bar`. Returned in eval mode (from_pretrained's); the trainer decides
    when to train. `kind` and `flag` name it in errors ("policy", "--model.policy").
    Custom model code runs only with `trust_remote_code`."""
    from remax.models.checks import check_architecture, check_attends_only_to_the_past, held_back_warnings, release

    device = resolve_device(device)  # a missing GPU fails before the weights are read
    name = os.fspath(name_or_path)
    saved = _local_config(name)
    if saved is not None:  # a masked LM or a bare encoder: refused before its weights are read
        check_architecture(saved, name, kind, flag)
    with held_back_warnings() as held:  # printed only if the model is kept
        model = checked_from_pretrained(
            kind, AutoModelForCausalLM.from_pretrained, name_or_path,
            required="config.json", progress_bar=progress_bar, flag=flag,
            dtype=to_torch_dtype(dtype), trust_remote_code=trust_remote_code,
        )
        check_architecture(model.config, name, kind, flag)  # hub models: from the config that was read
        model = model.to(device)
        check_attends_only_to_the_past(model, name, kind, flag)
    release(held)
    return model


def _local_config(name: str):
    """config.json of a local directory as an object with `architectures`, or None."""
    import json
    from types import SimpleNamespace

    path = os.path.join(os.path.expanduser(name), "config.json")
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, ValueError):
        return None
    return SimpleNamespace(architectures=data.get("architectures") if isinstance(data, dict) else None)


def make_reference(policy: torch.nn.Module):
    """pi_ref for `policy`, frozen: later policy updates do not reach it.

    A policy with fresh LoRA adapters (a peft model whose adapters add nothing yet) gets
    `remax.models.lora.AdaptersOff`: the same base with its adapters switched off, so no
    second copy of the weights is held (see `lora_reference` for trained adapters). Any
    other policy gets an independent deep copy (eval mode, requires_grad False). Either
    way the loop calls `response_logprobs` on what is returned."""
    from remax.models.lora import is_peft_model, lora_reference

    if is_peft_model(policy):
        return lora_reference(policy)
    ref = copy.deepcopy(policy)
    ref.eval()
    ref.requires_grad_(False)
    return ref


def eos_token_ids(tokenizer, model=None) -> list[int]:
    """Every id that ends a response: the tokenizer's EOS, then each id of the model's
    `generation_config.eos_token_id` (an int or a list: Llama-3-Instruct adds `<|eot_id|>`,
    Qwen2.5-Instruct `<|im_end|>` and `<|endoftext|>`), duplicates dropped, in that order.

    The one source of stop ids: HF generate's `eos_token_id`, vLLM's `stop_token_ids`, the
    response mask (first of ANY of them), `rollout/eos_frac`, `loss.mask_truncated` and
    the reward's view of whether a response ended all take this list. ValueError when
    there is none (a response could never end)."""
    ids: list[int] = []
    candidates = [getattr(tokenizer, "eos_token_id", None)]
    generation = getattr(model, "generation_config", None) if model is not None else None
    if hasattr(model, "get_base_model") and generation is None:  # a peft wrapper
        generation = getattr(model.get_base_model(), "generation_config", None)
    extra = getattr(generation, "eos_token_id", None)
    candidates += list(extra) if isinstance(extra, (list, tuple)) else [extra]
    for value in candidates:
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0 and value not in ids:
            ids.append(value)
    if not ids:
        raise ValueError("neither the tokenizer nor the model's generation_config names an EOS token; "
                         "set the tokenizer's eos_token so responses can end")
    return ids
