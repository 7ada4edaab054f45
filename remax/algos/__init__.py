"""ReMax (Li et al., arXiv 2310.10505) and its comparison points as pure tensor math.

Imports torch only: no transformers, no models, no config objects, no
torch.distributed. Modules:

- masks:       response_mask
- kl:          kl_penalty (k1, k2, k3)
- aggregation: aggregate (token_mean, seq_mean_token_sum, seq_mean_token_mean),
               masked_mean, masked_whiten
- advantages:  greedy_baseline (ReMax), reinforce, rloo, grpo
- returns:     token_returns, remax_returns, ppo_token_rewards, gae
- losses:      policy_gradient_loss, ppo_clip_loss, ppo_clip_fraction, value_loss, kl_loss
- variants:    REINFORCE++(-baseline), Dr. GRPO, DAPO, GSPO, CISPO pieces, truncated IS
- policy_losses: the policy-loss table (policy_gradient, ppo_clip, gspo, cispo)
- registry:    Algorithm specs: remax, reinforce, rloo, grpo, ppo, reinforce_pp,
               reinforce_pp_baseline, dr_grpo, dapo, gspo, cispo, batch_mean
"""

from .advantages import (
    greedy_baseline_advantages,
    grpo_advantages,
    reinforce_advantages,
    rloo_advantages,
)
from .aggregation import AGGREGATIONS, aggregate, masked_mean, masked_whiten
from .kl import KL_ESTIMATORS, kl_penalty
from .losses import kl_loss, policy_gradient_loss, ppo_clip_fraction, ppo_clip_loss, value_loss
from .masks import response_mask
from .policy_losses import POLICY_LOSSES, LossParams, PolicyLoss, register_policy_loss
from .registry import (
    ALGORITHMS,
    Algorithm,
    get_algorithm,
    list_algorithms,
    register_algorithm,
)
from .returns import KL_PLACEMENTS, gae, ppo_token_rewards, remax_returns, token_returns

__all__ = [
    "response_mask",
    "kl_penalty",
    "KL_ESTIMATORS",
    "aggregate",
    "AGGREGATIONS",
    "masked_mean",
    "masked_whiten",
    "greedy_baseline_advantages",
    "reinforce_advantages",
    "rloo_advantages",
    "grpo_advantages",
    "token_returns",
    "remax_returns",
    "ppo_token_rewards",
    "gae",
    "KL_PLACEMENTS",
    "policy_gradient_loss",
    "ppo_clip_loss",
    "ppo_clip_fraction",
    "value_loss",
    "kl_loss",
    "Algorithm",
    "ALGORITHMS",
    "register_algorithm",
    "get_algorithm",
    "list_algorithms",
    "POLICY_LOSSES",
    "PolicyLoss",
    "LossParams",
    "register_policy_loss",
]
