"""FSDP2 (`--train.strategy fsdp`, PyTorch `fully_shard`) run for real on 2 CPU processes (gloo).

One launch of `_fsdp_worker.py ranks` trains remax and ppo for 3 steps each with the
policy and critic sharded (the _worker.py runs of test_equivalence.py: uneven
micro-batches, lr 3e-3, ppo with 2 epochs), and 2 remax steps in bf16 mixed precision
with gradient checkpointing, beside the one-process shard-seeded reference
on the whole global batch; a third launch, side by side, is killed with SIGKILL while it
writes its step-2 checkpoint, and a fourth resumes it.

Tolerance: as for DDP (test_equivalence.py), float32 round-off only: FSDP reduce-scatters
two half-batch gradients where one process accumulates all rows, and Adam can magnify
round-off on coordinates with tiny gradients. Measured max |2 FSDP ranks - 1 process|:
5.7e-7 (remax) and 8.1e-6 (ppo) at seed offset 0, 3.8e-7 and 4.5e-6 at offset 5; ATOL 2e-5,
under 1% of one step's largest update.
A sharded checkpoint loads back bit for bit: the resumed run equals the uninterrupted one
bitwise (torch.equal), and so do the gathered weights, final/ and the vLLM push.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import torch

from ._worker import SEED_OFFSET
from .test_equivalence import ATOL, _env, _max_diff, ranks_command, run_ranks_and_reference

pytestmark = pytest.mark.slow
HERE = Path(__file__).parent
WORKER = HERE / "_fsdp_worker.py"


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tokenizer):
    """The output directory of all four launches (the killed one started first, beside the others)."""
    out = tmp_path_factory.mktemp("fsdp")
    tokenizer.save_pretrained(out / "tok-killed")
    killed = subprocess.Popen(ranks_command(WORKER, "killed", out / "tok-killed", out), env=_env(),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        run_ranks_and_reference(WORKER, tokenizer, out, timeout=400)
    finally:
        log, _ = killed.communicate(timeout=400)
    assert killed.returncode != 0 and "Signal 9 (SIGKILL)" in log, log[-3000:]  # really killed, by the signal
    ckpts = out / "remax-killed" / "checkpoints"
    (out / "killed-left.json").write_text(json.dumps(sorted(p.name for p in ckpts.iterdir())))
    resumed = subprocess.run(ranks_command(WORKER, "resumed", out / "tok-killed", out), env=_env(),
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=400)
    assert resumed.returncode == 0, resumed.stdout[-3000:]
    (out / "resumed.log").write_text(resumed.stdout)
    return out


@pytest.fixture(scope="module")
def saved(runs):
    return {mode: torch.load(runs / f"fsdp-{mode}.pt") for mode in ("ranks", "ranks-1", "reference", "resumed")}


@pytest.mark.parametrize("algo", ["remax", "ppo"])
def test_fsdp_two_ranks_end_with_the_weights_of_one_process(saved, tokenizer, algo):
    ranks, one = saved["ranks"], saved["reference"]
    diff = _max_diff(ranks[algo], one[algo])
    print(f"FSDP {algo}: max |2 ranks - 1 process| = {diff:.2e}")  # shown with pytest -s
    assert diff < ATOL
    torch.testing.assert_close(ranks[algo + "/loss"], one[algo + "/loss"], rtol=1e-4, atol=1e-6)
    from remax.models.tiny import tiny_causal_lm

    init = {f"policy.{k}": v for k, v in tiny_causal_lm(tokenizer, seed=SEED_OFFSET).state_dict().items()}
    moved = max((ranks[algo][k] - init[k]).abs().max().item() for k in init)
    assert moved > 100 * ATOL  # the runs trained: equal weights are not equal initial weights


def test_fsdp_bf16_with_gradient_checkpointing_updates_like_one_process(saved, tokenizer):
    """The other compute path: bf16 autocast (fp32 master weights) and gradient checkpointing
    inside the FSDP units, 2 remax steps. bf16 rounds the two batchings differently and Adam
    turns a few tiny gradients' sign flips into whole steps, so the updates are compared as
    vectors: relative error 0.018 / 0.0031 and cosine 0.99984 / 0.999996 measured at seed
    offsets 0 / 5 (fp32's relative error: 1.7e-6); bounds 0.1 and 0.995."""
    from remax.models.tiny import tiny_causal_lm

    init = {f"policy.{k}": v for k, v in tiny_causal_lm(tokenizer, seed=SEED_OFFSET).state_dict().items()}
    update = lambda w: torch.cat([(w[k] - init[k]).flatten() for k in init])  # noqa: E731
    ranks, one = update(saved["ranks"]["bf16"]), update(saved["reference"]["bf16"])
    rel = ((ranks - one).norm() / one.norm()).item()
    print(f"FSDP bf16 + checkpointing: relative update error {rel:.3g}")
    assert rel < 0.1 and torch.nn.functional.cosine_similarity(ranks, one, dim=0) > 0.995


def test_fsdp_final_is_one_hugging_face_directory(runs, saved):
    from transformers import AutoModelForCausalLM

    final = runs / "remax-ranks" / "final"
    assert [p.name for p in final.glob("*.safetensors")] == ["model.safetensors"]  # one file, not shards
    assert json.loads((final / "config.json").read_text())["architectures"] == ["GPT2LMHeadModel"]
    loaded = {f"policy.{k}": v for k, v in AutoModelForCausalLM.from_pretrained(final).state_dict().items()}
    assert all(torch.equal(loaded[k], saved["ranks"]["remax"][k]) for k in loaded)  # the gathered weights
    assert _max_diff(loaded, saved["reference"]["remax"]) < ATOL  # and so the 1-process weights


def test_fsdp_rollout_generates_from_the_full_weights(saved):
    """Each rank decoded a different number of tokens from the sharded policy under
    Dist.generation (no collective between forwards, else the shorter rank would leave the
    longer one waiting), and got the tokens an unsharded copy of the weights gives; with
    --rollout.hf_kernels onednn too (packed from the gathered weights, 4 rows)."""
    rank0, rank1 = saved["ranks"]["generation"], saved["ranks-1"]["generation"]
    assert rank1["sharded"].shape[1] - rank0["sharded"].shape[1] == 4  # 2 and 6 new tokens
    for got in (rank0, rank1):
        assert torch.equal(got["sharded"], got["full"])
        if "onednn" in got:  # --rollout.hf_kernels onednn: every Linear / Conv1D packed from the gathered weights
            assert got["onednn_count"].item() == 4 * 2 + 1  # 2 GPT-2 blocks x 4 Conv1D + the LM head
            assert torch.equal(got["onednn"], got["onednn_full"])


def test_fsdp_vllm_push_sends_whole_tensors(saved):
    """plain_weights (what VLLMBackend.push sends) of the sharded policy is every tensor
    whole on every rank; the local shards it gathers from are half-size pieces."""
    gathered = {k.removeprefix("policy."): v for k, v in saved["ranks"]["remax"].items()}
    for worker in (saved["ranks"], saved["ranks-1"]):
        pushed = worker["pushed"]
        assert pushed.keys() == gathered.keys() and all(torch.equal(pushed[k], gathered[k]) for k in gathered)
    local = saved["ranks"]["local"]
    assert local["transformer.wte.weight"].shape[0] == gathered["transformer.wte.weight"].shape[0] // 2


def test_fsdp_checkpoint_is_sharded_with_dcp(runs):
    from torch.distributed.checkpoint import FileSystemReader

    step = runs / "remax-ranks" / "checkpoints" / "step-2"
    assert sorted(p.name for p in step.iterdir()) == ["config.yaml", "metrics.jsonl", "sharded", "trainer_state.pt"]
    assert sorted(p.name for p in (step / "sharded").iterdir()) == [".metadata", "__0_0.distcp", "__1_0.distcp"]
    keys = FileSystemReader(str(step / "sharded")).read_metadata().state_dict_metadata
    assert "policy.model.transformer.wte.weight" in keys  # weights and Adam moments, by parameter name
    assert "policy.optimizer.state.transformer.wte.weight.exp_avg_sq" in keys
    state = torch.load(step / "trainer_state.pt", weights_only=True)
    assert state["optimizers"] == {} and len(state["run_state"]["rng"]["ranks"]) == 2
    assert (runs / "ppo-ranks" / "checkpoints" / "step-2" / "sharded").is_dir()


def test_fsdp_killed_mid_checkpoint_resumes_bitwise(runs, saved):
    """SIGKILL on rank 0 after step-2's shards were staged and before the checkpoint was
    complete: the resume starts from step-1, removes the staged shards, and ends with the
    uninterrupted FSDP run's weights bit for bit and its metrics, each step once."""
    left = json.loads((runs / "killed-left.json").read_text())
    assert left[0].startswith(".step-2.shards.tmp-") and left[1:] == ["latest", "step-1"]
    assert "resuming from" in (runs / "resumed.log").read_text() and "step-1 at step 1" in (runs / "resumed.log").read_text()
    got, want = saved["resumed"]["remax"], saved["ranks"]["remax"]
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)  # bitwise
    out, ref = runs / "remax-killed", runs / "remax-ranks"
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["latest", "step-1", "step-2", "step-3"]
    read = lambda d: [json.loads(line) for line in (d / "metrics.jsonl").read_text().splitlines()]  # noqa: E731
    keep = lambda m: {k: v for k, v in m.items() if not k.startswith("perf/")}  # noqa: E731
    assert [m["step"] for m in read(out)] == [1, 2, 3]
    assert [keep(m) for m in read(out)] == [keep(m) for m in read(ref)]


