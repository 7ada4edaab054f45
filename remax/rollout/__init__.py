"""Rollout: prompts in, sampled (and greedy) responses with masks out."""

from remax.rollout.generate import (
    ArgmaxRowsProcessor,
    Rollout,
    generate_rollout,
    model_inputs,
    position_ids_for,
)

__all__ = ["ArgmaxRowsProcessor", "Rollout", "generate_rollout", "model_inputs", "position_ids_for"]
