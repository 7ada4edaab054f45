"""Checks a Config against the chosen algorithm before anything is loaded, so a bad
setting fails in a second with one line that names the fix."""

from __future__ import annotations

import math
import warnings
from typing import Any, Optional

from remax.config import Config, ConfigError, all_keys, check_types, closest
from remax.rollout import kernels as rollout_kernels
from remax.trainer.precision import check_engine_dtype


def resolve_kl(config: Config, spec: Any) -> tuple[str, str]:
    """'auto' placement -> the algorithm's default; 'auto' estimator -> k3 for a KL loss, else k1."""
    placement = config.loss.kl_placement
    if placement == "auto":
        placement = spec.default_kl_placement
    estimator = config.loss.kl_estimator
    if estimator == "auto":
        estimator = spec.default_kl_estimator or ("k3" if placement == "loss" else "k1")
    return placement, estimator


def resolve_loss(config: Config, spec: Any) -> tuple[Any, Any]:
    """The policy loss (the spec's, or loss.policy_loss) and its LossParams: 'auto' / None
    options take the spec's defaults (aggregation, clip range)."""
    from remax.algos import POLICY_LOSSES, LossParams

    L = config.loss
    name = spec.loss if L.policy_loss == "auto" else L.policy_loss
    if name not in POLICY_LOSSES:
        near = closest(name, POLICY_LOSSES.names())
        hint = f"did you mean {near!r}?" if near else f"choose one of: {', '.join(POLICY_LOSSES.names())}"
        raise ConfigError(f"--loss.policy_loss: unknown policy loss {name!r}; {hint}")
    low = spec.clip_eps if L.clip_eps is None else L.clip_eps
    high = L.clip_eps_high if L.clip_eps_high is not None else spec.clip_eps_high  # None: = low
    agg = spec.default_agg if L.agg == "auto" else L.agg
    return POLICY_LOSSES.get(name), LossParams(clip_eps=low, clip_eps_high=high, agg=agg)


def overlong_buffer_tokens(config: Config, spec: Any) -> int:
    """DAPO's overlong buffer in tokens (0: off): loss.overlong_buffer, else the spec's share,
    of rollout.max_new_tokens."""
    share = spec.overlong_buffer if config.loss.overlong_buffer is None else config.loss.overlong_buffer
    return max(1, round(share * config.rollout.max_new_tokens)) if share > 0 else 0