def test_fsdp_checkpoint_is_refused_by_another_process_count(runs, tokenizer, tmp_path):
    """Written by 2 ranks, resumed by 1 process: one line naming the fix, before any weight moves."""
    import sys

    sys.path.insert(0, str(HERE))
    from _fsdp_worker import fsdp_config
    from _worker import PROMPTS, char_share

    from remax.config import ConfigError
    from remax.models.tiny import tiny_causal_lm
    from remax.trainer import Trainer

    config = fsdp_config("remax", tmp_path / "one")
    config.resume = str(runs / "remax-ranks" / "checkpoints" / "step-2")
    trainer = Trainer(config, policy=tiny_causal_lm(tokenizer, seed=0), tokenizer=tokenizer, reward_fn=char_share,
                      rows=[{"prompt": p} for p in PROMPTS])
    with pytest.raises(ConfigError) as err:
        trainer.train()
    line = str(err.value)
    assert "\n" not in line and "saved by 2" in line and "launch 2 process(es)" in line


def test_checkpoint_layout_must_match_the_strategy(runs, tmp_path):
    from remax.config import ConfigError
    from remax.trainer.resume import check_same_layout

    sharded = runs / "remax-ranks" / "checkpoints" / "step-2"
    check_same_layout(sharded, sharded=True)
    with pytest.raises(ConfigError, match="without FSDP: it was written by an FSDP run .*launch with --train.strategy fsdp"):
        check_same_layout(sharded, sharded=False)
    (tmp_path / "policy").mkdir()
    check_same_layout(tmp_path, sharded=False)
    with pytest.raises(ConfigError, match="written by a run without FSDP .*launch with --train.strategy ddp"):
        check_same_layout(tmp_path, sharded=True)


