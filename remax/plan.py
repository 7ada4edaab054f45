"""`remax plan`: peak memory per device for a run, predicted from the model's config alone.

    remax plan --model Qwen/Qwen2.5-0.5B --algo remax --batch 8 --max-new-tokens 256 --dtype bf16
    remax plan --model ./my-7b --algo ppo --batch 64 --zero 3 --gpus 8 --device-memory 80GB

Pure arithmetic: the parameter count comes from instantiating the architecture on the
meta device (`accelerate.init_empty_weights`: no weights are allocated or downloaded
beyond config.json), the rest from the shapes in the config. Per device, in bytes:

    static   = policy weights + gradients + Adam moments (two per trainable parameter)
               + reference (unless offloaded, or LoRA's adapters-off base) + critic (ppo: all
               three again) + reward model
    peak     = static - gradients + max(gradients + KV cache of the rollout,
                                         activations of one micro-batch [+ gradients when
                                         there are several micro-batches to accumulate],
                                         gradients + the Adam step's temporaries)

Mixed precision (--mixed-precision bf16, remax's --train.mixed_precision): the state stays
in --dtype (float32 master weights, gradients and moments), activations, the KV cache and
the LM head's output are 2 bytes except the float32 residual stream and norms
(`mixed_activation_bytes`), and autocast's bf16 copies of the trained matmul weights (2
bytes each) live from the update's forward through its backward.

Sharding divides weights (ZeRO-3 / FSDP FULL_SHARD), gradients (ZeRO >= 2) and Adam
moments (ZeRO >= 1) by the number of GPUs. `--fsdp` (remax's --train.strategy fsdp)
shards as ZeRO-3 and the frozen reference too (remax's DeepSpeed keeps a whole reference
on every GPU). With sharded weights the rollout gathers the whole policy on every GPU
(for generate: the other GPUs' shards, (1 - 1 / gpus) of it, come on top of the KV
cache); the reference's forward and the update gather one block at a time (not counted).
Activations per token per layer are the
tensors a decoder block keeps for backward, after Korthikanti et al. 2022 (arXiv
2205.05198) without their dropout masks: 8 h (two layer-norm inputs and outputs, q / k /
v, the attention output) + 5 I (h hidden, I the MLP width: GPT-2's tanh GELU keeps about
four I-sized tensors, Llama's gated SiLU as many, plus the down projection's input) +
2 heads x L attention scores (the softmax's input and output; none with --flash-attention).
With gradient checkpointing only each layer's input is kept, plus one layer recomputed at a
time. The log-prob head keeps
~4 float32 copies of the (rows, R, V) logits (the logits, their scaled copy, the
logsumexp's saved input and the gradient). ReMax's saving against PPO, with fp32 and Adam,
is 20 N bytes (policy 16 N + reference 4 N) against 36 N (+ critic 16 N).

Not counted: the CUDA context and allocator slack (~1 GB per GPU) and communication
buffers; the fit check keeps a 10% margin for them. Checked against measured peak memory
on CPU (`python -m remax.bench.plan_check`, with `--holdout` on a Qwen2.5-0.5B-shaped and a
Llama-shaped model that did not set the constants; benchmarks/README.md).
"""

from __future__ import annotations

import argparse
import dataclasses
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

from remax.errors import InputError

GB = 1024**3
DTYPE_BYTES = {"float32": 4, "fp32": 4, "bfloat16": 2, "bf16": 2, "float16": 2, "fp16": 2}
LOGIT_COPIES = 4  # float32 (rows, R, V) tensors alive at the log-prob head's peak


@dataclass(frozen=True)
class ModelShape:
    """What the arithmetic needs from a model config."""

    params: int  # N, tied weights counted once
    trunk_params: int  # the transformer without the LM head: the critic's trunk
    lora_params_per_rank: int  # sum over the trunk's linear layers of (in + out): LoRA on all of them adds r times this
    hidden: int
    layers: int
    intermediate: int
    kv_dim: int  # num_key_value_heads * head_dim
    vocab: int
    heads: int = 1
    largest_param: int = 0  # entries of the largest parameter tensor (often the embedding): the CPU Adam step's temporaries
    matmul_params: int = 0  # weights of matmuls (linear layers, the LM head; not a lookup-only embedding): autocast's copies


