"""`remax eval`: a policy against a reference (or any second policy) on held-out prompts.

    remax eval --policy runs/remax/final --reference gpt2 --data heldout.jsonl \\
        --reward.kind python --reward.function my_reward.py:score --out runs/eval

For each model, one sampled and one greedy response per prompt (`remax.trainer.evaluate`,
the same generate and reward path as training, with the same seed for both models), then:
- mean reward of each model's sampled and greedy responses, mean response length (tokens);
- the win rate of the first model on each prompt (sampled vs sampled, greedy vs greedy),
  ties counted half, with a 95% Wilson score interval (Wilson 1927) on that rate. With
  ties scored 1/2 an outcome is in {0, 1/2, 1}, whose variance is at most p(1 - p), so
  the Bernoulli-based Wilson interval is conservative (never too narrow) here;
- the KL of the first model to the second per response token, the k1 estimate on the
  first model's sampled responses: sum_t (log pi(a_t) - log pi_ref(a_t)) / #tokens, both
  log-probs at the sampling temperature, as training's kl/mean is;
- `samples.jsonl` (side by side, one prompt per line) and `eval.json` in --out.
Both models must share one vocabulary: the reference reads the policy's tokens.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Optional

import torch

from remax.config import ConfigError, RewardConfig
from remax.trainer.evaluate import EvalResult, evaluate

Z_95 = 1.959963984540054  # the standard normal's 97.5% quantile


@dataclass
class EvalConfig:
    policy: str = ""
    """First model (the one whose win rate is reported): a hub name or a save_pretrained directory."""
    reference: str = ""
    """Second model: the reference policy (or another policy); must share the first model's vocabulary."""
    data: str = ""
    """Held-out prompts: .jsonl / .json / .parquet / .csv, a save_to_disk folder or a hub name."""
    prompt_column: str = "prompt"
    """Column holding the prompt; the other columns go to the reward, as in training."""
    split: str = "test"
    """Split to read when --data is a hub name or a saved DatasetDict."""
    n_prompts: int = 256
    """Score the first this-many prompts; 0 takes them all."""
    max_new_tokens: int = 64
    """Response length limit."""
    temperature: float = 1.0
    """Sampling temperature of the sampled responses (and of the KL's log-probs)."""
    top_p: float = 1.0
    """Nucleus sampling threshold of the sampled responses."""
    seed: int = 0
    """Seed of the sampled responses; both models draw with it."""
    batch_size: int = 32
    """Prompts per generate call."""
    max_prompt_tokens: int = 256
    """Longer prompts keep their last tokens."""
    out: str = "runs/eval"
    """Where eval.json and samples.jsonl go."""
    device: str = "auto"
    """'auto' (cuda if available, else cpu), 'cpu', 'cuda', ..."""
    dtype: Literal["float32", "bfloat16", "float16", "auto"] = "float32"
    """Both models' weights dtype."""
    reward: RewardConfig = field(default_factory=RewardConfig)
    """The reward, as for `remax train` (--reward.kind, --reward.function, --reward.model, ...)."""


# ------------------------------------------------------------- pure math
def win_counts(a: torch.Tensor, b: torch.Tensor) -> tuple[int, int, int]:
    """(wins, ties, losses) of `a` over `b`, prompt by prompt; both (B,)."""
    if a.shape != b.shape:
        raise ValueError(f"reward shapes differ: {tuple(a.shape)} vs {tuple(b.shape)}")
    return int((a > b).sum()), int((a == b).sum()), int((a < b).sum())


def win_rate(wins: int, ties: int, losses: int) -> float:
    """(wins + ties / 2) / n; NaN for no prompts."""
    n = wins + ties + losses
    return (wins + 0.5 * ties) / n if n else math.nan


def wilson_interval(p: float, n: int, z: float = Z_95) -> tuple[float, float]:
    """Wilson score interval for a rate `p` observed on `n` trials:
    (p + z^2/2n -+ z sqrt(p(1-p)/n + z^2/4n^2)) / (1 + z^2/n). (NaN, NaN) for n = 0."""
    if n == 0:
        return math.nan, math.nan
    z2 = z * z
    centre = p + z2 / (2 * n)
    half = z * math.sqrt(max(p * (1 - p), 0.0) / n + z2 / (4 * n * n))
    denom = 1 + z2 / n
    return (centre - half) / denom, (centre + half) / denom


def token_kl(logp: torch.Tensor, ref_logp: torch.Tensor, mask: torch.Tensor) -> tuple[float, float]:
    """(sum of k1 = logp - ref_logp over masked tokens, number of masked tokens); all (N, R)."""
    return float(((logp - ref_logp) * mask).sum()), float(mask.sum())


