"""Several processes behind one small interface: `Dist`. In one process it does nothing.

    accelerate launch --config_file configs/accelerate/ddp.yaml -m remax train --config run.yaml

The loop calls a `Dist` at a few seams (which rows this rank rolls out, the loss
normalisers, the training forward's context, backward, gradient clipping, metrics, who writes) and never asks how many
processes there are. `Dist` (one process) is the identity everywhere; `AccelerateDist`
(started by `accelerate launch` or `torchrun`) hands the policy and PPO's critic to
accelerate's `Accelerator`, which wraps them in DDP, FSDP or a DeepSpeed engine as the
accelerate config file says: remax does not implement the distributed engine itself.

Why several ranks give the gradient of one process with the whole batch:
- every rank's PromptSampler draws the same global batch (same seed, same order);
  rank r keeps rows [r*B/W, (r+1)*B/W). A prompt's greedy row and its n samples are
  generated, scored and turned into advantages on one rank, so ReMax baselines and
  rloo / grpo groups never cross ranks;
- each loss is a sum over tokens (or sequences) divided by a count
  (`remax/algos/aggregation.py`). The counts are all-reduced, so rank r's loss is its
  share S_r / N of the global loss and the wanted gradient is sum_r grad(S_r) / N. DDP,
  FSDP and DeepSpeed AVERAGE gradients over the W ranks, so each rank divides by N / W
  instead: mean_r(W * grad(S_r) / N) = sum_r grad(S_r) / N;
- PPO's advantage whitening uses the global mean and variance (all-reduced sums).
Sampling noise: in several processes rank r draws its rollout from a generator seeded
with (seed, step, r), so ranks never share noise and a resumed run redraws the same
samples. (One process keeps its single RNG stream, as before.)

Only rank 0 writes (config, metrics, checkpoints, final/); every rank's RNG states are
gathered into the checkpoint. FSDP and DeepSpeed ZeRO-3 weights are consolidated with
`Accelerator.get_state_dict` for final/ and checkpoints; rollouts run under
`summon_full_params` (FSDP) or `GatheredParameters` (ZeRO-3), as TRL's
`unwrap_model_for_generation` does. DDP (gloo, CPU) is exercised in this project's
tests, and DeepSpeed ZeRO-3 where deepspeed is installed (CPU, gloo: remax/trainer/zero.py
says what that takes); FSDP was not run here.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any, Iterator, Optional

import torch

from remax.config import ConfigError
from remax.trainer.precision import Precision

# ranks whose rollouts differ only by this seed offset (a large odd constant keeps the
# (seed, step, rank) triples from colliding for any realistic seed and step)
_SEED_STRIDE = 1_000_003


def rank_seed(seed: int, step: int, rank: int) -> int:
    """The rollout seed of `rank` at `step` (0-based) in a run seeded with `seed`."""
    return ((seed * _SEED_STRIDE + step) * 4099 + rank) % (2**63 - 1)


def shard_bounds(n_rows: int, world: int, rank: int) -> tuple[int, int]:
    """[start, end) of `rank`'s equal share of `n_rows` rows (n_rows % world == 0)."""
    per = n_rows // world
    return rank * per, (rank + 1) * per


def global_normalisers(num_tokens: torch.Tensor, num_seqs: int, world: int, all_reduce_sum) -> dict[str, Any]:
    """This rank's token / sequence counts -> the normalisers its loss divides by so that
    gradients AVERAGED over `world` ranks equal the full-batch gradient: global count / world."""
    counts = all_reduce_sum(torch.stack([num_tokens.detach().double().cpu(), torch.tensor(float(num_seqs), dtype=torch.float64)]))
    return {"num_tokens": (counts[0] / world).to(num_tokens.device, torch.float32), "num_seqs": float(counts[1]) / world}