def validate_config(config: Config, spec: Any, *, have_policy: bool = False, have_rows: bool = False,
                    have_backend: bool = False) -> None:
    c = config
    check_types(c)  # a Config built in Python gets the YAML file's type checks
    try:
        spec.check_samples(c.rollout.n_samples)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    if not have_policy and not c.model.policy:
        raise ConfigError("no policy model given; pass --model.policy NAME_OR_PATH (or model.policy in the YAML)")
    if not have_rows and not c.data.train_file:
        raise ConfigError("no prompts given; pass --data.train_file prompts.jsonl (one {\"prompt\": ...} per line)")
    t, r, L, d, rw = c.train, c.rollout, c.loss, c.data, c.reward
    checks = [
        (t.steps >= 1, f"--train.steps must be at least 1, got {t.steps}"),
        (t.batch_size >= 1, f"--train.batch_size must be at least 1, got {t.batch_size}"),
        (t.micro_batch_size >= 1, f"--train.micro_batch_size must be at least 1, got {t.micro_batch_size}"),
        (t.lr > 0, f"--train.lr must be > 0, got {t.lr} (ReMax's default is 1e-6)"),
        (t.critic_lr > 0, f"--train.critic_lr must be > 0, got {t.critic_lr}"),
        (t.weight_decay >= 0, f"--train.weight_decay must be >= 0, got {t.weight_decay}"),
        (all(0 <= b < 1 for b in t.adam_betas), f"--train.adam_betas must both be in [0, 1), got {t.adam_betas}"),
        (t.grad_clip >= 0, f"--train.grad_clip must be >= 0 (0 turns clipping off), got {t.grad_clip}"),
        (t.warmup_steps >= 0, f"--train.warmup_steps must be >= 0, got {t.warmup_steps}"),
        (t.max_nonfinite_steps >= 1, f"--train.max_nonfinite_steps must be at least 1, got {t.max_nonfinite_steps}"),
        (r.n_samples >= 1, f"--rollout.n_samples must be at least 1, got {r.n_samples}"),
        (r.temperature > 0, "--rollout.temperature must be > 0 (the greedy baseline is built in; do not set 0)"),
        (0 < r.top_p <= 1, f"--rollout.top_p must be in (0, 1], got {r.top_p}"),
        (r.top_k >= 0, f"--rollout.top_k must be >= 0 (0 turns it off), got {r.top_k}"),
        (r.max_new_tokens >= 1, f"--rollout.max_new_tokens must be at least 1, got {r.max_new_tokens}"),
        (d.max_prompt_tokens >= 1, f"--data.max_prompt_tokens must be at least 1, got {d.max_prompt_tokens}"),
        (rw.batch_size >= 1, f"--reward.batch_size must be at least 1, got {rw.batch_size}"),
        (rw.max_length >= 1, f"--reward.max_length must be at least 1, got {rw.max_length}"),
        (rw.timeout_s is None or rw.timeout_s > 0, f"--reward.timeout_s must be > 0 seconds or None, got {rw.timeout_s}"),
        (rw.max_consecutive_skips >= 1, f"--reward.max_consecutive_skips must be at least 1, got {rw.max_consecutive_skips}"),
        (L.epochs >= 1 and L.num_minibatches >= 1, "--loss.epochs and --loss.num_minibatches must be >= 1"),
        (L.num_minibatches <= t.batch_size * r.n_samples,
         "--loss.num_minibatches exceeds the rows per step (batch_size x n_samples); lower it"),
        (L.advantage_clip is None or L.advantage_clip > 0, f"--loss.advantage_clip must be > 0 or None, got {L.advantage_clip}"),
        (L.kl_coef >= 0, f"--loss.kl_coef must be >= 0 (0 turns the KL penalty off), got {L.kl_coef}"),
        (0 < L.gamma <= 1, f"--loss.gamma must be in (0, 1], got {L.gamma}"),
        (0 <= L.lam <= 1, f"--loss.lam must be in [0, 1], got {L.lam}"),
        (L.clip_eps is None or L.clip_eps > 0, f"--loss.clip_eps must be > 0 or None, got {L.clip_eps}"),
        (L.clip_eps_high is None or L.clip_eps_high > 0, f"--loss.clip_eps_high must be > 0 or None, got {L.clip_eps_high}"),
        (L.overlong_buffer is None or 0 <= L.overlong_buffer <= 1,
         f"--loss.overlong_buffer must be in [0, 1] (a share of max_new_tokens) or None, got {L.overlong_buffer}"),
        (L.refill_max_batches >= 0, f"--loss.refill_max_batches must be >= 0, got {L.refill_max_batches}"),
        (L.tis_cap > 0, f"--loss.tis_cap must be > 0, got {L.tis_cap}"),
        (L.tis in ("auto", "off") or r.backend != "hf" or have_backend,
         f"--loss.tis {L.tis} needs the rollout engine's log-probs, and the hf backend has none (its log-probs "
         "are the trainer's); use --loss.tis auto, or a backend that reports them (--rollout.backend vllm)"),
        (r.async_steps in (0, 1), f"--rollout.async_steps must be 0 (on-policy) or 1 (the next batch generated "
         f"while this step trains), got {r.async_steps}"),
        (r.async_steps == 0 or r.backend == "vllm_server" or have_backend,
         f"--rollout.async_steps {r.async_steps} overlaps generation with training, which needs the engine in a "
         "process of its own: --rollout.backend vllm_server (with `remax serve-rollout`)"),
        (r.backend != "vllm_server" or have_backend or bool(r.server_url),
         "--rollout.backend vllm_server needs --rollout.server_url http://HOST:PORT (start the server with "
         "`remax serve-rollout --model PATH`)"),
        *_backend_options(r, t, have_backend),
        (r.server_timeout_s > 0, f"--rollout.server_timeout_s must be > 0 seconds, got {r.server_timeout_s}"),
        (L.value_clip_eps > 0, f"--loss.value_clip_eps must be > 0, got {L.value_clip_eps}"),
        (L.vf_coef >= 0, f"--loss.vf_coef must be >= 0, got {L.vf_coef}"),
        (c.log.save_every >= 0, f"--log.save_every must be >= 0 (0 only writes final/), got {c.log.save_every}"),
        (c.log.keep_last >= 0, f"--log.keep_last must be >= 0 (0 keeps every checkpoint), got {c.log.keep_last}"),
        (not (c.resume and c.overwrite),
         "--resume and --overwrite True contradict each other (resume continues the run in output_dir, "
         "overwrite deletes it); pass only one of them"),
    ]
    bad_float = _first_nonfinite(c)
    if bad_float:
        raise ConfigError(f"--{bad_float[0]} must be a finite number, got {bad_float[1]}")
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)
    check_output_dir(c.output_dir)
    check_dtype(c)
    if r.backend == "vllm":  # auto mixed precision depends on the device: checked again when the engine is built
        check_engine_dtype(r.vllm_dtype, t.mixed_precision)
    _check_combinations(c, spec)


