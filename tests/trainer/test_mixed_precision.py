"""train.mixed_precision: float32 master weights with bf16 / fp16 compute, on CPU.

- at ReMax's lr (1e-6) one bf16 mixed-precision step changes >= 99% of the trained
  entries (as fp32 does), pure bf16 weights (--model.dtype bfloat16) far fewer;
- the bf16 (and fp16) gradient is within a measured tolerance of the fp32 gradient;
- fp16's loss scaler survives an overflow step: skipped, counted in train/skipped_updates
  and train/scaler_skips, and not in the NaN / inf streak that stops a run;
- a resumed mixed-precision run is bitwise the uninterrupted one (the scaler's state is
  in the checkpoint);
- the autocast reaches the update, the reference, the rollout and a reward model.
"""

from __future__ import annotations

import contextlib
import warnings

import pytest
import torch

from remax.config import Config, ConfigError
from remax.models import response_logprobs
from remax.trainer import precision as precision_mod
from remax.trainer.precision import Precision, resolve_mode

PROMPTS = ["Love is", "The Lord is", "And God said", "Blessed are the"]


def e_share(prompts, responses):
    return [r.count("e") / max(len(r), 1) for r in responses]


def make_trainer(tmp_path, tokenizer, mode, *, dtype=torch.float32, lr=1e-6, steps=1, name="run", resume=None,
                 **train):
    from remax.models.tiny import tiny_causal_lm
    from remax.trainer import Trainer

    cfg = Config(algo="remax", output_dir=str(tmp_path / name))
    cfg.model.device = "cpu"
    cfg.rollout.max_new_tokens, cfg.train.steps, cfg.train.batch_size, cfg.train.lr = 8, steps, 4, lr
    cfg.train.micro_batch_size = 3  # two micro-batches of the 4 sampled rows: accumulation under the scaler
    cfg.train.mixed_precision = mode
    cfg.log.progress = cfg.log.plot = False
    cfg.resume = resume
    for k, v in train.items():
        section, _, key = k.rpartition("__")
        setattr(getattr(cfg, section or "train"), key, v)
    policy = tiny_causal_lm(tokenizer, seed=0).to(dtype).eval()
    return Trainer(cfg, policy=policy, tokenizer=tokenizer, reward_fn=e_share, rows=[{"prompt": p} for p in PROMPTS])


def changed_share(trainer) -> float:
    before = [p.detach().clone() for p in trainer.policy.parameters()]
    trainer.step()
    changed = sum(int((a != b).sum()) for a, b in zip(before, trainer.policy.parameters()))
    return changed / sum(a.numel() for a in before)


def test_resolve_mode_auto_is_bf16_on_cuda_and_no_on_cpu():
    assert resolve_mode("auto", torch.device("cpu")) == "no"
    assert resolve_mode("bf16", torch.device("cpu")) == "bf16"
    with pytest.raises(ConfigError, match="mixed_precision 'bf32'"):
        resolve_mode("bf32", torch.device("cpu"))


def test_bf16_mixed_precision_step_at_lr_1e6_changes_nearly_every_entry(tmp_path, tokenizer):
    mixed = make_trainer(tmp_path, tokenizer, "bf16", name="mixed")
    assert all(p.dtype == torch.float32 for p in mixed.policy.parameters())  # float32 master weights
    share = changed_share(mixed)
    assert all(s["exp_avg"].dtype == torch.float32 for s in mixed.optimizers["policy"].state.values())
    with pytest.warns(UserWarning, match=r"bfloat16 \(pure low precision\): at lr 1e-6 most updates round away"):
        pure = make_trainer(tmp_path, tokenizer, "no", dtype=torch.bfloat16, name="pure")
    pure_share = changed_share(pure)
    print(f"entries changed by one step at lr 1e-6: bf16 mixed {share:.4f}, pure bf16 {pure_share:.4f}")
    assert share >= 0.99  # measured 1.0000 (fp32: 0.9999)
    assert pure_share < 0.2  # measured 0.041: the rest of the update rounded away


