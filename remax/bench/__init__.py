"""`remax bench`: the paper's claims measured on this code, by one command each.

    remax bench speed     step time of every algorithm (and TRL's GRPOTrainer), interleaved
    remax bench memory    peak memory of remax / reinforce / grpo / ppo at several sizes
    remax bench quality   reward and KL curves, the reward-KL frontier, gradient variance

Each subcommand lives in its own module with a `main(argv) -> int`."""

from __future__ import annotations

import importlib
import sys
from typing import Sequence

SUBCOMMANDS = {
    "speed": "remax.bench.speed",
    "memory": "remax.bench.memory",
    "quality": "remax.bench.quality",
}

USAGE = """usage: remax bench {speed,memory,quality} [OPTIONS]

  speed     median step time and its split for every algorithm, ratios to PPO and
            REINFORCE, each phase against its FLOP floor, and TRL's GRPOTrainer
  memory    peak memory of remax / reinforce / grpo / ppo at several model sizes
  quality   reward and KL curves over seeds, the reward-KL frontier, gradient variance;
            --task vader (the demo), arithmetic (exact match) or rm (a learned proxy + gold)

`remax bench SUBCOMMAND --help` lists its options."""


def main(argv: Sequence[str]) -> int:
    from remax.errors import InputError

    argv = list(argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0
    name, rest = argv[0], argv[1:]
    if name not in SUBCOMMANDS:
        raise InputError(f"unknown bench {name!r}; choose one of: {', '.join(SUBCOMMANDS)}")
    return importlib.import_module(SUBCOMMANDS[name]).main(rest)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