def _backend_options(r: Any, t: Any, have_backend: bool) -> list[tuple[bool, str]]:
    """(ok, message) for the options one rollout backend reads: the hf backend's kernels,
    the colocated vLLM engine's dtype; set for another backend they would do nothing."""
    return [
        (r.hf_kernels == "torch" or r.backend == "hf" or have_backend,
         f"--rollout.hf_kernels {r.hf_kernels} sets the hf backend's kernels; --rollout.backend {r.backend} runs "
         "its own: remove --rollout.hf_kernels"),
        (r.hf_kernels == "torch" or t.mixed_precision in ("auto", "no"),
         f"--rollout.hf_kernels {r.hf_kernels} packs fp32 weights, and under --train.mixed_precision "
         f"{t.mixed_precision} the rollout runs autocast's kernels: remove one of the two"),
        (r.hf_kernels == "torch" or rollout_kernels.available(),
         f"--rollout.hf_kernels {r.hf_kernels}: this torch build has no oneDNN linear operators "
         "(torch.backends.mkldnn); use --rollout.hf_kernels torch"),
        (r.vllm_dtype == "auto" or r.backend == "vllm" or have_backend,
         f"--rollout.vllm_dtype {r.vllm_dtype} sets the colocated vllm engine's dtype; "
         + ("a vllm_server runs the dtype `remax serve-rollout --dtype` gave it" if r.backend == "vllm_server"
            else "the hf backend samples with the policy itself, under --train.mixed_precision's autocast")
         + ": remove --rollout.vllm_dtype"),
    ]


def _check_combinations(c: Config, spec: Any) -> None:
    """Settings valid alone that the spec, the KL placement or the process count make
    wrong or meaningless: refused in one line (or warned, for another algorithm's leftovers)."""
    t, r, L = c.train, c.rollout, c.loss
    placement, estimator = resolve_kl(c, spec)
    resolve_loss(c, spec)  # an unknown loss.policy_loss: one line, now
    _check_async(c, spec)
    if placement == "reward_to_go" and c.loss.gamma != 1.0:
        raise ConfigError("kl_placement reward_to_go has no discount; pass --loss.gamma 1.0 or --loss.kl_placement token")
    if placement == "loss" and estimator == "k1" and L.kl_coef > 0:
        raise ConfigError("--loss.kl_estimator k1 as a KL loss term (kl_placement loss) has expected gradient 0: "
                          "it adds noise, not a KL penalty; use --loss.kl_estimator k2 (the gradient of KL) or k3, "
                          "or --loss.kl_placement token")
    from remax.trainer.distributed import launched_world

    world = launched_world()
    if world > 1 and t.batch_size % world == 0 and L.num_minibatches > t.batch_size // world * r.n_samples:
        raise ConfigError(f"--loss.num_minibatches {L.num_minibatches} exceeds the rows each of the {world} "
                          f"processes holds per step ({t.batch_size // world * r.n_samples}); lower it")
    for key, value, why in ignored_options(c, spec):
        line = f"--{key} {value} does nothing with --algo {spec.name}: {why}"
        if _leftover(spec, key):  # another algorithm's setting left in a shared config: warned, once
            warnings.warn(f"{line}; it is ignored", stacklevel=2)
        else:
            raise ConfigError(f"{line}; remove it (or set it back to {_default(key)!r})")


def _check_async(c: Config, spec: Any) -> None:
    """rollout.async_steps 1 trains on rollouts one update old: the off-policy gap needs TIS
    (on the engine's log-probs). Refused for a loss without a ratio (ReMax's default
    policy_gradient: nothing else bounds the step; unclipped, it was seen to diverge at 3 steps
    of staleness, tinker-cookbook PR #822); warned for a ratio-clipped loss, whose clip only
    bounds the step from the current weights, not from the ones that sampled."""
    if c.rollout.async_steps == 0 or c.loss.tis != "off":
        return
    loss, _ = resolve_loss(c, spec)
    name = spec.loss if c.loss.policy_loss == "auto" else c.loss.policy_loss
    if not loss.uses_ratio:
        raise ConfigError(f"--rollout.async_steps {c.rollout.async_steps} trains on rollouts one update old, and the "
                          f"{name} loss has no ratio to correct or bound that: turn TIS on (--loss.tis auto, "
                          "token or sequence), or pass --rollout.async_steps 0")
    warnings.warn(f"--rollout.async_steps {c.rollout.async_steps} with --loss.tis off: the {name} clip bounds each "
                  "step but does not correct the one-step off-policy gap; --loss.tis auto corrects it", stacklevel=3)