def test_fp16_mixed_precision_refuses_fp16_trained_weights(tmp_path, tokenizer):
    with pytest.raises(ConfigError, match="needs float32 trained weights"):
        make_trainer(tmp_path, tokenizer, "fp16", dtype=torch.float16)


@pytest.mark.parametrize("mode, rel_tol", [("bf16", 0.02), ("fp16", 0.005)])
def test_mixed_precision_gradient_is_close_to_fp32(tokenizer, mode, rel_tol):
    """The ReMax loss's gradient on one fixed batch, float32 weights, with and without
    autocast. Measured (tiny GPT-2s, n_embd 32..128, 2..4 layers, 8 rows of 12 + 24 tokens):
    bf16 cosine >= 0.99999, relative error 0.4-0.6%; fp16 cosine >= 0.99999, 0.05-0.09%.
    Tolerance: cosine >= 0.999 and relative error <= 2% (bf16) / 0.5% (fp16)."""
    from remax.models.tiny import tiny_causal_lm

    model = tiny_causal_lm(tokenizer, n_embd=64, n_layer=2, seed=0).eval()
    g = torch.Generator().manual_seed(0)
    n, p, r = 8, 12, 24
    prompt, response = torch.randint(2, len(tokenizer), (n, p), generator=g), torch.randint(2, len(tokenizer), (n, r), generator=g)
    pmask, rmask = torch.ones(n, p), torch.ones(n, r)
    adv = torch.randn(n, 1, generator=g)

    def grad(m):
        model.zero_grad(set_to_none=True)
        with Precision(m).autocast():
            logp = response_logprobs(model, prompt, pmask, response, rmask)
        assert logp.dtype == torch.float32
        (-(adv * logp * rmask).sum() / rmask.sum()).backward()  # backward outside autocast
        return torch.cat([q.grad.flatten() for q in model.parameters()])

    ref, low = grad("no"), grad(mode)
    assert all(q.grad.dtype == torch.float32 for q in model.parameters())
    cos = torch.nn.functional.cosine_similarity(ref, low, dim=0).item()
    rel = ((low - ref).norm() / ref.norm()).item()
    print(f"{mode} vs fp32 gradient: cosine {cos:.6f}, relative error {rel:.4%}")
    assert cos >= 0.999 and rel <= rel_tol
    assert rel > 0  # autocast did run in low precision


def test_fp16_scaler_overflow_is_skipped_counted_and_does_not_stop_the_run(tmp_path, tokenizer, monkeypatch):
    # a scale of 2^60 overflows fp16 activation gradients; backing off by 2^-50 leaves 1024, which does not
    monkeypatch.setattr(precision_mod, "SCALER_KWARGS", {"init_scale": 2.0**60, "backoff_factor": 2.0**-50})
    t = make_trainer(tmp_path, tokenizer, "fp16", lr=1e-3, steps=3, max_nonfinite_steps=1)
    before = [p.detach().clone() for p in t.policy.parameters()]
    m = t.step()
    assert m["train/skipped_updates"] == 1.0 and m["train/scaler_skips"] == 1.0
    assert m["train/nonfinite_updates"] == 0.0 and m["train/nonfinite_steps"] == 0
    assert t.state.nonfinite_streak == 0  # the streak that stops a run (max_nonfinite_steps 1) did not move
    assert all(torch.equal(a, b) for a, b in zip(before, t.policy.parameters()))  # weights untouched
    assert not t.optimizers["policy"].state  # Adam moments untouched
    assert m["train/loss_scale"] == 1024.0  # halved (here: by 2^-50) for the next step
    m = t.step()
    assert m["train/skipped_updates"] == 0.0 and m["train/scaler_skips"] == 0.0
    assert not all(torch.equal(a, b) for a, b in zip(before, t.policy.parameters()))