# ------------------------------------------------------------ comparison
@dataclass
class Comparison:
    policy: EvalResult
    reference: EvalResult
    kl_per_token: float  # k1 on the policy's samples

    def summary(self, z: float = Z_95) -> dict[str, Any]:
        p, r = self.policy, self.reference
        out: dict[str, Any] = {"n_prompts": len(p.prompts)}
        for name, res in (("policy", p), ("reference", r)):
            out[f"{name}/reward_mean"] = float(res.sampled_rewards.mean())
            out[f"{name}/greedy_reward_mean"] = float(res.greedy_rewards.mean())
            out[f"{name}/response_len_mean"] = float(res.sampled_lengths.float().mean())
            out[f"{name}/greedy_response_len_mean"] = float(res.greedy_lengths.float().mean())
        for kind, a, b in (("sampled", p.sampled_rewards, r.sampled_rewards),
                           ("greedy", p.greedy_rewards, r.greedy_rewards)):
            w, t, l = win_counts(a, b)
            rate = win_rate(w, t, l)
            lo, hi = wilson_interval(rate, w + t + l, z)
            out.update({f"win_rate/{kind}": rate, f"win_rate/{kind}_ci_low": lo, f"win_rate/{kind}_ci_high": hi,
                        f"win_rate/{kind}_wins": w, f"win_rate/{kind}_ties": t, f"win_rate/{kind}_losses": l})
        out["win_rate/interval"] = "wilson 95%, ties counted half"
        out["kl/per_token"] = self.kl_per_token
        return out

    def side_by_side(self) -> list[dict[str, Any]]:
        p, r = self.policy, self.reference
        return [
            {"prompt": p.prompts[i],
             "policy_sampled": p.sampled[i], "policy_sampled_reward": float(p.sampled_rewards[i]),
             "reference_sampled": r.sampled[i], "reference_sampled_reward": float(r.sampled_rewards[i]),
             "policy_greedy": p.greedy[i], "policy_greedy_reward": float(p.greedy_rewards[i]),
             "reference_greedy": r.greedy[i], "reference_greedy_reward": float(r.greedy_rewards[i])}
            for i in range(len(p.prompts))
        ]


@torch.no_grad()
def kl_to_reference(policy: Any, reference: Any, result: EvalResult, temperature: float) -> float:
    """Per-token k1 KL of `policy` to `reference` on `result`'s sampled responses (from `policy`)."""
    from remax.models import response_logprobs

    total, tokens = 0.0, 0.0
    for s in result.samples:
        args = (s.prompt_ids, s.prompt_mask, s.response_ids, s.response_mask)
        logp = response_logprobs(policy, *args, temperature=temperature)  # (b, R)
        ref = response_logprobs(reference, *(x.to(_device(reference)) for x in args), temperature=temperature)
        kl_sum, n = token_kl(logp, ref.to(logp.device), s.response_mask)
        total, tokens = total + kl_sum, tokens + n
    return total / tokens if tokens else 0.0


def compare(
    policy: Any,
    reference: Any,
    tokenizer: Any,
    prompts: list[Any],
    reward_fn: Callable[..., Any],
    *,
    extra: Optional[dict[str, list[Any]]] = None,
    reference_result: Optional[EvalResult] = None,
    **generation: Any,
) -> Comparison:
    """Both models on the same prompts with the same seed, scored by one reward; the KL of
    the first to the second. `generation`: evaluate()'s max_new_tokens, temperature,
    top_p, batch_size, max_prompt_tokens, seed. `reference_result`: the reference's
    evaluate() with the same settings, if already at hand (the demo scores its model
    before training), so it is not generated again."""
    a = evaluate(policy, tokenizer, prompts, reward_fn, extra=extra, **generation)
    b = reference_result or evaluate(reference, tokenizer, prompts, reward_fn, extra=extra, **generation)
    kl = kl_to_reference(policy, reference, a, generation.get("temperature", 1.0))
    return Comparison(a, b, kl)


def _device(model: Any) -> torch.device:
    return next(model.parameters()).device


# ------------------------------------------------------------------ command
def build_eval_reward(r: RewardConfig, device: str) -> Callable[..., Any]:
    """The reward from the reward.* options, built as `remax train` builds it; a bad spec is
    one ConfigError line."""
    from remax.rewards import reward_from_config

    try:
        return reward_from_config(r, device=device)
    except ValueError as err:
        raise ConfigError(str(err)) from None


def check_eval_config(c: EvalConfig) -> None:
    """Ranges (tyro has checked the types): one ConfigError line naming the flag."""
    for ok, message in [
        (bool(c.policy), "no policy given; pass --policy NAME_OR_PATH"),
        (bool(c.reference), "no reference given; pass --reference NAME_OR_PATH (the model to compare against)"),
        (bool(c.data), "no prompts given; pass --data heldout.jsonl (one {\"prompt\": ...} per line)"),
        (c.n_prompts >= 0, f"--n_prompts must be >= 0 (0 takes every prompt), got {c.n_prompts}"),
        (c.max_new_tokens >= 1, f"--max_new_tokens must be at least 1, got {c.max_new_tokens}"),
        (c.temperature > 0 and math.isfinite(c.temperature), f"--temperature must be > 0, got {c.temperature}"),
        (0 < c.top_p <= 1, f"--top_p must be in (0, 1], got {c.top_p}"),
        (c.batch_size >= 1, f"--batch_size must be at least 1, got {c.batch_size}"),
        (c.max_prompt_tokens >= 1, f"--max_prompt_tokens must be at least 1, got {c.max_prompt_tokens}"),
    ]:
        if not ok:
            raise ConfigError(message)


