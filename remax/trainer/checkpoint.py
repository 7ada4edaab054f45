"""Checkpoints: everything a run needs to continue bit-for-bit, written atomically.

A checkpoint `checkpoints/step-N/` holds
- `policy/`: model + tokenizer as safetensors, loadable with from_pretrained; with LoRA
  the adapter only (`adapter_model.safetensors`: the base is frozen and re-read from
  model.policy on resume), loadable with peft.PeftModel.from_pretrained;
- `critic/`: PPO's value model (trunk + `value_head.safetensors`);
- `trainer_state.pt`: optimizer and scheduler states, fp16's loss-scaler state and the RunState (step, sampler
  epoch and position, every RNG, run counters), plain tensors and Python containers
  only, so that it loads with `torch.load(..., weights_only=True)`;
- `config.yaml`: the config the run had, checked against a resumed run's;
- `metrics.jsonl`: the run's metrics up to step N, restored on resume so that every
  step appears exactly once.

An FSDP run (`Dist.sharded_checkpoint`) writes no policy/ or critic/ and no optimizer
states into trainer_state.pt: `sharded/` holds the models' weights and AdamW states as
torch.distributed.checkpoint (DCP) shards, keyed `policy` / `critic` -> `model` /
`optimizer`, each rank writing its own `__R_0.distcp` (`write_shards`) and rank 0 the
`.metadata`; `load_shards` reads them back into the sharded models, bit for bit. (A
sharded checkpoint's weights as one file: `python -m torch.distributed.checkpoint.format_utils
dcp_to_torch step-N/sharded model.pt`; `final/` is always one Hugging Face directory.)

It is written into a temporary sibling, fsynced, and renamed; then `checkpoints/latest`
(a one-line file naming the directory) is replaced. A kill mid-write leaves only a
dot-named temporary, which is never taken for a checkpoint and is cleaned at the next
start. A failed write (a full disk) leaves the previous checkpoints as they were. The
shards go first into a temporary of their own (`.step-N.shards.tmp-PID`, every rank
writing, each file fsynced by DCP), which rank 0 moves into the checkpoint's temporary.
"""

from __future__ import annotations

import os
import random
import re
import shutil
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional

import numpy as np
import torch

from remax.errors import InputError, RunStopped
from remax.models.loading import progress_bars

STATE_FILE = "trainer_state.pt"
LATEST = "latest"
SHARDED = "sharded"  # an FSDP checkpoint's DCP directory
_STEP_DIR = re.compile(r"^step-(\d+)$")


@dataclass
class RunState:
    """All mutable run state that is not a model or optimizer tensor."""

    step: int = 0
    sampler: dict[str, int] = field(default_factory=dict)
    rng: dict[str, Any] = field(default_factory=dict)
    skipped_batches: int = 0  # reward.on_error=skip_batch: batches dropped so far
    skip_streak: int = 0  # ... of which in a row, up to now
    nonfinite_steps: int = 0  # steps whose optimizer update was skipped for NaN / inf
    nonfinite_streak: int = 0


