"""One trainer step for the algorithm hooks: DAPO's dynamic sampling with refill
(deterministic, bounded, resumable), its overlong shaping, REINFORCE++'s whole-batch
whitening, and truncated importance sampling against a synthetic rollout engine."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch

from remax.algos.variants import varied_groups
from remax.cli import main
from remax.config import Config
from remax.data import PromptSampler
from remax.models import response_logprobs
from remax.rollout.backend import HFBackend, Sampling
from remax.trainer import Trainer

from .conftest import PROMPTS

CONST = set(PROMPTS[:3])  # prompts whose every response gets the same reward: no signal


def text_hash(prompts, responses, target):
    """A reward that differs between any two different texts, whatever the model (and its seed)
    writes: a random model's responses can hold no vowel at all, which tied every reward."""
    return [(sum(map(ord, r)) % 101) / 100 for r in responses]


def constant_or_vowels(prompts, responses, target):
    """0.5 on the CONST prompts (no signal), a text-dependent score on the others."""
    return [0.5 if p in CONST else h for p, h in zip(prompts, text_hash(prompts, responses, target))]


def make_trainer(model, tokenizer, tmp_path, algo="dapo", n=2, reward=constant_or_vowels, **loss):
    cfg = Config(algo=algo, output_dir=str(tmp_path / "run"))
    cfg.rollout.n_samples, cfg.rollout.max_new_tokens = n, 6
    cfg.train.batch_size, cfg.train.micro_batch_size, cfg.train.lr = 2, 8, 1e-2
    cfg.train.steps, cfg.train.grad_clip, cfg.log.progress = 1, 0.0, False
    for k, v in loss.items():
        setattr(cfg.loss, k, v)
    rows = [{"prompt": p, "target": "e"} for p in PROMPTS]
    return Trainer(cfg, policy=copy.deepcopy(model), tokenizer=tokenizer, reward_fn=reward, rows=rows)


def fill_once(t):
    rows = t.sampler.next_batch()
    rollout = t.rollout(rows)
    rewards, greedy = t.score(rows, rollout)
    return t.fill(rollout, rewards, greedy)


def prompts_of(t, samples):
    return [t.tokenizer.decode(ids[mask.bool()]) for ids, mask in zip(samples.prompt_ids, samples.prompt_mask)]


