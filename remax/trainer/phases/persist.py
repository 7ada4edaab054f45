"""The run on disk: step-boundary snapshots, checkpoints, starting (fresh, overwritten or
resumed), stopping with a checkpoint, and final/.

A snapshot (`snapshot`) is the `RunState` at a step boundary: counters, the sampler's
position and every RNG. `save_checkpoint` writes one (every rank's RNG streams gathered,
rank 0 writing, atomically: `remax/trainer/checkpoint.py`); `start` restores the
weights, optimizer and scheduler states and the RunState from one before the first
step, so a resumed run is bitwise the run that was never stopped. What a checkpoint
holds beyond the RunState is a `Parts`: the Trainer hands over its current objects.
Under FSDP (`dist.sharded_checkpoint`) the weights and optimizer states are written by
every rank as torch.distributed.checkpoint shards first, then rank 0 writes the rest
around them; a failure on any rank stops every rank with the same line."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, NoReturn, Optional

from remax.config import Config, save_config
from remax.errors import RunStopped
from remax.models.critic import VALUE_HEAD_FILE
from remax.models.lora import merged_copy, merged_state_dict
from remax.trainer.checkpoint import (
    SHARDED,
    RunState,
    atomic_dir,
    capture_rng,
    load_policy_into,
    load_safetensors_into,
    load_shards,
    load_trainer_state,
    restore_rng,
    save_checkpoint as write_checkpoint,
    save_pretrained_dir,
    step_dir,
    write_shards,
)
from remax.trainer.resume import (
    check_same_layout,
    check_same_run,
    check_same_world,
    find_checkpoint,
    prepare_fresh,
    prepare_resumed,
)


@dataclass
class Parts:
    """The objects a checkpoint saves and a resume loads into (in place)."""

    policy: Any
    tokenizer: Any
    critic: Any  # None without one
    optimizers: dict[str, Any]
    schedulers: dict[str, Any]
    precision: Any = None  # remax.trainer.precision.Precision: fp16's loss-scaler state

    def models(self) -> dict[str, Any]:
        """name -> model, keyed as `optimizers` (the critic only when there is one)."""
        return {"policy": self.policy, **({"critic": self.critic} if self.critic is not None else {})}


def snapshot(state: RunState, sampler: Any) -> RunState:
    """The run state at this step boundary: counters, sampler position, every RNG."""
    return dataclasses.replace(state, sampler=sampler.state_dict(), rng=capture_rng())


def save_checkpoint(state: RunState, parts: Parts, *, out: Path, dist: Any, keep_last: int) -> Path:
    """checkpoints/step-N for `state`, atomically, rank 0 writing (with FSDP every rank
    writes its shards first); returns its path. A failed write stops every rank."""
    state = dataclasses.replace(state, rng=dist.gather_rng(state.rng))  # every rank's RNG streams
    path = step_dir(out / "checkpoints", state.step)
    shards = None
    if dist.sharded_checkpoint:  # the same temporary on every rank: named after rank 0's pid
        shards = write_shards(path, parts.models(), parts.optimizers, tag=dist.gather_counts(os.getpid())[0])
    metrics, failed = out / "metrics.jsonl", None
    if dist.is_main:
        try:
            write_checkpoint(
                path,
                policy=parts.policy,
                tokenizer=parts.tokenizer,
                state=state,
                optimizers=parts.optimizers,
                schedulers=parts.schedulers,
                critic=parts.critic,
                precision=None if parts.precision is None else parts.precision.state_dict(),
                config_yaml=(out / "config.yaml").read_text(),
                metrics_jsonl=metrics.read_text() if metrics.is_file() else "",
                keep_last=keep_last,
                shards=shards,
            )
        except RunStopped as err:
            failed = err
    message = dist.first_failure(None if failed is None else str(failed))  # every rank waits for rank 0's write
    if failed is not None:
        raise failed
    if message is not None:
        raise RunStopped(message)
    return path


def start(config: Config, out: Path, parts: Parts, sampler: Any, *, dist: Any, metrics: Any) -> Optional[RunState]:
    """Fresh, overwritten or resumed output_dir; returns the resumed RunState, or None for
    a fresh run. Everything that can fail (a missing or corrupt checkpoint, a changed
    config) is checked before the directory is touched."""
    checkpoint = find_checkpoint(config)
    state = None
    if checkpoint is None:
        dist.main_only(prepare_fresh, config, out)  # only rank 0 writes
    else:
        saved = load_trainer_state(checkpoint)
        check_same_run(config, checkpoint)
        rng = saved["run_state"].get("rng") or {}
        check_same_world(checkpoint, len(rng["ranks"]) if "ranks" in rng else 1, dist.world)
        check_same_layout(checkpoint, dist.sharded_checkpoint)
        state = restore(checkpoint, saved, parts, sampler, dist=dist)
        dist.main_only(prepare_resumed, out, checkpoint, state.step)
        metrics.reload()
    dist.main_only(save_config, config, out / "config.yaml")
    dist.barrier()
    return state


def restore(checkpoint: Path, saved: dict[str, Any], parts: Parts, sampler: Any, *, dist: Any) -> RunState:
    """Weights, optimizer and scheduler states, sampler position and RNGs, in place; returns the RunState."""
    if (checkpoint / SHARDED).is_dir():  # FSDP: every rank reads its shards of weights and optimizer states
        load_shards(checkpoint / SHARDED, parts.models(), parts.optimizers)
    else:
        load_policy_into(parts.policy, checkpoint / "policy")  # with LoRA: the adapters
        if parts.critic is not None:
            load_safetensors_into(parts.critic.trunk, checkpoint / "critic", skip=VALUE_HEAD_FILE)
            load_safetensors_into(parts.critic.head, checkpoint / "critic", only=VALUE_HEAD_FILE)
        for name, opt in parts.optimizers.items():
            opt.load_state_dict(saved["optimizers"][name])
    for name, sched in parts.schedulers.items():
        sched.load_state_dict(saved["schedulers"][name])
    if parts.precision is not None:
        parts.precision.load_state_dict(saved.get("precision"))  # fp16: the loss scale it had
    state = RunState(**saved["run_state"])
    sampler.load_state_dict(state.sampler)
    restore_rng(dist.own_rng(state.rng))  # this rank's streams
    return state


def stop(reason: str, exit_code: int, state: RunState, *, out: Path, dist: Any,
         save: Callable[[RunState], Path]) -> NoReturn:
    """Save `state` with `save` (unless step 0, or already saved) and raise RunStopped with one line."""
    path = step_dir(out / "checkpoints", state.step)
    if state.step == 0:
        raise RunStopped(f"{reason}; no step had finished, so there is nothing to resume", exit_code)
    if not dist.from_main(path.is_dir()):  # every rank decides as rank 0 does
        save(state)
    raise RunStopped(f"{reason}; saved {path}; continue with the same command plus --resume auto", exit_code)


def save_final(path: Path, *, policy: Any, tokenizer: Any, dist: Any, save_merged: bool) -> None:
    """final/: the policy and its tokenizer, loadable with from_pretrained (with LoRA: the
    adapter, for peft.PeftModel.from_pretrained; save_merged adds final/merged/). Under
    FSDP one directory too: the full weights gathered on rank 0 (with LoRA its adapter
    out of them; merged/ from the merged weights every rank gathers: a sharded model
    cannot be deep-copied and merged on one rank)."""
    state_dict = dist.full_state_dict("policy")  # consolidated FSDP / ZeRO-3 shards; None otherwise
    merged = merged_state_dict(policy) if save_merged and state_dict is not None else None  # all ranks
    if dist.is_main:
        with atomic_dir(path) as tmp:
            save_pretrained_dir(policy, tokenizer, tmp, state_dict=state_dict)
            if save_merged and merged is None:
                save_pretrained_dir(merged_copy(policy), tokenizer, tmp / "merged")
            elif save_merged:  # the plain architecture (adapters are not in merged's names) with the merged weights
                save_pretrained_dir(policy.get_base_model(), tokenizer, tmp / "merged", state_dict=merged)
    dist.barrier()


__all__ = ["Parts", "restore", "save_checkpoint", "save_final", "snapshot", "start", "stop"]
