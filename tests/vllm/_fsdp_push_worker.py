"""What a vLLM push of an FSDP-sharded policy sends, for test_fsdp_push.py (2 gloo processes):

    torchrun --nproc_per_node 2 _fsdp_push_worker.py SEED OUT.pt

varied_model(seed) is sharded with remax's own `shard_model` (fully_shard per block and root),
then rank 0 saves `plain_weights(model)` (what VLLMBackend.push sends: each shard gathered
whole by `full_named_tensors`) and, for the failing case, what the push would hold without
the gather: rank 0's own shard of every tensor (its first rows; FSDP2 shards dim 0), the
other rank's rows zero. Every rank must run the gather (a collective per tensor)."""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).parent))
from vllm_toy import toy_tokenizer, varied_model  # noqa: E402


def main(seed: int, out: str) -> None:
    from remax.rollout.vllm import plain_weights
    from remax.teardown import register_teardown
    from remax.trainer.distributed import shard_model

    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    register_teardown()  # remax's exit hook: a bounded barrier, then the group destroyed (remax/teardown.py)
    model = varied_model(toy_tokenizer(), seed=seed)
    shard_model(model)
    pushed = plain_weights(model)
    own = {}
    for name, shard in model.state_dict().items():
        local = shard.to_local().detach()
        own[name] = torch.zeros(shard.shape, dtype=local.dtype)
        own[name][: local.shape[0]] = local  # rank 0's rows are the first ones
    if dist.get_rank() == 0:
        torch.save({"pushed": pushed, "own_shard": own}, out)


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2])
