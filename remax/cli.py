"""`remax` command line: `remax train` and `remax demo`.

    remax train --config run.yaml --algo remax --rollout.temperature 0.7
    remax demo

Options come from the typed config dataclasses (remax/config.py): a YAML file given with
--config sets them first, dotted flags override it. Every flag's help is its field's
docstring, so `remax train --help` is always in step with the code.
"""

from __future__ import annotations

import sys
from typing import Callable, Optional, Sequence

from remax.errors import InputError, RemaxError

USAGE = """usage: remax COMMAND [OPTIONS]

Align a causal language model with ReMax (or reinforce, rloo, grpo, ppo).

commands:
  train   train a policy: remax train --config run.yaml [--section.field VALUE ...]
  bench   benchmarks: remax bench speed | memory | quality (the paper's claims, measured)
  demo    offline demo: pretrain a tiny GPT-2 on the KJV Bible, then ReMax it
          towards positive sentiment and print a before/after table

`remax COMMAND --help` lists a command's options."""


class UsageError(InputError):
    pass


def split_config_flag(args: Sequence[str]) -> tuple[Optional[str], list[str]]:
    """Take `--config PATH` (or `--config=PATH`) out of the arguments."""
    rest, path, it = [], None, iter(args)
    for a in it:
        if a == "--config":
            path = next(it, None)
            if path is None:
                raise UsageError("--config needs a path to a YAML file")
        elif a.startswith("--config="):
            path = a.split("=", 1)[1]
        else:
            rest.append(a)
    return path, rest


def parse_train_args(args: Sequence[str]):
    """YAML (if --config) then dotted overrides -> Config."""
    import tyro

    from remax.config import Config, load_config

    path, rest = split_config_flag(args)
    default = load_config(path) if path else Config()
    return tyro.cli(
        Config,
        default=default,
        args=rest,
        prog="remax train",
        description="Train a policy with remax | reinforce | rloo | grpo | ppo. "
        "Options: --config run.yaml first, then any --section.field VALUE.",
        use_underscores=True,
        config=(tyro.conf.FlagConversionOff,),
    )


def cmd_train(args: Sequence[str]) -> int:
    from remax.trainer import Trainer

    config = parse_train_args(args)
    trainer = Trainer(config)
    history = trainer.train()
    last = history[-1]
    print(
        f"done: {len(history)} steps, reward {history[0]['rollout/reward_mean']:.4f} -> "
        f"{last['rollout/reward_mean']:.4f}; wrote {config.output_dir}/final"
    )
    return 0


def cmd_demo(args: Sequence[str]) -> int:
    import tyro

    from remax.demo import DemoConfig, run_demo

    config = tyro.cli(
        DemoConfig,
        args=list(args),
        prog="remax demo",
        description="Offline ReMax demo: no downloads, a few minutes on a laptop CPU.",
        use_underscores=True,
        config=(tyro.conf.FlagConversionOff,),
    )
    run_demo(config)
    return 0


def cmd_bench(args: Sequence[str]) -> int:
    from remax.bench import main as bench_main

    return bench_main(args)


COMMANDS: dict[str, Callable[[Sequence[str]], int]] = {"train": cmd_train, "bench": cmd_bench, "demo": cmd_demo}


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"remax: unknown command {command!r}; choose one of: {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    try:
        return COMMANDS[command](rest)
    except RemaxError as err:
        print(f"remax {command}: error: {err}", file=sys.stderr)
        return err.exit_code


if __name__ == "__main__":
    sys.exit(main())
