"""VADER sentiment as a reward (Hutto & Gilbert, ICWSM 2014): a rule-based scorer whose
lexicon ships inside the `vaderSentiment` package, so it needs no download and no GPU.
This is the classic "make the model say positive things" toy task.

Only the response is scored; the prompt is ignored, so a positive prompt cannot earn
reward for a neutral continuation.
"""

from __future__ import annotations

from typing import Any

import torch

from remax.rewards.base import as_reward_tensor, check_batch

FIELDS = ("compound", "pos", "neu", "neg")


class VaderReward:
    """Reward = the VADER `field` of each response. The default, "compound", lies in
    [-1, 1] and rises with positive sentiment; "pos", "neu" and "neg" are proportions
    in [0, 1] returned as they are (so field="neg" rewards negative text)."""

    def __init__(self, field: str = "compound"):
        if field not in FIELDS:
            raise ValueError(f"VADER field must be one of {FIELDS}, got {field!r}")
        # Imported here to keep `import remax.rewards` light; one analyzer is reused
        # because building it parses the whole lexicon.
        from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

        self.field = field
        self.name = f"vader:{field}"
        self.analyzer = SentimentIntensityAnalyzer()

    def __call__(self, prompts: list[str], responses: list[str], **row: list[Any]) -> torch.Tensor:
        check_batch(prompts, responses, row, self.name)
        values = [self.analyzer.polarity_scores(r)[self.field] for r in responses]
        return as_reward_tensor(values, len(prompts), self.name)

    def __repr__(self) -> str:
        return f"VaderReward(field={self.field!r})"
