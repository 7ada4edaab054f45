"""Pretrain the demo's policy: a small GPT-2-style LM on the King James Bible, on CPU,
for a fixed number of steps, cached on disk so that later demo runs start at once.

Recipe (nanoGPT-style, shrunk to a few CPU minutes):
- a byte-level BPE tokenizer trained on the verses (`remax.models.tiny.train_tokenizer`);
- the corpus as one token stream, every verse followed by EOS, so the model learns where
  a verse ends and RL responses finish with EOS;
- each training row is a window of `block_size + 1` tokens that *starts at a verse
  start*: generation prompts are verse prefixes with no BOS in front, and rows that
  start the same way train exactly that condition (a verse start at position 0);
- AdamW, linear warmup then cosine decay over a fixed step count (`DEFAULT_STEPS`), so
  every machine, fast or busy, trains the same model (up to float rounding);
- dropout set to 0: a run sees about one epoch of text, and a policy without dropout
  gives the same log-probs in train and eval mode during RL.

The model has `n_positions=64` by default, all of them trained (rows are as long as
the context): a prompt plus its response must fit in 64 tokens. A verse is 32 tokens
on average. The step count, not the clock, ends training, so a busy CPU only makes it slower.

The cache directory holds `save_pretrained` output (model and tokenizer) plus
`info.json`; a key over every setting (steps, seed, sizes, corpus hash) decides
whether a later call may reuse the cache.
Results are written to a temporary sibling directory and renamed into place, so a run
killed midway never leaves a half-written cache.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F

from remax.demo.corpus import kjv_verses
from remax.models.loading import load_causal_lm, load_tokenizer
from remax.models.tiny import tiny_causal_lm, train_tokenizer
from remax.trainer.checkpoint import atomic_dir, save_pretrained_dir

CACHE_FORMAT = 2  # bump when the recipe changes, so old caches are retrained (2: a step count ends training)
INFO_FILE = "info.json"

# Chosen by runs of equal CPU time (250 CPU-s on 1 thread, about 140 s on 2 cores),
# scored in bits per character on 400 verses: 3x128 with 16 rows 1.446, with 32 rows
# 1.459; 4x128 1.475-1.497; 4x96 1.492; 4x128 with vocab 2048 1.519; 3x128 with
# 128-token rows 1.500. 4x256 and 6x128 reached higher train loss at the same vocab.
DEFAULT_VOCAB_SIZE = 4096
# 1500 x 16 rows x 64 tokens = 1.5M tokens, about 1.5 passes over the corpus; at 0.14 CPU-s
# a step (1 thread) that is 210 CPU-s, what the former 180-s wall-clock budget bought on 2 cores.
DEFAULT_STEPS = 1500
DEFAULT_MODEL_KWARGS: dict[str, int] = dict(n_layer=3, n_embd=128, n_head=4, n_positions=64)
DEFAULT_TRAIN_KWARGS: dict[str, float | int | None] = dict(
    block_size=None,  # tokens per row; None: the model's n_positions, so every position is trained
    batch_size=16,  # rows per step: many small steps learn faster than few large ones here
    lr=2e-3,  # peak learning rate
    min_lr_ratio=0.1,  # cosine decays to lr * min_lr_ratio
    warmup_steps=50,
    weight_decay=0.1,  # on matrices only
    grad_clip=1.0,
)
LOG_EVERY_S = 10.0


def pretrain_demo_model(
    cache_dir: str | os.PathLike | None,
    *,
    steps: int = DEFAULT_STEPS,
    seed: int = 0,
    log: Callable[[str], Any] = print,
    vocab_size: int = DEFAULT_VOCAB_SIZE,
    model_kwargs: dict | None = None,
    train_kwargs: dict | None = None,
    verses: list[str] | None = None,
):
    """Pretrain (or load from `cache_dir`) the demo LM; returns `(model, tokenizer, info)`.

    Training runs exactly `steps` optimizer steps (the schedule's length), whatever the
    machine's speed, so the same settings give the same model everywhere.
    `model_kwargs` overrides `DEFAULT_MODEL_KWARGS` (n_layer, n_embd, n_head,
    n_positions), `train_kwargs` overrides `DEFAULT_TRAIN_KWARGS`, `verses` replaces
    the KJV corpus (tests). With `cache_dir=None` nothing is read or written.

    `info` holds steps, tokens_seen, final_loss (mean of the last 20 steps), seconds,
    settings and `loaded_from_cache`. The model is returned in eval mode, the tokenizer
    pads on the left."""
    t0 = time.perf_counter()
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    verses = kjv_verses() if verses is None else list(verses)
    settings = _settings(verses, steps, seed, vocab_size, model_kwargs, train_kwargs)
    key = _settings_key(settings)

    if cache_dir is not None:
        cached = _load_cached(Path(cache_dir), key)
        if cached is not None:
            log(f"pretrain: loaded demo model from {cache_dir} ({cached[2]['steps']} steps)")
            return cached

    tokenizer = train_tokenizer(verses, vocab_size=vocab_size)
    tokens, starts = encode_corpus(tokenizer, verses, settings["train"]["block_size"])
    model = tiny_causal_lm(tokenizer, seed=seed, **settings["model"])
    _disable_dropout(model)
    log(
        f"pretrain: {len(verses)} verses, {tokens.numel()} tokens, vocab {len(tokenizer)}, "
        f"{sum(p.numel() for p in model.parameters()) / 1e6:.2f}M params, "
        f"setup {time.perf_counter() - t0:.1f}s"
    )
    stats = train_lm(model, tokens, starts, settings["train"], steps, seed, log)
    model.eval()

    info = dict(
        stats,
        seconds=round(time.perf_counter() - t0, 2),
        settings=settings,
        settings_key=key,
        loaded_from_cache=False,
    )
    if cache_dir is not None:
        _save_atomic(Path(cache_dir), model, tokenizer, info)
    log(
        f"pretrain: done, {info['steps']} steps, {info['tokens_seen']} tokens, "
        f"loss {info['final_loss']:.3f}, {info['seconds']:.0f}s"
    )
    return model, tokenizer, info


def encode_corpus(tokenizer, verses: list[str], block_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token stream `verse_0 EOS verse_1 EOS ...` (N,) and the positions where verses
    start whose window of `block_size + 1` tokens fits in the stream (S,)."""
    encoded = tokenizer.backend_tokenizer.encode_batch(verses, add_special_tokens=False)  # batched, in Rust
    lengths = torch.tensor([len(e.ids) + 1 for e in encoded])  # +1 for EOS
    eos = tokenizer.eos_token_id
    stream = [t for e in encoded for t in (*e.ids, eos)]
    tokens = torch.tensor(stream, dtype=torch.long)  # (N,)
    starts = torch.cumsum(lengths, 0) - lengths  # (V,) offset of each verse
    starts = starts[starts + block_size + 1 <= tokens.numel()]  # (S,)
    return tokens, starts


def sample_batch(tokens: torch.Tensor, starts: torch.Tensor, batch_size: int, block_size: int, gen) -> torch.Tensor:
    """`batch_size` windows of `block_size + 1` tokens, each starting at a random verse start."""
    idx = torch.randint(len(starts), (batch_size,), generator=gen)
    offsets = starts[idx, None] + torch.arange(block_size + 1)  # (B, T+1)
    return tokens[offsets]


def lm_step(model, optimizer, batch: torch.Tensor, grad_clip: float) -> float:
    """One next-token-prediction step on a (B, T+1) token batch, gradients clipped to
    `grad_clip`; returns the loss (the demo's and the arithmetic task's pretraining)."""
    logits = model(input_ids=batch[:, :-1]).logits  # (B, T, V)
    loss = F.cross_entropy(logits.flatten(0, 1), batch[:, 1:].flatten())
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()
    return loss.item()


def lr_at(step: int, progress: float, cfg: dict) -> float:
    """Linear warmup over `warmup_steps`, then cosine from lr to lr*min_lr_ratio as
    `progress` (fraction of the steps done) goes from 0 to 1."""
    peak, floor = cfg["lr"], cfg["lr"] * cfg["min_lr_ratio"]
    if step < cfg["warmup_steps"]:
        return peak * (step + 1) / cfg["warmup_steps"]
    cos = 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
    return floor + (peak - floor) * cos


def train_lm(model, tokens, starts, cfg: dict, steps: int, seed: int, log) -> dict:
    """`steps` steps of next-token training on windows drawn with a generator seeded by `seed`."""
    gen = torch.Generator().manual_seed(seed)
    optimizer = _adamw(model, cfg)
    B, T = cfg["batch_size"], cfg["block_size"]
    model.train()
    t_start = last_log = time.perf_counter()
    losses: list[float] = []
    for step in range(steps):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, step / steps, cfg)
        batch = sample_batch(tokens, starts, B, T, gen)  # (B, T+1)
        losses.append(round(lm_step(model, optimizer, batch, cfg["grad_clip"]), 4))
        if time.perf_counter() - last_log >= LOG_EVERY_S:
            last_log = time.perf_counter()
            elapsed = last_log - t_start
            log(
                f"pretrain step {step + 1}/{steps} loss {_tail_mean(losses):.3f} lr {group['lr']:.2e} "
                f"{(step + 1) * B * T / elapsed:,.0f} tok/s {elapsed:.0f}s"
            )
    train_s = time.perf_counter() - t_start
    return dict(
        steps=steps,
        tokens_seen=steps * B * T,
        final_loss=_tail_mean(losses),
        train_seconds=round(train_s, 2),
        tokens_per_s=round(steps * B * T / max(train_s, 1e-9), 1),
        losses=losses,
    )