@dataclass
class PlanInputs:
    algo: str = "remax"
    batch: int = 8  # prompts per step, all GPUs together
    n_samples: int = 1
    prompt_tokens: int = 256
    max_new_tokens: int = 256
    micro_batch: int = 8
    lora_r: int = 0
    zero: int = 0
    gpus: int = 1
    dtype: str = "float32"
    reference_dtype: Optional[str] = None  # default: dtype
    reference_offload: bool = False
    gradient_checkpointing: bool = False
    flash_attention: bool = False  # True: no L x L attention scores kept (flash / memory-efficient SDPA on GPUs)
    mixed_precision: str = "no"  # --train.mixed_precision: no | bf16 | fp16 (float32 master weights, low-precision compute)
    foreach: bool = True  # torch's AdamW on GPUs (foreach); on CPU it loops over the tensors (see optimizer_step_bytes)
    fsdp: bool = False  # --train.strategy fsdp: ZeRO-3's sharding, and the reference sharded too
    device_memory_gb: Optional[float] = None


@dataclass
class Plan:
    """Bytes per device by component, and the peak."""

    parts: dict[str, float]
    static: float
    activations: float
    rollout: float
    peak: float
    inputs: PlanInputs
    shape: ModelShape

    @property
    def fits(self) -> Optional[bool]:
        limit = self.inputs.device_memory_gb
        return None if limit is None else self.peak <= 0.9 * limit * GB


# ------------------------------------------------------------- model shape
def load_model_config(spec: str) -> Any:
    """A transformers config from a directory (config.json), a config.json file, a remax
    run YAML (its model.policy), or a hub name already in the local cache."""
    from transformers import AutoConfig

    path = Path(spec).expanduser()
    if path.is_file() and path.suffix in (".yaml", ".yml"):
        from remax.config import load_config

        policy = load_config(path).model.policy
        if not policy:
            raise InputError(f"{path}: no model.policy in this run config; pass --model PATH_OR_NAME")
        return load_model_config(policy)
    from remax.models.loading import _looks_like_path

    if not path.exists() and _looks_like_path(spec):  # not "org/name": the hub's "Repo id must be..." misleads
        raise InputError(f"cannot read a model config from {spec!r}: the path does not exist; pass a directory holding config.json, a "
                         "config.json file, a run YAML, or a hub name")
    try:
        if path.is_file():
            return AutoConfig.from_pretrained(str(path.parent), **_config_file_kwargs(path))
        return AutoConfig.from_pretrained(str(path) if path.is_dir() else spec)
    except (OSError, ValueError) as err:
        reason = str(err).strip().splitlines()[0][:160] if str(err).strip() else type(err).__name__
        raise InputError(f"cannot read a model config from {spec!r} ({reason}); pass a directory holding "
                         "config.json, a config.json file, or a run YAML with model.policy") from None


def _config_file_kwargs(path: Path) -> dict[str, Any]:
    return {} if path.name == "config.json" else {"config_file_name": path.name}


