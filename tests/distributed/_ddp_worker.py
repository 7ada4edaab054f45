"""2 ranks (torchrun, gloo, DDP through accelerate): which backwards all-reduce, and how
many logits the update's forwards produce behind the DDP wrapper. Used by test_ddp_efficiency.py.

    torchrun --nproc_per_node 2 _ddp_worker.py TOKENIZER_DIR OUT MIXED_PRECISION

Each rank has 4 sampled rows (2 prompts x 2 samples) and micro-batches of 1: 4 backwards
per optimizer step, 2 steps. A DDP comm hook (the default all-reduce, counted) records in
which backward it ran; forward hooks record the lm-head's output length and the input's.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _worker import PROMPTS, char_share, make_config  # noqa: E402


def main(tok_dir: str, out: str, mixed_precision: str) -> None:
    from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook
    from torch.nn.parallel import DistributedDataParallel as DDP

    from remax.models import load_tokenizer
    from remax.models.tiny import tiny_causal_lm
    from remax.trainer import Trainer

    torch.set_num_threads(1)
    tokenizer = load_tokenizer(tok_dir)
    config = make_config("remax", Path(out) / "run", steps=2, train__micro_batch_size=1,
                         train__mixed_precision=mixed_precision)
    trainer = Trainer(config, policy=tiny_causal_lm(tokenizer, seed=0), tokenizer=tokenizer, reward_fn=char_share,
                      rows=[{"prompt": p} for p in PROMPTS])
    ddp = trainer.trained["policy"]
    assert isinstance(ddp, DDP), type(ddp)
    log = {"backwards": 0, "allreduce_in": [], "update_forwards": []}

    backward = trainer.dist.backward

    def counted_backward(loss):
        backward(loss)
        log["backwards"] += 1

    trainer.dist.backward = counted_backward

    def hook(state, bucket):
        log["allreduce_in"].append(log["backwards"])  # the index of the backward this bucket belongs to
        return allreduce_hook(state, bucket)

    ddp.register_comm_hook(torch.distributed.group.WORLD, hook)
    inner = ddp.module
    seen = {}
    inner.register_forward_pre_hook(
        lambda m, args, kwargs: seen.update(length=kwargs["input_ids"].shape[1], keep=kwargs.get("logits_to_keep")),
        with_kwargs=True)
    inner.lm_head.register_forward_hook(
        lambda m, i, o: log["update_forwards"].append([seen["length"], seen["keep"], list(o.shape)])
        if torch.is_grad_enabled() else None)
    trainer.train()
    log["world"] = trainer.dist.world
    (Path(out) / f"ddp-rank{trainer.dist.rank}.json").write_text(json.dumps(log))


if __name__ == "__main__":
    main(*sys.argv[1:4])
