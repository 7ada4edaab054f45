"""Mixed precision: float32 master weights and Adam states, bf16 / fp16 compute.

    --train.mixed_precision auto | no | bf16 | fp16      (accelerate's names; auto: bf16 on CUDA, no elsewhere)

One `Precision` per run, held by the run's `Dist` (`Dist.forward_context()` enters its
autocast, `Dist.backward` scales the loss), so the loop and the phases never ask which
precision runs. The weights stay in `model.dtype` (float32 by default), the optimizer
updates them in float32, and every forward of the run's models computes in the low
dtype under `torch.autocast(device_type, dtype)`:
- the update's log-prob / value forwards (with grad) and the preparation's (reference,
  old log-probs, critic values; without grad) -- `Dist.forward_context()`;
- the rollout's `model.generate` (HF backend; a vLLM engine holds its own copy of the
  weights in `rollout.vllm_dtype`: auto is this autocast dtype, see `engine_dtype`);
- a reward model's forward (`RewardModelReward.forward_context`).
The log-softmax of the loss stays float32 (`response_logprobs` casts the logits), and
backward runs outside autocast, as torch recommends.

fp16 has 5 exponent bits: small gradients underflow to 0, so the loss is multiplied by
a `torch.amp.GradScaler` scale (2^16 at first) before backward and the gradients are
divided by it before clipping. A step whose scaled gradients overflowed (inf / NaN with a
finite loss) is skipped and the scale halved: it counts in `train/skipped_updates` and,
separately, in `train/scaler_skips`, and not in the NaN / inf streak that stops a run
(`train.max_nonfinite_steps`) -- the first steps of an fp16 run overflow by design while
the scale comes down. Once the scale is below `MIN_SCALE` an overflow is a real one and
counts as NaN / inf. The scaler's state is saved in checkpoints (`state_dict`), so a
resumed fp16 run continues with the same scale. bf16 has float32's exponent range and
needs no scaler.

Pure low-precision trained weights (`--model.dtype bfloat16 / float16` without LoRA)
stay possible, with a warning: their gradients and Adam moments are low precision too,
and at lr 1e-6 most updates round away (bf16 keeps 8 significant bits: a weight of 0.02
moves only by steps of about 1e-4), and fp16's Adam eps (1e-8) is 0.
"""

from __future__ import annotations

import contextlib
import warnings
from typing import Any, Iterable, Optional

import torch

from remax.config import ConfigError

MODES = ("no", "bf16", "fp16")
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
# torch.amp.GradScaler's arguments for fp16 runs (its defaults: init_scale 2^16, halve on
# overflow, double after 2000 clean steps); tests override them to force an overflow.
SCALER_KWARGS: dict[str, Any] = {}
# below this scale an fp16 overflow is not the scaler searching for its scale: it counts as NaN / inf
MIN_SCALE = 1.0


def resolve_mode(mode: str, device: torch.device) -> str:
    """`train.mixed_precision` -> no | bf16 | fp16 (auto: bf16 on CUDA, no elsewhere)."""
    if mode == "auto":
        return "bf16" if device.type == "cuda" else "no"
    if mode not in MODES:
        raise ConfigError(f"--train.mixed_precision {mode!r} is not one of auto, {', '.join(MODES)}")
    if mode == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ConfigError("--train.mixed_precision bf16: this GPU has no bf16; use fp16 (with a loss scaler) or no")
    return mode


ENGINE_DTYPES = ("auto", "float32", "bfloat16", "float16")  # rollout.vllm_dtype


def compute_dtype_name(mode: str) -> str:
    """The dtype a resolved mixed-precision `mode` (no | bf16 | fp16) computes in, by name."""
    return str(DTYPES.get(mode, torch.float32)).removeprefix("torch.")


def check_engine_dtype(name: str, mode: str, flag: str = "--rollout.vllm_dtype") -> None:
    """ConfigError for an engine dtype that contradicts the run's resolved mixed precision
    `mode`: float16 beside bf16 (the same memory as bfloat16, and float16's range overflows
    where the bf16-trained policy's does not), bfloat16 beside fp16 (fp16 mixed precision
    is what a GPU without bf16 runs). float32 (the trainer's master weights exactly) and a
    low dtype beside an fp32 trainer (vLLM in bf16, the gap corrected by TIS) are allowed."""
    if name not in ENGINE_DTYPES:
        raise ConfigError(f"{flag} {name!r} is not one of {', '.join(ENGINE_DTYPES)}")
    low = compute_dtype_name(mode)
    if low != "float32" and name in ("bfloat16", "float16") and name != low:
        raise ConfigError(f"{flag} {name} under --train.mixed_precision {mode}: the trainer computes in {low} and "
                          f"the engine would round differently for no memory saved; use {flag} {low} (or auto)")


def engine_dtype(name: str, mode: str, weights: torch.dtype) -> torch.dtype:
    """`rollout.vllm_dtype` -> the vLLM engine's dtype: auto is the run's autocast dtype
    under mixed precision (`mode` resolved: no | bf16 | fp16), else the policy weights'
    dtype; an explicit name is checked against `mode` (`check_engine_dtype`)."""
    check_engine_dtype(name, mode)
    if name == "auto":
        return DTYPES.get(mode, weights)
    return getattr(torch, name)


