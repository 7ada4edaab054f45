"""`remax` command line: `remax train` and `remax demo`.

    remax train --config run.yaml --algo remax --rollout.temperature 0.7
    remax demo

Options come from the typed config dataclasses (remax/config.py): a YAML file given with
--config sets them first, dotted flags override it. Every flag's help is its field's
docstring, so `remax train --help` is always in step with the code.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

from remax.errors import InputError, RemaxError

USAGE = """usage: remax COMMAND [OPTIONS]

Align a causal language model with ReMax, or one of the algorithms users compare it with
(reinforce, rloo, grpo, ppo, reinforce_pp, dr_grpo, dapo, gspo, cispo, ...: `remax train --help`).

commands:
  train   train a policy: remax train --config run.yaml [--section.field VALUE ...]
  bench   benchmarks: remax bench speed | memory | quality (the paper's claims, measured)
  plan    peak memory per device before launching, and what to change if it does not fit:
          remax plan --model PATH --algo remax --batch 8 --max-new-tokens 256 [--zero 3 --gpus 8]
  serve-reward  serve a reward over HTTP for --reward.kind http:
          remax serve-reward --kind python --function reward.py:score [--port 8000 --token T]
  serve-rollout  a vLLM engine in its own process for --rollout.backend vllm_server:
          remax serve-rollout --model PATH [--port 8100 --cpus 0]
  eval    compare a policy with a reference on held-out prompts:
          remax eval --policy PATH --reference PATH --data FILE --reward.kind vader
  sft     supervised fine-tuning on prompt/completion or chat rows (the pipeline's step 1):
          remax sft --model PATH --train_file sft.jsonl --output_dir runs/sft
  rm      a Bradley-Terry reward model on preference pairs (step 2), for --reward.kind model:
          remax rm --model runs/sft/final --train_file pairs.jsonl --output_dir runs/rm
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
    """Defaults < --preset NAME < YAML (if --config) < dotted overrides -> Config. A bad flag
    is one UsageError line (tyro's own multi-line message is summarised); `--help` prints
    and exits 0 as usual."""
    from remax.config import Config, check_algo, from_dict, load_config
    from remax.presets import preset_base, split_preset_flag

    preset, rest = split_preset_flag(args)
    path, rest = split_config_flag(rest)
    base = preset_base(preset)
    default = load_config(path, base=base) if path else from_dict(Config, base)
    config = run_tyro(Config, rest, default=default, prog="remax train", description=train_description(preset))
    check_algo(config.algo)  # --algo NAME: a registered algorithm, or one line with the closest
    return config


def train_description(preset: Optional[str] = None) -> str:
    """`remax train --help`'s header: every registered algorithm, one line each with its
    paper, the option precedence, and what --preset sets."""
    from remax.algos import get_algorithm, list_algorithms
    from remax.presets import PRESETS, describe

    lines = ["Train a policy with one of these algorithms (--algo NAME):"]
    lines += [f"  {get_algorithm(name).help_line()}" for name in list_algorithms()]
    lines += ["", f"Options: --preset NAME ({', '.join(PRESETS)}), then --config run.yaml, then any "
              "--section.field VALUE; each overrides the one before."]
    if preset:
        lines += ["", describe(preset)]
    lines += ["", LAUNCH_HELP]
    return "\n".join(lines)


def run_tyro(cls: type, args: Sequence[str], *, prog: str, description: str, default=None):
    """tyro.cli with its error box (stderr, then exit 2) turned into one UsageError line."""
    import tyro

    captured = io.StringIO()
    try:
        with contextlib.redirect_stderr(captured):
            return tyro.cli(
                cls,
                default=default,
                args=list(args),
                prog=prog,
                description=description,
                use_underscores=True,
                config=(tyro.conf.FlagConversionOff,),
            )
    except SystemExit as exit_:
        if not exit_.code:  # --help
            sys.stderr.write(captured.getvalue())
            raise
        raise UsageError(explain_bad_flags(cls, args) or summarise_tyro_error(captured.getvalue())) from None


def summarise_tyro_error(text: str) -> str:
    """tyro's error box -> one line: its message, and the flag it suggests, if any."""
    lines = [line.strip().strip("│").strip() for line in text.splitlines() if not line.lstrip().startswith(("╭", "╰"))]
    sections, current = [], []
    for line in lines:
        if line.startswith("──") or not line:
            if current:
                sections.append(current)
            current = []
        else:
            current.append(line)
    sections.append(current)
    sections = [s for s in sections if s and not s[0].startswith(("For full helptext", "Argument helptext"))]
    message = " ".join(sections[0]).rstrip(".") if sections else "could not parse the command line"
    for section in sections[1:]:
        if section[0].startswith("Perhaps you meant"):
            message += f"; did you mean {section[1].split()[0]}?"
    return f"{message}; see --help"


def explain_bad_flags(cls: type, args: Sequence[str]) -> Optional[str]:
    """The first bad flag or value in `args` as one line (unknown flag with the closest
    name, a value of the wrong type, a missing or extra value), or None if none is found."""
    from remax.config import Config, ConfigError, all_keys, closest, coerce, nearest_key, type_name

    keys = all_keys(cls)
    args = list(args)
    i = 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--"):
            return f"unexpected argument {arg!r}; options look like --section.field VALUE (see --help)"
        name, eq, inline = arg[2:].partition("=")
        name = name.replace("-", "_")
        if name not in keys:
            near = nearest_key(name) if cls is Config else closest(name, keys)
            hint = f"did you mean --{near}?" if near else "see --help for the options"
            return f"unknown option --{name}; {hint}"
        tp = keys[name]
        want = len(getattr(tp, "__args__", ())) if getattr(tp, "__origin__", None) is tuple else 1
        many = "list[" in str(tp)  # --lora.target_modules a b c: every value up to the next flag
        values = [inline] if eq else []
        i += 1
        while not eq and i < len(args) and not args[i].startswith("--") and (many or len(values) < want):
            values.append(args[i])
            i += 1
        if len(values) < want:
            return f"--{name} needs {'a value' if want == 1 else f'{want} values'} ({type_name(tp)})"
        try:
            coerce(values if want > 1 or many else values[0], tp, f"--{name}", flag=True)
        except ConfigError as err:
            return str(err)
    return None


LAUNCH_HELP = """Launching several processes (launcher flags, read before the config options below):
  --num_processes N     processes in all (accelerate's meaning); with --nnodes M, N/M on each node
                        (default: one per node). torchrun underneath: gloo on CPU, NCCL on GPUs
  --nnodes M            machines (nodes) in the run; run the same command on each, with its own
                        --node_rank. Every node must reach --master_addr:--master_port
  --node_rank R         this node's index, 0..M-1; node 0 holds global rank 0, the only writer
  --master_addr HOST    address of node 0 (required with --nnodes > 1)
  --master_port P       a free TCP port on node 0 (default 29500)
  How the processes share the model: --train.strategy ddp (full weights on each) or fsdp
  (FSDP2: weights, gradients and Adam moments sharded; sharded checkpoints), see below."""


@dataclass(frozen=True)
class Launch:
    """What `remax train` relaunches itself as (torchrun's arguments); world = nnodes * nproc_per_node."""

    num_processes: int = 1
    nnodes: int = 1
    node_rank: int = 0
    master_addr: Optional[str] = None
    master_port: int = 29500

    @property
    def nproc_per_node(self) -> int:
        return self.num_processes // self.nnodes

    @property
    def relaunch(self) -> bool:
        return self.num_processes > 1

    def torchrun_args(self) -> list[str]:
        if self.nnodes == 1:
            return ["--standalone", "--nproc_per_node", str(self.nproc_per_node)]
        return ["--nnodes", str(self.nnodes), "--node_rank", str(self.node_rank), "--nproc_per_node",
                str(self.nproc_per_node), "--master_addr", str(self.master_addr), "--master_port", str(self.master_port)]


_LAUNCH_FLAGS = ("num_processes", "nnodes", "node_rank", "master_addr", "master_port")


def split_launch_flags(args: Sequence[str]) -> tuple[Launch, list[str]]:
    """Take the launcher's flags (LAUNCH_HELP) out of the arguments and check them together:
    each a bad value or a bad combination is one UsageError line, before anything starts."""
    rest, found, it = [], {}, iter(args)
    for a in it:
        name, eq, inline = a[2:].partition("=") if a.startswith("--") else ("", "", "")
        if name not in _LAUNCH_FLAGS:
            rest.append(a)
            continue
        value = inline if eq else next(it, None)
        if value is None or value.startswith("--"):
            raise UsageError(f"--{name} needs a value")
        found[name] = value

    def integer(name: str, low: int, high: Optional[int] = None) -> Optional[int]:
        value = found.get(name)
        if value is None:
            return None
        if not value.isdigit() or int(value) < low or (high is not None and int(value) > high):
            want = {0: "a non-negative integer", 1: "a positive integer"}[low] if high is None else f"an integer in {low}..{high}"
            raise UsageError(f"--{name} needs {want}, got {value!r}")
        return int(value)

    nnodes = integer("nnodes", 1) or 1
    n = integer("num_processes", 1) or nnodes
    node_rank = integer("node_rank", 0)
    port = integer("master_port", 1, 65535)
    addr = found.get("master_addr")
    if nnodes == 1:
        if node_rank:
            raise UsageError(f"--node_rank {node_rank} needs --nnodes > {node_rank}")
        return Launch(num_processes=n, master_addr=addr, master_port=port or 29500), rest
    if n % nnodes:
        raise UsageError(f"--num_processes {n} (processes in all) does not divide over --nnodes {nnodes}; "
                         f"pass a multiple of {nnodes}, or leave it out for one process per node")
    if node_rank is None:
        raise UsageError(f"--nnodes {nnodes} needs --node_rank (0..{nnodes - 1}, a different one on each node)")
    if node_rank >= nnodes:
        raise UsageError(f"--node_rank {node_rank} is out of range for --nnodes {nnodes} (0..{nnodes - 1})")
    if not addr:
        raise UsageError(f"--nnodes {nnodes} needs --master_addr (the address of node 0, reachable from every node)")
    return Launch(n, nnodes, node_rank, addr, port or 29500), rest


def split_num_processes(args: Sequence[str]) -> tuple[int, list[str]]:
    """Take `--num_processes N` (and the other launcher flags) out of the arguments; 1 if absent."""
    launch, rest = split_launch_flags(args)
    return launch.num_processes, rest


def relaunch(command: str, launch: Launch, args: Sequence[str], output_dir: str) -> int:
    """`remax COMMAND args` again under torchrun with `launch`'s processes (the flags were
    checked once, here); only node 0 checks the lock, as only global rank 0 writes."""
    import subprocess

    from remax.trainer.lock import check_unlocked

    if launch.node_rank == 0:
        check_unlocked(Path(output_dir))
    cmd = [sys.executable, "-m", "torch.distributed.run", *launch.torchrun_args(), "-m", "remax", command, *args]
    return subprocess.call(cmd)


def cmd_train(args: Sequence[str]) -> int:
    launch, args = split_launch_flags(args)
    if launch.relaunch and not os.environ.get("WORLD_SIZE"):  # the shortcut: relaunch this command under torchrun
        from remax.trainer.validate import preflight

        # every flag checked here, once, before torchrun starts processes that would each print it
        config = parse_train_args(args)
        preflight(config, world=launch.num_processes)
        return relaunch("train", launch, args, config.output_dir)
    from remax.trainer import Trainer
    from remax.trainer.lock import check_unlocked

    config = parse_train_args(args)
    if not os.environ.get("WORLD_SIZE"):
        check_unlocked(Path(config.output_dir))  # a run in progress there: refused before models load
    trainer = Trainer(config)
    history = trainer.train()
    last = history[-1]
    if trainer.dist.is_main:
        print(
            f"done: {len(history)} steps, reward {history[0]['rollout/reward_mean']:.4f} -> "
            f"{last['rollout/reward_mean']:.4f}; wrote {config.output_dir}/final"
        )
    return 0


def cmd_demo(args: Sequence[str]) -> int:
    from remax.demo import DemoConfig, run_demo

    if "--pipeline" in args:  # the whole pipeline: pretrain, pairs, remax rm, ReMax against the proxy
        from remax.demo.pipeline import PipelineConfig, run_pipeline

        config = run_tyro(
            PipelineConfig,
            [a for a in args if a != "--pipeline"],
            prog="remax demo --pipeline",
            description="The paper's pipeline offline: pretrain (cached), preference pairs of the model's own "
            "responses labelled by VADER (the gold reward), a Bradley-Terry reward model on them (the proxy), ReMax "
            "against the proxy, held-out proxy and gold reward along training and the over-optimisation plot "
            "(Gao et al. 2022). 3.6 minutes on an idle 2-core CPU from an empty cache, pretraining included "
            "(benchmarks/README.md, Issue 18); several times that on a loaded machine.",
        )
        run_pipeline(config)
        return 0
    config = run_tyro(
        DemoConfig,
        args,
        prog="remax demo",
        description="Offline ReMax demo: no downloads, a few minutes on a laptop CPU. "
        "`remax demo --pipeline` runs the whole pipeline (pretrain, pairs, reward model, ReMax against it).",
    )
    run_demo(config)
    return 0


def cmd_bench(args: Sequence[str]) -> int:
    from remax.bench import main as bench_main

    return bench_main(args)


def cmd_serve_reward(args: Sequence[str]) -> int:
    from remax.rewards.server import ServeConfig, serve

    config = run_tyro(
        ServeConfig,
        args,
        prog="remax serve-reward",
        description="Serve a reward (python | model | vader) over HTTP: POST /score, GET /health. "
        "Trainers use it with --reward.kind http --reward.url http://HOST:PORT.",
    )
    serve(config)
    return 0


COMMANDS: dict[str, Callable[[Sequence[str]], int]] = {"train": cmd_train, "bench": cmd_bench, "demo": cmd_demo}
COMMANDS["serve-reward"] = cmd_serve_reward


def cmd_serve_rollout(args: Sequence[str]) -> int:
    from remax.rollout.server import ServeRolloutConfig, serve

    config = run_tyro(
        ServeRolloutConfig,
        args,
        prog="remax serve-rollout",
        description="A vLLM engine serving rollouts to one trainer: POST /generate (sampled and greedy rows in one "
        "request), weights pushed over torch.distributed, GET /health. Trainers use it with "
        "--rollout.backend vllm_server --rollout.server_url http://HOST:PORT.",
    )
    serve(config)
    return 0


COMMANDS["serve-rollout"] = cmd_serve_rollout


def cmd_plan(args: Sequence[str]) -> int:
    from remax.plan import main as plan_main

    return plan_main(args)


COMMANDS["plan"] = cmd_plan


def cmd_eval(args: Sequence[str]) -> int:
    from remax.eval import EvalConfig, run_eval

    config = run_tyro(
        EvalConfig,
        args,
        prog="remax eval",
        description="A policy against a reference (or two policies) on held-out prompts: rewards, "
        "win rate with a Wilson interval, KL per token, lengths, a side-by-side samples file.",
    )
    run_eval(config)
    return 0


COMMANDS["eval"] = cmd_eval


def parse_pipeline_args(cls: type, args: Sequence[str], *, prog: str, description: str):
    """Defaults < YAML (--config, keys as the flags' names) < flags -> a `cls` config."""
    from remax.config import from_dict

    path, rest = split_config_flag(args)
    default = from_dict(cls, _read_yaml(path)) if path else cls()
    return run_tyro(cls, rest, default=default, prog=prog, description=f"{description}\n\n{LAUNCH_HELP}")


def _read_yaml(path: str) -> dict:
    import yaml

    from remax.config import ConfigError

    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"config file {path!r} not found; pass an existing YAML file to --config")
    try:
        data = yaml.safe_load(file.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: YAML syntax error ({' '.join(str(err).split())[:200]})") from None
    return data or {}


def _pipeline(command: str, cls: type, run: Callable, args: Sequence[str], description: str) -> Optional[object]:
    """Parse, check, then run here or relaunch under torchrun (--num_processes N); the
    result of `run(config)` on rank 0 of the run, None elsewhere."""
    from remax.pipeline.common import check_config
    from remax.trainer.lock import check_unlocked

    launch, args = split_launch_flags(args)
    config = parse_pipeline_args(cls, args, prog=f"remax {command}", description=description)
    check_config(config)
    if launch.relaunch and not os.environ.get("WORLD_SIZE"):
        if config.batch_size % launch.num_processes:
            raise UsageError(f"--batch_size {config.batch_size} does not split over {launch.num_processes} processes; "
                             f"make it a multiple of {launch.num_processes}")
        raise SystemExit(relaunch(command, launch, args, config.output_dir))
    if not os.environ.get("WORLD_SIZE"):
        check_unlocked(Path(config.output_dir))  # a run in progress there: refused before models load
    result = run(config)
    return result if os.environ.get("RANK", "0") == "0" else None


def cmd_sft(args: Sequence[str]) -> int:
    from remax.pipeline.sft import SFTConfig, run_sft

    path = _pipeline("sft", SFTConfig, run_sft, args,
                     "Supervised fine-tuning of a causal LM on prompt/completion rows (loss on the completion only) or "
                     "chat rows ({\"messages\": [...]}, loss on the assistant turns). Writes OUTPUT_DIR/final, which "
                     "remax train --model.policy loads.")
    if path is not None:
        print(f"done: wrote {path}; next: remax rm --model {path} ... or remax train --model.policy {path}")
    return 0


def cmd_rm(args: Sequence[str]) -> int:
    from remax.pipeline.rm import RMConfig, run_rm

    result = _pipeline("rm", RMConfig, run_rm, args,
                       "A Bradley-Terry reward model, -log sigmoid(r_chosen - r_rejected - margin), on preference pairs "
                       "(chosen / rejected, with a prompt column or a shared beginning; strings or chats; an optional "
                       "margin column). Writes OUTPUT_DIR/final, an AutoModelForSequenceClassification for "
                       "--reward.kind model and remax serve-reward --kind model.")
    if result is not None:
        acc = result["eval_accuracy"]
        held = f"held-out pair accuracy {acc:.3f} on {result['eval_pairs']} pairs" if acc is not None else "no held-out pairs"
        print(f"done: {result['steps']} steps, {held}; wrote {result['path']}; "
              f"use it with --reward.kind model --reward.model {result['path']}")
    return 0


COMMANDS["sft"] = cmd_sft
COMMANDS["rm"] = cmd_rm


def split_debug_flag(argv: Sequence[str]) -> tuple[bool, list[str]]:
    """Take `--debug` out of the arguments (anywhere); REMAX_DEBUG=1 does the same."""
    rest = [a for a in argv if a != "--debug"]
    return len(rest) != len(argv) or os.environ.get("REMAX_DEBUG", "") not in ("", "0"), rest


def main(argv: Optional[Sequence[str]] = None) -> int:
    debug, argv = split_debug_flag(sys.argv[1:] if argv is None else argv)
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
        # Bad input and explained stops are one line; --debug (or REMAX_DEBUG=1) adds the
        # traceback. Anything else is a bug and keeps its traceback.
        if debug:
            traceback.print_exc()
        message = " ".join(str(err).split("\n")).strip()
        print(f"remax {command}: error: {message}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:  # a second Ctrl-C during training: no new checkpoint
        if debug:
            traceback.print_exc()
        print(f"remax {command}: aborted; checkpoints already written are intact", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