def test_strategy_choice_and_fsdp_refusals(monkeypatch):
    from remax.config import Config, ConfigError
    from remax.trainer.distributed import resolve_strategy
    from remax.trainer.validate import check_world

    monkeypatch.delenv("ACCELERATE_USE_FSDP", raising=False)
    assert resolve_strategy("auto") == "ddp" and resolve_strategy("fsdp") == "fsdp"
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")  # what `accelerate launch` with configs/accelerate/fsdp.yaml sets
    assert resolve_strategy("auto") == "fsdp" and resolve_strategy("ddp") == "ddp"
    with pytest.raises(ConfigError, match="not one of auto, ddp, fsdp"):
        resolve_strategy("zero3")
    c = Config()
    c.train.strategy, c.train.mixed_precision, c.train.batch_size = "fsdp", "fp16", 4
    with pytest.raises(ConfigError, match="use bf16"):
        check_world(c, 2)  # before torchrun starts: `remax train --num_processes 2` checks it once
    check_world(c, 1)  # one process does not shard


def test_a_changed_strategy_name_is_left_to_the_layout_check(tmp_path):
    """auto and fsdp name one layout under accelerate's FSDP config: check_same_run lets the
    name change, check_same_layout (above) refuses a real change of layout."""
    from remax.config import Config, save_config
    from remax.trainer.resume import check_same_run

    saved = Config(output_dir=str(tmp_path))
    saved.train.strategy = "auto"
    save_config(saved, tmp_path / "config.yaml")
    now = Config(output_dir=str(tmp_path))
    now.train.strategy = "fsdp"
    check_same_run(now, tmp_path)
