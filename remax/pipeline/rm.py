"""`remax rm`: a Bradley-Terry reward model on preference pairs, the pipeline's second step
(Ouyang et al. 2022, arXiv 2203.02155, eq. 1; the ReMax authors' DeepSpeed-Chat step 2).

    loss = -log sigmoid(r(x, y_chosen) - r(x, y_rejected) - margin)     (remax.pipeline.losses)

Data in TRL's preference formats (https://huggingface.co/docs/trl/dataset_formats):
{"prompt", "chosen", "rejected"} (explicit prompt) or {"chosen", "rejected"} whose shared
beginning is the prompt (implicit: the longest common prefix, of characters for strings,
of messages for chats); strings or chats (a chat's chosen / rejected answer is one
assistant message); an optional numeric `margin` column. An extension TRL does not have:
optional boolean `chosen_ended` / `rejected_ended` columns (or, from Python, responses
that are `ResponseText`s) say that a response was cut at max_new_tokens (False) rather
than finished (True, the default), so a model trained on a policy's own samples reads
each one with the end it will have in RL (a cut response gets no EOS there either).

The model is the base (a causal LM, e.g. `remax sft`'s output) with a one-label
sequence-classification head, saved as an `AutoModelForSequenceClassification`
directory with its tokenizer and `pad_token_id` set. Training reads every pair exactly
as `remax.rewards.model.RewardModelReward` (`--reward.kind model`, `remax serve-reward
--kind model`) will score it: the same text (`format_texts`: the tokenizer's chat
template, or prompt + response + EOS for a finished response), the same encoding
(`encode_texts`) and the same forward, read at the last real token
(`sequence_scores`). So the reward a policy is trained against is the function the
reward model was fitted as. Pairs longer than max_length are dropped (counted), as TRL
does, rather than cut: a cut pair would be scored on text its label does not describe.
Dropout is off by default (TRL's RewardConfig.disable_dropout).
"""

from __future__ import annotations

import math
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch

from remax.config import LoraConfig
from remax.data import DataError, PromptRows
from remax.pipeline.common import (Run, SupervisedConfig, checkpoint_layers, disable_dropout, load_tokenizer_of,
                                   setup)
from remax.pipeline.data import check_text, column_value, given_rows, hold_out, load_rows
from remax.pipeline.losses import bradley_terry, pair_accuracy
from remax.rewards.base import ResponseText
from remax.rewards.model import encode_texts, format_texts, sequence_scores


@dataclass
class RMConfig(SupervisedConfig):
    """`remax rm`'s options (the shared ones are documented in SupervisedConfig)."""

    output_dir: str = "runs/rm"
    """Where config.yaml, metrics.jsonl, checkpoints/ and final/ (the reward model) go."""
    eval_fraction: float = 0.1
    """Hold out this seeded share of the pairs: eval/accuracy (held-out pair accuracy) and eval/loss; 0 holds out none."""
    disable_dropout: bool = True
    """Switch the model's dropout off while training (TRL's RewardConfig default)."""
    prompt_column: str = "prompt"
    """Column of the prompt; rows without it have an implicit prompt (the shared beginning of chosen and rejected)."""
    chosen_column: str = "chosen"
    """Column of the preferred response (a string, or one assistant message; the whole text for an implicit prompt)."""
    rejected_column: str = "rejected"
    """Column of the other response."""
    margin_column: str = "margin"
    """Optional column of a per-pair margin: the loss asks r_chosen - r_rejected to exceed it."""
    lora: LoraConfig = field(default_factory=LoraConfig)
    """LoRA adapters (--lora.r 16 ...), the head trained in full; final/ holds the merged model, final/adapter/ the adapter."""


@dataclass
class Pair:
    prompt: Any  # a string or a chat
    chosen: str
    rejected: str
    margin: float = 0.0
    chosen_ended: bool = True  # False: cut at max_new_tokens, read without an end (see the module docstring)
    rejected_ended: bool = True


