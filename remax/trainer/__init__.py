"""The training loop, checkpoints and metrics."""

from remax.trainer.evaluate import EvalResult, decode_responses, evaluate
from remax.trainer.loop import Batch, Trainer, train

__all__ = ["Batch", "EvalResult", "Trainer", "decode_responses", "evaluate", "train"]
