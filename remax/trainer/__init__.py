"""The training loop, checkpoints and metrics."""

from remax.trainer.loop import Batch, Trainer, decode_responses, train

__all__ = ["Batch", "Trainer", "decode_responses", "train"]