def _vocab_size(model: Any) -> int:
    return model.get_input_embeddings().weight.shape[0]


def run_eval(c: EvalConfig) -> dict[str, Any]:
    """Load, compare, write eval.json and samples.jsonl in c.out, print the summary."""
    from remax.data import load_prompts
    from remax.models import load_causal_lm, load_tokenizer, resolve_device

    from remax.data import PromptRows, validate_prompts
    from remax.models.checks import check_dtype_on_device, check_vocab
    from remax.models.loading import max_positions
    from remax.trainer.guards import RewardFailure, prepare_reward
    from remax.trainer.validate import fit_lengths

    check_eval_config(c)
    device = resolve_device(c.device)
    check_dtype_on_device(c.dtype, device, "--dtype")
    loaded = load_prompts(c.data, c.prompt_column, split=c.split, flag="--data")
    locations = getattr(loaded, "locations", None)
    rows = PromptRows(list(loaded)[: c.n_prompts or None], locations[: c.n_prompts or None] if locations else None)
    # the same checked load path, data checks and guards as `remax train`
    load = dict(dtype=c.dtype, device=str(device))
    policy = load_causal_lm(c.policy, kind="policy", flag="--policy", **load).to(device).eval()
    reference = load_causal_lm(c.reference, kind="reference model", flag="--reference", **load).to(device).eval()
    tokenizer = load_tokenizer(c.policy, flag="--policy")
    check_vocab(tokenizer, policy, {"--reference": reference}, policy_flag="--policy")
    longest, where = validate_prompts(rows, tokenizer, c.prompt_column)
    fit_lengths(max_positions(policy, reference), longest, where, c.max_new_tokens, c.max_prompt_tokens,
                overflow=None, new_flag="--max_new_tokens", prompt_flag="--max_prompt_tokens")
    reward_fn = prepare_reward(build_eval_reward(c.reward, str(device)), rows, c.prompt_column, tokenizer)
    prompts = [r[c.prompt_column] for r in rows]
    extra = {k: [r.get(k) for r in rows] for k in rows[0] if k != c.prompt_column}
    try:
        result = compare(policy, reference, tokenizer, prompts, reward_fn, extra=extra,
                         max_new_tokens=c.max_new_tokens, temperature=c.temperature, top_p=c.top_p,
                         batch_size=c.batch_size, max_prompt_tokens=c.max_prompt_tokens, seed=c.seed)
    except RewardFailure as err:  # nothing written yet: bad input, exit 2
        raise ConfigError(f"{err}; nothing was written") from None
    summary = {"policy": c.policy, "reference": c.reference, "data": c.data, **result.summary()}
    write_outputs(Path(c.out), summary, result.side_by_side())
    print_summary(summary, c.out)
    return summary


def write_outputs(out: Path, summary: dict[str, Any], rows: list[dict[str, Any]]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "eval.json").write_text(json.dumps(summary, indent=2) + "\n")
    with open(out / "samples.jsonl", "w") as f:
        f.write("".join(json.dumps(r) + "\n" for r in rows))


def print_summary(s: dict[str, Any], out: str) -> None:
    print(f"{s['n_prompts']} prompts        {'policy':>10} {'reference':>10}")
    for label, key in (("reward, sampled", "reward_mean"), ("reward, greedy", "greedy_reward_mean"),
                       ("length, sampled", "response_len_mean")):
        print(f"{label:<20} {s['policy/' + key]:>10.4f} {s['reference/' + key]:>10.4f}")
    for kind in ("sampled", "greedy"):
        w, t, l = (s[f"win_rate/{kind}_{x}"] for x in ("wins", "ties", "losses"))
        print(f"win rate of the policy, {kind}: {s[f'win_rate/{kind}']:.3f} "
              f"[{s[f'win_rate/{kind}_ci_low']:.3f}, {s[f'win_rate/{kind}_ci_high']:.3f}] "
              f"(95% Wilson, ties half; {w} wins, {t} ties, {l} losses)")
    print(f"KL(policy || reference): {s['kl/per_token']:.4f} nats/token on the policy's samples")
    print(f"wrote {Path(out) / 'eval.json'} and {Path(out) / 'samples.jsonl'}")


__all__ = [
    "Comparison", "EvalConfig", "compare", "kl_to_reference", "run_eval", "token_kl", "wilson_interval",
    "win_counts", "win_rate",
]
