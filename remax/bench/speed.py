"""`remax bench speed`: step time of remax, reinforce, rloo, grpo and ppo on one model,
measured side by side in one run (and, with --trl, TRL's GRPOTrainer at matching settings).

What is measured and how:
- every (algorithm, repetition) is a fresh subprocess (remax.bench.common.run_worker) that
  builds a Trainer on the same saved model, the same KJV prompts and the VADER reward, runs
  `--warmup` steps, then times `--steps` steps; the subprocesses are interleaved
  (A B C D E, then B C D E A, ...) so a busy machine slows every algorithm alike;
- step time is the median over all timed steps; its split is the Trainer's own perf/*_s;
- peak memory: peak RSS of the subprocess on CPU, torch.cuda.max_memory_allocated on CUDA;
- ratios to PPO and REINFORCE: of the medians, with the range of per-repetition ratios;
- floors: each phase's FLOPs (2 x params per generated / prompt token for the rollout,
  2 x params per token of a no-grad forward, 6 x params per token of a forward + backward,
  counted by hooks on what the trainer really ran) divided by the fp32 matmul rate measured
  in the same run (the median over the workers). time / floor = how far a phase is from
  running at matmul speed.
- equal work rule: every algorithm trains on prompts x n sampled responses per step; rloo and
  grpo need n >= 2, so at n = 1 they run prompts/2 x 2 (remax.bench.common.samples_rule);
- precision (`--mixed_precision no bf16`): each algorithm (and TRL's GRPO in the race, with
  its `bf16=True`) runs at each precision, interleaved with the rest; runs are then labelled
  ALGO@PRECISION, ratios to PPO / REINFORCE are taken within one precision, and a table
  gives each precision's step time against the first one's. bf16 pays where the CPU has
  AMX (or on any GPU); with AVX-512 BF16 alone it may not (benchmarks/README.md).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any, Literal, Optional, Sequence

from remax.bench import common
from remax.bench.common import PHASES, median
from remax.errors import InputError

ALGOS = ("remax", "reinforce", "rloo", "grpo", "ppo")
TRAINER = common.TRAINER_WORKER


@dataclass
class SpeedConfig:
    size: Literal["tiny", "mini", "small", "gpt2-small", "0.5b"] = "gpt2-small"
    """Model size: tiny (~0.1M, CI), mini (~3.7M), small (~21M), gpt2-small (~92M), 0.5b (CUDA only). Random-init GPT-2 configs with a tokenizer trained on the KJV Bible."""
    algos: tuple[str, ...] = ALGOS
    """Algorithms to time (any registered name; `remax train --help` lists them)."""
    prompts: int = 8
    """Prompts per step."""
    n: int = 1
    """Sampled responses per prompt (rloo / grpo run prompts/2 x 2 when this is 1)."""
    max_new_tokens: int = 32
    """Response length limit."""
    kl_coef: float = 0.05
    """KL penalty coefficient (all algorithms, and TRL's beta)."""
    repeats: int = 3
    """Repetitions: one subprocess per algorithm per repetition, interleaved."""
    warmup: int = 1
    """Untimed steps at the start of each subprocess."""
    steps: int = 2
    """Timed steps per subprocess."""
    mixed_precision: tuple[str, ...] = ("no",)
    """Precisions (--train.mixed_precision: no = fp32, bf16, fp16), each algorithm at each; several: compared to the first."""
    trl: bool = False
    """Also race TRL's GRPOTrainer (pip install 'remax[bench]') against remax's ReMax and GRPO."""
    trl_prompts: int = 8
    """Prompts per step in the TRL race."""
    trl_n: int = 4
    """Samples per prompt in the TRL race (GRPO needs 2 or more)."""
    trl_algos: tuple[str, ...] = ("remax", "grpo")
    """remax algorithms raced against TRL's GRPO at the race's prompts x samples."""
    backend: Literal["hf", "vllm", "vllm_server"] = "hf"
    """Rollout backend (--rollout.backend): hf generate, vLLM in the trainer's process, or a `remax serve-rollout` process started per run on the first core (the trainer on the others); vllm*: run from .venv-vllm."""
    hf_kernels: Literal["torch", "onednn"] = "torch"
    """--rollout.hf_kernels (backend hf, fp32 on CPU): torch's matmuls, or oneDNN's on weights packed per rollout."""
    async_steps: int = 0
    """--rollout.async_steps: 1 overlaps generation (vllm_server) with training; perf/rollout_s is then the wait."""
    threads: int = 0
    """torch threads per measured process; 0: torch's default (one per core)."""
    device: str = "auto"
    """'auto' (cuda if available), 'cpu' or 'cuda'."""
    seed: int = 0
    """Seed of the model weights, the prompt order and sampling."""
    out: str = "benchmarks/results"
    """Directory for speed-SIZE.md (the tables) and speed-SIZE.json (raw figures)."""
    work_dir: Optional[str] = None
    """Cache of the built model directories; default ~/.cache/remax/bench-models."""


def main(argv: Sequence[str]) -> int:
    from remax.cli import run_tyro

    cfg = run_tyro(SpeedConfig, argv, prog="remax bench speed",
                   description="Step time of every algorithm, interleaved in one run; ratios to PPO and "
                   "REINFORCE; each phase against its FLOP floor; --trl races TRL's GRPOTrainer.")
    report = run_speed(cfg, argv)
    print(report["markdown"])
    print(f"\nwrote {report['paths'][0]} and {report['paths'][1]}")
    return 0


def check_config(cfg: SpeedConfig) -> str:
    """Validate the options (InputError, one line) and return the resolved device."""
    if not cfg.algos:
        raise InputError("--algos needs at least one algorithm name")
    for name in ("prompts", "n", "max_new_tokens", "repeats", "steps", "trl_prompts"):
        if getattr(cfg, name) < 1:
            raise InputError(f"--{name} must be >= 1, got {getattr(cfg, name)}")
    if cfg.warmup < 0:
        raise InputError(f"--warmup must be >= 0, got {cfg.warmup}")
    if cfg.async_steps not in (0, 1) or (cfg.async_steps and cfg.backend != "vllm_server"):
        raise InputError(f"--async_steps {cfg.async_steps}: 0, or 1 with --backend vllm_server (the engine in its "
                         "own process is what overlaps with training)")
    if cfg.hf_kernels != "torch" and (cfg.backend != "hf" or set(cfg.mixed_precision) != {"no"}):
        raise InputError(f"--hf_kernels {cfg.hf_kernels} sets the hf backend's fp32 kernels: use it with --backend hf "
                         "and --mixed_precision no")
    if cfg.trl and cfg.trl_n < 2:
        raise InputError(f"--trl_n must be >= 2 (GRPO compares samples of one prompt), got {cfg.trl_n}")
    for algo in cfg.trl_algos if cfg.trl else ():
        try:
            common.get_algorithm_or_input_error(algo).check_samples(cfg.trl_n)
        except ValueError as err:
            raise InputError(f"--trl_algos / --trl_n: {err}") from None
    if cfg.trl:
        from remax.bench.trl_race import require_trl

        require_trl()
    device = common.resolve_device(cfg.device)
    check_precisions(cfg.mixed_precision, device, cfg.trl)
    common.check_size(cfg.size, device)
    for algo in cfg.algos:
        common.samples_rule(algo, cfg.prompts, cfg.n)
    return device


PRECISIONS = ("no", "bf16", "fp16")


def check_precisions(modes: Sequence[str], device: str, trl: bool) -> None:
    """--mixed_precision: known names, no repeats (InputError, one line)."""
    if not modes:
        raise InputError("--mixed_precision needs at least one of no, bf16, fp16")
    for mode in modes:
        if mode not in PRECISIONS:
            raise InputError(f"--mixed_precision {mode!r} is not one of {', '.join(PRECISIONS)} (no = fp32)")
    if len(set(modes)) != len(modes):
        raise InputError(f"--mixed_precision {' '.join(modes)}: a precision is named twice")
    if trl and "fp16" in modes and device == "cpu":
        raise InputError("--trl with --mixed_precision fp16: TRL (transformers' Trainer) runs fp16 on GPUs only; "
                         "use no or bf16 on CPU")


def label(name: str, mode: str, cfg: SpeedConfig) -> str:
    """A run's label: the algorithm's name, with @PRECISION when several precisions run."""
    return name if len(cfg.mixed_precision) == 1 else f"{name}@{mode}"


def jobs(cfg: SpeedConfig, model_dir: str, device: str) -> dict[str, tuple[str, dict[str, Any]]]:
    """label -> (worker target, spec) for every measured run of one repetition."""
    out = {}
    for mode in cfg.mixed_precision:
        base = dict(model_dir=model_dir, max_new_tokens=cfg.max_new_tokens, kl_coef=cfg.kl_coef, device=device,
                    seed=cfg.seed, warmup=cfg.warmup, steps=cfg.steps, threads=cfg.threads, mixed_precision=mode,
                    backend=cfg.backend, async_steps=cfg.async_steps, hf_kernels=cfg.hf_kernels)
        for algo in cfg.algos:
            prompts, n = common.samples_rule(algo, cfg.prompts, cfg.n)
            out[label(algo, mode, cfg)] = (TRAINER, dict(base, algo=algo, prompts=prompts, n=n))
        if cfg.trl:
            race = dict(base, prompts=cfg.trl_prompts, n=cfg.trl_n)
            for algo in cfg.trl_algos:
                main = label(algo, mode, cfg)
                if out.get(main, (None, {}))[1] != dict(race, algo=algo):  # else: that run serves the race too
                    out[f"race/{main}"] = (TRAINER, dict(race, algo=algo))
            out[f"race/{label('trl-grpo', mode, cfg)}"] = ("remax.bench.trl_race:measure_trl",
                                                           dict(race, algo="trl-grpo"))
    return out


def run_interleaved(runs: dict[str, tuple[str, dict[str, Any]]], repeats: int,
                    log=print) -> dict[str, list[dict[str, Any]]]:
    """Run every job once per repetition, rotating the order each time (A B C, B C A, ...);
    returns label -> one worker result per repetition (each tagged with its rep)."""
    labels = list(runs)
    results: dict[str, list[dict[str, Any]]] = {k: [] for k in labels}
    for rep in range(repeats):
        order = labels[rep % len(labels):] + labels[: rep % len(labels)]
        for label in order:
            target, spec = runs[label]
            log(f"[rep {rep + 1}/{repeats}] {label} ...", file=sys.stderr, flush=True)
            result = common.run_worker(target, spec)
            result["rep"] = rep
            results[label].append(result)
    return results


def run_speed(cfg: SpeedConfig, argv: Sequence[str] = ()) -> dict[str, Any]:
    """Build the model, run every job interleaved, summarise; write SIZE's .md and .json.
    Returns {"summary", "race", "markdown", "paths", ...}."""
    device = check_config(cfg)
    model_dir = str(common.prepare_model_dir(cfg.size, cfg.work_dir or common.default_work_dir(), cfg.seed))
    results = run_interleaved(jobs(cfg, model_dir, device), cfg.repeats)
    rate = median(r["matmul_gflops"] for rs in results.values() for r in rs if "matmul_gflops" in r)
    summary: dict[str, dict[str, Any]] = {}
    race: Optional[dict[str, Any]] = {} if cfg.trl else None
    for mode in cfg.mixed_precision:
        mine = {label(a, mode, cfg): summarize(results[label(a, mode, cfg)], rate) for a in cfg.algos}
        add_ratios(mine, results, {label(a, mode, cfg): a for a in cfg.algos}, mode, cfg)
        summary.update(mine)
        if race is not None:
            race.update(race_summary(results, [label(a, mode, cfg) for a in cfg.trl_algos],
                                     label("trl-grpo", mode, cfg)))
    precision = precision_summary(results, summary, race, cfg)
    params = next(iter(results.values()))[0]["params"]["policy"]
    raw = {"command": common.command_line("remax bench speed", argv), "config": vars(cfg),
           "machine": common.machine_info(device), "params": params, "matmul_gflops": rate,
           "summary": summary, "race": race, "precision": precision, "runs": results}
    markdown = render(raw, cfg)
    paths = common.write_results(cfg.out, f"speed-{cfg.size}", markdown, raw)
    return dict(raw, markdown=markdown, paths=paths)


# -------------------------------------------------------------- figures
def _steps(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [s for r in runs for s in r["steps"]]


def summarize(runs: list[dict[str, Any]], gflops: float) -> dict[str, Any]:
    """Medians over all timed steps of one algorithm's runs, peak memory, tokens/s, floors."""
    steps = _steps(runs)
    out: dict[str, Any] = {"prompts": runs[0]["prompts"], "n": runs[0]["n"],
                           "step_s": median(s["perf/step_s"] for s in steps),
                           "peak_mem_mb": max(r["peak_mem_mb"] for r in runs),
                           "base_rss_mb": median(r["base_rss_mb"] for r in runs),
                           "steps_timed": len(steps)}
    for phase in PHASES:
        out[f"{phase}_s"] = median(s[f"perf/{phase}_s"] for s in steps)
    out["other_s"] = median(s["perf/step_s"] - sum(s[f"perf/{p}_s"] for p in PHASES) for s in steps)
    out["generated_tok_per_s"] = median(s["tokens/generated"] / s["perf/step_s"] for s in steps)
    out["sampled_tok_per_s"] = median(s["tokens/sampled"] / s["perf/step_s"] for s in steps)
    for phase in ("rollout", "prepare", "update"):
        floor_s = median(s.get(f"flops/{phase}", 0.0) / (gflops * 1e9) for s in steps)
        out[f"{phase}_floor_s"] = floor_s
        out[f"{phase}_x_floor"] = out[f"{phase}_s"] / floor_s if floor_s > 0 else float("nan")
    return out


def _per_rep_step(runs: list[dict[str, Any]]) -> dict[int, float]:
    return {r["rep"]: median(s["perf/step_s"] for s in r["steps"]) for r in runs}


def add_ratios(summary: dict[str, dict[str, Any]], results: dict[str, list[dict]], algos: dict[str, str],
               mode: str = "no", cfg: Optional[SpeedConfig] = None) -> None:
    """step_s / PPO's and / REINFORCE's at the same precision (ratio of medians), with the
    min-max of the ratios taken within each repetition; peak memory / PPO's. `algos`:
    label -> algorithm name."""
    for ref in ("ppo", "reinforce"):
        ref_label = label(ref, mode, cfg) if cfg is not None else ref
        if ref_label not in summary:
            continue
        ref_rep = _per_rep_step(results[ref_label])
        for name in algos:
            s = summary[name]
            s[f"step_vs_{ref}"] = s["step_s"] / summary[ref_label]["step_s"]
            reps = [v / ref_rep[k] for k, v in _per_rep_step(results[name]).items() if k in ref_rep]
            s[f"step_vs_{ref}_range"] = [min(reps), max(reps)]
            s[f"mem_vs_{ref}"] = s["peak_mem_mb"] / summary[ref_label]["peak_mem_mb"]


def race_summary(results: dict[str, list[dict[str, Any]]], algos: Sequence[str],
                 trl_label: str = "trl-grpo") -> dict[str, Any]:
    """remax's algorithms (ReMax, GRPO) vs TRL's GRPO (at one precision: `algos` and
    `trl_label` are run labels): seconds per 1k sampled tokens (the trained-on responses;
    ReMax's greedy rows are extra work it must pay), TRL's time / remax's, with the min-max
    of that ratio taken within each repetition."""
    out = {}
    for run in [f"race/{a}" for a in algos] + [f"race/{trl_label}"]:
        runs = results.get(run) or results[run.split("/", 1)[1]]  # a main run at the race's settings
        steps = _steps(runs)
        out[run] = {"prompts": runs[0]["prompts"], "n": runs[0]["n"],
                      "step_s": median(s["perf/step_s"] for s in steps),
                      "sampled_tokens": median(s["tokens/sampled"] for s in steps),
                      "s_per_1k_sampled": median(1e3 * s["perf/step_s"] / s["tokens/sampled"] for s in steps),
                      "generated_tok_per_s": median(s["tokens/generated"] / s["perf/step_s"] for s in steps),
                      "peak_mem_mb": max(r["peak_mem_mb"] for r in runs)}
    trl = out[f"race/{trl_label}"]["s_per_1k_sampled"]
    trl_reps = _per_rep_per_token(results[f"race/{trl_label}"])
    for name in algos:
        run = f"race/{name}"
        out[run]["trl_over_this"] = trl / out[run]["s_per_1k_sampled"]
        mine = _per_rep_per_token(results.get(run) or results[name])
        reps = [trl_reps[k] / v for k, v in mine.items() if k in trl_reps]
        out[run]["trl_over_this_range"] = [min(reps), max(reps)] if reps else [float("nan")] * 2
    return out


def _per_rep_per_token(runs: list[dict[str, Any]]) -> dict[int, float]:
    return {r.get("rep", 0): median(s["perf/step_s"] / s["tokens/sampled"] for s in r["steps"]) for r in runs}


def precision_summary(results: dict[str, list[dict[str, Any]]], summary: dict[str, dict[str, Any]],
                      race: Optional[dict[str, Any]], cfg: SpeedConfig) -> Optional[list[dict[str, Any]]]:
    """With several precisions: each run (main and race) at each precision against the same
    run at the first precision: the ratio of median seconds per sampled token (first /
    this: > 1 is faster), with the min-max of the ratios taken within each repetition."""
    modes = cfg.mixed_precision
    if len(modes) < 2:
        return None
    names = [(a, "") for a in cfg.algos]
    if cfg.trl:
        # a race run that a main run served is in the table once, as the main run
        names += [(a, "race/") for a in cfg.trl_algos if f"race/{label(a, modes[0], cfg)}" in results]
        names += [("trl-grpo", "race/")]
    rows = []
    for name, prefix in names:
        first = _runs(results, prefix + label(name, modes[0], cfg))
        first_reps = _per_rep_per_token(first)
        for mode in modes:
            runs = _runs(results, prefix + label(name, mode, cfg))
            reps = _per_rep_per_token(runs)
            ratios = [first_reps[k] / v for k, v in reps.items() if k in first_reps]
            per_token = median(s["perf/step_s"] / s["tokens/sampled"] for s in _steps(runs))
            first_per_token = median(s["perf/step_s"] / s["tokens/sampled"] for s in _steps(first))
            rows.append({"run": prefix + name, "precision": mode, "prompts": runs[0]["prompts"], "n": runs[0]["n"],
                         "step_s": median(s["perf/step_s"] for s in _steps(runs)),
                         "s_per_1k_sampled": 1e3 * per_token, "speedup": first_per_token / per_token,
                         "speedup_range": [min(ratios), max(ratios)]})
    return rows


def _runs(results: dict[str, list[dict[str, Any]]], run: str) -> list[dict[str, Any]]:
    return results.get(run) or results[run.split("/", 1)[1]]  # a race run served by a main run


# -------------------------------------------------------------- report
def _ratio(s: dict[str, Any], ref: str) -> str:
    if f"step_vs_{ref}" not in s:
        return "n/a"
    lo, hi = s[f"step_vs_{ref}_range"]
    return f"{s[f'step_vs_{ref}']:.2f} ({lo:.2f}-{hi:.2f})"


def render(raw: dict[str, Any], cfg: SpeedConfig) -> str:
    """The Markdown report: settings, the step-time table, the floors table, the TRL race."""
    m, summary = raw["machine"], raw["summary"]
    mem = "peak RSS" if m["device"] == "cpu" else "CUDA max allocated"
    lines = [f"### speed: {cfg.size} ({raw['params'] / 1e6:.1f}M params), {m['device']}", "",
             f"`{raw['command']}`  ", f"{m['date']}; {m['cores']} cores, {m['cpu']}"
             f"{', ' + m['gpu'] if 'gpu' in m else ''}; torch {m['torch']}, transformers {m['transformers']}  ",
             f"{cfg.max_new_tokens} new tokens, KL {cfg.kl_coef}, top-p 0.9, VADER reward, "
             f"{cfg.repeats} interleaved repetitions x {cfg.steps} timed steps (after {cfg.warmup} warm-up); "
             f"median step; ratios are of medians, (min-max over repetitions); "
             f"fp32 matmul rate measured in this run: {raw['matmul_gflops']:.1f} GFLOP/s; "
             f"torch threads per process: {cfg.threads or 'default'}; precision (--train.mixed_precision): "
             f"{', '.join(cfg.mixed_precision)} (no = fp32; float32 master weights and Adam); rollout backend "
             f"{cfg.backend}, async_steps {cfg.async_steps}"
             f"{', hf_kernels ' + cfg.hf_kernels if cfg.backend == 'hf' else ''}", ""]
    rows = [[a, f"{s['prompts']}x{s['n']}", s["step_s"], s["rollout_s"], s["score_s"], s["prepare_s"],
             s["update_s"], s["other_s"], s["peak_mem_mb"], s["generated_tok_per_s"],
             _ratio(s, "ppo"), _ratio(s, "reinforce"), s.get("mem_vs_ppo", float("nan"))]
            for a, s in summary.items()]
    lines.append(common.markdown_table(
        ["algo", "prompts x n", "step s", "rollout s", "score s", "prepare s", "update s", "other s",
         f"{mem} MiB", "gen tok/s", "step / PPO", "step / REINFORCE", "mem / PPO"], rows))
    floors = [[a, s["rollout_x_floor"], s["prepare_x_floor"], s["update_x_floor"],
               s["rollout_floor_s"], s["prepare_floor_s"], s["update_floor_s"]] for a, s in summary.items()]
    lines += ["", "Each phase's time / its FLOP floor at the measured matmul rate:", "",
              common.markdown_table(["algo", "rollout x floor", "prepare x floor", "update x floor",
                                     "rollout floor s", "prepare floor s", "update floor s"], floors)]
    if raw["race"]:
        lines += ["", *render_race(raw["race"])]
    if raw.get("precision"):
        lines += ["", *render_precision(raw["precision"], cfg.mixed_precision[0])]
    return "\n".join(lines)


def render_race(race: dict[str, Any]) -> list[str]:
    rows = [[run.split("/", 1)[1], f"{r['prompts']}x{r['n']}", r["step_s"], r["sampled_tokens"],
             r["s_per_1k_sampled"], r["generated_tok_per_s"], r["peak_mem_mb"], _range(r)]
            for run, r in race.items()]
    return ["Race against TRL's GRPOTrainer (same model dir, prompts x samples, max new tokens, KL beta, "
            "top-p, lr; no vLLM, 1 iteration, no gradient checkpointing; each side at the precision in its "
            "label, fp32 without one: remax --train.mixed_precision, TRL bf16=True):", "",
            common.markdown_table(["run", "prompts x n", "step s", "sampled tokens", "s / 1k sampled tokens",
                                   "gen tok/s", "peak MiB", "TRL time / this (per sampled token)"], rows)]


def _range(r: dict[str, Any]) -> str:
    if "trl_over_this" not in r:
        return "1"
    lo, hi = r["trl_over_this_range"]
    return f"{r['trl_over_this']:.2f} ({lo:.2f}-{hi:.2f})"


def render_precision(rows: list[dict[str, Any]], first: str) -> list[str]:
    table = [[r["run"], r["precision"], f"{r['prompts']}x{r['n']}", r["step_s"], r["s_per_1k_sampled"],
              f"{r['speedup']:.2f} ({r['speedup_range'][0]:.2f}-{r['speedup_range'][1]:.2f})"] for r in rows]
    return [f"Each run at each precision against the same run at {first} (per sampled token; > 1: faster):", "",
            common.markdown_table(["run", "precision", "prompts x n", "step s", "s / 1k sampled tokens",
                                   f"{first} time / this"], table)]


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
