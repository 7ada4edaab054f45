"""VaderReward: sentiment of the response, from the lexicon inside the package."""

from __future__ import annotations

import pytest
import torch
from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

from remax.rewards import VaderReward

POSITIVE = "I love this, it is wonderful and happy!"
NEGATIVE = "I hate this, it is terrible and sad."


def test_positive_beats_negative():
    r = VaderReward()(["Tell me.", "Tell me."], [POSITIVE, NEGATIVE])
    assert r.dtype == torch.float32 and r.shape == (2,)
    assert r[0] > r[1]
    assert r[0] > 0.5 and r[1] < -0.5


def test_equals_analyzer_compound():
    sentence = "The food was good, but the service was slow."
    expected = SentimentIntensityAnalyzer().polarity_scores(sentence)["compound"]
    r = VaderReward()(["p"], [sentence])
    assert r.item() == pytest.approx(expected, abs=1e-6)
    assert expected != 0.0  # the sentence carries sentiment, so the check means something


def test_scores_response_only():
    reward = VaderReward()
    a = reward([NEGATIVE], ["The sky is blue."])
    b = reward([POSITIVE], ["The sky is blue."])
    assert a.item() == b.item()


def test_other_fields():
    expected = SentimentIntensityAnalyzer().polarity_scores(NEGATIVE)["neg"]
    assert VaderReward("neg")(["p"], [NEGATIVE]).item() == pytest.approx(expected, abs=1e-6)
    with pytest.raises(ValueError, match="VADER field must be one of"):
        VaderReward("positive")


def test_extra_columns_are_accepted_and_checked():
    reward = VaderReward()
    assert reward(["p", "q"], [POSITIVE, NEGATIVE], answer=["a", "b"]).shape == (2,)
    with pytest.raises(ValueError, match="column 'answer'"):
        reward(["p", "q"], [POSITIVE, NEGATIVE], answer=["a"])
