"""`remax bench speed --trl`: TRL's GRPOTrainer on the same model and settings as remax.

This is the only module that imports `trl` (install it with `pip install 'remax[bench]'`);
remax never needs it to train. `measure_trl` is a bench worker (run in its own subprocess
by remax.bench.common.run_worker) and returns figures in the same layout as
`remax.bench.common.measure_trainer`, so the speed bench summarises both alike.

Matching settings: the same save_pretrained directory (TRL rebuilds its reference model
from the model's path, so the policy is given as that path), prompts x samples
(per_device_train_batch_size = prompts * n rows in one micro-batch, num_generations = n),
max new tokens, temperature 1, top-p 0.9, no top-k, KL beta = kl_coef, lr 1e-6,
num_iterations 1 (one optimizer step per generation batch, as remax), the precision of
the remax runs it races (spec["mixed_precision"]: no -> fp32, bf16 -> `bf16=True`, TRL's
autocast over float32 master weights, as remax's --train.mixed_precision bf16; TRL's own
default is bf16), no gradient checkpointing (TRL defaults to it), no vLLM, dropout off, the
VADER reward. TRL's own loss_type and reward scaling stay at their defaults.
"""

from __future__ import annotations

import tempfile
import time
from typing import Any

from remax.errors import InputError

INSTALL_HINT = "pip install 'remax[bench]'"


def require_trl() -> None:
    """InputError, one line, when TRL cannot be imported."""
    try:
        import trl  # noqa: F401
    except ImportError:
        raise InputError(f"--trl needs TRL, which is not installed; {INSTALL_HINT}") from None


def _timer_callback(record: list[dict[str, Any]]):
    """A TrainerCallback that times each optimizer step (generation included: GRPOTrainer
    generates inside training_step) and reads the step's completion lengths from its log."""
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            self.start = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            record.append({"perf/step_s": time.perf_counter() - self.start})

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "completions/mean_length" in logs and record:
                record[-1]["mean_length"] = float(logs["completions/mean_length"])

    return StepTimer()


def grpo_config(spec: dict[str, Any], output_dir: str):
    """GRPOConfig at the settings remax's bench uses (see the module docstring)."""
    from trl import GRPOConfig

    rows = spec["prompts"] * spec["n"]
    mode = spec.get("mixed_precision", "no")
    return GRPOConfig(
        output_dir=output_dir, max_steps=spec["warmup"] + spec["steps"], per_device_train_batch_size=rows,
        gradient_accumulation_steps=1, num_generations=spec["n"], max_completion_length=spec["max_new_tokens"],
        temperature=1.0, top_p=0.9, top_k=0, beta=spec["kl_coef"], num_iterations=1, learning_rate=1e-6,
        bf16=mode == "bf16", fp16=mode == "fp16", gradient_checkpointing=False, use_vllm=False, disable_dropout=True,
        use_cpu=spec["device"] == "cpu", seed=spec["seed"], data_seed=spec["seed"], report_to="none",
        save_strategy="no", logging_steps=1, log_completions=False, dataloader_num_workers=0,
        model_init_kwargs={"dtype": "float32"}, disable_tqdm=True,
    )


def measure_trl(spec: dict[str, Any]) -> dict[str, Any]:
    """Worker: GRPOTrainer on spec["model_dir"] for warmup + steps optimizer steps; returns
    per-step seconds and sampled-token counts (mean completion length x rows; every TRL
    row is a sampled, trained-on row) and peak memory, as measure_trainer does."""
    import torch
    from datasets import Dataset
    from transformers import AutoTokenizer
    from trl import GRPOTrainer

    from remax.bench.common import bench_prompts, matmul_gflops, peak_rss_mb, resolve_device, set_threads
    from remax.rewards import VaderReward

    device = resolve_device(spec["device"])
    set_threads(spec.get("threads", 0))
    spec = dict(spec, device=device)
    gflops = matmul_gflops(device)
    vader = VaderReward()

    def vader_reward(prompts, completions, **_):
        return vader(list(prompts), list(completions)).tolist()

    dataset = Dataset.from_dict({"prompt": bench_prompts(256, spec["seed"])})
    base_mb = peak_rss_mb()
    tokenizer = AutoTokenizer.from_pretrained(spec["model_dir"])
    record: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="remax-bench-trl-") as out:
        trainer = GRPOTrainer(model=spec["model_dir"], reward_funcs=vader_reward, args=grpo_config(spec, out),
                              train_dataset=dataset, processing_class=tokenizer,
                              callbacks=[_timer_callback(record)])
        trainer.train()
        mixed = str(trainer.accelerator.mixed_precision)  # what TRL's accelerator ran: no / bf16 / fp16
    rows = spec["prompts"] * spec["n"]
    steps = [{"perf/step_s": r["perf/step_s"], "tokens/sampled": r["mean_length"] * rows,
              "tokens/generated": r["mean_length"] * rows} for r in record[spec["warmup"]:]]
    peak = torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else peak_rss_mb()
    return {"algo": "trl-grpo", "prompts": spec["prompts"], "n": spec["n"], "device": device,
            "matmul_gflops": gflops, "base_rss_mb": base_mb, "peak_mem_mb": peak, "mixed_precision": mixed,
            "steps": steps}
