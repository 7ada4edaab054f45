"""Several processes behind one small interface: `Dist`. In one process it does nothing.

    remax train --num_processes 2 --config run.yaml                          # DDP (gloo on CPU, NCCL on GPUs)
    remax train --num_processes 8 --train.strategy fsdp --config run.yaml    # FSDP2: weights, grads, Adam sharded
    accelerate launch --config_file configs/accelerate/ddp.yaml -m remax train --config run.yaml

The loop calls a `Dist` at a few seams (which rows this rank rolls out, the loss
normalisers, the training forward's context, backward, gradient clipping, metrics, who
writes, what a checkpoint holds) and never asks how many processes there are or how the
weights are laid out. `Dist` (one process) is the identity everywhere. Several processes
(`accelerate launch` or `torchrun`) get one of two:
- `AccelerateDist` hands the policy and PPO's critic to accelerate's `Accelerator`, which
  wraps them in DDP (or a DeepSpeed engine under a DeepSpeed accelerate config);
- `FSDPDist` (`--train.strategy fsdp`, or `auto` under configs/accelerate/fsdp.yaml) shards
  them with PyTorch's FSDP2 `fully_shard` itself: each decoder block (the classes a
  Hugging Face model lists in `_no_split_modules`) is one unit, the rest of the model the
  root unit; the frozen reference too (`Dist.frozen`: forward only, every unit freed after
  its forward), unless it is LoRA's adapters-off base, which is the sharded policy itself.
  Why not accelerate's FSDP2 plugin: accelerate 1.16 turns an FSDP config into FSDP only
  for GPU-type launches; on CPU (`Accelerator(cpu=True)`, gloo) it silently
  stays DDP (distributed_type MULTI_CPU, checked on this machine), and remax's CI is CPU.
  One FSDP code path for CPU and GPU is the one the tests run.

Why several ranks give the gradient of one process with the whole batch:
- every rank's PromptSampler draws the same global batch (same seed, same order);
  rank r keeps rows [r*B/W, (r+1)*B/W). A prompt's greedy row and its n samples are
  generated, scored and turned into advantages on one rank, so ReMax baselines and
  rloo / grpo groups never cross ranks;
- each loss is a sum over tokens (or sequences) divided by a count
  (`remax/algos/aggregation.py`). The counts are all-reduced, so rank r's loss is its
  share S_r / N of the global loss and the wanted gradient is sum_r grad(S_r) / N. DDP,
  FSDP (its reduce-scatter) and DeepSpeed AVERAGE gradients over the W ranks, so each
  rank divides by N / W instead: mean_r(W * grad(S_r) / N) = sum_r grad(S_r) / N;
- PPO's advantage whitening uses the global mean and variance (all-reduced sums).
Sampling noise: in several processes rank r draws its rollout from a generator seeded
with (seed, step, r), so ranks never share noise and a resumed run redraws the same
samples. (One process keeps its single RNG stream, as before.)

Full weights where they are needed (FSDP): the rollout runs with every unit unsharded
once (`generation`: one all-gather per unit, kept for the whole generate, so ranks whose
responses end at different lengths run no collective in between); the vLLM push gathers
each tensor whole (`full_named_tensors`); `final/` is written from the full state dict
gathered on rank 0 (`full_state_dict`). Checkpoints of an FSDP run are sharded
(`sharded_checkpoint`): each rank writes its own shards of the weights and Adam moments
with torch.distributed.checkpoint (remax/trainer/checkpoint.py).

Only rank 0 writes config, metrics and final/ (and a checkpoint's run state, gathered:
every rank's RNG states); with FSDP every rank writes its shards of a checkpoint.
DDP and FSDP run in this project's tests (CPU, gloo), and DeepSpeed ZeRO-3 where deepspeed is
installed (CPU, gloo: remax/trainer/zero.py says what that takes).

The process group outlives the run: it is destroyed at interpreter exit, after a bounded
barrier (remax/teardown.py: a rank exiting with gloo's worker threads still alive
could abort with SIGABRT after a successful run).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any, Iterator, Optional

import torch
from torch import nn

from remax.config import ConfigError
from remax.trainer.precision import Precision
from remax.teardown import register_teardown

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
    # checkpoints hold the models' and optimizers' states as torch.distributed.checkpoint shards
    # (every rank writes its own) instead of a policy/ directory and optimizer states in trainer_state.pt
    sharded_checkpoint = False

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

    def frozen(self, name: str, model: Any) -> Any:
        """A model no optimizer steps (the reference), as the loop runs its no-grad forwards:
        itself here; FSDP shards it like the trained ones."""
        return model

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
        """Consolidated weights of a sharded model (all ranks must call; rank 0 gets them);
        None when the model object already holds them (one process, DDP)."""
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

    def gather_rows(self, values: torch.Tensor) -> torch.Tensor:
        """(n_r,) this rank's per-row values -> (sum n_r,) every rank's, in rank order, on
        every rank: the batch statistics that are not means (std, correlation, variance
        ratios) are then the global batch's, not an average of per-rank ones."""
        return values

    def first_failure(self, message: Optional[str]) -> Optional[str]:
        """None when no rank failed (`message` None everywhere), else the lowest failing
        rank's message, on every rank: a failure on one rank is every rank's decision."""
        return message

    def barrier(self) -> None:
        pass


