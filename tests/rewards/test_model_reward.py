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


def _manual_scores(path, texts, add_special_tokens=True, max_tokens=None) -> list[float]:
    """Reference: one unpadded forward per text, through plain transformers calls."""
    tok = AutoTokenizer.from_pretrained(path)
    model = GPT2ForSequenceClassification.from_pretrained(path).eval()
    scores = []
    with torch.no_grad():
        for text in texts:
            ids = tok(text, add_special_tokens=add_special_tokens)["input_ids"]
            if max_tokens is not None:
                ids = ids[-max_tokens:]
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


def test_truncation_keeps_the_end(reward_model_dir):
    long_response = " And God saw the light, that it was good." * 6
    texts = [PROMPTS[0] + long_response, PROMPTS[2] + RESPONSES[2]]
    reward = RewardModelReward(str(reward_model_dir), max_length=12, batch_size=2)
    expected = _manual_scores(reward_model_dir, texts, max_tokens=12)
    assert reward([PROMPTS[0], PROMPTS[2]], [long_response, RESPONSES[2]]).tolist() == pytest.approx(
        expected, abs=1e-5
    )


def test_max_length_is_capped_at_model_positions(reward_model_dir):
    # The saved model has 64 positions; a longer input must be cut, not crash.
    reward = RewardModelReward(str(reward_model_dir), max_length=1024)
    assert reward.max_length == 64
    long_response = " And the earth was without form, and void." * 20
    expected = _manual_scores(reward_model_dir, [PROMPTS[1] + long_response], max_tokens=64)
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