@dataclass
class RMExample:
    chosen: list[int]
    rejected: list[int]
    margin: float = 0.0


# ------------------------------------------------------------------ data
def common_prefix(chosen: str, rejected: str) -> int:
    """Length of the shared beginning of two strings, ending before the word where they
    part (a space that starts the differing word belongs to the responses, as in TRL's
    extract_prompt)."""
    n = 0
    while n < min(len(chosen), len(rejected)) and chosen[n] == rejected[n]:
        n += 1
    if 0 < n < min(len(chosen), len(rejected)) and chosen[n - 1] == " ":
        n -= 1
    return n


def answer_of(value: Any, column: str, where: str) -> str:
    """A response: a string, or a chat of exactly one assistant message."""
    if isinstance(value, str):
        return value
    if len(value) != 1 or value[0].get("role") != "assistant":
        roles = [m.get("role") for m in value]
        raise DataError(f"{where}: column {column!r} must be one assistant message after the prompt, got roles {roles}; "
                        "put the other turns in the prompt")
    return value[0]["content"]


def parse_pair(row: dict[str, Any], c: RMConfig, where: str) -> Pair:
    """One row -> (prompt, chosen answer, rejected answer, margin), or one line naming the row."""
    chosen = column_value(row, c.chosen_column, where, "--chosen_column")
    rejected = column_value(row, c.rejected_column, where, "--rejected_column")
    for value, column in ((chosen, c.chosen_column), (rejected, c.rejected_column)):
        check_text(value, column, where)
    ends = _ended(row, chosen, c.chosen_column, where), _ended(row, rejected, c.rejected_column, where)
    margin = _margin(row, c.margin_column, where)
    if c.prompt_column in row:
        prompt = row[c.prompt_column]
        check_text(prompt, c.prompt_column, where)
        return Pair(prompt, answer_of(chosen, c.chosen_column, where), answer_of(rejected, c.rejected_column, where),
                    margin, *ends)
    if isinstance(chosen, str) != isinstance(rejected, str):
        raise DataError(f"{where}: {c.chosen_column!r} and {c.rejected_column!r} must both be strings or both chats")
    if chosen == rejected:
        raise DataError(f"{where}: chosen and rejected are the same, so the pair states no preference; remove the row")
    if isinstance(chosen, str):
        n = common_prefix(chosen, rejected)
        return Pair(chosen[:n], chosen[n:], rejected[n:], margin, *ends)
    n = 0
    while n < min(len(chosen), len(rejected)) and chosen[n] == rejected[n]:
        n += 1
    prompt = chosen[:n]
    if not prompt:
        raise DataError(f"{where}: chosen and rejected chats share no first message, so there is no implicit prompt; "
                        f"add a {c.prompt_column!r} column")
    return Pair(prompt, answer_of(chosen[n:], c.chosen_column, where), answer_of(rejected[n:], c.rejected_column, where),
                margin, *ends)


def _ended(row: dict[str, Any], response: Any, column: str, where: str) -> bool:
    """Whether a response finished: its `<column>_ended` column, else a ResponseText's own
    `ended`, else True (TRL's layout: every response complete)."""
    value = row.get(f"{column}_ended", getattr(response, "ended", None))
    if value is None:
        return True
    if not isinstance(value, bool):
        raise DataError(f"{where}: column {column + '_ended'!r} must be true or false, got {value!r}")
    return value


def _margin(row: dict[str, Any], column: str, where: str) -> float:
    if column not in row or row[column] is None:
        return 0.0
    value = row[column]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise DataError(f"{where}: column {column!r} must be a finite number, got {value!r}")
    return float(value)