def probe_autocast(dtype: torch.dtype, device_type: str) -> contextlib.AbstractContextManager:
    """The trainer's side of the engine probe in the ENGINE's precision: a float32 engine
    against float32 forwards (weights compared to ~1e-6), a bf16 / fp16 engine against
    forwards under autocast to its dtype, which is the run's own autocast when the engine's
    dtype is auto under mixed precision (the update's log-probs are computed the same way)."""
    if dtype in (torch.bfloat16, torch.float16):
        return torch.autocast(device_type, dtype=dtype)
    return contextlib.nullcontext()


class Precision:
    """The run's compute precision: an autocast context, and for fp16 a loss scaler."""

    def __init__(self, mode: str = "no", device_type: str = "cpu") -> None:
        if mode not in MODES:
            raise ConfigError(f"mixed precision {mode!r} is not one of {', '.join(MODES)}")
        self.mode, self.device_type = mode, device_type
        self.dtype: Optional[torch.dtype] = DTYPES.get(mode)
        self.scaler = torch.amp.GradScaler(device_type, **SCALER_KWARGS) if mode == "fp16" else None

    @classmethod
    def from_config(cls, config: Any, device: torch.device) -> "Precision":
        return cls(resolve_mode(config.train.mixed_precision, device), device.type)

    def __repr__(self) -> str:
        return f"Precision({self.mode!r}, {self.device_type!r})"

    # ------------------------------------------------------------- forwards
    def autocast(self) -> contextlib.AbstractContextManager:
        """Around a forward (or generate): low-precision compute on the device; a no-op for 'no'."""
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)

    # ---------------------------------------------------- backward and step
    def scale(self, loss: torch.Tensor) -> torch.Tensor:
        """The loss to backpropagate: times the fp16 scale, else itself."""
        return loss if self.scaler is None else self.scaler.scale(loss)

    def unscale_(self, optimizer: torch.optim.Optimizer) -> None:
        """Divide `optimizer`'s gradients by the scale (before clipping); records overflows."""
        if self.scaler is not None:
            self.scaler.unscale_(optimizer)

    def overflow_is_scaler(self) -> bool:
        """Is a NaN / inf gradient with a finite loss the scaler's overflow (the scale is
        still coming down), rather than a real NaN / inf?"""
        return self.scaler is not None and self.scaler.get_scale() >= MIN_SCALE

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        if self.scaler is None:
            optimizer.step()
        else:
            self.scaler.step(optimizer)  # its gradients were checked finite by unscale_

    def update(self) -> None:
        """After an optimizer step or a skip: the scaler halves its scale after an
        overflow and grows it after `growth_interval` clean steps."""
        if self.scaler is not None:
            self.scaler.update()

    # ----------------------------------------------------------- checkpoint
    def state_dict(self) -> dict[str, Any]:
        return {"mode": self.mode, "scaler": None if self.scaler is None else self.scaler.state_dict()}

    def load_state_dict(self, state: Optional[dict[str, Any]]) -> None:
        """A checkpoint's scaler state (an older checkpoint, or one without a scaler: nothing to load)."""
        if self.scaler is not None and state and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])

    # --------------------------------------------------------------- checks
    def check_trained(self, params: Iterable[torch.Tensor], flag: str = "--model.dtype") -> None:
        """Warn (or refuse, for fp16 mixed precision) when the trained weights themselves are low precision."""
        dtypes = {p.dtype for p in params if p.requires_grad}
        low = sorted(str(d).replace("torch.", "") for d in dtypes if d in (torch.bfloat16, torch.float16))
        if not low:
            return
        if self.mode == "fp16":
            raise ConfigError(f"--train.mixed_precision fp16 needs float32 trained weights (the loss scaler unscales "
                              f"float32 gradients); set {flag} float32")
        effect = ("its Adam eps (1e-8) is 0 in float16, so weights with a zero gradient become NaN"
                  if "float16" in low else "at lr 1e-6 most updates round away (bf16 keeps 8 significant bits)")
        warnings.warn(f"{flag} {'/'.join(low)}: the trained weights, their gradients and Adam moments are "
                      f"{'/'.join(low)} (pure low precision): {effect}; for low-precision compute with float32 "
                      f"master weights use {flag} float32 --train.mixed_precision bf16", stacklevel=2)

    def attach(self, reward_fn: Any) -> None:
        """Run a reward model's forward (also inside a mix) under this precision's autocast."""
        for fn in [reward_fn] + [s[-1] for s in getattr(reward_fn, "sources", [])]:
            if hasattr(fn, "forward_context"):
                fn.forward_context = self.autocast


__all__ = ["DTYPES", "ENGINE_DTYPES", "MIN_SCALE", "MODES", "Precision", "SCALER_KWARGS", "check_engine_dtype",
           "compute_dtype_name", "engine_dtype", "probe_autocast", "resolve_mode"]
