"""Several EOS ids (issue 15, item 9): a chat model's generation_config lists more than one
(Llama-3-Instruct's <|eot_id|>, Qwen2.5-Instruct's <|im_end|> and <|endoftext|>). Every
consumer takes them from `eos_token_ids`: HF generate, the response mask, eos_frac,
loss.mask_truncated and the reward's text."""

from __future__ import annotations

import copy

import pytest
import torch

from remax.config import Config
from remax.models.loading import eos_token_ids
from remax.rollout.backend import build_backend
from remax.trainer.batch_fill import mask_truncated


def encode(tokenizer, texts=("And God said", "Love", "The Lord is")):
    enc = tokenizer(list(texts), return_tensors="pt", padding=True)
    return enc.input_ids, enc.attention_mask


def second_eos(model, tokenizer):
    """A model whose generation_config lists the tokenizer's EOS and a second id: the token
    greedy decoding emits at the second position of the first prompt (so it is reached)."""
    ids, mask = encode(tokenizer)
    cfg = Config()
    cfg.rollout.max_new_tokens = 6
    plain = build_backend(cfg, model, tokenizer).generate(ids, mask, n=0, greedy=True)
    stop = int(plain.response_ids[0, 1])
    assert stop != tokenizer.eos_token_id and (plain.response_mask[0] == 1).all()  # ran to the limit before
    model = copy.deepcopy(model)
    model.generation_config.eos_token_id = [tokenizer.eos_token_id, stop]
    return model, stop, plain


def test_eos_ids_come_from_the_tokenizer_and_the_generation_config(tokenizer, tiny_model):
    model = copy.deepcopy(tiny_model)
    model.generation_config.eos_token_id = [7, tokenizer.eos_token_id, 9]
    assert eos_token_ids(tokenizer, model) == [tokenizer.eos_token_id, 7, 9]
    model.generation_config.eos_token_id = 11  # an int works too
    assert eos_token_ids(tokenizer, model) == [tokenizer.eos_token_id, 11]
    model.generation_config.eos_token_id = None
    assert eos_token_ids(tokenizer, model) == eos_token_ids(tokenizer) == [tokenizer.eos_token_id]


def test_the_second_id_stops_generation_and_is_masked_in(tokenizer, tiny_model):
    model, stop, plain = second_eos(tiny_model, tokenizer)
    cfg = Config()
    cfg.rollout.max_new_tokens = 6
    got = build_backend(cfg, model, tokenizer).generate(*encode(tokenizer), n=0, greedy=True)
    row = got.response_ids[0].tolist()
    first = row.index(stop)
    assert got.response_mask[0].tolist() == [1.0] * (first + 1) + [0.0] * (len(row) - first - 1)  # stop id in
    assert all(t == tokenizer.pad_token_id for t in row[first + 1 :])
    assert plain.response_ids[0, : first + 1].tolist() == row[: first + 1]  # the same tokens up to it


def test_mask_truncated_and_eos_frac_count_every_id(tokenizer, tiny_model, tmp_path):
    from remax.trainer import Trainer

    model, stop, _ = second_eos(tiny_model, tokenizer)
    cfg = Config(algo="remax", output_dir=str(tmp_path / "run"))
    cfg.rollout.n_samples, cfg.rollout.max_new_tokens = 1, 6
    cfg.train.batch_size, cfg.train.steps, cfg.log.progress = 2, 1, False
    trainer = Trainer(cfg, policy=model, tokenizer=tokenizer, reward_fn=lambda p, r: [float(x.ended) for x in r],
                      rows=[{"prompt": "And God said"}, {"prompt": "Love"}])
    assert trainer.eos_token_id == [tokenizer.eos_token_id, stop]
    ids = torch.tensor([[5, stop, 0], [5, 6, 6]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    from remax.rollout import Rollout

    ro = Rollout(torch.ones(2, 1, dtype=torch.long), torch.ones(2, 1, dtype=torch.long), ids, mask, 2, 1, False)
    kept, count = mask_truncated(ro, trainer.eos_token_id)
    assert count == 1.0 and kept.response_mask.tolist() == [[1.0, 1.0, 0.0], [0.0, 0.0, 0.0]]
    from remax.trainer.phases.score import rollout_metrics

    batch = trainer.prepare(ro, torch.zeros(2), torch.zeros(2))
    m = rollout_metrics(ro, torch.zeros(2), None, batch.seq_adv, trainer.eos_token_id)
    assert m["rollout/eos_frac"] == pytest.approx(0.5)