def rm_texts(tokenizer: Any, pairs: list[Pair]) -> tuple[list[str], list[str]]:
    """The texts of the chosen and the rejected responses, as the reward model will read
    them (`remax.rewards.model.format_texts`: a finished response closed, a cut one open)."""
    prompts = [p.prompt for p in pairs]
    chosen = format_texts(tokenizer, prompts, [ResponseText(p.chosen, ended=p.chosen_ended) for p in pairs])
    rejected = format_texts(tokenizer, prompts, [ResponseText(p.rejected, ended=p.rejected_ended) for p in pairs])
    return chosen, rejected


def rm_examples(rows: PromptRows, tokenizer: Any, c: RMConfig, max_length: int) -> list[RMExample]:
    """Every row parsed, formatted and encoded as the scorer does; over-long pairs dropped."""
    from remax.trainer.resume import notice

    pairs = [parse_pair(row, c, where) for row, where in zip(rows, rows.locations)]
    chosen, rejected = rm_texts(tokenizer, pairs)
    try:
        chosen_ids, rejected_ids = encode_texts(tokenizer, chosen), encode_texts(tokenizer, rejected)
    except Exception as err:  # a template that refuses a chat
        raise DataError(f"the tokenizer could not encode the pairs ({str(err).splitlines()[0][:200]})") from None
    out = [RMExample(a, b, p.margin) for a, b, p in zip(chosen_ids, rejected_ids, pairs)
           if 0 < len(a) <= max_length and 0 < len(b) <= max_length]
    if len(out) < len(pairs):
        notice(f"rm: {len(pairs) - len(out)} of {len(pairs)} pairs are longer than --max_length {max_length} tokens "
               "and were dropped")
    if not out:
        raise DataError(f"no pair fits in --max_length {max_length} tokens; raise it")
    return out


# ------------------------------------------------------------------ task
@dataclass
class RMTask:
    """Bradley-Terry on the scores the reward scorer reads (remax.rewards.model.sequence_scores)."""

    micro_batch_size: int = 8
    name: str = "rm"
    unit: str = "pairs"

    def count(self, examples: list[RMExample]) -> float:
        return float(len(examples))

    def scores(self, model: Any, examples: list[RMExample]) -> tuple[torch.Tensor, torch.Tensor]:
        """(P,) chosen and (P,) rejected rewards, from one forward over the 2P texts."""
        rows = [e.chosen for e in examples] + [e.rejected for e in examples]
        r = sequence_scores(model, rows).float()  # (2P,)
        return r[: len(examples)], r[len(examples):]

    def loss(self, model: Any, examples: list[RMExample]) -> tuple[torch.Tensor, dict[str, float]]:
        chosen, rejected = self.scores(model, examples)
        margin = torch.tensor([e.margin for e in examples], device=chosen.device)
        losses = bradley_terry(chosen, rejected, margin)  # (P,)
        return losses.sum(), {"rm/accuracy": float(pair_accuracy(chosen, rejected).sum()),
                              "rm/reward_gap": float((chosen - rejected).detach().sum()),
                              "rm/reward_chosen": float(chosen.detach().sum())}

    def evaluate(self, model: Any, examples: list[RMExample]) -> dict[str, float]:
        sums: dict[str, float] = {}
        for i in range(0, len(examples), self.micro_batch_size):
            loss, stats = self.loss(model, examples[i : i + self.micro_batch_size])
            for k, v in {"loss": float(loss), **{k.split("/")[1]: v for k, v in stats.items()}}.items():
                sums[k] = sums.get(k, 0.0) + v
        return {k: v / len(examples) for k, v in sums.items()}


