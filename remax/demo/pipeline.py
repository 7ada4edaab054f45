"""`remax demo --pipeline`: the paper's whole pipeline offline, on the demo's model and a
gold reward that is known, so that the learned reward's over-optimisation can be watched.

The ReMax paper (Li et al., arXiv 2310.10505) and its authors' DeepSpeed-Chat code train
a policy against a *learned* reward model fitted to preference pairs, not against the
reward the pairs were labelled with. Here the labeller is VADER (the gold reward), so the
proxy's flaws show:

1. pretrain the demo's GPT-2 on the King James Bible (cached, `remax.demo.pretrain`);
2. preference pairs from the pretrained model's own responses: `samples_per_prompt`
   sampled responses to each of `pair_prompts` verse prefixes, scored by VADER; the best
   is `chosen`, the worst `rejected`; a prompt whose responses all score alike gives no
   pair (VADER scores most short KJV continuations 0);
3. `remax rm` on those pairs (`remax.pipeline.rm.run_rm`): a Bradley-Terry reward model on
   the pretrained model's body with a fresh one-label head, the proxy; held-out pair
   accuracy printed;
4. ReMax (or --algo) against the proxy, with the demo's per-token KL to the pretrained
   model;
5. held-out evaluation along training with both the proxy and the gold reward, and the
   over-optimisation picture of Gao et al. 2022 (arXiv 2210.10760): proxy and gold reward
   against the KL to the pretrained model (`overoptimisation.png`). RL pushes the proxy
   up; whether gold follows, flattens or falls is what the picture shows (one measured
   run: benchmarks/README.md, "Issue 18").

Everything goes to output_dir: pairs.jsonl, rm/ (the reward model run, rm/final the
model), rl/final (the policy), pipeline.json (every figure) and overoptimisation.png.
`build_proxy` is also how `remax bench quality --task rm` gets its proxy (cached).
"""

from __future__ import annotations

import copy
import hashlib
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import torch

from remax.demo import _default_cache
from remax.errors import InputError
from remax.demo.pretrain import DEFAULT_STEPS

PAIRS_FILE = "pairs.jsonl"
INFO_FILE = "proxy.json"


@dataclass
class PipelineConfig:
    output_dir: str = "runs/demo-pipeline"
    """Where pairs.jsonl, rm/, rl/, pipeline.json and overoptimisation.png go (replaced on each run)."""
    cache_dir: str = field(default_factory=_default_cache)
    """Cache of the pretrained model (shared with `remax demo`)."""
    pretrain_steps: int = DEFAULT_STEPS
    """Pretraining steps, as `remax demo`."""
    pair_prompts: int = 1536
    """Prompts whose sampled responses make the preference pairs (disjoint from the RL and held-out prompts)."""
    samples_per_prompt: int = 4
    """Responses sampled per pair prompt: the best by the gold reward is chosen, the worst rejected."""
    rm_epochs: int = 2
    """Passes of `remax rm` over the pairs."""
    rm_lr: float = 3e-4
    """Reward-model learning rate."""
    rm_batch_size: int = 32
    """Pairs per reward-model step."""
    algo: str = "remax"
    """RL algorithm against the proxy (any registered name)."""
    steps: int = 100
    """RL steps."""
    batch_size: int = 32
    """Sampled responses per RL step (an n >= 2 algorithm: half the prompts x 2)."""
    lr: float = 1e-4
    """RL learning rate (the demo's)."""
    kl_coef: float = 0.02
    """KL penalty to the pretrained model; below the demo's 0.05 so that the policy travels far enough to over-optimise."""
    max_new_tokens: int = 24
    """Response length limit (the demo's)."""
    n_eval: int = 128
    """Held-out prompts scored by proxy and gold at each evaluation point."""
    evals: int = 4
    """Held-out evaluations during RL besides the start and the end."""
    seed: int = 0
    """Seed of pretraining, the pairs, the reward model and RL."""


