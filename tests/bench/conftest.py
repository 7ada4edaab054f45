"""A tiny bench model directory, built once per session (tokenizer trained on the KJV
Bible, random GPT-2 weights, save_pretrained), as `remax bench` builds its sizes."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def bench_root(tmp_path_factory):
    from remax.bench.common import prepare_model_dir

    root = tmp_path_factory.mktemp("bench-models")
    prepare_model_dir("tiny", root)
    return root


@pytest.fixture(scope="session")
def tiny_dir(bench_root):
    return bench_root / "tiny-seed0"


@pytest.fixture
def varying_reward_task(tiny_dir):
    """(task, {0: weights}, config) for the gradient-variance estimates: 4 prompts on the tiny
    model, a reward that varies with the sampled text (in [0, 1]), ReMax and REINFORCE."""
    from remax.bench import quality
    from remax.models import load_tokenizer

    def reward(prompts, responses):  # varies with the sampled text, in [0, 1]
        return [(len(r) % 5) / 4 for r in responses]

    prompts = ["In the beginning", "And God said", "The LORD is", "Blessed are the"]
    task = quality.Task(str(tiny_dir), load_tokenizer(str(tiny_dir)), [{"prompt": p} for p in prompts], [], reward)
    snapshot = {k: v.clone() for k, v in quality.load_policy(str(tiny_dir)).state_dict().items()}
    cfg = quality.QualityConfig(grad_algos=("remax", "reinforce"), grad_samples=3, batch_size=4, max_new_tokens=4)
    return task, {0: snapshot}, cfg
