"""FSDP2 runs for test_fsdp.py: the _worker.py runs with --train.strategy fsdp.

    torchrun --nproc_per_node 2 _fsdp_worker.py ranks TOKENIZER_DIR OUT    # remax + ppo, 3 steps, FSDP (gloo)
    python _fsdp_worker.py reference TOKENIZER_DIR OUT                     # 1 process, the shard-seeded reference
    torchrun --nproc_per_node 2 _fsdp_worker.py killed TOKENIZER_DIR OUT   # remax, SIGKILL mid-checkpoint
    torchrun --nproc_per_node 2 _fsdp_worker.py resumed TOKENIZER_DIR OUT  # ... continued with --resume auto

`ranks` also checks, on the trained sharded policy, that generation runs on the full
weights (ranks decode different lengths under `Dist.generation`, no collective between
their forwards, the tokens equal an unsharded copy's) and saves what the vLLM push would
send (`plain_weights`) next to the gathered weights.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _worker import make_config, run, trainer_class  # noqa: E402  (the DDP tests' runs, same flags)


# bf16 autocast (fp32 master weights) with gradient checkpointing: the other compute path under FSDP
BF16 = dict(train__mixed_precision="bf16", train__gradient_checkpointing=True)


def fsdp_config(algo: str, out: Path, steps: int = 3, **train):
    config = make_config(algo, out, steps=steps, **train)
    config.train.strategy = "fsdp"
    return config


def full_weights(trainer) -> dict[str, torch.Tensor]:
    """Every trained tensor whole (a collective under FSDP: every rank calls it)."""
    from remax.trainer.distributed import full_named_tensors

    weights = {f"policy.{k}": v.clone() for k, v in full_named_tensors(trainer.policy)}
    if trainer.critic is not None:
        weights.update({f"critic.{k}": v.clone() for k, v in full_named_tensors(trainer.critic)})
    return weights


def check_generation(trainer, tokenizer) -> dict[str, torch.Tensor]:
    """Greedy decoding of one prompt on the sharded policy, rank r asking for 2 + 4r tokens
    (its forwards differ in number from the other rank's: a collective inside would hang),
    and the same on an unsharded copy built from the gathered weights."""
    from transformers import AutoConfig, AutoModelForCausalLM

    dist, policy = trainer.dist, trainer.policy
    weights = {k.removeprefix("policy."): v for k, v in full_weights(trainer).items() if k.startswith("policy.")}
    copy = AutoModelForCausalLM.from_config(AutoConfig.for_model(**policy.config.to_dict()))
    copy.load_state_dict(weights)
    ids = tokenizer(["The Lord is"], return_tensors="pt")
    kwargs = dict(max_new_tokens=2 + 4 * dist.rank, do_sample=False, pad_token_id=tokenizer.pad_token_id,
                  eos_token_id=None, min_new_tokens=2 + 4 * dist.rank)
    with torch.no_grad():
        with dist.generation("policy"):
            sharded = policy.generate(**ids, **kwargs)
        full = copy.eval().generate(**ids, **kwargs)
    out = {"sharded": sharded, "full": full}
    from remax.rollout.kernels import available, rollout_kernels

    if available():  # --rollout.hf_kernels onednn under FSDP: packed from the gathered weights, 4 rows
        rows = {k: v.repeat(4, 1) for k, v in ids.items()}
        with torch.no_grad():
            with dist.generation("policy"), rollout_kernels("onednn", policy, 4) as count:
                out["onednn"] = policy.generate(**rows, **kwargs)
            out["onednn_count"] = torch.tensor(count)
            out["onednn_full"] = copy.generate(**rows, **kwargs)
    return out


def main(mode: str, tok_dir: str, out: Path) -> None:
    from remax.models import load_tokenizer
    from remax.rollout.vllm import plain_weights

    torch.set_num_threads(1)  # 2 processes on a 2-core machine
    tokenizer = load_tokenizer(tok_dir)
    saved: dict = {}
    if mode == "reference":
        for algo in ("remax", "ppo"):
            config = make_config(algo, out / f"{algo}-reference", steps=3)
            trainer, saved[algo], history = run(config, trainer_class(True), tokenizer)
            saved[algo + "/loss"] = torch.tensor([h["loss/policy"] for h in history])
        config = make_config("remax", out / "bf16-reference", steps=2, **BF16)
        _, saved["bf16"], _ = run(config, trainer_class(True), tokenizer)
    elif mode == "ranks":
        for algo in ("remax", "ppo"):
            trainer, _, history = run(fsdp_config(algo, out / f"{algo}-ranks", log__save_every=2), trainer_class(False),
                                      tokenizer)
            saved[algo] = full_weights(trainer)
            saved[algo + "/loss"] = torch.tensor([h["loss/policy"] for h in history])
            if algo == "remax":
                saved["generation"] = check_generation(trainer, tokenizer)
                saved["pushed"] = plain_weights(trainer.policy)  # what the vLLM backend's sync sends
                saved["local"] = {k: v.to_local().clone() for k, v in trainer.policy.state_dict().items()}
        trainer, _, _ = run(fsdp_config("remax", out / "bf16-ranks", steps=2, **BF16), trainer_class(False), tokenizer)
        saved["bf16"] = full_weights(trainer)
    elif mode == "killed":  # rank 0 dies once step-2's shards are staged, before the checkpoint is complete
        import remax.trainer.phases.persist as persist

        def die(path, **kwargs):
            if path.name == "step-2":
                os.kill(os.getpid(), signal.SIGKILL)
            return original(path, **kwargs)

        original, persist.write_checkpoint = persist.write_checkpoint, die
        run(fsdp_config("remax", out / "remax-killed", log__save_every=1), trainer_class(False), tokenizer)
        raise AssertionError("the run was to be killed at step 2")
    elif mode == "resumed":
        config = fsdp_config("remax", out / "remax-killed", log__save_every=1)
        config.resume = "auto"
        trainer, _, _ = run(config, trainer_class(False), tokenizer)
        saved["remax"] = full_weights(trainer)
    else:
        raise SystemExit(f"unknown mode {mode!r}")
    if mode == "reference" or trainer.dist.is_main:
        torch.save(saved, out / f"fsdp-{mode}.pt")
    elif mode == "ranks":  # rank 1's view of the push too: every rank's engine needs the whole tensors
        torch.save({"pushed": saved["pushed"], "generation": saved["generation"]}, out / "fsdp-ranks-1.pt")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], Path(sys.argv[3]))
