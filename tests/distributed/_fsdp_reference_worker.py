"""FSDP runs for test_fsdp_reference.py: the sharded reference model, and LoRA under FSDP.

    torchrun --nproc_per_node 2 _fsdp_reference_worker.py ranks TOKENIZER_DIR OUT   # FSDP (gloo)
    python _fsdp_reference_worker.py reference TOKENIZER_DIR OUT                    # 1 process, shard-seeded

Two remax runs of 4 steps each (a checkpoint at step 2) (the _worker.py flags: lr 3e-3, uneven micro-batches) with
a KL penalty that matters (kl_coef 0.2, on the per-token reward): `kl`, full fine-tuning,
where the reference is a frozen copy that FSDP shards like the policy; `lora`, --lora.r 8
with --lora.save_merged, where the reference is the policy's own base (adapters off).
Each rank saves what it saw of the reference (its parameters' types and local sizes,
and the whole weights gathered after training), the histories, the gathered weights and
what the vLLM push would send; with 2 ranks the LoRA run is also resumed from step 2.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _worker import SEED_OFFSET, make_config, run, trainer_class  # noqa: E402

RUNS = {"kl": dict(loss__kl_coef=0.2), "lora": dict(loss__kl_coef=0.2, lora__r=8, lora__save_merged=True)}
LOGGED = ("kl/mean", "loss/policy")
STEPS = 4  # step 1's rewards are all 0 (the random model's first responses): 3 updates, KL grows from step 2


def reference_layout(reference) -> dict:
    """This rank's view of the reference's parameters: how many are DTensors, and the
    numbers of entries held here against the whole model's."""
    from torch.distributed.tensor import DTensor

    params = list(reference.parameters())
    local = sum((p.to_local() if isinstance(p, DTensor) else p).numel() for p in params)
    return {"dtensors": sum(isinstance(p, DTensor) for p in params), "params": len(params), "local": local,
            "full": sum(p.numel() for p in params)}


def main(mode: str, tok_dir: str, out: Path) -> None:
    from _fsdp_worker import full_weights

    from remax.models import load_tokenizer
    from remax.rollout.vllm import plain_weights
    from remax.trainer.distributed import full_named_tensors

    torch.set_num_threads(1)  # 2 processes on a 2-core machine
    tokenizer = load_tokenizer(tok_dir)
    ranks = mode == "ranks"
    from remax.models.tiny import tiny_causal_lm

    saved: dict = {"init": tiny_causal_lm(tokenizer, seed=SEED_OFFSET).state_dict()}  # the policy each run starts from
    for name, flags in RUNS.items():
        config = make_config("remax", out / f"{name}-{mode}", steps=STEPS, log__save_every=2, **flags)
        config.train.strategy = "fsdp"  # one process ignores it
        trainer, weights, history = run(config, trainer_class(not ranks), tokenizer)
        saved[name] = full_weights(trainer) if ranks else weights
        saved[name + "/history"] = {k: torch.tensor([h[k] for h in history]) for k in LOGGED}
        saved[name + "/pushed"] = plain_weights(trainer.policy)  # what a vLLM engine would load
        if name == "kl":
            saved["kl/layout"] = reference_layout(trainer.reference)
            saved["kl/reference"] = {k: v.clone() for k, v in full_named_tensors(trainer.reference)}
    if ranks:  # the LoRA run again from its step-2 checkpoint (sharded: the adapters, the base and Adam's moments)
        config = make_config("remax", out / "lora-resumed", steps=STEPS, **RUNS["lora"])
        config.train.strategy, config.resume = "fsdp", str(out / "lora-ranks" / "checkpoints" / "step-2")
        trainer, _, _ = run(config, trainer_class(False), tokenizer)
        saved["lora-resumed"] = full_weights(trainer)
    rank = trainer.dist.rank
    if not ranks or rank == 0:
        torch.save(saved, out / f"fsdp-reference-{mode}.pt")
    else:
        torch.save({"kl/layout": saved["kl/layout"], "lora/pushed": saved["lora/pushed"]}, out / "fsdp-reference-ranks-1.pt")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], Path(sys.argv[3]))
