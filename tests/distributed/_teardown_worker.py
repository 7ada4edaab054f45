"""2 gloo ranks under torchrun, for test_teardown.py: what remax's exit hook leaves behind.

    torchrun --nproc_per_node 2 _teardown_worker.py MODE OUT [TOKENIZER_DIR]

An observer registered with atexit BEFORE remax registers its hook runs AFTER it (atexit
is last in, first out) and writes OUT/exit-rank{r}.json: whether torch.distributed is still
initialised. Modes:
- trainer: a 1-step remax run (DDP through accelerate); the Trainer stays referenced
  (a script's global), so its DDP module still holds the group at exit;
- gloo: a bare group with remax's hook (`register_teardown`), collectives ending with
  all_gather_object (its tensors are the ones a worker thread freed during finalisation);
- late: as gloo, rank 1 then busy for 3 s while rank 0 exits: rank 0's exit barrier
  (timeout cut to 1 s) times out, warns, and destroys anyway;
- crash: rank 1's run raises inside `running()` while rank 0 stays busy for 30 s: rank 1
  must skip the barrier (its timeout left at 60 s) and exit at once (torchrun then stops rank 0).
"""

from __future__ import annotations

import atexit
import json
import os
import sys
import time
from pathlib import Path

import torch
import torch.distributed as td

sys.path.insert(0, str(Path(__file__).parent))


def observe(out: Path) -> None:
    rank = int(os.environ["RANK"])

    def write() -> None:
        (out / f"exit-rank{rank}.json").write_text(json.dumps({"initialized": td.is_initialized(), "t": time.time()}))

    atexit.register(write)


def collectives() -> None:
    for _ in range(5):
        td.all_reduce(torch.ones(100))
    gathered: list = [None] * td.get_world_size()
    td.all_gather_object(gathered, {"rank": td.get_rank()})


def bare(mode: str) -> None:
    from remax import teardown

    td.init_process_group("gloo")
    teardown.register_teardown()
    if mode == "late":
        teardown.BARRIER_TIMEOUT_S = 1.0  # rank 0 waits this long for rank 1, then warns
    collectives()
    if mode == "late" and td.get_rank() == 1:
        time.sleep(3)
    if mode == "crash":
        with teardown.running():
            if td.get_rank() == 1:
                raise RuntimeError("rank 1 failed")
            time.sleep(30)  # rank 0 busy: a barrier on rank 1 would wait for it


TRAINER = None  # kept alive to the end, as in a script that goes on using it


def trainer(out: Path, tok_dir: str) -> None:
    global TRAINER
    from _worker import PROMPTS, char_share, make_config

    from remax.models import load_tokenizer
    from remax.models.tiny import tiny_causal_lm
    from remax.trainer import Trainer

    tokenizer = load_tokenizer(tok_dir)
    config = make_config("remax", out / "run", steps=1)
    TRAINER = Trainer(config, policy=tiny_causal_lm(tokenizer, seed=0), tokenizer=tokenizer, reward_fn=char_share,
                      rows=[{"prompt": p} for p in PROMPTS])
    TRAINER.train()


def main(mode: str, out: str, tok_dir: str = "") -> None:
    torch.set_num_threads(1)
    observe(Path(out))
    if mode == "trainer":
        trainer(Path(out), tok_dir)
    else:
        bare(mode)


if __name__ == "__main__":
    main(*sys.argv[1:4])
