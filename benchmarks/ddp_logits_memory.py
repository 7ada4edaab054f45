"""The logits a DDP update forward materialises, before and after `logits_to_keep` went
through the wrapper, at a 150k vocabulary (Qwen2's 151,936).

`response_logprobs` asks the model for the last R + 1 positions only (`logits_to_keep`).
DDP's forward is `forward(*inputs, **kwargs)`, so the old signature check did not see
the keyword behind it and the lm-head produced (prompt + response) x vocabulary logits:
the largest tensor of the step. The check now looks through wrappers (DDP's `.module`,
peft's base model). This script wraps a 1-layer GPT-2 with that vocabulary in DDP (one
gloo process), runs one update forward of `--rows` rows of `--prompt` + `--response`
tokens both ways, and prints the lm-head output's shape and size as a forward hook sees
it, in float32 and under bf16 autocast (`--train.mixed_precision bf16`).

    .venv/bin/python benchmarks/ddp_logits_memory.py                 # 8 rows, 256 + 256 tokens (the authors' lengths)
"""

from __future__ import annotations

import argparse
import inspect
import os
import socket

import torch


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--vocab", type=int, default=151_936)
    ap.add_argument("--rows", type=int, default=8)
    ap.add_argument("--prompt", type=int, default=256)
    ap.add_argument("--response", type=int, default=256)
    args = ap.parse_args()

    from torch.nn.parallel import DistributedDataParallel as DDP
    from transformers import GPT2Config, GPT2LMHeadModel

    import remax.models.logprobs as lp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=0, world_size=1)
    cfg = GPT2Config(vocab_size=args.vocab, n_positions=args.prompt + args.response, n_embd=64, n_layer=1, n_head=2)
    ddp = DDP(GPT2LMHeadModel(cfg).eval())
    shapes = []
    ddp.module.lm_head.register_forward_hook(lambda m, i, o: shapes.append((tuple(o.shape), o.dtype, o.nbytes)))
    g = torch.Generator().manual_seed(0)
    n, p, r = args.rows, args.prompt, args.response
    prompt, response = torch.randint(0, args.vocab, (n, p), generator=g), torch.randint(0, args.vocab, (n, r), generator=g)
    pmask, rmask = torch.ones(n, p), torch.ones(n, r)

    fixed = lp._accepts
    old = lambda model, name: name in inspect.signature(model.forward).parameters  # noqa: E731 (the check before)
    print(f"vocab {args.vocab:,}, {n} rows x ({p} prompt + {r} response) tokens, one update forward through DDP")
    print("| precision | logits_to_keep | lm-head output | MiB |")
    print("|---|---|---|---|")
    saved = {}
    for name, dtype in (("float32", None), ("bf16 autocast", torch.bfloat16)):
        for label, check in (("lost behind DDP (before)", old), ("passed through (now)", fixed)):
            lp._accepts = check
            shapes.clear()
            with torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
                lp.response_logprobs(ddp, prompt, pmask, response, rmask)
            shape, out_dtype, nbytes = shapes[-1]
            saved.setdefault(name, []).append(nbytes)
            print(f"| {name} | {label} | {shape} {str(out_dtype).replace('torch.', '')} | {nbytes / 2**20:,.0f} |")
    lp._accepts = fixed
    for name, (before, now) in saved.items():
        print(f"{name}: {(before - now) / 2**20:,.0f} MiB less per micro-batch of {n} rows "
              f"({(before - now) / n / 2**20:,.1f} MiB per row; {before / now:.2f}x smaller logits)")
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
