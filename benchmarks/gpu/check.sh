#!/usr/bin/env bash
# One-GPU check of remax, no downloads, under 8 minutes: a ~0.5B Qwen2-shaped model (random
# init) in bf16 mixed precision, ReMax vs PPO (step time, peak max_memory_allocated,
# tokens/s), and the vLLM backend with its weight push and probe when vllm is importable.
# Prints a markdown table (benchmarks/gpu/check.py says what each column is).
#
#   bash benchmarks/gpu/check.sh                 # from the repository root
#   PYTHON=.venv-vllm/bin/python bash benchmarks/gpu/check.sh   # a venv with vllm
#
# With no CUDA device: one line saying so, exit 0. Exit 1 if a run failed.
set -euo pipefail
cd "$(dirname "$0")/../.."
PYTHON="${PYTHON:-}"
if [ -z "$PYTHON" ]; then
  if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
# the whole check stops at 8 minutes, whatever a run does
exec timeout --signal=TERM --kill-after=10 480 "$PYTHON" benchmarks/gpu/check.py "$@"
