"""FSDP (`--train.strategy fsdp`) shards the frozen reference model too, and runs LoRA.

One launch of `_fsdp_reference_worker.py ranks` (2 gloo processes) beside its one-process,
shard-seeded twin (`reference`): remax for 4 steps with a KL penalty (kl_coef 0.2), once
with full fine-tuning (the reference a frozen copy, now sharded like the policy) and once
with --lora.r 8 --lora.save_merged (the reference the policy's own base, adapters off),
which is then resumed from its step-2 sharded checkpoint.

Tolerance: test_equivalence.py's ATOL (float32 round-off of two half-batch gradients
against one accumulation, magnified by Adam on tiny gradients). Measured max |2 FSDP ranks
- 1 process| over seed offsets 0..5: weights 4.1e-6 (full) and 8.2e-7 (LoRA), logged
kl/mean 7.8e-8 (both; the metric is the whole batch's, `kl_metrics`), merged final/ 4.8e-8
at offset 0. That the KL is really there: its largest |kl/mean| over the 4 steps was at
least 8.6e-3 (full, bound 1e-3) and 4.7e-4 (LoRA, bound 1e-4) at every offset, the
smallest largest-|lora_B| 7.4e-3 (bound 100 ATOL = 2e-3).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from .test_equivalence import ATOL, _env, _max_diff, ranks_command

pytestmark = pytest.mark.slow
HERE = Path(__file__).parent
WORKER = HERE / "_fsdp_reference_worker.py"


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tokenizer):
    """The output directory of both launches (2 ranks and 1 process, side by side)."""
    out = tmp_path_factory.mktemp("fsdp-reference")
    tokenizer.save_pretrained(out / "tok")
    one = [sys.executable, str(WORKER), "reference", str(out / "tok"), str(out)]
    procs = [subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for cmd in (ranks_command(WORKER, "ranks", out / "tok", out), one)]
    for p in procs:
        log, _ = p.communicate(timeout=300)
        assert p.returncode == 0, log[-3000:]
    return out


@pytest.fixture(scope="module")
def saved(runs):
    return {mode: torch.load(runs / f"fsdp-reference-{mode}.pt") for mode in ("ranks", "ranks-1", "reference")}


@pytest.fixture(scope="module")
def init(saved):
    """The weights every run started from, as the workers built them."""
    return saved["reference"]["init"]


def test_the_reference_is_sharded_on_each_rank(saved):
    """Every reference parameter is a DTensor and each rank holds about half of the entries
    (FSDP pads a dim 0 that 2 does not divide: 'about'); one process holds them all, plainly.
    Looked at after training: the root unit too was freed after its last forward (a root
    kept gathered, as fully_shard keeps a trained model's, would show plain tensors)."""
    for rank in ("ranks", "ranks-1"):
        layout = saved[rank]["kl/layout"]
        print(f"{rank}: reference entries held {layout['local']} of {layout['full']}")
        assert layout["dtensors"] == layout["params"] > 0
        assert 0.45 < layout["local"] / layout["full"] < 0.55
    assert saved["reference"]["kl/layout"]["dtensors"] == 0


def test_sharded_reference_gives_the_kl_and_weights_of_one_process(saved, init):
    ranks, one = saved["ranks"], saved["reference"]
    diff = _max_diff(ranks["kl"], one["kl"])
    print(f"FSDP + sharded reference: max |2 ranks - 1 process| = {diff:.2e}")
    assert diff < ATOL
    kl, kl_one = ranks["kl/history"]["kl/mean"], one["kl/history"]["kl/mean"]
    assert kl.abs().max() > 1e-3  # the reference is really used: the policy moves away from it (8.6e-3 at least)
    torch.testing.assert_close(kl, kl_one, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(ranks["kl/history"]["loss/policy"], one["kl/history"]["loss/policy"], rtol=1e-4, atol=1e-6)
    # pi_ref stays the starting policy: gathered after training, bit for bit the initial weights
    assert ranks["kl/reference"].keys() == init.keys()
    assert all(torch.equal(ranks["kl/reference"][k], init[k]) for k in init)


def test_lora_under_fsdp_trains_the_adapters_of_one_process(saved, init):
    """The adapters train (the base stays bit for bit as loaded) to one process's adapters,
    with its KL to the base (adapters off, through the sharded policy) step by step."""
    ranks, one = saved["ranks"], saved["reference"]
    diff = _max_diff(ranks["lora"], one["lora"])
    print(f"FSDP + LoRA: max |2 ranks - 1 process| = {diff:.2e}")
    assert diff < ATOL
    prefix = "policy.base_model.model."
    lora_b = [k for k in ranks["lora"] if ".lora_B." in k]
    assert lora_b and min(ranks["lora"][k].abs().max().item() for k in lora_b) > 100 * ATOL  # B starts at 0
    for key, value in ranks["lora"].items():
        plain = key.removeprefix(prefix).replace(".base_layer.", ".")
        if ".lora_" not in key:
            assert torch.equal(value, init[plain]), key  # the frozen base never moves
    kl = ranks["lora/history"]["kl/mean"]
    assert kl.abs().max() > 1e-4  # 4.7e-4 at least
    torch.testing.assert_close(kl, one["lora/history"]["kl/mean"], rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(ranks["lora/history"]["loss/policy"], one["lora/history"]["loss/policy"], rtol=1e-4,
                               atol=1e-6)


def test_lora_under_fsdp_saves_the_adapter_and_the_merged_model(runs, saved, init):
    """final/ as without FSDP: the adapter (the same tensors as one process's), and merged/,
    a plain Hugging Face model equal to what the vLLM push sends (adapters merged in)."""
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    final, final_one = runs / "lora-ranks" / "final", runs / "lora-reference" / "final"
    assert sorted(p.name for p in final.iterdir()) == sorted(p.name for p in final_one.iterdir())
    assert json.loads((final / "adapter_config.json").read_text())["r"] == 8
    adapter, adapter_one = (load_file(d / "adapter_model.safetensors") for d in (final, final_one))
    assert _max_diff(adapter, adapter_one) < ATOL
    files, files_one = (load_file(d / "merged" / "model.safetensors") for d in (final, final_one))
    assert files.keys() == files_one.keys()  # the tied LM head written once, as one process writes it
    merged = AutoModelForCausalLM.from_pretrained(final / "merged").state_dict()
    pushed = saved["ranks"]["lora/pushed"]
    assert merged.keys() == pushed.keys() and all(torch.equal(merged[k], pushed[k]) for k in pushed)
    assert _max_diff(pushed, saved["reference"]["lora/pushed"]) < ATOL
    rank1 = saved["ranks-1"]["lora/pushed"]  # every rank's engine gets the whole merged tensors
    assert all(torch.equal(rank1[k], pushed[k]) for k in pushed)
    adapted = [k for k in pushed if "c_attn.weight" in k]  # peft's GPT-2 default target: the adapters merged in
    # 2.3e-2 at least over seed offsets 0..5
    assert adapted and min((merged[k] - init[k]).abs().max().item() for k in adapted) > 100 * ATOL
    assert all(torch.equal(merged[k], init[k]) for k in init if "c_attn" not in k)


def test_lora_under_fsdp_resumes_bitwise(saved):
    """From the sharded step-2 checkpoint (adapters, base, Adam's moments) to the weights of
    the uninterrupted run, bit for bit."""
    got, want = saved["ranks"]["lora-resumed"], saved["ranks"]["lora"]
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)