# ------------------------------------------------------------------ pairs
@torch.no_grad()
def preference_pairs(model, tokenizer, prompts: list[str], gold, *, samples_per_prompt: int, max_new_tokens: int,
                     seed: int, chunk: int = 64) -> tuple[list[dict[str, str]], dict[str, float]]:
    """Rows {"prompt", "chosen", "rejected"} from `samples_per_prompt` sampled responses
    (top-p 0.9, T 1, as the RL rollouts) per prompt: the gold reward's best and worst of the
    non-empty ones; a prompt whose responses tie gives no row. Stats: pairs, tied prompts, mean gold gap."""
    from remax.data import encode_prompts
    from remax.rollout import generate_rollout
    from remax.trainer.evaluate import decode_responses

    if samples_per_prompt < 2:
        raise ValueError(f"samples_per_prompt must be >= 2 to make a pair, got {samples_per_prompt}")
    rows, gaps, k = [], [], samples_per_prompt
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        for i in range(0, len(prompts), chunk):
            part = prompts[i: i + chunk]
            ids, mask = encode_prompts(tokenizer, part, 32)
            ro = generate_rollout(model, ids, mask, n=k, max_new_tokens=max_new_tokens, top_p=0.9,
                                  eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
            texts = [str(t) for t in decode_responses(tokenizer, ro.response_ids, ro.response_mask)]  # (len(part)*k,)
            scores = torch.as_tensor(gold([p for p in part for _ in range(k)], texts), dtype=torch.float32).view(-1, k)
            empty = torch.tensor([not t.strip() for t in texts]).view(-1, k)  # an EOS at once: no text to rank
            for j, prompt in enumerate(part):
                hi = int(scores[j].masked_fill(empty[j], -float("inf")).argmax())
                lo = int(scores[j].masked_fill(empty[j], float("inf")).argmin())
                if not empty[j, hi] and not empty[j, lo] and scores[j, hi] > scores[j, lo]:
                    rows.append({"prompt": prompt, "chosen": texts[j * k + hi], "rejected": texts[j * k + lo]})
                    gaps.append(float(scores[j, hi] - scores[j, lo]))
    stats = {"pairs": len(rows), "tied_prompts": len(prompts) - len(rows),
             "gold_gap_mean": sum(gaps) / len(gaps) if gaps else 0.0}
    return rows, stats


# ------------------------------------------------------------------ proxy
def _prompts(cfg: PipelineConfig):
    """(RL prompts, pair prompts, held-out prompts): the demo's prompt split, made larger
    so that the pairs come from verses neither RL nor evaluation uses."""
    from remax.demo.corpus import demo_prompts, kjv_verses

    train, held = demo_prompts(kjv_verses(), n_train=2048 + cfg.pair_prompts, n_eval=cfg.n_eval, seed=cfg.seed)
    return train[:2048], train[2048:], held


def _pretrained(cfg: PipelineConfig, log: Callable[[str], Any]):
    from remax.demo.pretrain import pretrain_demo_model

    return pretrain_demo_model(cfg.cache_dir, steps=cfg.pretrain_steps, seed=cfg.seed, log=log)


def build_proxy(cfg: PipelineConfig, out: Optional[str | Path] = None, *, model_dir: Optional[str] = None,
                log: Callable[[str], Any] = print, model=None, tokenizer=None) -> dict[str, Any]:
    """Steps 2-3: preference pairs of the starting model's responses labelled by VADER, then
    `run_rm` on them. `out` None: a cache beside cfg.cache_dir ("demo-proxy-rm"), reused when
    every setting matches. The starting model: `model` / `tokenizer`, else `model_dir`, else
    the demo's pretrained model. Returns {"path": the RM directory, "eval_accuracy", "pairs",
    "pair_stats", "rm_seconds", "pairs_seconds", "loaded_from_cache"}."""
    from remax.models import load_causal_lm, load_tokenizer
    from remax.pipeline.rm import RMConfig, run_rm
    from remax.rewards import VaderReward

    settings = {k: v for k, v in asdict(cfg).items() if k in ("pretrain_steps", "pair_prompts", "samples_per_prompt",
                                                               "rm_epochs", "rm_lr", "rm_batch_size",
                                                               "max_new_tokens", "seed")}
    settings.update(model_dir=model_dir, format=1)
    key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]
    cached = out is None
    out = Path(out) if out is not None else Path(cfg.cache_dir).parent / "demo-proxy-rm"
    info_path = out / INFO_FILE
    if cached and info_path.is_file():
        info = json.loads(info_path.read_text())
        if info.get("key") == key and Path(info["path"]).is_dir():
            log(f"pipeline: loaded the proxy reward model from {info['path']}")
            return dict(info, loaded_from_cache=True)
    if model is None:
        if model_dir is not None:
            model, tokenizer = load_causal_lm(model_dir).eval(), load_tokenizer(model_dir)
        else:
            model, tokenizer, _ = _pretrained(cfg, log)
    _, pair_prompts, _ = _prompts(cfg)
    t0 = time.perf_counter()
    pairs, stats = preference_pairs(model, tokenizer, pair_prompts, VaderReward(),
                                    samples_per_prompt=cfg.samples_per_prompt, max_new_tokens=cfg.max_new_tokens,
                                    seed=cfg.seed)
    t_pairs = time.perf_counter() - t0
    if len(pairs) < 10:
        raise InputError(f"only {len(pairs)} preference pairs from {len(pair_prompts)} prompts (the rest tie under "
                           "the gold reward); raise --pair_prompts or --samples_per_prompt")
    out.mkdir(parents=True, exist_ok=True)
    (out / PAIRS_FILE).write_text("".join(json.dumps(r) + "\n" for r in pairs))
    log(f"pipeline: {stats['pairs']} preference pairs from {len(pair_prompts)} prompts x {cfg.samples_per_prompt} "
        f"responses ({stats['tied_prompts']} prompts tied), mean gold gap {stats['gold_gap_mean']:.3f}, {t_pairs:.0f}s")
    batch = min(cfg.rm_batch_size, len(pairs) // 2)  # a few pairs (a tiny run): a batch the 90% split still fills
    rm_cfg = RMConfig(output_dir=str(out / "rm"), overwrite=True, epochs=cfg.rm_epochs, lr=cfg.rm_lr,
                      batch_size=batch, micro_batch_size=batch, max_length=64,
                      eval_fraction=0.1, seed=cfg.seed, device="cpu", lr_schedule="cosine", progress=False)
    t1 = time.perf_counter()
    result = run_rm(rm_cfg, rows=pairs, model=copy.deepcopy(model), tokenizer=tokenizer)
    t_rm = time.perf_counter() - t1
    log(f"pipeline: proxy reward model, held-out pair accuracy {result['eval_accuracy']:.3f} on {result['eval_pairs']} "
        f"pairs ({result['steps']} steps, {t_rm:.0f}s)")
    info = {"key": key, "path": str(result["path"]), "eval_accuracy": result["eval_accuracy"],
            "eval_pairs": result["eval_pairs"], "train_pairs": result["train_pairs"], "pairs": len(pairs),
            "pair_stats": stats, "pairs_seconds": t_pairs, "rm_seconds": t_rm}
    info_path.write_text(json.dumps(info, indent=1))
    return dict(info, loaded_from_cache=False)


# ------------------------------------------------------------------ the run
def run_pipeline(cfg: PipelineConfig, log: Callable[[str], Any] = print) -> dict[str, Any]:
    """Pretrain (or load), pairs, proxy RM, RL against the proxy with held-out proxy / gold
    evaluations, the over-optimisation PNG. Returns the figures (also in pipeline.json)."""
    from remax.bench import quality
    from remax.bench.quality_plots import plot_overoptimisation
    from remax.config import check_algo
    from remax.models import load_tokenizer
    from remax.rewards import RewardModelReward, VaderReward

    t0 = time.perf_counter()
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    model, tokenizer, info = _pretrained(cfg, log)
    t_pretrain = time.perf_counter() - t0
    proxy = build_proxy(cfg, out, model=model, tokenizer=tokenizer, log=log)
    rl_prompts, _, held = _prompts(cfg)
    task = quality.Task(str(cfg.cache_dir), load_tokenizer(str(cfg.cache_dir)), [{"prompt": p} for p in rl_prompts],
                        held, RewardModelReward(proxy["path"], max_length=64), gold=VaderReward(), label="proxy RM")
    qc = quality.QualityConfig(algos=(check_algo(cfg.algo),), seeds=1, steps=cfg.steps, batch_size=cfg.batch_size,
                               lr=cfg.lr, kl_coef=cfg.kl_coef, max_new_tokens=cfg.max_new_tokens, n_eval=cfg.n_eval,
                               evals=cfg.evals, grad_algos=(), kl_sweep=())
    log(f"pipeline: {cfg.algo} against the proxy, {cfg.steps} steps, held-out proxy and gold at steps "
        f"{quality.eval_steps(cfg.steps, cfg.evals)}")
    t1 = time.perf_counter()
    run = quality.train_run(task, cfg.algo, cfg.seed, cfg.kl_coef, qc, final_dir=out / "rl" / "final")
    t_rl = time.perf_counter() - t1
    curve = run["evals"]
    png = plot_overoptimisation({cfg.algo: curve}, out / "overoptimisation.png",
                                title=f"{cfg.algo} against a learned reward: proxy and gold (VADER) vs KL")
    result = {"pretrain_steps": info["steps"], "pretrain_loaded_from_cache": bool(info.get("loaded_from_cache")),
              "proxy": {k: v for k, v in proxy.items() if k != "key"}, "curve": curve,
              "history": run["history"], "seconds": {"pretrain": t_pretrain, "pairs": proxy["pairs_seconds"],
                                                     "rm": proxy["rm_seconds"], "rl_and_evals": t_rl,
                                                     "total": time.perf_counter() - t0},
              "config": asdict(cfg), "png": str(png)}
    (out / "pipeline.json").write_text(json.dumps(result, indent=1))
    print_pipeline(result, cfg)
    return result


def print_pipeline(r: dict[str, Any], cfg: PipelineConfig) -> None:
    p = r["proxy"]
    print(f"\nproxy reward model: {p['pairs']} pairs, held-out pair accuracy {p['eval_accuracy']:.3f} "
          f"({p['eval_pairs']} pairs; chance 0.5)")
    print(f"\n{cfg.algo} against the proxy, held-out ({cfg.n_eval} prompts, sampled / greedy):")
    print(f"{'step':>5} | {'KL':>6} | {'proxy':>7} | {'gold':>7} | {'proxy greedy':>12} | {'gold greedy':>11}")
    for e in r["curve"]:
        print(f"{e['step']:>5} | {e['kl']:6.3f} | {e['reward']:+7.3f} | {e['gold_reward']:+7.3f} | "
              f"{e['greedy_reward']:+12.3f} | {e['gold_greedy_reward']:+11.3f}")
    s = r["seconds"]
    cached = " (cached)" if r["pretrain_loaded_from_cache"] else ""
    print(f"\ntime: pretrain {s['pretrain']:.0f}s{cached}, pairs {s['pairs']:.0f}s, reward model {s['rm']:.0f}s, "
          f"RL + evaluations {s['rl_and_evals']:.0f}s, total {s['total']:.0f}s")
    print(f"wrote {Path(cfg.output_dir).resolve()} (pairs.jsonl, rm/final, rl/final, pipeline.json, {Path(r['png']).name})")


__all__ = ["PipelineConfig", "build_proxy", "preference_pairs", "run_pipeline"]
