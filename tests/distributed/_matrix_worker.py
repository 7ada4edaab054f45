"""The invariant matrix's worker (test_invariants.py): every registered algorithm, 2 steps,
in ONE launch, so that process start-up and imports are paid once.

    torchrun --nproc_per_node 2 _matrix_worker.py ranks TOKENIZER_DIR OUT   # 2 gloo processes, DDP
    python _matrix_worker.py reference TOKENIZER_DIR OUT                    # 1 process, the global batch

Cases: one per algorithm of `remax.algos.list_algorithms()` (a new spec is a new case),
with groups of 2 samples where the spec allows them, and a ratio loss trained for 2
epochs x 2 minibatches (DAPO: 2 epochs, 1 minibatch, because its padded rows change the
minibatch partition); the reward is constant on 3 of the 8 prompts, so DAPO's filter drops
groups and refills the batch, and ranks keep different numbers of groups. Then remax with
a reward that fails on one prompt of the second batch, held by rank 1 only: with
`reward.on_error skip_batch` (every rank skips that batch) and `stop` (every rank stops).

The one-process reference draws each block of its batch (and of each refill) with the
seed the rank that owns it uses, and splits its rows into minibatches as the ranks do
(each rank shuffles its own block with the shared (seed, step) generator); everything
else is the library's code path. With `reference` it also trains every case with one
micro-batch of all rows: the gradient must not depend on micro-batching."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _worker import SEED_OFFSET, WORLD, shard_seeded  # noqa: E402

PROMPTS = ["The Lord is", "And God said", "Blessed are the", "Love is", "In the beginning", "O give thanks",
           "He maketh me", "The wicked are"]
CONSTANT = {"And God said", "Love is", "He maketh me"}  # their groups have equal rewards: DAPO drops them


def reward(prompts, responses, **extra):
    poison = extra.get("poison")
    if poison is not None and any(poison):
        raise RuntimeError("the reward server is down for this prompt")
    # a deterministic reward that varies with every character of the response
    return [0.5 if p in CONSTANT else (sum(map(ord, r)) % 101) / 101 for p, r in zip(prompts, responses)]


def cases():
    from remax.algos import get_algorithm, list_algorithms

    out = {}
    for name in list_algorithms():
        spec = get_algorithm(name)
        n = 1 if spec.max_samples == 1 else max(2, spec.min_samples)
        ratio = not spec.on_policy
        extra = {}
        if ratio:
            extra = {"loss__epochs": 2, "loss__num_minibatches": 1 if spec.group_filter else 2}
        out[name] = dict(algo=name, n=n, **extra)
    only = os.environ.get("MATRIX_ONLY")
    if only:
        out = {k: v for k, v in out.items() if k in only.split(",")}
    out["remax-reward-skip"] = dict(algo="remax", n=2, reward__on_error="skip_batch", poison=True)
    out["remax-reward-stop"] = dict(algo="remax", n=2, reward__on_error="stop", poison=True)
    return out


def make_config(case: dict, out: Path):
    from remax.config import Config

    c = Config(algo=case["algo"], output_dir=str(out), overwrite=True)
    c.train.seed = SEED_OFFSET  # tests/conftest.py's REMAX_TEST_SEED_OFFSET
    c.model.device = "cpu"
    c.rollout.max_new_tokens = 5
    c.rollout.n_samples = case["n"]
    c.train.steps = 2
    c.train.batch_size = 4  # 2 prompts per rank
    c.train.micro_batch_size = 3  # uneven micro-batches
    c.train.lr = 1e-3
    if case["algo"] == "ppo":
        c.train.critic_lr = 1e-3
    c.train.lr_schedule = "constant"
    c.train.warmup_steps = 0
    c.log.progress = c.log.plot = False
    for k, v in case.items():
        if "__" in k:
            section, _, key = k.partition("__")
            setattr(getattr(c, section), key, v)
    return c


def rows_for(case: dict, config) -> list[dict]:
    rows = [{"prompt": p} for p in PROMPTS]
    if case.get("poison"):  # the last prompt of the second global batch: rank 1's share
        from remax.data import PromptSampler

        sampler = PromptSampler(rows, config.train.batch_size, config.train.seed, config.data.shuffle)
        sampler.next_batch()
        bad = sampler.next_batch()[-1]["prompt"]
        rows = [{"prompt": p, "poison": p == bad} for p in PROMPTS]
    return rows


def reference_class():
    from remax.trainer import Trainer
    from remax.trainer.distributed import Dist
    from remax.trainer.phases import update as update_phase

    class StreamDist(Dist):
        """One process that remembers which rollout stream (step or refill) is drawn."""

        stream = 0

        def rollout_rng(self, seed, step):
            self.stream = step
            return super().rollout_rng(seed, step)

    library_minibatches = update_phase.minibatches

    def blocked_minibatches(n_rows, n_mb, generator):
        per = n_rows // WORLD  # each rank's block, split as that rank splits it
        parts = library_minibatches(per, n_mb, generator)
        return [torch.cat([r * per + p for r in range(WORLD)]) for p in parts]

    update_phase.minibatches = blocked_minibatches

    class ShardSeededReference(Trainer):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.dist = StreamDist()

        def rollout(self, rows):
            return shard_seeded(super().rollout, rows, self.config.train.seed, self.dist.stream,
                                self.tokenizer.pad_token_id)

    return ShardSeededReference


# statistics of the whole batch that are not means: each rank must log the global batch's
BATCH_STATS = ("rollout/reward_std", "adv/std", "rollout/reward_mean", "rollout/response_len_mean", "rollout/eos_frac")


def run(case: dict, out: Path, cls, tokenizer, **overrides):
    from remax.errors import RunStopped
    from remax.models import make_reference
    from remax.models.tiny import tiny_causal_lm

    config = make_config({**case, **overrides}, out)
    trainer = cls(config, policy=tiny_causal_lm(tokenizer, seed=SEED_OFFSET), tokenizer=tokenizer, reward_fn=reward,
                  rows=rows_for(case, config))
    # a reference that differs from the starting policy: at policy == reference the KL and its
    # gradient are pure float round-off, which Adam (dividing by sqrt(v)) would magnify into
    # lr-sized steps on the coordinates that nothing else moves
    trainer.reference = make_reference(tiny_causal_lm(tokenizer, seed=SEED_OFFSET + 1))
    result: dict = {}
    try:
        history = trainer.train()
        result["loss"] = torch.tensor([h["loss/policy"] for h in history])
        result["stats"] = [{k: h[k] for k in h if k.startswith(("rollout/groups", "rollout/refill"))} for h in history]
        result["batch_stats"] = [{k: h[k] for k in h if k in BATCH_STATS or k.startswith("baseline/")} for h in history]
    except RunStopped as err:
        result["stopped"] = str(err)
    result["weights"] = {f"policy.{k}": v.detach().clone() for k, v in trainer.policy.state_dict().items()}
    if trainer.critic is not None:
        result["weights"].update({f"critic.{k}": v.detach().clone() for k, v in trainer.critic.state_dict().items()})
    result["sampler"] = dict(trainer.sampler.state_dict())
    result["skipped"] = trainer.state.skipped_batches
    return trainer, result


def main(mode: str, tok_dir: str, out: Path) -> None:
    import time

    from remax.models import load_tokenizer
    from remax.trainer import Trainer

    torch.set_num_threads(1)
    tokenizer = load_tokenizer(tok_dir)
    reference = mode == "reference"
    cls = reference_class() if reference else Trainer
    saved, rank = {}, 0
    for name, case in cases().items():
        start = time.perf_counter()
        trainer, saved[name] = run(case, out / f"{name}-{mode}", cls, tokenizer)
        if reference:  # one micro-batch holding every row: the same update
            _, whole = run(case, out / f"{name}-whole", cls, tokenizer, train__micro_batch_size=1000)
            saved[name]["whole"] = whole["weights"]
        saved[name]["seconds"] = time.perf_counter() - start
        rank = trainer.dist.rank
    torch.save(saved, out / f"{mode}-rank{rank}.pt")  # every rank: its own sampler position and stop message


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], Path(sys.argv[3]))