def masked_whiten_global(values: torch.Tensor, mask: torch.Tensor, all_reduce_sum, eps: float = 1e-8) -> torch.Tensor:
    """`remax.algos.masked_whiten` with the mean and unbiased variance over every rank's
    masked entries (sums all-reduced); entries outside the mask are 0."""
    mask = mask.to(values.dtype)
    s = all_reduce_sum(torch.stack([(values * mask).sum(), mask.sum()]).double())
    count = s[1]
    if count.item() < 2:
        raise ValueError(f"masked_whiten needs at least 2 masked entries, got {count.item():g}")
    mean = (s[0] / count).to(values.dtype)
    sq = all_reduce_sum(((values - mean).square() * mask).sum().double().reshape(1))[0]
    var = (sq / (count - 1)).to(values.dtype)  # unbiased, as masked_whiten
    return (values - mean) * torch.rsqrt(var + eps) * mask


class Dist:
    """One process: no collectives, this process is rank 0 of 1 and writes everything."""

    rank, world, is_main = 0, 1, True
    precision: Precision = Precision()  # the run's compute precision (remax/trainer/precision.py); set_precision

    def set_precision(self, precision: Precision) -> None:
        self.precision = precision

    def device(self, default: torch.device) -> torch.device:
        return default

    def shard(self, rows: list[Any]) -> list[Any]:
        """This rank's share of the global batch."""
        return rows

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor

    def loss_normalisers(self, num_tokens: torch.Tensor, num_seqs: int) -> dict[str, Any]:
        return {"num_tokens": num_tokens, "num_seqs": num_seqs}

    def whiten(self, values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        from remax.algos import masked_whiten

        return masked_whiten(values, mask)

    def wrap(self, models: dict[str, Any], optimizers: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        """name -> module that runs the training forward, and the optimizers to step."""
        return dict(models), optimizers

    def forward_context(self) -> contextlib.AbstractContextManager:
        """Around every log-prob / value forward of the training models (the update's, with
        grad, and the preparation's, without): the precision's autocast
        (`train.mixed_precision`; a no-op for 'no'), so that the 'old' and the new log-probs
        share one precision. The same in AccelerateDist (accelerate's own mixed precision
        stays off: this one is the run's)."""
        return self.precision.autocast()

    def accumulate(self, sync: bool) -> contextlib.AbstractContextManager:
        """Around a micro-batch's forward and backward: `sync` False on all but the last
        micro-batch of an optimizer step, where DDP then skips its gradient all-reduce
        (`no_sync`), so that each optimizer step all-reduces once. Nothing in one process."""
        return contextlib.nullcontext()

    def backward(self, loss: torch.Tensor) -> None:
        self.precision.scale(loss).backward()  # fp16: times the loss scale

    def clip_grad_norm(self, params: list[torch.Tensor], max_norm: float) -> torch.Tensor:
        return torch.nn.utils.clip_grad_norm_(params, max_norm)

    def rollout_rng(self, seed: int, step: int) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()

    def generation(self, name: str) -> contextlib.AbstractContextManager:
        """Around a rollout: full parameters on this rank (FSDP / ZeRO-3 gather them)."""
        return contextlib.nullcontext()

    def gather_metrics(self, metrics: dict[str, float]) -> dict[str, float]:
        return metrics

    def gather_rng(self, rng: dict[str, Any]) -> dict[str, Any]:
        """Every rank's RNG states, for the checkpoint (rank 0 writes it)."""
        return rng

    def own_rng(self, rng: dict[str, Any]) -> dict[str, Any]:
        """This rank's RNG states out of a checkpoint's."""
        return rng["ranks"][0] if "ranks" in rng else rng

    def full_state_dict(self, name: str) -> Optional[dict[str, torch.Tensor]]:
        """Consolidated weights of a sharded model (all ranks must call); None when the
        model object already holds them (one process, DDP)."""
        return None

    def output_path(self, path: Path) -> Path:
        """`path` on rank 0; the null device elsewhere (only rank 0 writes metrics)."""
        return Path(path)

    def main_only(self, fn, *args: Any) -> None:
        """Call fn(*args) on rank 0 only (the writes to output_dir)."""
        if self.is_main:
            fn(*args)

    def from_main(self, flag: bool) -> bool:
        """Rank 0's `flag`, on every rank (a decision all ranks must take alike)."""
        return flag

    def gather_counts(self, count: int) -> list[int]:
        """Every rank's `count`, in rank order, on every rank (the statistics a decision
        on rows or steps is taken from, alike everywhere)."""
        return [int(count)]

    def first_failure(self, message: Optional[str]) -> Optional[str]:
        """None when no rank failed (`message` None everywhere), else the lowest failing
        rank's message, on every rank: a failure on one rank is every rank's decision."""
        return message

    def barrier(self) -> None:
        pass


class AccelerateDist(Dist):
    """Several processes through accelerate (DDP / FSDP / DeepSpeed from its config)."""

    def __init__(self, config: Any) -> None:
        from accelerate import Accelerator
        from accelerate.utils import DistributedType

        # accelerate's own mixed precision stays off: the run's is train.mixed_precision (Dist.precision)
        from remax.trainer.zero import accelerator_kwargs

        # DeepSpeed on CPU needs cpu=False and gloo named (remax/trainer/zero.py); DDP otherwise on CPU
        self.acc = Accelerator(mixed_precision="no", **accelerator_kwargs(config))
        self.kind = self.acc.distributed_type
        self.rank, self.world = self.acc.process_index, self.acc.num_processes
        self.is_main = self.acc.is_main_process
        self.sharded = self.kind in (DistributedType.FSDP, DistributedType.DEEPSPEED)
        self.deepspeed = self.kind == DistributedType.DEEPSPEED
        self.trained: dict[str, Any] = {}
        self._check(config)

    def _check(self, config: Any) -> None:
        from remax.trainer.validate import check_world

        t = config.train
        check_world(config, self.world)  # the CLI checked it before launching; a bare torchrun comes here
        if self.sharded and (config.log.save_every or config.resume):
            raise ConfigError("checkpoints and --resume need DDP for now (FSDP / DeepSpeed optimizer shards are "
                              "not saved); set --log.save_every 0 and no --resume, or launch with configs/accelerate/ddp.yaml")
        rows = t.batch_size // self.world * config.rollout.n_samples
        if self.deepspeed and t.micro_batch_size < rows:
            raise ConfigError(f"DeepSpeed steps inside backward: set --train.micro_batch_size to at least {rows} "
                              "(this rank's rows) so that each optimizer step has one backward")
        if self.deepspeed:
            from remax.trainer.zero import configure

            configure(self.acc, rows)

    def device(self, default: torch.device) -> torch.device:
        return self.acc.device if default.type == "cuda" else default

    def shard(self, rows: list[Any]) -> list[Any]:
        start, end = shard_bounds(len(rows), self.world, self.rank)
        return rows[start:end]

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        out = tensor.clone().to(self.acc.device)
        torch.distributed.all_reduce(out, op=torch.distributed.ReduceOp.SUM)
        return out.to(tensor.device)

    def loss_normalisers(self, num_tokens: torch.Tensor, num_seqs: int) -> dict[str, Any]:
        return global_normalisers(num_tokens, num_seqs, self.world, self.all_reduce_sum)

    def whiten(self, values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return masked_whiten_global(values, mask, self.all_reduce_sum)

    def wrap(self, models: dict[str, Any], optimizers: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        wrapped_opts = dict(optimizers)
        if self.deepspeed:
            from remax.trainer.zero import check_trained

            check_trained(models)
        for name, model in models.items():
            if model is None:
                continue
            # prepared together, so FSDP / DeepSpeed re-point the optimizer at their shards
            self.trained[name], wrapped_opts[name] = self.acc.prepare(model, optimizers[name])
        return dict(self.trained), wrapped_opts

    def accumulate(self, sync: bool) -> contextlib.AbstractContextManager:
        stack = contextlib.ExitStack()
        if not sync:
            from torch.nn.parallel import DistributedDataParallel as DDP

            # DDP only: FSDP's no_sync keeps unsharded gradients (memory); DeepSpeed has one backward per step
            for model in self.trained.values():
                if isinstance(model, DDP):
                    stack.enter_context(model.no_sync())
        return stack

    def backward(self, loss: torch.Tensor) -> None:
        self.acc.backward(self.precision.scale(loss))

    def clip_grad_norm(self, params: list[torch.Tensor], max_norm: float) -> torch.Tensor:
        norm = self.acc.clip_grad_norm_(params, max_norm)
        # DeepSpeed clips inside its own step (gradient_clipping in its config): its norm as a float, or None
        return torch.zeros(()) if norm is None else torch.as_tensor(norm, dtype=torch.float32)

    @contextlib.contextmanager
    def rollout_rng(self, seed: int, step: int) -> Iterator[None]:
        devices = [self.acc.device] if self.acc.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(rank_seed(seed, step, self.rank))
            yield

    def generation(self, name: str) -> contextlib.AbstractContextManager:
        model = self.trained.get(name)
        if self.deepspeed and model is not None:
            import deepspeed

            return deepspeed.zero.GatheredParameters(list(model.parameters()), modifier_rank=None)
        if self.sharded and model is not None:
            from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

            if isinstance(model, FSDP):
                return FSDP.summon_full_params(model, writeback=False, recurse=True)
        return contextlib.nullcontext()

    def gather_metrics(self, metrics: dict[str, float]) -> dict[str, float]:
        """Mean over ranks (equal shares, so means of means are global means); counts and
        throughputs are summed; the step number is the same everywhere."""
        keys = sorted(k for k, v in metrics.items() if isinstance(v, (int, float)) and k != "step")
        values = self.all_reduce_sum(torch.tensor([float(metrics[k]) for k in keys], dtype=torch.float64))
        out = dict(metrics)
        for k, v in zip(keys, values.tolist()):
            out[k] = v if k in _SUMMED else v / self.world
        return out

    def gather_rng(self, rng: dict[str, Any]) -> dict[str, Any]:
        everyone: list[Any] = [None] * self.world
        torch.distributed.all_gather_object(everyone, rng)
        return {"ranks": everyone}

    def own_rng(self, rng: dict[str, Any]) -> dict[str, Any]:
        ranks = rng.get("ranks")
        if ranks is None:
            return rng  # a one-process checkpoint: every rank continues from its streams
        return ranks[self.rank % len(ranks)]

    def full_state_dict(self, name: str) -> Optional[dict[str, torch.Tensor]]:
        if not self.sharded or name not in self.trained:
            return None
        return self.acc.get_state_dict(self.trained[name])

    def output_path(self, path: Path) -> Path:
        return Path(path) if self.is_main else Path(os.devnull)

    def from_main(self, flag: bool) -> bool:
        mine = torch.tensor([float(flag) if self.is_main else 0.0])
        return bool(self.all_reduce_sum(mine).item())

    def gather_counts(self, count: int) -> list[int]:
        onehot = torch.zeros(self.world, dtype=torch.float64)
        onehot[self.rank] = float(count)
        return [int(v) for v in self.all_reduce_sum(onehot).tolist()]

    def first_failure(self, message: Optional[str]) -> Optional[str]:
        failed = self.gather_counts(int(message is not None))
        if not any(failed):
            return None  # the common case: one small all-reduce
        messages: list[Any] = [None] * self.world
        torch.distributed.all_gather_object(messages, message)
        r = failed.index(1)
        return messages[r] if r == self.rank or self.world == 1 else f"on rank {r}: {messages[r]}"

    def barrier(self) -> None:
        self.acc.wait_for_everyone()


_SUMMED = {"perf/tokens_per_s"}


def launched_world() -> int:
    """The process count a launcher (accelerate launch, torchrun, mpirun) set, else 1."""
    for var in ("WORLD_SIZE", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE"):
        if os.environ.get(var, "").isdigit():
            return int(os.environ[var])
    return 1


def make_dist(config: Any) -> Dist:
    """`AccelerateDist` under a multi-process launcher, else the one-process `Dist`."""
    return AccelerateDist(config) if launched_world() > 1 else Dist()


__all__ = ["AccelerateDist", "Dist", "global_normalisers", "launched_world", "make_dist", "masked_whiten_global",
           "rank_seed", "shard_bounds"]