def model_shape(config: Any) -> ModelShape:
    """Count parameters by building the architecture on the meta device (no memory)."""
    import torch
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM

    with init_empty_weights():
        model = AutoModelForCausalLM.from_config(config)
    model.tie_weights()  # from_config on the meta device leaves tied heads untied: count them once
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    hidden = int(getattr(text, "hidden_size", None) or text.n_embd)
    layers = int(getattr(text, "num_hidden_layers", None) or text.n_layer)
    heads = int(getattr(text, "num_attention_heads", None) or text.n_head)
    head_dim = int(getattr(text, "head_dim", None) or hidden // heads)
    kv_heads = int(getattr(text, "num_key_value_heads", None) or heads)
    inter = getattr(text, "intermediate_size", None) or getattr(text, "n_inner", None) or 4 * hidden
    lora = 0
    for module in model.base_model.modules():
        w = getattr(module, "weight", None)
        if isinstance(module, torch.nn.Linear) or type(module).__name__ == "Conv1D":
            lora += sum(w.shape)  # in + out features either way round
    # every matmul weight, the LM head too, a tied one once (the list holds them while ids are compared)
    weights = [m.weight for m in model.modules() if isinstance(m, torch.nn.Linear) or type(m).__name__ == "Conv1D"]
    matmul = {id(w): w.numel() for w in weights}
    return ModelShape(
        params=sum(p.numel() for p in model.parameters()),
        trunk_params=sum(p.numel() for p in model.base_model.parameters()),
        lora_params_per_rank=lora,
        hidden=hidden,
        layers=layers,
        intermediate=int(inter),
        kv_dim=kv_heads * head_dim,
        vocab=int(text.vocab_size),
        heads=heads,
        largest_param=max(p.numel() for p in model.parameters()),
        matmul_params=sum(matmul.values()),
    )


# -------------------------------------------------------------- arithmetic
def training_state_bytes(params: int, trainable: int, w: int, zero: int, gpus: int) -> dict[str, float]:
    """Weights, gradients and the two Adam moments (in the weights' dtype) per device."""
    shard_w = gpus if zero >= 3 else 1
    shard_g = gpus if zero >= 2 else 1
    shard_o = gpus if zero >= 1 else 1
    return {"weights": params * w / shard_w, "gradients": trainable * w / shard_g, "adam": 2 * trainable * w / shard_o}


def activation_bytes(s: ModelShape, rows: int, tokens: int, w: int, checkpointing: bool, flash: bool = False) -> float:
    """Tensors one micro-batch of `rows` x `tokens` keeps for backward, in the trunk."""
    per_token_layer = 8 * s.hidden + 5 * s.intermediate + (0 if flash else 2 * s.heads * tokens)  # elements
    if checkpointing:  # layer inputs kept, one layer recomputed at a time
        return rows * tokens * (s.layers * s.hidden + per_token_layer) * w
    return rows * tokens * s.layers * per_token_layer * w


def mixed_activation_bytes(s: ModelShape, rows: int, tokens: int, checkpointing: bool, flash: bool = False) -> float:
    """`activation_bytes` under bf16 / fp16 autocast with float32 weights: the same tensors
    at 2 bytes, except that the residual stream stays float32 (float32 embeddings + low-
    precision block outputs promote to float32), so the two norms' inputs and outputs (4 h
    elements) keep 4 bytes (+8 h bytes), and each linear saves its own low-precision copy
    of a float32 input (q / k / v or GPT-2's fused qkv, the MLP's input projections: about
    4 h elements, +8 h bytes): 2 x elements + 16 h bytes per token and layer."""
    per_token_layer = 2 * (8 * s.hidden + 5 * s.intermediate + (0 if flash else 2 * s.heads * tokens)) + 16 * s.hidden
    if checkpointing:  # the kept layer inputs are the float32 residual stream
        return rows * tokens * (4 * s.layers * s.hidden + per_token_layer)
    return rows * tokens * s.layers * per_token_layer


def logit_bytes(s: ModelShape, rows: int, response_tokens: int, mixed: bool = False) -> float:
    """The log-prob head's float32 copies of the (rows, R + 1, V) logits; under autocast the
    LM head's own output is low precision (2 bytes) and the float32 copies come on top."""
    return (LOGIT_COPIES * 4 + (2 if mixed else 0)) * rows * (response_tokens + 1) * s.vocab


def optimizer_step_bytes(s: ModelShape, trainable: int, w: int, foreach: bool, shard: int = 1) -> float:
    """Temporaries of one AdamW step, alive with weights, gradients and moments (after the
    activations are gone): torch's foreach AdamW (its default on GPUs) builds sqrt(v) for
    every trained tensor at once (one temporary the size of all of them); on CPU it loops
    over the tensors and `exp_avg_sq.sqrt() / bias_correction` holds two temporaries the
    size of the tensor at hand, at most the largest (a 151,936 x 896 embedding: 1.09 GB)."""
    if foreach:
        return trainable * w / shard
    return 2 * min(s.largest_param, trainable) * w


def kv_cache_bytes(s: ModelShape, rows: int, tokens: int, w: int) -> float:
    return 2 * s.layers * s.kv_dim * tokens * rows * w


def plan(shape: ModelShape, p: PlanInputs) -> Plan:
    """Peak memory per device for `p` on a model of `shape`."""
    if p.mixed_precision not in ("no", "bf16", "fp16"):
        raise InputError(f"--mixed-precision {p.mixed_precision!r} is not one of no, bf16, fp16")
    mixed = p.mixed_precision != "no"
    w = DTYPE_BYTES[p.dtype]
    w_ref = DTYPE_BYTES[p.reference_dtype or p.dtype]
    lora = p.lora_r * shape.lora_params_per_rank
    trainable = lora if p.lora_r else shape.params
    zero = 3 if p.fsdp else p.zero  # FSDP shards weights, gradients and moments as ZeRO-3 does
    parts = {f"policy {k}": v for k, v in training_state_bytes(shape.params + lora, trainable, w, zero, p.gpus).items()}
    # LoRA's reference is the base with the adapters off: no second copy; FSDP shards a reference copy
    shard_ref = p.gpus if p.fsdp else 1
    parts["reference"] = 0.0 if (p.reference_offload or p.lora_r) else shape.params * w_ref / shard_ref
    if p.algo == "ppo":
        critic = shape.trunk_params + shape.hidden + 1
        parts.update({f"critic {k}": v for k, v in training_state_bytes(critic, critic, w, zero, p.gpus).items()})
    static = sum(parts.values())
    prompts = max(p.batch // p.gpus, 1)
    greedy = 1 if p.algo == "remax" else 0
    rows = prompts * p.n_samples
    micro = min(p.micro_batch, rows)
    tokens = p.prompt_tokens + p.max_new_tokens
    trunks = 2 if p.algo == "ppo" else 1  # the critic's forward runs in the same micro-batch
    if mixed:
        act = trunks * mixed_activation_bytes(shape, micro, tokens, p.gradient_checkpointing, p.flash_attention)
    else:
        act = trunks * activation_bytes(shape, micro, tokens, w, p.gradient_checkpointing, p.flash_attention)
    act += logit_bytes(shape, micro, p.max_new_tokens, mixed)
    kv_w = 2 if mixed else w  # under autocast k and v come out of a low-precision linear
    rollout = kv_cache_bytes(shape, prompts * (p.n_samples + greedy), tokens, kv_w)
    parts["activations (one micro-batch)"] = act
    if mixed:
        # autocast's low-precision copies of the trained weights, kept from the update's forward
        # through its backward (the cache of casts, and the copies the matmuls save)
        copies = 2 * shape.matmul_params * (1 if not p.lora_r else 0)
        copies += 2 * (shape.trunk_params if p.algo == "ppo" else 0)
        parts["autocast weight copies"] = copies
        act += copies
    parts["rollout KV cache"] = rollout
    if zero >= 3 and p.gpus > 1:  # generate runs on the whole policy: the other GPUs' shards gathered for it
        parts["policy gathered for the rollout"] = gathered = (shape.params + lora) * w * (1 - 1 / p.gpus)
        rollout += gathered
    if mixed:  # no-grad forwards under autocast (rollout, reference) cast each weight as they use it: the LM head's
        parts["autocast cast of the LM head"] = head_cast = 2 * shape.vocab * shape.hidden
        rollout += head_cast
    trainable_all = trainable + (shape.trunk_params + shape.hidden + 1 if p.algo == "ppo" else 0)
    shard_o = p.gpus if zero >= 1 else 1
    parts["optimizer step temporaries"] = opt_step = optimizer_step_bytes(shape, trainable_all, w, p.foreach, shard_o)
    # Gradients are freed (zero_grad(set_to_none)) when an optimizer step starts and come
    # back during its backward while the activations go: the first micro-batch's forward
    # runs without them, later micro-batches (and the next rollout) with them.
    grads = sum(v for k, v in parts.items() if k.endswith("gradients"))
    update = act + (grads if -(-rows // micro) > 1 else 0)
    # the optimizer step comes after the backward has freed the activations: gradients alive
    peak = static - grads + max(grads + rollout, update, grads + opt_step)
    return Plan(parts, static, act, rollout, peak, p, shape)


def suggestions(shape: ModelShape, p: PlanInputs) -> list[tuple[str, float]]:
    """Changes that bring the peak under the device memory, each with its new peak."""
    tries = [
        ("--gradient-checkpointing", dict(gradient_checkpointing=True)),
        (f"--micro-batch {max(p.micro_batch // 4, 1)}", dict(micro_batch=max(p.micro_batch // 4, 1))),
        ("--reference-offload", dict(reference_offload=True)),
        ("--mixed-precision bf16", dict(mixed_precision="bf16")),
        ("--dtype bf16", dict(dtype="bf16")),
        ("--lora-r 16", dict(lora_r=16)),
        (f"--zero 3 --gpus {max(p.gpus, 8)}", dict(zero=3, gpus=max(p.gpus, 8))),
        (f"--fsdp --gpus {max(p.gpus, 8)}", dict(fsdp=True, gpus=max(p.gpus, 8))),
        ("--dtype bf16 --gradient-checkpointing --lora-r 16",
         dict(dtype="bf16", gradient_checkpointing=True, lora_r=16)),
    ]
    out = []
    for flag, change in tries:
        if all(getattr(p, k) == v for k, v in change.items()):
            continue
        if ("zero" in change and p.fsdp) or ("fsdp" in change and p.zero):
            continue  # one way of sharding at a time (the CLI takes --zero or --fsdp)
        new = plan(shape, dataclasses.replace(p, **change))
        if new.fits:
            out.append((flag, new.peak))
    return out


def ppo_vs_remax(params: int) -> str:
    n = params / GB
    return (f"fp32 + Adam, per the paper: ReMax 20N = {20 * n:.2f} GB (policy 16N + reference 4N), "
            f"PPO 36N = {36 * n:.2f} GB (+ critic 16N); N = {params / 1e6:.1f}M parameters")


def render(result: Plan) -> str:
    p = result.inputs
    lines = [f"remax plan: {p.algo}, {p.gpus} device(s), {'FSDP' if p.fsdp else f'ZeRO {p.zero}'}, {p.dtype}"
             f"{', ' + p.mixed_precision + ' mixed precision' if p.mixed_precision != 'no' else ''}"
             f"{', LoRA r=' + str(p.lora_r) if p.lora_r else ''}"
             f"{', gradient checkpointing' if p.gradient_checkpointing else ''}; per device:"]
    for name, value in result.parts.items():
        lines.append(f"  {name:<32} {value / GB:9.3f} GB")
    lines.append(f"  {'peak (see remax/plan.py)':<32} {result.peak / GB:9.3f} GB")
    if result.fits is not None:
        limit = p.device_memory_gb
        if result.fits:
            lines.append(f"fits in {limit:g} GB (with a 10% margin for the CUDA context and allocator)")
        else:
            lines.append(f"does NOT fit in {limit:g} GB (keeping a 10% margin); try:")
            fixes = suggestions(result.shape, p)
            lines += [f"  {flag:<48} -> {peak / GB:.3f} GB" for flag, peak in fixes] or ["  more devices or a smaller model"]
    lines.append(ppo_vs_remax(result.shape.params))
    return "\n".join(lines)


# ------------------------------------------------------------------- CLI
def parse_memory(text: str) -> float:
    """'80GB', '80', '24GiB', '512MB' -> GB (GiB)."""
    m = re.fullmatch(r"\s*([0-9.]+)\s*(gb|gib|g|mb|mib|m)?\s*", str(text).lower())
    if not m:
        raise InputError(f"--device-memory: expected a size like 80GB or 512MB, got {text!r}")
    value = float(m.group(1))
    return value / 1024 if (m.group(2) or "gb").startswith("m") else value


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2 (the CLI's InputError path)
        raise InputError(f"{message}; see remax plan --help")


def parse_plan_args(args: Sequence[str]) -> tuple[str, Optional[str], PlanInputs]:
    ap = _Parser(prog="remax plan", description="Predict peak memory per device before launching a run.")
    ap.add_argument("--model", required=True, help="directory with config.json, a config.json, a run YAML, or a cached hub name")
    ap.add_argument("--algo", default="remax", choices=["remax", "reinforce", "rloo", "grpo", "ppo"])
    ap.add_argument("--batch", type=int, default=8, help="prompts per step, all devices together")
    ap.add_argument("--n-samples", type=int, default=1, help="sampled responses per prompt")
    ap.add_argument("--prompt-tokens", type=int, default=256)
    ap.add_argument("--max-new-tokens", type=int, default=256)
    ap.add_argument("--micro-batch", type=int, default=8, help="rows per forward/backward (--train.micro_batch_size)")
    ap.add_argument("--lora-r", type=int, default=0)
    ap.add_argument("--zero", type=int, default=0, choices=[0, 1, 2, 3],
                    help="DeepSpeed ZeRO stage (3: weights sharded; remax keeps the reference whole)")
    ap.add_argument("--fsdp", action="store_true",
                    help="--train.strategy fsdp: weights, gradients, Adam moments and the reference sharded over --gpus")
    ap.add_argument("--gpus", type=int, default=1)
    ap.add_argument("--dtype", default="float32", choices=sorted(DTYPE_BYTES),
                    help="the weights' dtype (--model.dtype); float32 with --mixed-precision for fp32 master weights")
    ap.add_argument("--mixed-precision", default="no", choices=["no", "bf16", "fp16"],
                    help="--train.mixed_precision: low-precision compute over --dtype weights")
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"],
                    help="where it runs: torch's AdamW step keeps different temporaries (foreach on GPUs)")
    ap.add_argument("--reference-dtype", default=None, choices=sorted(DTYPE_BYTES))
    ap.add_argument("--reference-offload", action="store_true")
    ap.add_argument("--gradient-checkpointing", action="store_true")
    ap.add_argument("--flash-attention", action="store_true", help="no L x L attention scores kept (GPU flash / SDPA)")
    ap.add_argument("--reward-model", default=None, help="a reward model's directory or config, counted in its --dtype")
    ap.add_argument("--device-memory", default=None, help="e.g. 80GB: say whether it fits and what to change")
    a = ap.parse_args(list(args))
    for name in ("batch", "n_samples", "prompt_tokens", "max_new_tokens", "micro_batch", "gpus"):
        if getattr(a, name) < 1:
            raise InputError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(a, name)}")
    if a.lora_r < 0:
        raise InputError(f"--lora-r must be 0 (off) or more, got {a.lora_r}")
    if a.fsdp and a.zero:
        raise InputError(f"--fsdp shards as ZeRO-3 by itself; drop --zero {a.zero} (or --fsdp for DeepSpeed)")
    inputs = PlanInputs(
        algo=a.algo, batch=a.batch, n_samples=a.n_samples, prompt_tokens=a.prompt_tokens,
        max_new_tokens=a.max_new_tokens, micro_batch=a.micro_batch, lora_r=a.lora_r, zero=a.zero, gpus=a.gpus,
        dtype=a.dtype, reference_dtype=a.reference_dtype, reference_offload=a.reference_offload,
        gradient_checkpointing=a.gradient_checkpointing, flash_attention=a.flash_attention,
        mixed_precision=a.mixed_precision, foreach=a.device == "cuda", fsdp=a.fsdp,
        device_memory_gb=parse_memory(a.device_memory) if a.device_memory else None,
    )
    return a.model, a.reward_model, inputs


def main(args: Sequence[str]) -> int:
    model, reward_model, inputs = parse_plan_args(args)
    result = plan(model_shape(load_model_config(model)), inputs)
    if reward_model:
        reward = model_shape(load_model_config(reward_model)).params * DTYPE_BYTES[inputs.dtype]
        result.parts["reward model"] = reward
        result = dataclasses.replace(result, static=result.static + reward, peak=result.peak + reward)
    print(render(result))
    return 0 if result.fits is not False else 1


__all__ = ["ModelShape", "Plan", "PlanInputs", "activation_bytes", "kv_cache_bytes", "load_model_config", "logit_bytes",
           "main", "mixed_activation_bytes", "model_shape", "optimizer_step_bytes", "parse_memory", "plan", "ppo_vs_remax", "render", "suggestions", "training_state_bytes"]
