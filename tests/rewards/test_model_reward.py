"""RewardModelReward on a tiny GPT-2 reward model saved to disk: batched, padded scores
must equal one-example forwards; long inputs keep their end; chat templates are used."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoTokenizer, GPT2ForSequenceClassification

from remax.rewards import RewardModelReward

CHAT_TEMPLATE = "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"

PROMPTS = ["The Lord is my shepherd;", "And God said,", "Love is", "O give thanks", "The wicked are"]
RESPONSES = [" I shall not want.", " Let there be light: and there was light.", " kind.", "", " sad and angry."]


def _manual_scores(path, texts, add_special_tokens=True, head_tokens=None) -> list[float]:
    """Reference: one unpadded forward per text, through plain transformers calls, scored
    at the last token (no pad id: a batch of one reads its last position)."""
    tok = AutoTokenizer.from_pretrained(path)
    model = GPT2ForSequenceClassification.from_pretrained(path).eval()
    model.config.pad_token_id = None
    scores = []
    with torch.no_grad():
        for text in texts:
            ids = tok(text, add_special_tokens=add_special_tokens)["input_ids"]
            if head_tokens is not None:
                ids = ids[:head_tokens]
            scores.append(model(input_ids=torch.tensor([ids])).logits[0, 0].item())
    return scores


def test_batched_scores_equal_single_forwards(reward_model_dir):
    reward = RewardModelReward(str(reward_model_dir), batch_size=2)  # 5 examples: 3 chunks
    scores = reward(PROMPTS, RESPONSES, answer=list("abcde"))
    assert scores.dtype == torch.float32 and scores.shape == (5,)
    expected = _manual_scores(reward_model_dir, [p + r for p, r in zip(PROMPTS, RESPONSES)])
    assert scores.tolist() == pytest.approx(expected, abs=1e-5)
    assert max(expected) - min(expected) > 1e-2  # the texts get different scores


def test_scores_do_not_depend_on_batch_size(reward_model_dir):
    one = RewardModelReward(str(reward_model_dir), batch_size=1)(PROMPTS, RESPONSES)
    all_ = RewardModelReward(str(reward_model_dir), batch_size=8)(PROMPTS, RESPONSES)
    assert torch.allclose(one, all_, atol=1e-5)


def test_tokenizer_without_pad_token_pads_with_eos(make_reward_model, tmp_path):
    path = make_reward_model(tmp_path, drop_pad=True)  # config.pad_token_id is None too
    reward = RewardModelReward(str(path), batch_size=3)
    assert reward.tokenizer.pad_token == reward.tokenizer.eos_token
    assert reward.model.config.pad_token_id == reward.tokenizer.eos_token_id
    expected = _manual_scores(path, [p + r for p, r in zip(PROMPTS, RESPONSES)])
    assert reward(PROMPTS, RESPONSES).tolist() == pytest.approx(expected, abs=1e-5)


def test_truncation_keeps_the_head_and_is_counted(reward_model_dir):
    long_response = " And God saw the light, that it was good." * 6
    texts = [PROMPTS[0] + long_response, PROMPTS[2] + RESPONSES[2]]
    reward = RewardModelReward(str(reward_model_dir), max_length=12, batch_size=2)
    expected = [_manual_scores(reward_model_dir, [texts[0]], head_tokens=12)[0],
                _manual_scores(reward_model_dir, [texts[1]])[0]]
    assert reward([PROMPTS[0], PROMPTS[2]], [long_response, RESPONSES[2]]).tolist() == pytest.approx(
        expected, abs=1e-5
    )
    assert reward.last_metrics == {"reward/rm_truncated": 1.0}


def test_max_length_is_capped_at_model_positions(reward_model_dir):
    # The saved model has 64 positions; a longer input must be cut, not crash.
    reward = RewardModelReward(str(reward_model_dir), max_length=1024)
    assert reward.max_length == 64
    long_response = " And the earth was without form, and void." * 20
    expected = _manual_scores(reward_model_dir, [PROMPTS[1] + long_response], head_tokens=64)
    assert reward([PROMPTS[1]], [long_response]).tolist() == pytest.approx(expected, abs=1e-5)


def test_chat_template_is_used(make_reward_model, tmp_path):
    # The tokenizer also adds BOS by itself: the templated text must not get a second one.
    path = make_reward_model(tmp_path, chat_template=CHAT_TEMPLATE, add_bos=True)
    reward = RewardModelReward(str(path), batch_size=2)
    assert reward.uses_chat_template
    texts = reward.format_texts(PROMPTS[:3], RESPONSES[:3])
    assert texts[0] == f"<|endoftext|><|user|>{PROMPTS[0]}\n<|assistant|>{RESPONSES[0]}\n"
    expected = _manual_scores(path, texts, add_special_tokens=False)
    assert reward(PROMPTS[:3], RESPONSES[:3]).tolist() == pytest.approx(expected, abs=1e-5)
    plain = _manual_scores(path, [p + r for p, r in zip(PROMPTS[:3], RESPONSES[:3])])
    assert expected != pytest.approx(plain, abs=1e-3)  # the template changes what is scored


def test_plain_text_without_template(make_reward_model, tmp_path):
    path = make_reward_model(tmp_path, add_bos=True)
    reward = RewardModelReward(str(path), batch_size=2)
    assert not reward.uses_chat_template
    assert reward.format_texts(["Q:", "A"], [" yes", "B"]) == ["Q: yes", "AB"]
    # Plain text keeps the tokenizer's own special tokens (here a leading BOS).
    expected = _manual_scores(path, [p + r for p, r in zip(PROMPTS, RESPONSES)], add_special_tokens=True)
    assert reward(PROMPTS, RESPONSES).tolist() == pytest.approx(expected, abs=1e-5)


def test_empty_batch(reward_model_dir):
    scores = RewardModelReward(str(reward_model_dir))([], [])
    assert scores.shape == (0,) and scores.dtype == torch.float32


def test_rejects_bad_setup(make_reward_model, tmp_path, reward_model_dir):
    with pytest.raises(ValueError, match="dtype must be one of"):
        RewardModelReward(str(reward_model_dir), dtype="float8")
    path = make_reward_model(tmp_path, num_labels=2)
    with pytest.raises(ValueError, match="num_labels=2; a reward model must have exactly one output label"):
        RewardModelReward(str(path))
    with pytest.raises(ValueError, match="empty prompt \\+ response"):
        RewardModelReward(str(reward_model_dir))([""], [""])


def test_chat_prompts_are_scored_as_their_messages_plus_the_response(make_reward_model, tmp_path):
    chat = [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "Love is"}]
    templated = RewardModelReward(str(make_reward_model(tmp_path / "t", chat_template=CHAT_TEMPLATE)))
    assert templated.format_texts([chat], [" kind."]) == [
        "<|endoftext|><|system|>Be kind.\n<|user|>Love is\n<|assistant|> kind.\n"]
    plain = RewardModelReward(str(make_reward_model(tmp_path / "p")))
    assert plain.format_texts([chat], [" kind."]) == ["Be kind.\nLove is\n kind."]
    assert plain([chat], [" kind."]).tolist() == pytest.approx(plain(["Be kind.\nLove is\n"], [" kind."]).tolist())


# ----------------------------------------------- the text the reward model was trained on
def test_a_finished_response_ends_with_the_reward_tokenizers_eos(reward_model_dir):
    from remax.rewards.base import ResponseText

    reward = RewardModelReward(str(reward_model_dir), batch_size=4)
    eos = reward.tokenizer.eos_token
    done, cut = ResponseText(" kind.", ended=True), ResponseText(" kind and", ended=False)
    assert reward.format_texts(["Love is", "Love is"], [done, cut]) == [f"Love is kind.{eos}", "Love is kind and"]
    assert reward.format_texts(["Love is"], [" kind."]) == ["Love is kind."]  # a plain str: not known, as before
    expected = _manual_scores(reward_model_dir, [f"Love is kind.{eos}", "Love is kind and"])
    assert reward(["Love is", "Love is"], [done, cut]).tolist() == pytest.approx(expected, abs=1e-5)


def test_pad_equal_to_eos_scores_the_final_eos(make_reward_model, tmp_path):
    """pad == EOS (the tokenizer has no pad token): the finished text's last token IS the
    pad id; the score is read there (from the lengths), not at the token before it."""
    from remax.rewards.base import ResponseText

    path = make_reward_model(tmp_path, drop_pad=True)
    reward = RewardModelReward(str(path), batch_size=3)
    assert reward.tokenizer.pad_token_id == reward.tokenizer.eos_token_id
    eos = reward.tokenizer.eos_token
    responses = [ResponseText(r, ended=True) for r in (" kind.", " I shall not want.", " sad")]
    texts = [p + r + eos for p, r in zip(["Love is", PROMPTS[0], PROMPTS[4]], responses)]
    got = reward(["Love is", PROMPTS[0], PROMPTS[4]], responses).tolist()
    assert got == pytest.approx(_manual_scores(path, texts), abs=1e-5)
    before_eos = _manual_scores(path, [t[: -len(eos)] for t in texts])
    assert got != pytest.approx(before_eos, abs=1e-3)


def test_a_cut_response_leaves_the_templates_turn_open(make_reward_model, tmp_path):
    from remax.rewards.base import ResponseText

    reward = RewardModelReward(str(make_reward_model(tmp_path, chat_template=CHAT_TEMPLATE)))
    texts = reward.format_texts(["Love is"] * 2, [ResponseText(" kind.", ended=True), ResponseText(" kind", ended=False)])
    assert texts == ["<|endoftext|><|user|>Love is\n<|assistant|> kind.\n", "<|endoftext|><|user|>Love is\n<|assistant|> kind"]


def test_trainer_decodes_responses_with_their_end(tokenizer):
    from remax.trainer.evaluate import decode_responses

    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    word = tokenizer(" good", add_special_tokens=False)["input_ids"]
    ids = torch.tensor([word + [eos, pad], word + word[:1] * 2])  # ended; cut at the length limit
    mask = torch.tensor([[1.0] * (len(word) + 1) + [0.0], [1.0] * (len(word) + 2)])
    texts = decode_responses(tokenizer, ids, mask)
    assert [t.ended for t in texts] == [True, False]
    assert texts[0] == " good" and isinstance(texts[0], str)  # special tokens dropped for Python rewards
