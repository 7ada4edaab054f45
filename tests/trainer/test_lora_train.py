"""LoRA runs end to end on a tiny model saved to disk: the base stays bitwise unchanged
while the adapters change, pi_ref is the base, final/ loads with peft and final/merged/
with the stock Auto class, PPO's critic is a plain trunk, and resuming is bit for bit."""

from __future__ import annotations

import json

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from remax.cli import main
from remax.config import Config
from remax.models import ValueModel, response_logprobs
from remax.models.lora import AdaptersOff, merged_state_dict
from remax.trainer import Trainer


@pytest.fixture()
def distinct_chars(tmp_path):
    """A reward that varies between a random model's responses: distinct characters / 10."""
    path = tmp_path / "distinct.py"
    path.write_text("def score(prompts, responses):\n    return [len(set(r)) / 10 for r in responses]\n")
    return f"{path}:score"


def lora_config(out, policy_dir, prompts_file, reward_file, algo="remax", steps=3) -> Config:
    cfg = Config(algo=algo, output_dir=str(out))
    cfg.model.policy, cfg.model.device = str(policy_dir), "cpu"
    cfg.data.train_file = str(prompts_file)
    cfg.reward.function = reward_file
    cfg.rollout.max_new_tokens = 6
    cfg.train.steps, cfg.train.batch_size, cfg.train.micro_batch_size, cfg.train.lr = steps, 2, 2, 3e-2
    cfg.log.progress, cfg.log.plot, cfg.log.save_every = False, False, 2
    cfg.lora.r, cfg.lora.alpha = 4, 8
    return cfg


def base_params(policy) -> dict[str, torch.Tensor]:
    """The frozen base's weights under plain names."""
    return {n.replace(".base_layer.", "."): p for n, p in policy.get_base_model().named_parameters() if "lora_" not in n}


def test_lora_run_changes_adapters_only(tmp_path, policy_dir, prompts_file, distinct_chars):
    cfg = lora_config(tmp_path / "run", policy_dir, prompts_file, distinct_chars)
    cfg.lora.save_merged = True
    trainer = Trainer(cfg)
    assert isinstance(trainer.reference, AdaptersOff)  # no second copy of the weights
    lora_start = {n: p.detach().clone() for n, p in trainer.policy.named_parameters() if "lora_" in n}
    trainer.train()

    start = AutoModelForCausalLM.from_pretrained(policy_dir)
    base = base_params(trainer.policy)
    assert set(base) == {n for n, _ in start.named_parameters()}
    assert all(torch.equal(base[n], p) for n, p in start.named_parameters())  # bitwise unchanged
    lora_now = {n: p for n, p in trainer.policy.named_parameters() if "lora_" in n}
    assert all(not torch.equal(lora_now[n], lora_start[n]) for n in lora_start if "lora_B" in n)
    assert all(bool(p.any()) for n, p in lora_now.items() if "lora_B" in n)  # B moved off 0

    # pi_ref's log-probs are the untouched base model's, bitwise; the policy's are not
    enc = trainer.tokenizer(["The Lord is", "Love is"], return_tensors="pt", padding=True)
    resp = torch.tensor([[5, 9, 14, 3], [7, 7, 2, 11]])
    rmask = torch.ones_like(resp, dtype=torch.float32)
    args = (enc.input_ids, enc.attention_mask, resp, rmask)
    ref_lp = response_logprobs(trainer.reference, *args)
    # bitwise at one thread; with several, the adapter-off path's matmuls may split their sums in
    # another order (seen at OMP_NUM_THREADS=2), so the bound is float32 rounding, 100x under the
    # adapters' own effect asserted below
    torch.testing.assert_close(ref_lp, response_logprobs(start.eval(), *args), rtol=0, atol=1e-6)
    assert (response_logprobs(trainer.policy, *args) - ref_lp).abs().max() > 1e-4

    # final/ is the adapter (peft on the base) and final/merged/ a plain model
    final = tmp_path / "run/final"
    assert (final / "adapter_model.safetensors").is_file() and not (final / "model.safetensors").exists()
    loaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(policy_dir), final).eval()
    own = dict(trainer.policy.named_parameters())
    assert all(torch.equal(p, own[n]) for n, p in loaded.named_parameters())
    merged = AutoModelForCausalLM.from_pretrained(final / "merged").eval()
    want = merged_state_dict(trainer.policy)
    assert all(torch.equal(merged.state_dict()[k], v) for k, v in want.items())
    torch.testing.assert_close(response_logprobs(merged, *args), response_logprobs(loaded, *args), atol=1e-5, rtol=0)
    # checkpoints hold the adapter only, too
    assert sorted(load_file(tmp_path / "run/checkpoints/step-2/policy/adapter_model.safetensors")) == sorted(
        load_file(final / "adapter_model.safetensors"))


def test_ppo_with_lora_trains_a_plain_critic_and_resumes_bitwise(tmp_path, policy_dir, prompts_file, distinct_chars):
    """The critic is a full trunk copy without adapters, saved and restored with the
    adapters; redoing steps 3-4 from checkpoint step-2 ends bitwise equal."""
    cfg = lora_config(tmp_path / "run", policy_dir, prompts_file, distinct_chars, algo="ppo", steps=4)
    trainer = Trainer(cfg)
    assert not any("lora" in n for n, _ in trainer.critic.named_modules())
    critic_start = {n: p.detach().clone() for n, p in trainer.critic.trunk.named_parameters()}
    trainer.train()
    start = AutoModelForCausalLM.from_pretrained(policy_dir)
    base = base_params(trainer.policy)
    assert all(torch.equal(base[n], p) for n, p in start.named_parameters())
    changed = [not torch.equal(p, critic_start[n]) for n, p in trainer.critic.trunk.named_parameters()]
    assert sum(changed) > len(changed) // 2  # the critic trains all of its own trunk
    critic = ValueModel.from_pretrained(tmp_path / "run/checkpoints/step-4/critic")
    assert all(torch.equal(p, q) for p, q in zip(critic.parameters(), trainer.critic.parameters()))

    final = load_file(tmp_path / "run/final/adapter_model.safetensors")
    first = [json.loads(line) for line in (tmp_path / "run/metrics.jsonl").read_text().splitlines()]
    cfg.resume = str(tmp_path / "run/checkpoints/step-2")
    Trainer(cfg).train()
    again = load_file(tmp_path / "run/final/adapter_model.safetensors")
    assert again.keys() == final.keys() and all(torch.equal(again[k], final[k]) for k in final)
    redone = [json.loads(line) for line in (tmp_path / "run/metrics.jsonl").read_text().splitlines()]
    keep = lambda m: {k: v for k, v in m.items() if not k.startswith("perf/")}  # noqa: E731
    assert [keep(m) for m in redone] == [keep(m) for m in first]


def test_cli_lora_flags_and_a_bad_target(tmp_path, make_args, capsys):
    out = tmp_path / "run"
    lora = ["--lora.r", "2", "--lora.alpha", "4", "--lora.target_modules", "c_attn", "c_proj"]
    assert main(["train", *make_args(out, steps=1), *lora]) == 0
    adapter = json.loads((out / "final/adapter_config.json").read_text())
    assert adapter["r"] == 2 and adapter["lora_alpha"] == 4 and sorted(adapter["target_modules"]) == ["c_attn", "c_proj"]
    assert main(["train", *make_args(tmp_path / "bad", steps=1), "--lora.r", "2", "--lora.target_modules", "q_proj"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--lora.target_modules" in err and "c_attn" in err, err
