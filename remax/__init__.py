"""remax: ReMax (Li et al., arXiv 2310.10505, ICML 2024) and the algorithms it is
compared with (REINFORCE, RLOO, GRPO, PPO) for Hugging Face causal language models.

`remax.algos` holds the math as pure tensor functions (it imports torch only); the
rest of the package (rollout, rewards, models, trainer, cli) is imported lazily.
"""

__version__ = "0.1.0"
