"""DeepSpeed ZeRO-2 / ZeRO-3 through accelerate, on GPUs and on CPU (gloo).

    accelerate launch --config_file configs/accelerate/deepspeed_zero2.yaml --num_processes 2 \\
        -m remax train --config run.yaml --train.micro_batch_size <rows per rank> --log.save_every 0

What `AccelerateDist` needs beyond accelerate's defaults, found by running it on CPU:
- `Accelerator(cpu=True)` ignores a DeepSpeed config and silently builds DDP (distributed
  type MULTI_CPU): a DeepSpeed launch must pass cpu=False;
- with cpu=False and no GPU accelerate picks no process-group backend and reports 1
  process on every rank (each rank then believes it is rank 0 of 1): on CPU the backend
  is named, gloo (DeepSpeed's CPU accelerator's backend);
- accelerate asks for `train_micro_batch_size_per_gpu` (it reads it from a DataLoader,
  and remax has none): it is the rank's rows per backward. DeepSpeed only counts with it
  (remax steps once per backward: micro_batch_size >= the rank's rows, checked).
"""

from __future__ import annotations

import os
from typing import Any

import torch

from remax.config import ConfigError


def deepspeed_launch() -> bool:
    """Did `accelerate launch` start this process under a DeepSpeed config?"""
    return os.environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() in ("1", "true")


def accelerator_kwargs(config: Any) -> dict[str, Any]:
    """Keyword arguments of the run's `Accelerator`: DDP on CPU for a CPU run, else
    accelerate's choice; a DeepSpeed launch keeps DeepSpeed, on CPU with gloo."""
    on_cpu = config.model.device == "cpu" or not torch.cuda.is_available()
    if not deepspeed_launch():
        return {"cpu": on_cpu}
    try:
        import deepspeed  # noqa: F401
    except ImportError:
        raise ConfigError("the accelerate config asks for DeepSpeed, which is not installed: pip install deepspeed, "
                          "or launch with configs/accelerate/ddp.yaml") from None
    if config.train.mixed_precision == "fp16":
        raise ConfigError("DeepSpeed runs fp32 or --train.mixed_precision bf16 here: fp16's loss scaler would sit "
                          "outside DeepSpeed's engine; use bf16 (or no), or configs/accelerate/ddp.yaml for fp16")
    if not on_cpu:
        return {"cpu": False}
    from accelerate.utils import InitProcessGroupKwargs

    return {"cpu": False, "kwargs_handlers": [InitProcessGroupKwargs(backend="gloo")]}


def configure(accelerator: Any, rows: int) -> None:
    """After the `Accelerator` exists, before any model is loaded: tell DeepSpeed the
    rank's rows per backward (accelerate cannot find it without a DataLoader;
    train_batch_size follows from it in prepare), and under ZeRO-3 keep models loaded in
    full. accelerate registers its DeepSpeed config with transformers even when
    zero3_init_flag is false, and from_pretrained then partitions every model it loads
    (zero.Init: a 0-row embedding on each rank), the frozen reference too, which remax runs
    outside DeepSpeed's engine; prepare partitions the trained models itself."""
    plugin = accelerator.state.deepspeed_plugin
    if plugin is None:
        return
    plugin.deepspeed_config["train_micro_batch_size_per_gpu"] = int(rows)
    if plugin.zero3_init_flag:
        raise ConfigError("zero3_init_flag: true partitions every model loaded after launch, the frozen reference "
                          "too, which remax runs outside DeepSpeed's engine; set zero3_init_flag: false in the "
                          "accelerate config")
    from transformers.integrations import unset_hf_deepspeed_config

    unset_hf_deepspeed_config()


def check_trained(models: dict[str, Any]) -> None:
    """accelerate drives one DeepSpeed engine per backward: a second trained model (PPO's
    critic) would get gradients that its engine never steps (measured: the critic's
    logged norm was the policy's and the weights left DDP's by 3e-3 after 2 steps)."""
    trained = sorted(name for name, model in models.items() if model is not None)
    if len(trained) > 1:
        raise ConfigError(f"DeepSpeed through accelerate steps one engine per backward, and this run trains "
                          f"{' and '.join(trained)}; use --train.strategy fsdp or configs/accelerate/ddp.yaml")


__all__ = ["accelerator_kwargs", "check_trained", "configure", "deepspeed_launch"]