def _adamw(model, cfg: dict) -> torch.optim.AdamW:
    # Weight decay on matrices (linear and embedding weights) only, as in nanoGPT.
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg["weight_decay"]},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=cfg["lr"], betas=(0.9, 0.95))


def _disable_dropout(model) -> None:
    for name in ("resid_pdrop", "embd_pdrop", "attn_pdrop"):
        setattr(model.config, name, 0.0)  # saved with the model
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0


def _tail_mean(losses: list[float], n: int = 20) -> float:
    tail = losses[-n:]
    return sum(tail) / len(tail) if tail else float("nan")


def _settings(verses, steps, seed, vocab_size, model_kwargs, train_kwargs) -> dict:
    model = {**DEFAULT_MODEL_KWARGS, **(model_kwargs or {})}
    train = {**DEFAULT_TRAIN_KWARGS, **(train_kwargs or {})}
    unknown = set(train) - set(DEFAULT_TRAIN_KWARGS)
    if unknown:
        raise ValueError(f"unknown train_kwargs {sorted(unknown)}; known: {sorted(DEFAULT_TRAIN_KWARGS)}")
    if train["block_size"] is None:
        train["block_size"] = model["n_positions"]
    if train["block_size"] > model["n_positions"]:
        raise ValueError(f"block_size {train['block_size']} > n_positions {model['n_positions']}")
    corpus = hashlib.sha256("\n".join(verses).encode()).hexdigest()[:16]
    return dict(
        format=CACHE_FORMAT,
        corpus=corpus,
        steps=steps,
        seed=seed,
        vocab_size=vocab_size,
        model=model,
        train=train,
    )


def _settings_key(settings: dict) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def _load_cached(cache_dir: Path, key: str):
    info_path = cache_dir / INFO_FILE
    if not info_path.is_file():
        return None
    info = json.loads(info_path.read_text())
    if info.get("settings_key") != key:
        return None
    tokenizer = load_tokenizer(cache_dir)
    model = load_causal_lm(cache_dir).eval()
    return model, tokenizer, dict(info, loaded_from_cache=True)


def _save_atomic(cache_dir: Path, model, tokenizer, info: dict) -> None:
    """Write into a temporary sibling, then rename it over `cache_dir`."""
    with atomic_dir(cache_dir) as tmp:
        save_pretrained_dir(model, tokenizer, tmp)
        (tmp / INFO_FILE).write_text(json.dumps(info, indent=1))  # written last