# a critic's options without a critic, a refill limit without a group filter: a shared YAML
# left them for another algorithm, and nothing could be mistaken for their effect: warned.
# Every other ignored option is refused (its user expects it to change the run).
_CRITIC_ONLY = ("loss.lam", "loss.value_clip_eps", "loss.vf_coef", "loss.whiten_advantages", "train.critic_lr",
                "model.critic")


def _leftover(spec: Any, key: str) -> bool:
    return (key in _CRITIC_ONLY and not spec.needs_critic) or key == "loss.refill_max_batches"


def _default(key: str) -> Any:
    value: Any = Config()
    for part in key.split("."):
        value = getattr(value, part)
    return value


def _value(config: Config, key: str) -> Any:
    value: Any = config
    for part in key.split("."):
        value = getattr(value, part)
    return value


def option_uses(config: Config, spec: Any) -> dict[str, tuple[bool, str]]:
    """option -> (whether the trainer reads it for this spec and config, why not). Derived
    from the spec and the resolved recipe: a critic, a policy loss with an importance
    ratio, the KL placement, a group filter. Options not listed are always read."""
    placement, _ = resolve_kl(config, spec)
    loss, _ = resolve_loss(config, spec)
    critic, ratio = spec.needs_critic, loss.uses_ratio
    epochs, n_mb = (config.loss.epochs, config.loss.num_minibatches) if ratio else (1, 1)
    reused = epochs * n_mb > 1  # a later pass trains on rows the weights have moved from
    name = spec.loss if config.loss.policy_loss == "auto" else config.loss.policy_loss
    no_critic = f"{spec.name} has no critic (only a critic's value model reads it)"
    on_policy = f"the policy loss {name} has no importance ratio, so there is one on-policy update per rollout"
    one_pass = ("with one epoch and one minibatch the update's forward is the old one (ratio 1, values equal "
                "to the old values), so no clip can act; raise --loss.epochs or --loss.num_minibatches")
    return {
        "loss.lam": (critic, no_critic),
        "loss.vf_coef": (critic, no_critic),
        "loss.whiten_advantages": (critic, no_critic),
        "train.critic_lr": (critic, no_critic),
        "model.critic": (critic, no_critic),
        "loss.advantage_clip": (not critic, "ppo's advantages come from GAE on the critic, not from a reward "
                                "difference to clip"),
        "loss.epochs": (ratio, on_policy),
        "loss.num_minibatches": (ratio, on_policy),
        "loss.clip_eps": (ratio and reused, on_policy if not ratio else one_pass),
        "loss.clip_eps_high": (ratio and reused, on_policy if not ratio else one_pass),
        "loss.value_clip_eps": (critic and reused, no_critic if not critic else one_pass),
        "loss.kl_coef": (placement != "none", "the KL placement is none (no KL term); set --loss.kl_placement "
                         "token, reward_to_go or loss to use a KL"),
        "loss.kl_estimator": (placement != "none", "the KL placement is none (no KL term)"),
        "loss.refill_max_batches": (spec.group_filter is not None, f"{spec.name} has no group filter, so the "
                                    "batch is never refilled (only dapo's dynamic sampling reads it)"),
        "loss.agg": (name != "gspo" or placement == "loss",
                     "the gspo loss is a mean over sequences whatever the aggregation, and there is no KL loss term"),
    }


def ignored_options(config: Config, spec: Any) -> list[tuple[str, Any, str]]:
    """(option, its value, why) for every option set away from its default that the
    trainer ignores with this spec and config (`option_uses`)."""
    out = []
    for key, (used, why) in option_uses(config, spec).items():
        value = _value(config, key)
        if not used and value != _default(key):
            out.append((key, value, why))
    return out


def check_output_dir(output_dir: str) -> None:
    """--output_dir must be a directory (or not exist yet), checked before any model loads."""
    from pathlib import Path

    path = Path(output_dir).expanduser()
    if path.exists() and not path.is_dir():
        raise ConfigError(f"--output_dir {str(path)!r} is an existing file, not a directory; pass a directory path")
    for parent in path.parents:
        if parent.exists() and not parent.is_dir():
            raise ConfigError(f"--output_dir {str(path)!r}: {str(parent)!r} is a file, not a directory; "
                              "pass another path")


