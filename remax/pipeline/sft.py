"""`remax sft`: supervised fine-tuning of a causal LM, the first step of the RLHF pipeline
(Ouyang et al. 2022, arXiv 2203.02155; the ReMax authors' DeepSpeed-Chat step 1).

Data in TRL's SFT formats (https://huggingface.co/docs/trl/dataset_formats):
- prompt / completion: {"prompt": "...", "completion": "..."}; the loss is on the
  completion's tokens only (the prompt's labels are -100). The text is laid out exactly
  as `remax train` will present it to the policy: the prompt encoded alone (with the
  tokenizer's special tokens), then the completion's tokens, then EOS, so the model
  learns to answer a prompt as the RL step will pose it, and to stop;
- conversational prompt / completion: {"prompt": [messages], "completion": [assistant
  messages]} (a string completion is one assistant turn): the prompt through the chat
  template with the generation prompt (what `remax train` renders), the loss on the
  rest of the conversation's rendering (the assistant turn and the template's end of turn);
- messages: {"messages": [...]}: the loss on every assistant turn, located by
  rendering the conversation prefix by prefix (`remax.pipeline.data.chat_segments`).

Rows longer than max_length are cut on the right; a row whose completion is cut away
entirely is dropped (counted on stderr). The output, final/, is a Hugging Face
directory (model + tokenizer) that `remax train --model.policy DIR` loads; with LoRA it
holds the merged weights, and the adapter alone in final/adapter/.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch

from remax.config import LoraConfig
from remax.data import DataError, PromptRows
from remax.pipeline.common import (Run, SupervisedConfig, checkpoint_layers, disable_dropout, load_tokenizer_of,
                                   setup)
from remax.pipeline.data import (
    assistant_turns,
    chat_segments,
    check_text,
    column_value,
    given_rows,
    hold_out,
    load_rows,
    render,
)
from remax.pipeline.losses import IGNORE, completion_nll


@dataclass
class SFTConfig(SupervisedConfig):
    """`remax sft`'s options (the shared ones are documented in SupervisedConfig)."""

    output_dir: str = "runs/sft"
    """Where config.yaml, metrics.jsonl, checkpoints/ and final/ (the fine-tuned model) go."""
    prompt_column: str = "prompt"
    """Column of the prompt (a string or a chat) in prompt/completion rows."""
    completion_column: str = "completion"
    """Column of the completion (a string, or assistant messages) in prompt/completion rows."""
    messages_column: str = "messages"
    """Column of whole conversations (rows without a prompt column): the loss is on every assistant turn."""
    chat_template: bool = False
    """Wrap string prompts as one user turn with the tokenizer's chat template (as --data.chat_template in remax train)."""
    lora: LoraConfig = field(default_factory=LoraConfig)
    """LoRA adapters (--lora.r 16 ...); final/ holds the merged model, final/adapter/ the adapter."""


@dataclass
class SFTExample:
    input_ids: list[int]
    labels: list[int]  # IGNORE where no loss is taken (the prompt)


# ------------------------------------------------------------------ data
def load_sft_rows(c: SFTConfig, rows: Optional[list[dict[str, Any]]] = None) -> tuple[PromptRows, str]:
    """(rows, format): 'prompt_completion' when rows hold the prompt column, else 'messages'."""
    if rows is not None:
        first = rows[0] if rows and isinstance(rows[0], dict) else {}
        if c.prompt_column not in first and c.messages_column in first:
            return given_rows(rows, c.messages_column), "messages"
        return given_rows(rows, c.prompt_column), "prompt_completion"
    if not c.train_file:
        raise DataError("no training data; pass --train_file FILE (prompt/completion or messages rows)")
    hint = f"--prompt_column (or give rows a {c.messages_column!r} column)"
    try:
        return load_rows(c.train_file, c.prompt_column, split=c.split, subset=c.subset, column_flag=hint), \
            "prompt_completion"
    except DataError as first_error:
        try:
            return load_rows(c.train_file, c.messages_column, split=c.split, subset=c.subset,
                             column_flag="--messages_column"), "messages"
        except DataError:
            raise first_error from None


def sft_segments(row: dict[str, Any], tokenizer: Any, c: SFTConfig, fmt: str, where: str) -> list[tuple[str, bool]]:
    """The row's text as (piece, trained) pieces; the first is the prompt (never trained)."""
    if fmt == "messages":
        return chat_segments(tokenizer, row[c.messages_column], where)
    prompt = row[c.prompt_column]
    completion = column_value(row, c.completion_column, where, "--completion_column")
    check_text(completion, c.completion_column, where)
    if not (isinstance(prompt, list) or isinstance(completion, list) or c.chat_template):
        return [(prompt, False), (completion, True)]
    messages = prompt if isinstance(prompt, list) else [{"role": "user", "content": prompt}]
    head = render(tokenizer, messages, where, True)  # the policy's prompt text in remax train (remax.data.prompt_texts)
    full = render(tokenizer, messages + assistant_turns(completion, c.completion_column, where), where, False)
    if not full.startswith(head):
        raise DataError(f"{where}: the chat template renders the prompt differently once the answer follows it, so "
                        "the completion's tokens cannot be located; pass --tokenizer with another template")
    return [(head, False), (full[len(head):], True)]


def encode_row(segments: list[tuple[str, bool]], tokenizer: Any, templated: bool) -> SFTExample:
    """Each piece encoded on its own and concatenated, as the RL step concatenates the
    prompt's ids and the response's: the prompt with the tokenizer's special tokens
    (unless templated: the template wrote them), a plain completion followed by EOS."""
    ids: list[int] = []
    labels: list[int] = []
    for i, (text, trained) in enumerate(segments):
        piece = tokenizer(text, add_special_tokens=i == 0 and not templated)["input_ids"]
        if trained and not templated:
            piece = piece + [tokenizer.eos_token_id]
        ids += piece
        labels += piece if trained else [IGNORE] * len(piece)
    return SFTExample(ids, labels)