def test_dapo_drops_equal_groups_and_refills(tiny_model, tokenizer, tmp_path):
    torch.manual_seed(0)
    t = make_trainer(tiny_model, tokenizer, tmp_path, overlong_buffer=0.0)
    f = fill_once(t)
    s = f.stats
    assert s["rollout/groups_kept"] == 2 and f.samples.num_prompts == 2 and len(f.rewards) == 4
    assert s["rollout/prompts_drawn"] == 2 * (1 + s["rollout/refill_batches"]) >= 2
    assert varied_groups(f.rewards, 2).all()  # every group kept has a signal
    assert not set(prompts_of(t, f.samples)) & CONST
    # exactly the CONST prompts among the draws were dropped (the seeded order decides how many)
    replay = PromptSampler([{"prompt": p} for p in PROMPTS], 2, t.config.train.seed, t.config.data.shuffle)
    drawn = [r["prompt"] for _ in range(int(s["rollout/prompts_drawn"]) // 2) for r in replay.next_batch()]
    assert s["rollout/groups_dropped"] == sum(p in CONST for p in drawn)
    state = t.sampler.state_dict()
    assert state["epoch"] * len(PROMPTS) + state["position"] == s["rollout/prompts_drawn"]  # the draws advanced it

    # the same seed draws the same prompts and samples
    torch.manual_seed(0)
    again = fill_once(make_trainer(tiny_model, tokenizer, tmp_path / "b", overlong_buffer=0.0))
    assert again.stats == s and torch.equal(again.rewards, f.rewards)
    assert torch.equal(again.samples.response_ids, f.samples.response_ids)


def test_dapo_refill_limit_and_no_signal_fallback(tiny_model, tokenizer, tmp_path):
    torch.manual_seed(0)
    t = make_trainer(tiny_model, tokenizer, tmp_path, refill_max_batches=0, overlong_buffer=0.0)
    f = fill_once(t)
    assert f.stats["rollout/refill_batches"] == 0 and f.stats["rollout/prompts_drawn"] == 2
    # the groups kept, or (none kept: the no-signal fallback) the first draw as it is
    assert f.samples.num_prompts == (f.stats["rollout/groups_kept"] or 2) and f.stats["rollout/groups_kept"] <= 2
    # every reward equal: nothing to keep after 2 extra batches; the first draw is trained on as it is
    flat = make_trainer(tiny_model, tokenizer, tmp_path / "flat", refill_max_batches=2, overlong_buffer=0.0,
                        reward=lambda prompts, responses, target: [1.0] * len(responses))
    f = fill_once(flat)
    assert f.stats == {"rollout/groups_kept": 0.0, "rollout/groups_dropped": 6.0, "rollout/refill_batches": 2.0,
                       "rollout/prompts_drawn": 6.0}
    assert f.samples.num_prompts == 2 and torch.equal(f.rewards, torch.ones(4))
    metrics = flat.step()  # and the step still runs
    assert metrics["rollout/groups_kept"] == 0 and metrics["loss/policy"] == 0.0


def test_overlong_penalty_shapes_sampled_and_greedy_rewards(tiny_model, tokenizer, tmp_path):
    # max_new_tokens 6, buffer 0.5 -> 3 tokens: length 3 -> 0, 4 -> -1/3, 5 -> -2/3, 6 -> -1
    t = make_trainer(tiny_model, tokenizer, tmp_path, algo="remax", n=2, overlong_buffer=0.5,
                     reward=lambda prompts, responses, target: [0.0] * len(responses))
    rows = t.sampler.next_batch()
    rollout = t.rollout(rows)
    rewards, greedy = t.score(rows, rollout)
    f = t.fill(rollout, rewards, greedy)
    expected = lambda lengths: -((lengths - 3).clamp(min=0) / 3)
    torch.testing.assert_close(f.rewards, expected(rollout.sampled().response_mask.sum(-1)))
    torch.testing.assert_close(f.greedy_rewards, expected(rollout.greedy().response_mask.sum(-1)))


def test_reinforce_pp_whitens_token_advantages_over_the_whole_batch(tiny_model, tokenizer, tmp_path):
    t = make_trainer(tiny_model, tokenizer, tmp_path, algo="reinforce_pp", n=1, reward=text_hash)
    rows = t.sampler.next_batch()
    rollout = t.rollout(rows)
    rewards, _ = t.score(rows, rollout)
    batch = t.prepare(rollout.sampled(), rewards, None)
    m = batch.rollout.response_mask
    adv = batch.token_adv[m.bool()]
    assert adv.mean().abs() < 1e-5 and adv.std().item() == pytest.approx(1.0, abs=1e-3)
    assert batch.old_logprobs is not None  # whitening needs the whole batch before the update


class SyntheticEngine(HFBackend):
    """A rollout engine whose log-probs are the trainer's shifted by `delta` per token: a
    synthetic training-inference mismatch of known size. In the engines' convention: the
    sampler's distribution (temperature, top-k, top-p renormalised), as vLLM reports it."""

    def __init__(self, policy, config, tokenizer, delta):
        r = config.rollout
        super().__init__(policy, Sampling(r.max_new_tokens, r.temperature, r.top_p, r.top_k,
                                          tokenizer.eos_token_id, tokenizer.pad_token_id))
        self.delta, self.last = delta, None

    def generate(self, prompt_ids, prompt_mask, *, n, greedy):
        r = super().generate(prompt_ids, prompt_mask, n=n, greedy=greedy)
        with torch.no_grad():
            s = self.sampling
            lp, mass = response_logprobs(self.policy, r.prompt_ids, r.prompt_mask, r.response_ids, r.response_mask,
                                         temperature=s.temperature, support=(s.top_k, s.top_p))
        r.engine_logprobs = (lp - (0.0 if mass is None else mass) + self.delta) * r.response_mask
        self.last = r
        return r


def _grad_and_metrics(model, tokenizer, path, delta=None, **loss):
    torch.manual_seed(0)
    cfg = Config(algo="remax", output_dir=str(path / "run"))
    cfg.rollout.n_samples, cfg.rollout.max_new_tokens = 2, 6
    cfg.train.batch_size, cfg.train.micro_batch_size, cfg.train.lr = 2, 8, 1e-2
    cfg.train.steps, cfg.train.grad_clip, cfg.log.progress = 1, 0.0, False
    for k, v in loss.items():
        setattr(cfg.loss, k, v)
    policy = copy.deepcopy(model)
    engine = None if delta is None else SyntheticEngine(policy, cfg, tokenizer, delta)
    rows = [{"prompt": p, "target": "e"} for p in PROMPTS]
    t = Trainer(cfg, policy=policy, tokenizer=tokenizer, reward_fn=text_hash, rows=rows, backend=engine)
    metrics = t.step()
    return torch.cat([p.grad.flatten() for p in t.policy.parameters()]), metrics, engine


def test_truncated_is_scales_the_gradient_by_the_capped_ratio(tiny_model, tokenizer, tmp_path):
    plain, m0, _ = _grad_and_metrics(tiny_model, tokenizer, tmp_path / "plain")
    assert "rollout/is_weight_mean" not in m0  # HF backend: no engine log-probs, correction off
    assert plain.abs().max() > 1e-4
    # engine log-probs 0.1 lower: every token's weight is e^0.1 = 1.10517, under the cap of 2
    g, m, _ = _grad_and_metrics(tiny_model, tokenizer, tmp_path / "small", delta=-0.1)
    assert m["rollout/is_weight_mean"] == pytest.approx(math.exp(0.1), rel=1e-5)
    assert m["rollout/is_capped_frac"] == 0.0
    torch.testing.assert_close(g, math.exp(0.1) * plain, rtol=1e-4, atol=1e-7)
    # 1.0 lower: e^1 = 2.718 on every token, capped to 2
    g, m, _ = _grad_and_metrics(tiny_model, tokenizer, tmp_path / "big", delta=-1.0)
    assert m["rollout/is_weight_mean"] == pytest.approx(math.e, rel=1e-5) and m["rollout/is_capped_frac"] == 1.0
    torch.testing.assert_close(g, 2.0 * plain, rtol=1e-4, atol=1e-7)
    # switched off: the engine's log-probs are ignored
    g, m, _ = _grad_and_metrics(tiny_model, tokenizer, tmp_path / "off", delta=-1.0, tis="off")
    assert "rollout/is_weight_mean" not in m
    torch.testing.assert_close(g, plain, rtol=1e-5, atol=1e-8)


def test_explicit_tis_without_engine_log_probs_is_one_line(tiny_model, tokenizer, tmp_path):
    from remax.config import ConfigError

    with pytest.raises(ConfigError, match="--loss.tis token needs the rollout engine's log-probs"):
        make_trainer(tiny_model, tokenizer, tmp_path, algo="remax", tis="token")


def test_sequence_level_truncated_is(tiny_model, tokenizer, tmp_path):
    # weight of row i: exp(0.2 * T_i), capped at 2 (rows of 4 or more tokens: e^0.8 = 2.2255)
    _, m, engine = _grad_and_metrics(tiny_model, tokenizer, tmp_path, delta=-0.2, tis="sequence")
    lengths = engine.last.sampled().response_mask.sum(-1)  # (N,)
    raw = torch.exp(0.2 * lengths)
    assert m["rollout/is_weight_mean"] == pytest.approx(float((raw * lengths).sum() / lengths.sum()), rel=1e-4)
    assert m["rollout/is_capped_frac"] == pytest.approx(float(lengths[raw > 2].sum() / lengths.sum()), abs=1e-6)


def test_dapo_resumes_to_the_same_run(tmp_path, make_args):
    """Refill draws move the sampler inside a step; the checkpoint at the step boundary
    holds its position, so a resumed run draws what the uninterrupted one drew."""
    reward = tmp_path / "reward.py"
    reward.write_text(f"CONST = {sorted(CONST)!r}\n"
                      "def score(prompts, responses):\n"
                      "    return [0.5 if p in CONST else sum(c in 'aeiou' for c in r) / max(len(r), 1)\n"
                      "            for p, r in zip(prompts, responses)]\n")
    common = ["--log.save_every", "1", "--log.plot", "False", "--train.lr_schedule", "constant",
              "--loss.overlong_buffer", "0.5", "--reward.function", f"{reward}:score"]
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert main(["train", *make_args(straight, "dapo", steps=3), *common]) == 0
    assert main(["train", *make_args(split, "dapo", steps=1), *common]) == 0
    assert main(["train", *make_args(split, "dapo", steps=3), *common, "--resume", "auto"]) == 0
    read = lambda out: [{k: v for k, v in json.loads(l).items() if not k.startswith("perf/")}
                        for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert read(split) == read(straight)
    refills = [m["rollout/refill_batches"] for m in read(straight)]
    assert sum(refills) >= 1 and all(m["rollout/groups_kept"] == 2 for m in read(straight)), refills


def test_mask_truncated_zeroes_responses_without_eos(tiny_model, tokenizer, tmp_path):
    from remax.rollout import Rollout
    from remax.trainer.batch_fill import mask_truncated

    eos = 9
    r = Rollout(prompt_ids=torch.ones(3, 2, dtype=torch.long), prompt_mask=torch.ones(3, 2, dtype=torch.long),
                response_ids=torch.tensor([[5, eos, 0], [5, 6, 7], [eos, 0, 0]]),
                response_mask=torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0], [1.0, 0.0, 0.0]]),
                num_prompts=3, n=1, has_greedy=False)
    out, count = mask_truncated(r, eos)
    assert count == 1.0
    assert torch.equal(out.response_mask, torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, 0.0], [1.0, 0.0, 0.0]]))
    # in a step: every row without an EOS is counted and left out of the loss
    t = make_trainer(tiny_model, tokenizer, tmp_path, algo="dapo", mask_truncated=True, overlong_buffer=0.0)
    m = t.step()
    assert 0 <= m["rollout/truncated_masked"] <= 4 and m["loss/policy"] == m["loss/policy"]