class AccelerateDist(Dist):
    """Several processes through accelerate: DDP, or DeepSpeed from its config (FSDP is `FSDPDist`)."""

    def __init__(self, config: Any) -> None:
        from accelerate import Accelerator
        from accelerate.utils import DistributedType

        # accelerate's own mixed precision stays off: the run's is train.mixed_precision (Dist.precision)
        from remax.trainer.zero import accelerator_kwargs

        # DeepSpeed on CPU needs cpu=False and gloo named (remax/trainer/zero.py); DDP otherwise on CPU
        self.acc = Accelerator(mixed_precision="no", **accelerator_kwargs(config))
        register_teardown()  # the group destroyed at exit, after a bounded barrier (remax/teardown.py)
        self.kind = self.acc.distributed_type
        self.rank, self.world = self.acc.process_index, self.acc.num_processes
        self.is_main = self.acc.is_main_process
        if self.kind == DistributedType.FSDP:  # only with --train.strategy ddp under an FSDP accelerate config
            raise ConfigError("--train.strategy ddp contradicts the accelerate config's FSDP; pass --train.strategy "
                              "fsdp (or auto), or launch with configs/accelerate/ddp.yaml")
        self.deepspeed = self.sharded = self.kind == DistributedType.DEEPSPEED
        self.trained: dict[str, Any] = {}
        self._check(config)

    def _check(self, config: Any) -> None:
        from remax.trainer.validate import check_world

        t = config.train
        check_world(config, self.world)  # the CLI checked it before launching; a bare torchrun comes here
        if self.sharded and (config.log.save_every or config.resume):
            raise ConfigError("checkpoints and --resume need DDP or FSDP (DeepSpeed's optimizer shards are not "
                              "saved); set --log.save_every 0 and no --resume, or launch with --train.strategy fsdp")
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

    def gather_rows(self, values: torch.Tensor) -> torch.Tensor:
        counts = self.gather_counts(values.numel())
        start = sum(counts[: self.rank])
        placed = torch.zeros(sum(counts), dtype=torch.float64)  # each rank fills its own slice, zeros elsewhere
        placed[start : start + values.numel()] = values.detach().flatten().double().cpu()
        return self.all_reduce_sum(placed).to(values.dtype)  # float64 sum of one value and zeros: exact

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