def sft_examples(rows: PromptRows, tokenizer: Any, c: SFTConfig, fmt: str, max_length: int) -> list[SFTExample]:
    """Every row checked and encoded; cut to max_length; rows with no trained token left dropped."""
    from remax.trainer.resume import notice

    if tokenizer.eos_token_id is None:
        raise DataError("the tokenizer has no eos_token; set one so completions can end")
    out, cut, dropped = [], 0, 0
    for row, where in zip(rows, rows.locations):
        templated = fmt == "messages" or isinstance(row.get(c.prompt_column), list) or c.chat_template \
            or isinstance(row.get(c.completion_column), list)
        ex = encode_row(sft_segments(row, tokenizer, c, fmt, where), tokenizer, templated)
        if len(ex.input_ids) > max_length:
            cut += 1
            ex = SFTExample(ex.input_ids[:max_length], ex.labels[:max_length])
        if all(label == IGNORE for label in ex.labels[1:]):
            dropped += 1
            continue
        out.append(ex)
    if cut:
        notice(f"sft: {cut} of {len(rows)} rows are longer than --max_length {max_length} tokens and were cut on the "
               f"right; {dropped} lost their whole completion and were dropped")
    if not out:
        raise DataError(f"no row has a completion token within --max_length {max_length}; raise it or shorten the prompts")
    return out


def collate(examples: list[SFTExample], pad_id: int, device: torch.device) -> tuple[torch.Tensor, ...]:
    """Right-padded (B, T) ids, attention mask and labels (IGNORE on padding)."""
    width = max(len(e.input_ids) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)  # (B, T)
    mask = torch.zeros((len(examples), width), dtype=torch.long)  # (B, T)
    labels = torch.full((len(examples), width), IGNORE, dtype=torch.long)  # (B, T)
    for i, e in enumerate(examples):
        n = len(e.input_ids)
        ids[i, :n], mask[i, :n], labels[i, :n] = torch.tensor(e.input_ids), 1, torch.tensor(e.labels)
    return ids.to(device), mask.to(device), labels.to(device)


# ------------------------------------------------------------------ task
@dataclass
class SFTTask:
    """Next-token loss on the completion tokens (remax.pipeline.losses.completion_nll)."""

    pad_id: int
    device: torch.device
    micro_batch_size: int = 8
    name: str = "sft"
    unit: str = "tokens"

    def count(self, examples: list[SFTExample]) -> float:
        return float(sum(sum(label != IGNORE for label in e.labels[1:]) for e in examples))

    def loss(self, model: Any, examples: list[SFTExample]) -> tuple[torch.Tensor, dict[str, float]]:
        ids, mask, labels = collate(examples, self.pad_id, self.device)
        logits = model(input_ids=ids, attention_mask=mask).logits  # (B, T, V)
        nll, _ = completion_nll(logits, labels)
        hits = ((logits[:, :-1].argmax(-1) == labels[:, 1:]) & (labels[:, 1:] != IGNORE)).sum()
        return nll, {"sft/token_accuracy": float(hits)}

    def evaluate(self, model: Any, examples: list[SFTExample]) -> dict[str, float]:
        nll, hits, n = 0.0, 0.0, 0.0
        for i in range(0, len(examples), self.micro_batch_size):
            chunk = examples[i : i + self.micro_batch_size]
            s, stats = self.loss(model, chunk)
            nll, hits, n = nll + float(s), hits + stats["sft/token_accuracy"], n + self.count(chunk)
        return {"loss": nll / n, "token_accuracy": hits / n}


# ------------------------------------------------------------------ entry
def run_sft(config: SFTConfig, *, model: Any = None, tokenizer: Any = None,
            rows: Optional[list[dict[str, Any]]] = None) -> Path:
    """Fine-tune `config.model` (or `model`, trained in place) on `config.train_file` (or
    `rows`); returns output_dir/final, a directory AutoModelForCausalLM loads."""
    from remax.models import load_causal_lm
    from remax.models.loading import max_positions
    from remax.models.lora import apply_lora, check_lora_config

    c = config
    check_lora_config(c.lora)
    dist, device = setup(c)
    if model is None:
        if not c.model:
            raise DataError("no model to fine-tune; pass --model PATH (a causal LM directory or hub name)")
        model = load_causal_lm(c.model, dtype=c.dtype, device=str(device), trust_remote_code=c.trust_remote_code,
                               kind="model", flag="--model")
    tokenizer = load_tokenizer_of(c) if tokenizer is None else tokenizer
    all_rows, fmt = load_sft_rows(c, rows)
    train_rows, held_rows = hold_out(all_rows, c.eval_fraction, c.seed)
    limit = min(c.max_length, max_positions(model) or c.max_length)
    train = sft_examples(train_rows, tokenizer, c, fmt, limit)
    held = sft_examples(held_rows, tokenizer, c, fmt, limit) if held_rows else None
    if c.disable_dropout:
        disable_dropout(model)
    model = apply_lora(model.to(device), c.lora)
    if c.gradient_checkpointing:
        checkpoint_layers(model)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    task = SFTTask(pad, device, c.micro_batch_size)
    Run(c, model, tokenizer, task, train, held, dist=dist, device=device).run()
    return Path(c.output_dir) / "final"


__all__ = ["SFTConfig", "SFTExample", "SFTTask", "collate", "encode_row", "load_sft_rows", "run_sft", "sft_examples",
           "sft_segments"]