def test_fp16_overflow_below_min_scale_counts_as_nonfinite(tmp_path, tokenizer, monkeypatch):
    """An overflow once the scale is below MIN_SCALE is a real NaN / inf, not the scaler searching."""
    monkeypatch.setattr(precision_mod, "SCALER_KWARGS", {"init_scale": 0.5})
    t = make_trainer(tmp_path, tokenizer, "fp16", lr=1e-3, steps=2)
    next(t.policy.parameters()).register_hook(lambda g: g * float("inf"))
    m = t.step()
    assert m["train/skipped_updates"] == 1.0 and m["train/scaler_skips"] == 0.0
    assert m["train/nonfinite_updates"] == 1.0 and t.state.nonfinite_streak == 1


@pytest.mark.parametrize("mode", ["bf16", "fp16"])
def test_resume_with_mixed_precision_is_bitwise(tmp_path, tokenizer, monkeypatch, mode):
    """4 steps straight vs 2 + a resume from the step-2 checkpoint. In fp16 the scale moves
    every step (an overflow at step 1, growth_interval 1), so a resume that did not restore
    the scaler would train with another scale: checked by resuming once without it."""
    monkeypatch.setattr(precision_mod, "SCALER_KWARGS",
                        {"init_scale": 2.0**60, "backoff_factor": 2.0**-50, "growth_interval": 1})
    straight = make_trainer(tmp_path, tokenizer, mode, lr=1e-3, steps=4, name="straight", log__save_every=2)
    history = straight.train()
    want = {k: v.clone() for k, v in straight.policy.state_dict().items()}

    def resumed(name):
        t = make_trainer(tmp_path, tokenizer, mode, lr=1e-3, steps=4, name=name,
                         resume=str(tmp_path / "straight" / "checkpoints" / "step-2"))
        return t, t.train()

    t, again = resumed("resumed")
    assert [h["step"] for h in again] == [1, 2, 3, 4]
    assert all(torch.equal(want[k], v) for k, v in t.policy.state_dict().items())
    if mode == "fp16":
        assert [h["train/loss_scale"] for h in history] == [h["train/loss_scale"] for h in again]
        assert history[0]["train/scaler_skips"] == 1.0
        # the same resume without the scaler's state starts again from 2^60: it is not the same run
        monkeypatch.setattr(Precision, "load_state_dict", lambda self, state: None)
        t, _ = resumed("no-scaler-state")
        assert not all(torch.equal(want[k], v) for k, v in t.policy.state_dict().items())


def test_autocast_reaches_update_reference_rollout_and_reward_model(tmp_path, tokenizer):
    """Every forward of a bf16 mixed step runs its linear layers in bf16 (a hook on the
    lm-head sees bf16 logits): the rollout's generate, the reference's and the update's."""
    t = make_trainer(tmp_path, tokenizer, "bf16")
    seen = []
    t.policy.lm_head.register_forward_hook(lambda mod, inp, out: seen.append((torch.is_grad_enabled(), out.dtype)))
    t.step()
    assert seen and {d for _, d in seen} == {torch.bfloat16}
    assert (True, torch.bfloat16) in seen and (False, torch.bfloat16) in seen  # update (grad) and rollout / reference

    class FakeRewardModel:  # remax.rewards.model.RewardModelReward's hook: forward_context
        forward_context = contextlib.nullcontext

        def __call__(self, prompts, responses, **row):
            with self.forward_context():
                return torch.ones(2, 2) @ torch.ones(2, len(responses))

    fake = FakeRewardModel()
    t.dist.precision.attach(fake)
    assert fake([""], ["a"]).dtype == torch.bfloat16


def test_pure_fp16_weights_warn_with_the_effect(tmp_path, tokenizer):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        make_trainer(tmp_path, tokenizer, "no", dtype=torch.float16)
    assert any("Adam eps (1e-8) is 0 in float16" in str(w.message) for w in caught)