# ------------------------------------------------------------------ model
def load_reward_base(c: RMConfig, model: Any, device: torch.device) -> Any:
    """An AutoModelForSequenceClassification with one label: `model` as it is if it already
    is one, a causal LM object or `c.model` (any checkpoint) with a fresh head, drawn from
    torch's RNG as seeded by --seed."""
    from transformers import AutoModelForSequenceClassification

    from remax.models.loading import checked_from_pretrained, progress_bars, to_torch_dtype
    from remax.rewards.model import quiet_transformers

    if model is not None and type(model).__name__.endswith("ForSequenceClassification"):
        if model.config.num_labels != 1:
            raise DataError(f"the model passed has num_labels={model.config.num_labels}; a reward model has one")
        return model.to(device)
    with tempfile.TemporaryDirectory() as tmp:
        source = c.model
        if model is not None:  # a causal LM object: through disk, so transformers builds the head as for a path
            with progress_bars(False):
                model.save_pretrained(tmp)
            source = tmp
        if not source:
            raise DataError("no base model; pass --model PATH (e.g. remax sft's final/)")
        with quiet_transformers():  # the 'newly initialised score head' report: that is the point
            rm = checked_from_pretrained("model", AutoModelForSequenceClassification.from_pretrained, source,
                                         required="config.json", flag="--model", num_labels=1,
                                         dtype=to_torch_dtype(c.dtype), trust_remote_code=c.trust_remote_code)
    if model is not None:  # not the deleted temporary directory (adapter_config.json's base_model_name_or_path)
        rm.name_or_path = rm.config._name_or_path = getattr(model, "name_or_path", "")
    if rm.config.num_labels != 1:
        raise DataError(f"--model {c.model!r} has num_labels={rm.config.num_labels}; pass a causal LM or a one-label model")
    return rm.to(device)


def run_rm(config: RMConfig, *, rows: Optional[list[dict[str, Any]]] = None, model: Any = None,
           tokenizer: Any = None) -> dict[str, Any]:
    """Train a reward model on `config.train_file` (or `rows`) from `config.model` (or
    `model`: a causal LM, or a one-label sequence classifier trained in place). Returns
    {'path': output_dir/final, 'eval_accuracy', 'eval_loss' (None without held-out
    pairs), 'train_accuracy' (the last step's), 'steps', 'train_pairs', 'eval_pairs'}."""
    from remax.models.loading import max_positions

    from remax.models.lora import apply_lora, check_lora_config

    c = config
    check_lora_config(c.lora)
    dist, device = setup(c)
    if model is None and not c.model:
        raise DataError("no base model; pass --model PATH (a causal LM such as remax sft's final/, or a reward model)")
    tokenizer = load_tokenizer_of(c) if tokenizer is None else tokenizer
    if rows is not None:
        all_rows = given_rows(rows, c.chosen_column)
    elif not c.train_file:
        raise DataError("no preference pairs; pass --train_file FILE (rows with chosen and rejected)")
    else:
        all_rows = load_rows(c.train_file, c.chosen_column, split=c.split, subset=c.subset,
                             column_flag="--chosen_column")
    train_rows, held_rows = hold_out(all_rows, c.eval_fraction, c.seed)
    rm = load_reward_base(c, model, device)
    rm.config.pad_token_id = tokenizer.pad_token_id  # saved: transformers' head and the scorer read it
    limit = min(c.max_length, max_positions(rm) or c.max_length)
    train = rm_examples(train_rows, tokenizer, c, limit)
    held = rm_examples(held_rows, tokenizer, c, limit) if held_rows else None
    if c.disable_dropout:
        disable_dropout(rm)
    rm = apply_lora(rm, c.lora, task_type="SEQ_CLS")  # peft trains the head in full (modules_to_save)
    if c.gradient_checkpointing:
        checkpoint_layers(rm)
    history = Run(c, rm, tokenizer, RMTask(c.micro_batch_size), train, held, dist=dist, device=device).run()
    last = history[-1] if history else {}
    return {"path": Path(c.output_dir) / "final", "eval_accuracy": last.get("eval/accuracy"),
            "eval_loss": last.get("eval/loss"), "train_accuracy": last.get("rm/accuracy"), "steps": len(history),
            "train_pairs": len(train), "eval_pairs": len(held or [])}


__all__ = ["Pair", "RMConfig", "RMExample", "RMTask", "common_prefix", "load_reward_base", "parse_pair", "rm_examples",
           "rm_texts", "run_rm"]
