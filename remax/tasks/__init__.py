"""Tasks with a verifiable reward, generated offline: the problems, the reward that checks
an answer, and a tiny model pretrained on them (`remax.tasks.arithmetic`)."""

from remax.tasks.arithmetic import exact_match, problems

__all__ = ["exact_match", "problems"]
