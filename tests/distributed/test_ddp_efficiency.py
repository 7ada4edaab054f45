"""DDP efficiency, 2 ranks on gloo: one gradient all-reduce per optimizer step (`no_sync`
on the accumulation micro-batches), and logits for the response positions only behind
the DDP wrapper (`logits_to_keep` passed through to the model's forward)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from .test_equivalence import _env, free_port

pytestmark = pytest.mark.slow
HERE = Path(__file__).parent


@pytest.mark.parametrize("mixed_precision", ["no", "bf16"])
def test_one_allreduce_per_optimizer_step_and_response_logits_only(tmp_path, tokenizer, mixed_precision):
    tokenizer.save_pretrained(tmp_path / "tok")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(free_port()), str(HERE / "_ddp_worker.py"), str(tmp_path / "tok"), str(tmp_path),
           mixed_precision]
    done = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    for rank in (0, 1):
        log = json.loads((tmp_path / f"ddp-rank{rank}.json").read_text())
        assert log["world"] == 2
        # 2 steps x 4 micro-batches of 1 row: backwards 1..8; the buckets all-reduce in backwards 4 and 8 only
        assert log["backwards"] == 8
        assert log["allreduce_in"] and set(log["allreduce_in"]) == {3, 7}  # counted before the increment
        buckets = len(log["allreduce_in"]) // 2
        assert log["allreduce_in"] == [3] * buckets + [7] * buckets
        # every update forward (through DDP) kept R + 1 positions: no (prompt + response) x vocabulary logits
        assert len(log["update_forwards"]) == 8
        for length, keep, shape in log["update_forwards"]:
            assert keep is not None and shape[1] == keep < length, (length, keep, shape)
            assert shape[2] == len(tokenizer)