def check_dtype(config: Config) -> None:
    """float16 on CPU diverges (Adam's eps underflows): refused before anything loads."""
    from remax.models.checks import check_dtype_on_device
    from remax.models.loading import resolve_device

    if config.model.dtype == "float16":
        check_dtype_on_device("float16", resolve_device(config.model.device), "--model.dtype")


def check_world(config: Config, world: int) -> None:
    """What a launch over `world` processes needs of the flags: checked by the CLI before
    it launches them (so the line is printed once) and by each process again."""
    t = config.train
    if world > 1 and t.batch_size % world:
        raise ConfigError(f"--train.batch_size {t.batch_size} does not split over {world} processes; "
                          f"make it a multiple of {world}")
    if world > 1 and getattr(t, "strategy", "ddp") == "fsdp":  # remax sft / rm hand over no strategy
        from remax.trainer.distributed import check_fsdp

        check_fsdp(config)


def preflight(config: Config, world: int = 1) -> None:
    """Every check that needs no model or data, for `remax train --num_processes N`:
    the one-line error comes once, before torchrun starts N processes that would each print it."""
    from remax.algos import get_algorithm
    from remax.config import check_algo

    validate_config(config, get_algorithm(check_algo(config.algo)))
    check_world(config, world)


def _first_nonfinite(config: Config) -> Optional[tuple[str, float]]:
    """('section.field', value) of the first float option that is NaN or infinite."""
    for key in all_keys():
        value: Any = config
        for part in key.split("."):
            value = getattr(value, part)
        for v in value if isinstance(value, tuple) else (value,):
            if isinstance(v, float) and not math.isfinite(v):
                return key, v
    return None


def fit_context(config: Config, limit: Optional[int], longest: int, where: str) -> None:
    """Stop at start (or, with data.context_overflow=truncate, lower max_prompt_tokens with
    one warning) when the longest prompt plus max_new_tokens does not fit the model's
    `limit` positions. `longest`: the longest encoded prompt, found at `where`; prompts
    are cut to max_prompt_tokens, so only the smaller of the two counts. No limit: no check."""
    d = config.data
    room = fit_lengths(limit, longest, where, config.rollout.max_new_tokens, d.max_prompt_tokens,
                       overflow=d.context_overflow)
    if room is None:
        return
    numbers = (f"the longest prompt ({where}, {longest} tokens, kept up to --data.max_prompt_tokens "
               f"{d.max_prompt_tokens}) + --rollout.max_new_tokens {config.rollout.max_new_tokens} = "
               f"{min(longest, d.max_prompt_tokens) + config.rollout.max_new_tokens} exceeds the policy's "
               f"context of {limit} positions")
    warnings.warn(f"{numbers}; --data.context_overflow truncate: prompts now keep their last {room} tokens "
                  f"(data.max_prompt_tokens {d.max_prompt_tokens} -> {room})", stacklevel=2)
    d.max_prompt_tokens = room


def fit_lengths(limit: Optional[int], longest: int, where: str, new: int, max_prompt: int, *,
                overflow: Optional[str] = "error", new_flag: str = "--rollout.max_new_tokens",
                prompt_flag: str = "--data.max_prompt_tokens") -> Optional[int]:
    """The check behind `fit_context`, with the flags named as the command calls them
    (`remax eval` passes --max_new_tokens / --max_prompt_tokens and overflow None: no
    truncate option). None when everything fits; else raises, or (overflow 'truncate')
    returns the prompt room left for the caller to apply."""
    prompt = min(longest, max_prompt)
    if limit is None or prompt + new <= limit:
        return None
    room = limit - new
    if room < 1:
        raise ConfigError(
            f"{new_flag} {new} does not fit the policy's context of {limit} positions, "
            f"with any prompt; lower {new_flag} below {limit}"
        )
    numbers = (f"the longest prompt ({where}, {longest} tokens, kept up to {prompt_flag} "
               f"{max_prompt}) + {new_flag} {new} = {prompt + new} exceeds the policy's "
               f"context of {limit} positions")
    if overflow != "truncate":
        fewer_new = f" or {new_flag} to {limit - prompt}" if limit - prompt >= 1 else ""
        truncate = ", or pass --data.context_overflow truncate" if overflow is not None else ""
        raise ConfigError(f"{numbers}; lower {prompt_flag} to {room} (prompts keep their last tokens){fewer_new}"
                          f"{truncate}")
    return room