# ------------------------------------------------------------------ RNG
def seed_everything(seed: int) -> None:
    """Seed python's `random`, numpy's global RNG and torch (CPU and every CUDA device)
    with `train.seed`, as documented: a reward or user code drawing from them is reproducible."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def capture_rng() -> dict[str, Any]:
    """Every RNG a step can draw from: python, numpy, torch CPU and every CUDA device.
    (The update's minibatch order uses its own generator seeded from (seed, step).)"""
    np_name, np_keys, np_pos, np_gauss, np_cached = np.random.get_state()
    rng = {
        "python": random.getstate(),
        "numpy": [np_name, torch.from_numpy(np_keys.astype(np.int64)), int(np_pos), int(np_gauss), float(np_cached)],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    return rng


def restore_rng(rng: dict[str, Any]) -> None:
    if "python" in rng:
        version, internal, gauss = rng["python"]
        random.setstate((version, tuple(internal), gauss))
    if "numpy" in rng:
        name, keys, pos, has_gauss, cached = rng["numpy"]
        np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    if "torch" in rng:
        torch.set_rng_state(rng["torch"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])


# ------------------------------------------------------- atomic writes
def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(root: Path) -> None:
    """fsync every file and directory under `root` (and root itself)."""
    for dirpath, _, files in os.walk(root):
        for name in files:
            _fsync(Path(dirpath) / name)
        _fsync(Path(dirpath))


@contextmanager
def atomic_dir(final: Path) -> Iterator[Path]:
    """`with atomic_dir(final) as tmp:` write into `tmp`; on success it is fsynced and
    renamed to `final` (replacing what was there), on an exception it is removed and
    `final` is left exactly as it was."""
    final = Path(final)
    tmp = final.parent / f".{final.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        yield tmp
        fsync_tree(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if final.exists():
        old = final.parent / f".{final.name}.old-{os.getpid()}"
        os.replace(final, old)  # a directory cannot be replaced in one step
        os.replace(tmp, final)
        shutil.rmtree(old)
    else:
        os.replace(tmp, final)
    _fsync(final.parent)


def write_text_atomic(path: Path, text: str) -> None:
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync(path.parent)


def clean_leftovers(directory: Path) -> list[Path]:
    """Remove the dot-named temporaries a killed write leaves behind (`.step-4.tmp-123`)."""
    removed = []
    if directory.is_dir():
        for p in directory.iterdir():
            if p.name.startswith(".") and re.search(r"\.(tmp|old)-\d+$", p.name):
                shutil.rmtree(p) if p.is_dir() else p.unlink()
                removed.append(p)
    return removed


# ------------------------------------------------------------- saving
def save_pretrained_dir(model: Any, tokenizer: Any, path: Path, state_dict: Optional[dict[str, Any]] = None) -> None:
    """Model and tokenizer side by side, as AutoModel*/AutoTokenizer.from_pretrained expect.
    `state_dict`: consolidated weights of a sharded model (FSDP, ZeRO-3), saved instead of its own."""
    with progress_bars(False):  # no "Writing model shards" bar in the middle of the training bar
        model.save_pretrained(path, **({} if state_dict is None else {"state_dict": state_dict}))
    if tokenizer is not None:
        tokenizer.save_pretrained(path)


def step_dir(checkpoints: Path, step: int) -> Path:
    return checkpoints / f"step-{step}"


def save_checkpoint(
    path: Path,
    *,
    policy: Any,
    tokenizer: Any,
    state: RunState,
    optimizers: dict[str, torch.optim.Optimizer],
    schedulers: dict[str, Any],
    critic: Any = None,
    precision: Optional[dict[str, Any]] = None,
    config_yaml: str = "",
    metrics_jsonl: str = "",
    keep_last: int = 0,
    shards: Optional[Path] = None,
) -> None:
    """Write checkpoint `path` atomically, point `latest` at it, prune to `keep_last`.
    `shards`: the DCP directory `write_shards` wrote (FSDP), moved in as sharded/ in place
    of policy/, critic/ and the optimizer states.

    If the write fails (a full disk, a lost mount) nothing under a final name changes
    and a RunStopped says so, naming the previous checkpoint that is still intact."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with atomic_dir(path) as tmp:
            if shards is not None:
                os.replace(shards, tmp / SHARDED)
            else:
                save_pretrained_dir(policy, tokenizer, tmp / "policy")
                if critic is not None:
                    critic.save_pretrained(tmp / "critic")
            torch.save(
                {
                    "run_state": asdict(state),
                    "optimizers": {} if shards is not None else {k: o.state_dict() for k, o in optimizers.items()},
                    "schedulers": {k: s.state_dict() for k, s in schedulers.items()},
                    "precision": precision,  # train.mixed_precision and fp16's loss-scaler state (or None)
                },
                tmp / STATE_FILE,
            )
            (tmp / "config.yaml").write_text(config_yaml)
            (tmp / "metrics.jsonl").write_text(metrics_jsonl)
        write_text_atomic(path.parent / LATEST, path.name + "\n")
    except Exception as err:  # OSError, or the serializers' own errors wrapping one (a full disk)
        raise write_failed(path, err) from err
    prune_checkpoints(path.parent, keep_last)


def write_failed(path: Path, err: BaseException) -> RunStopped:
    """The one line for a checkpoint that could not be written; the previous one is named."""
    previous = latest_checkpoint(path.parent)
    kept = f"the previous checkpoint {previous} is intact" if previous else "no earlier checkpoint exists"
    reason = (str(err).strip().splitlines() or [type(err).__name__])[0][:160]
    return RunStopped(f"could not write checkpoint {path} ({reason}); {kept}; free space, then rerun with --resume auto")


def _dcp_states(models: dict[str, Any], optimizers: dict[str, Any]) -> dict[str, Any]:
    """name -> {model, optimizer}: torch.distributed.checkpoint's state dicts (FSDP2 shards as
    DTensors, optimizer states keyed by parameter name), the tree DCP saves and loads in place."""
    from torch.distributed.checkpoint.state_dict import get_state_dict

    states = {}
    for name, model in models.items():
        if model is not None:
            model_sd, optim_sd = get_state_dict(model, optimizers[name])
            states[name] = {"model": model_sd, "optimizer": optim_sd}
    return states


def write_shards(path: Path, models: dict[str, Any], optimizers: dict[str, Any], tag: int) -> Path:
    """Every rank at once: the models' and optimizers' shards of checkpoint `path` into the
    temporary `.step-N.shards.tmp-TAG` beside it (`tag`: rank 0's pid, the same on every
    rank), for rank 0's save_checkpoint(shards=...) to move in. A failed write is one
    RunStopped on every rank (DCP gathers the ranks' errors)."""
    import torch.distributed.checkpoint as dcp

    staging = Path(path).parent / f".{Path(path).name}.shards.tmp-{tag}"
    try:
        dcp.save(_dcp_states(models, optimizers), checkpoint_id=staging)
    except Exception as err:
        raise write_failed(Path(path), err) from err
    return staging


def load_shards(directory: Path, models: dict[str, Any], optimizers: dict[str, Any]) -> None:
    """A checkpoint's sharded/ back into the (sharded) models and their optimizers, in place."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import set_state_dict

    states = _dcp_states(models, optimizers)
    try:
        dcp.load(states, checkpoint_id=directory)
    except Exception as err:  # a missing or truncated shard file
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0][:160]
        raise InputError(f"checkpoint {str(Path(directory).parent)!r} is corrupt ({SHARDED}/: {reason}); pass an "
                         "earlier checkpoint to --resume PATH (checkpoints/step-N), or start again") from None
    for name, state in states.items():
        set_state_dict(models[name], optimizers[name], model_state_dict=state["model"],
                       optim_state_dict=state["optimizer"])


def checkpoint_steps(checkpoints: Path) -> dict[int, Path]:
    """Complete checkpoints by step: `step-N` directories holding a trainer state.
    (A half-written one only exists under a dot-named temporary, never as `step-N`.)"""
    found = {}
    if checkpoints.is_dir():
        for p in checkpoints.iterdir():
            m = _STEP_DIR.match(p.name)
            if m and (p / STATE_FILE).is_file():
                found[int(m.group(1))] = p
    return found


def latest_checkpoint(checkpoints: Path) -> Optional[Path]:
    """The highest-numbered complete checkpoint. `latest` names the same directory
    once its write finished; the scan also covers a kill between rename and pointer."""
    steps = checkpoint_steps(checkpoints)
    return steps[max(steps)] if steps else None


def prune_checkpoints(checkpoints: Path, keep_last: int) -> None:
    if keep_last <= 0:
        return
    steps = sorted(checkpoint_steps(checkpoints))
    for s in steps[:-keep_last]:
        shutil.rmtree(step_dir(checkpoints, s))


# ------------------------------------------------------------ loading
def load_trainer_state(path: Path) -> dict[str, Any]:
    """trainer_state.pt of checkpoint `path`, loaded with weights_only=True; a missing or
    corrupt checkpoint is one InputError naming it."""
    path = Path(path)
    hint = "pass another checkpoint to --resume (or --resume auto)"
    if not path.is_dir():
        raise InputError(f"checkpoint {str(path)!r} not found; {hint}")
    if not (path / STATE_FILE).is_file() or not ((path / "policy").is_dir() or (path / SHARDED).is_dir()):
        raise InputError(f"{str(path)!r} is not a complete checkpoint (no {STATE_FILE}, or no policy/ or {SHARDED}/); {hint}")
    try:
        return torch.load(path / STATE_FILE, weights_only=True, map_location="cpu")
    except Exception as err:  # truncated zip, wrong format, unsafe pickle: all "corrupt" to a user
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0][:160]
        raise InputError(f"checkpoint {str(path)!r} is corrupt ({STATE_FILE}: {reason}); {hint}") from None


def load_policy_into(policy: torch.nn.Module, directory: Path) -> None:
    """The policy's trained weights from checkpoint `directory` (its policy/), bit for bit:
    with LoRA the adapters only (the frozen base was loaded from model.policy, unchanged),
    otherwise every weight."""
    from remax.models.lora import is_peft_model, load_adapter_into

    if is_peft_model(policy):
        load_adapter_into(policy, directory)
    else:
        load_safetensors_into(policy, directory)


def load_safetensors_into(module: torch.nn.Module, directory: Path, only: Optional[str] = None, skip: str = "") -> None:
    """Copy the tensors of `directory`'s *.safetensors files into `module`, in place and
    bit for bit. Tied parameters that save_pretrained stores once (GPT-2's lm_head) are
    accepted as missing; any other missing or unexpected key is a corrupt checkpoint."""
    from safetensors.torch import load_file

    directory = Path(directory)
    paths = [directory / only] if only else [p for p in sorted(directory.glob("*.safetensors")) if p.name != skip]
    if not paths:
        raise InputError(f"no weights (*.safetensors) in {str(directory)!r}; the checkpoint is incomplete")
    own = module.state_dict(keep_vars=True)
    loaded: set[str] = set()
    for p in paths:
        try:
            tensors = load_file(p)
        except Exception as err:  # a truncated file: safetensors' SafetensorError, not an OSError
            from remax.models.checks import unreadable

            if not unreadable(err) and not isinstance(err, OSError):
                raise
            reason = (str(err).strip().splitlines() or [type(err).__name__])[0][:160]
            raise InputError(f"checkpoint {str(directory.parent)!r} is corrupt ({p.name}: {reason}); pass an earlier "
                             "checkpoint to --resume PATH (checkpoints/step-N), or start again") from None
        unexpected = sorted(set(tensors) - set(own))
        if unexpected:
            raise InputError(f"{p}: weights {unexpected[:3]} do not belong to this model; resume with the same model")
        with torch.no_grad():
            for k, v in tensors.items():
                own[k].copy_(v)
        loaded |= set(tensors)
    loaded_ptrs = {own[k].data_ptr() for k in loaded}
    missing = [k for k in own if k not in loaded and own[k].data_ptr() not in loaded_ptrs]
    if missing:
        raise InputError(f"{directory}: weights {missing[:3]} are missing; the checkpoint is incomplete")
