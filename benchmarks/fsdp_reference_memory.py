"""Per-rank memory of an FSDP run with the reference sharded (now) or whole on each rank (before).

`--train.strategy fsdp` shards the frozen reference like the policy (`FSDPDist.frozen`),
so each of W ranks holds 1/W of its weights instead of a whole copy: on a model of N
fp32 parameters, 4N (W - 1) / W bytes less per rank. This script measures it on CPU: 2
gloo ranks (torchrun) train 2 remax steps of a random GPT-2 (8 layers, width 512: 25.4M
parameters, so the reference is 97 MiB and half of it 48.5 MiB), once as remax runs now
(`shard`) and once with `FSDPDist.frozen` replaced by the identity (`whole`: the
reference as it was before, a whole copy per rank). Each rank reports its RSS once the
Trainer is built (models loaded and sharded) and the highest RSS sampled every 5 ms
during `train()`. Runs are interleaved (whole, shard, whole, shard, ...) and the medians
over runs and ranks are printed.

glibc keeps the memory of freed tensors for reuse unless they were mmapped, so by default
a process's RSS is the high-water mark of everything it ever freed; the runs set
MALLOC_MMAP_THRESHOLD_=131072 (a fixed threshold: every tensor over 128 KiB is mmapped
and returned to the system when freed), so that RSS follows the live tensors. Without it
the set-up figure moves the same way and the peaks drown in the allocator's slack.

    .venv/bin/python benchmarks/fsdp_reference_memory.py --repeats 2

The machine is shared (2 cores, other jobs running): figures are RSS, not timings, and
move by a few MiB between runs.
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

WORKER = r'''
import sys, threading, time
from pathlib import Path
import torch
sys.path.insert(0, sys.argv[4])
from _worker import PROMPTS, char_share, make_config

def rss_mb():
    return int(open("/proc/self/statm").read().split()[1]) * 4096 / 2**20

torch.set_num_threads(1)
from remax.models.tiny import tiny_causal_lm, train_tokenizer
from remax.trainer import Trainer
from remax.trainer.distributed import FSDPDist
from conftest import CORPUS

if sys.argv[1] == "whole":
    FSDPDist.frozen = lambda self, name, model: model  # before: the reference whole on every rank
tokenizer = train_tokenizer(CORPUS, vocab_size=300)
policy = tiny_causal_lm(tokenizer, n_layer=8, n_embd=512, n_head=8, seed=0)
config = make_config("remax", Path(sys.argv[2]), steps=2)
config.train.strategy = "fsdp"
trainer = Trainer(config, policy=policy, tokenizer=tokenizer, reward_fn=char_share, rows=[{"prompt": p} for p in PROMPTS])
built = peak = rss_mb()
done = threading.Event()

def sample():
    global peak
    while not done.is_set():
        peak = max(peak, rss_mb())
        time.sleep(0.005)

thread = threading.Thread(target=sample, daemon=True)
thread.start()
trainer.train()
done.set()
thread.join()
n = sum(p.numel() for p in policy.parameters())
print(f"RESULT {sys.argv[1]} {trainer.dist.rank} {n} {built:.1f} {peak:.1f}", flush=True)
'''


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(mode: str, tmp: Path) -> list[tuple[int, float, float]]:
    """One 2-rank launch: [(params, RSS after set-up, peak RSS during train)] per rank, in MiB."""
    root = Path(__file__).resolve().parent.parent
    script = tmp / "worker.py"
    script.write_text(WORKER)
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               MALLOC_MMAP_THRESHOLD_="131072", PYTHONPATH=f"{root / 'tests'}{os.pathsep}{root}")
    out = tempfile.mkdtemp(dir=tmp)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(free_port()), str(script), mode, str(Path(out) / "run"), "", str(root / "tests" / "distributed")]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    found = re.findall(r"RESULT (\w+) (\d) (\d+) ([\d.]+) ([\d.]+)", proc.stdout + proc.stderr)
    if proc.returncode != 0 or len(found) != 2:
        raise SystemExit(f"{mode} run failed:\n{(proc.stdout + proc.stderr)[-3000:]}")
    return [(int(n), float(built), float(peak)) for _, _, n, built, peak in found]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    results: dict[str, list[tuple[int, float, float]]] = {"whole": [], "shard": []}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.repeats):
            for mode in results:
                results[mode] += run(mode, Path(tmp))
    params = results["shard"][0][0]
    print(f"2 FSDP ranks (gloo, CPU), GPT-2 8 x 512, {params / 1e6:.1f}M parameters: the fp32 reference is "
          f"{4 * params / 2**20:.1f} MiB, half of it {2 * params / 2**20:.1f} MiB; {args.repeats} launch(es) each, "
          "medians over launches and ranks (MiB)")
    print(f"{'reference':<28} {'RSS after set-up':>18} {'peak RSS in train()':>20}")
    for mode, label in (("whole", "whole on each rank (before)"), ("shard", "sharded (now)")):
        rows = results[mode]
        print(f"{label:<28} {statistics.median(r[1] for r in rows):>18.0f} {statistics.median(r[2] for r in rows):>20.0f}")
    for i, name in ((1, "after set-up"), (2, "peak in train()")):
        diff = statistics.median(r[i] for r in results["whole"]) - statistics.median(r[i] for r in results["shard"])
        print(f"saved per rank, {name}: {diff:.0f} MiB")


if __name__ == "__main__":
    main()
