"""Models: loading the policy, pi_ref and tokenizer; the PPO critic; response log-probs.

Importing this package does not import the trainer or the demo."""

from remax.models.critic import ValueModel, response_values
from remax.models.loading import load_causal_lm, load_tokenizer, make_reference, resolve_device
from remax.models.logprobs import response_logprobs, rollout_logprobs
from remax.models.tiny import tiny_causal_lm, train_tokenizer

__all__ = [
    "ValueModel",
    "load_causal_lm",
    "load_tokenizer",
    "make_reference",
    "resolve_device",
    "response_logprobs",
    "response_values",
    "rollout_logprobs",
    "tiny_causal_lm",
    "train_tokenizer",
]