class FSDPDist(AccelerateDist):
    """Several processes, each trained model sharded with PyTorch's FSDP2 (`fully_shard`).

    accelerate still starts the processes and picks the device (its FSDP switch is taken
    out of the environment while it does: remax shards the models itself, see the module
    docstring). The models stay the objects the Trainer holds (fully_shard swaps their
    parameters for DTensor shards in place), so `wrap` re-points each optimizer at the new
    parameters, by name, before it has any state."""

    sharded_checkpoint = True

    def __init__(self, config: Any) -> None:
        self.units: dict[str, list[nn.Module]] = {}  # name -> its FSDP units, the root last
        self.forward_only: set[str] = set()  # names of the sharded frozen models (`frozen`): no backward
        saved = os.environ.pop("ACCELERATE_USE_FSDP", None)  # a DDP-type Accelerator: the process group and device
        try:
            super().__init__(config)
        finally:
            if saved is not None:
                os.environ["ACCELERATE_USE_FSDP"] = saved
        self.sharded = True

    def _check(self, config: Any) -> None:
        from remax.trainer.validate import check_world

        check_world(config, self.world)  # with check_fsdp (the CLI checked both before launching)
        check_fsdp(config)  # again: under --train.strategy auto, FSDP came from accelerate's config

    def wrap(self, models: dict[str, Any], optimizers: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        for name, model in models.items():
            if model is None:
                continue
            names = {id(p): n for n, p in model.named_parameters()}
            self.units[name] = shard_model(model)
            now = dict(model.named_parameters())  # the DTensor shards, under the same names
            for group in optimizers[name].param_groups:
                group["params"] = [now[names[id(p)]] for p in group["params"]]
            self.trained[name] = model
        return dict(models), optimizers

    def frozen(self, name: str, model: Any) -> Any:
        """The reference sharded like the policy (one FSDP unit per decoder block, the rest
        the root), so each rank holds 1/W of its weights, not a whole copy. It only runs
        no-grad forwards (the preparation's reference log-probs, every rank the same number
        of micro-batches): each unit is all-gathered for its forward and freed right after,
        the root too (fully_shard keeps a root's weights gathered after forward, for the
        backward that follows in training; the reference has none). Left as it is: LoRA's
        `AdaptersOff`, the policy's own (sharded) base with the adapters off, and an
        offloaded reference (`--model.reference_offload`: it holds no device memory at all
        between its forwards, in CPU memory whole)."""
        from remax.trainer.memory import OffloadedModel

        if not isinstance(model, nn.Module) or isinstance(model, OffloadedModel):
            return model
        self.units[name] = shard_model(model, reshard_after_forward=True)
        self.forward_only.add(name)
        return model

    def accumulate(self, sync: bool) -> contextlib.AbstractContextManager:
        """Each micro-batch's backward reduce-scatters its gradients into the shards (FSDP's
        no_sync would keep full-size unsharded gradients until the last one: the memory FSDP saves)."""
        return contextlib.nullcontext()

    def backward(self, loss: torch.Tensor) -> None:
        self.precision.scale(loss).backward()  # fully_shard's hooks reduce-scatter (averaging over ranks)

    def clip_grad_norm(self, params: list[torch.Tensor], max_norm: float) -> torch.Tensor:
        from torch.distributed.tensor import DTensor

        norm = torch.nn.utils.clip_grad_norm_(params, max_norm)  # the global norm over every rank's shards
        return norm.full_tensor() if isinstance(norm, DTensor) else norm

    @contextlib.contextmanager
    def generation(self, name: str) -> Iterator[None]:
        """The model's full parameters on every rank for the whole rollout: each unit is
        all-gathered once here (every rank at the same point of the step) and kept
        unsharded across generate's forwards, so a rank whose responses end early runs no
        collective the others would wait on; resharded (freed) afterwards."""
        units = self.units.get(name)
        if not units:
            yield
            return
        for unit in units:
            unit.unshard()
            unit.set_reshard_after_forward(False, recurse=False)
        try:
            yield
        finally:
            root, frozen = units[-1], name in self.forward_only
            for unit in units:  # as shard_model left them: fully_shard's defaults, every unit for a frozen model
                unit.set_reshard_after_forward(frozen or unit is not root, recurse=False)
                unit.reshard()

    def full_state_dict(self, name: str) -> Optional[dict[str, torch.Tensor]]:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        if name not in self.trained:
            return None
        # gathered tensor by tensor into rank 0's CPU memory; the other ranks get {}
        return get_model_state_dict(self.trained[name], options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def check_fsdp(config: Any) -> None:
    """What --train.strategy fsdp cannot run: one ConfigError line naming the fix."""
    if config.train.mixed_precision == "fp16":
        raise ConfigError("--train.strategy fsdp runs fp32 or --train.mixed_precision bf16: fp16's loss scaler "
                          "would find overflows shard by shard; use bf16 (or no), or --train.strategy ddp for fp16")


def block_classes(model: nn.Module) -> set[str]:
    """The class names of a model's repeated blocks: what its Hugging Face models list in
    `_no_split_modules` (GPT2Block, Qwen2DecoderLayer, ...); empty for other modules."""
    names: set[str] = set()
    for module in model.modules():
        names.update(getattr(module, "_no_split_modules", None) or ())
    return names


def shard_model(model: nn.Module, reshard_after_forward: Optional[bool] = None) -> list[nn.Module]:
    """fully_shard every block of `model`, then `model` itself (its embeddings, final norm,
    head, and for PPO's critic the value head); returns the units, the root last.
    `reshard_after_forward` None: fully_shard's defaults (blocks freed after forward, the
    root kept gathered for the backward); True: every unit freed (a forward-only model)."""
    from torch.distributed.fsdp import fully_shard

    kwargs = {} if reshard_after_forward is None else {"reshard_after_forward": reshard_after_forward}
    blocks = block_classes(model)
    units = [m for m in model.modules() if m is not model and type(m).__name__ in blocks]
    for unit in units:
        fully_shard(unit, **kwargs)
    fully_shard(model, **kwargs)
    return units + [model]


def full_named_tensors(module: nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, full tensor) for each entry of `module.state_dict()`: an FSDP shard (a DTensor)
    is all-gathered whole, every other tensor passes as it is. With FSDP every rank must
    run it to the end, in step (each gather is a collective, in the state dict's order).
    Used by the vLLM push (remax/rollout/vllm.py): an engine needs whole tensors, and the
    local shards of a sharded policy would load a different model."""
    from torch.distributed.tensor import DTensor

    for name, tensor in module.state_dict().items():
        yield name, (tensor.full_tensor() if isinstance(tensor, DTensor) else tensor).detach()


_SUMMED = {"perf/tokens_per_s"}


def launched_world() -> int:
    """The process count a launcher (accelerate launch, torchrun, mpirun) set, else 1."""
    for var in ("WORLD_SIZE", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE"):
        if os.environ.get(var, "").isdigit():
            return int(os.environ[var])
    return 1


def resolve_strategy(strategy: str) -> str:
    """`train.strategy` -> 'fsdp' or 'ddp' ('ddp': accelerate's choice, which is DeepSpeed under
    a DeepSpeed accelerate config). auto: 'fsdp' under an FSDP accelerate config
    (`accelerate launch --config_file configs/accelerate/fsdp.yaml` sets ACCELERATE_USE_FSDP)."""
    if strategy not in STRATEGIES:
        raise ConfigError(f"--train.strategy {strategy!r} is not one of {', '.join(STRATEGIES)}")
    if strategy == "auto":
        return "fsdp" if os.environ.get("ACCELERATE_USE_FSDP", "").lower() in ("1", "true") else "ddp"
    return strategy


STRATEGIES = ("auto", "ddp", "fsdp")


def make_dist(config: Any) -> Dist:
    """Under a multi-process launcher `FSDPDist` (train.strategy fsdp) or `AccelerateDist`;
    else the one-process `Dist` (the strategy does not matter to one process)."""
    if launched_world() == 1:
        return Dist()
    return FSDPDist(config) if resolve_strategy(config.train.strategy) == "fsdp" else AccelerateDist(config)


__all__ = ["AccelerateDist", "Dist", "FSDPDist", "STRATEGIES", "block_classes", "check_fsdp", "full_named_tensors",
           "global_normalisers", "launched_world", "make_dist", "masked_whiten_global", "rank_seed",
           "resolve_strategy", "shard_bounds", "shard_model"]
