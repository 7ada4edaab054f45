"""Rollout generation: prompts in, sampled and greedy responses plus masks out.

ReMax (Li et al., arXiv 2310.10505, Algorithm 1) needs, for every prompt x, samples
a ~ pi(.|x) and the greedy response a_bar = argmax-decode pi(.|x) from the same weights.
`generate_rollout` produces both in one decode loop. The default decoder
(`remax.rollout.decode`, `rollout.hf_decoder fast`) prefills each prompt once, shares its
KV cache with its n sampled rows and its greedy row, and drops rows from the batch as they
end. The reference decoder (`generate`) is ONE `model.generate` call: each prompt is
repeated n times for the samples, the B prompts are appended once more as greedy rows,
and a logits processor forces those rows to argmax decoding while the sampled rows follow
the temperature / top-p / top-k given. Both give the same greedy rows token for token
and the same sampling distribution.

Departures from the paper and pitfalls avoided:
- the greedy baseline is forced to argmax by a processor, not by hoping the decoding
  settings are greedy (a known bug elsewhere: the "greedy" baseline silently sampled);
- the greedy rows start from the prompt alone, never from prompt + sampled response;
- n > 1 samples share one greedy row per prompt (the layout is documented on `Rollout`).

This is the only place that decodes with the policy in-process: a vLLM backend can plug
in behind `generate_rollout` with the same signature and return the same `Rollout`.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, Optional, Sequence

import torch
from transformers import LogitsProcessor, LogitsProcessorList

from remax.algos.masks import response_mask as make_response_mask
from remax.rollout.decode import decode_shared_prefix
from remax.rollout.logits import FiniteLogitsCheck

DECODERS = ("fast", "generate")  # rollout.hf_decoder


@dataclass
class Rollout:
    """A batch of prompts and their responses, on the policy's device.

    Row layout: rows [i*n, (i+1)*n) are prompt i's n samples (i < B = num_prompts); then,
    if has_greedy, B greedy rows with prompt i at row B*n + i."""

    prompt_ids: torch.Tensor  # (N, P) left-padded
    prompt_mask: torch.Tensor  # (N, P) long, 1 on real prompt tokens
    response_ids: torch.Tensor  # (N, R) pad_token_id after the first EOS
    response_mask: torch.Tensor  # (N, R) float32, 1 up to and including the first EOS
    num_prompts: int  # B
    n: int  # sampled responses per prompt
    has_greedy: bool
    # (N, R) float32: the sampler's own log-probs of the response tokens (0 where the mask
    # is 0), from a backend that reports them (vLLM); None for HF generate. Logged against
    # the trainer's log-probs and usable for truncated importance sampling, never trusted
    # as the update's log-probs.
    engine_logprobs: Optional[torch.Tensor] = None

    def __post_init__(self) -> None:
        # catches the "n samples share one greedy baseline" batch-size mismatch early
        expected = self.num_prompts * (self.n + int(self.has_greedy))
        rows = self.prompt_ids.shape[0]
        if rows != expected or self.response_ids.shape[0] != rows:
            raise ValueError(
                f"Rollout has {rows} prompt rows and {self.response_ids.shape[0]} response rows, "
                f"expected {expected} = num_prompts {self.num_prompts} * (n {self.n} + greedy {int(self.has_greedy)})"
            )
        if self.engine_logprobs is not None and self.engine_logprobs.shape != self.response_ids.shape:
            raise ValueError(f"engine_logprobs {tuple(self.engine_logprobs.shape)} must match response_ids "
                             f"{tuple(self.response_ids.shape)}")

    def __len__(self) -> int:
        return self.prompt_ids.shape[0]

    def _rows(self, rows, num_prompts: int, n: int, has_greedy: bool) -> "Rollout":
        return Rollout(
            prompt_ids=self.prompt_ids[rows],
            prompt_mask=self.prompt_mask[rows],
            response_ids=self.response_ids[rows],
            response_mask=self.response_mask[rows],
            num_prompts=num_prompts,
            n=n,
            has_greedy=has_greedy,
            engine_logprobs=None if self.engine_logprobs is None else self.engine_logprobs[rows],
        )

    def sampled(self) -> "Rollout":
        """The B*n sampled rows only, same layout, has_greedy False."""
        return self._rows(slice(0, self.num_prompts * self.n), self.num_prompts, self.n, False)

    def greedy(self) -> "Rollout":
        """The B greedy rows only (row i is prompt i), as a Rollout with n=1."""
        if not self.has_greedy:
            raise ValueError("this Rollout has no greedy rows (generate_rollout was called with greedy=False)")
        start = self.num_prompts * self.n
        return self._rows(slice(start, start + self.num_prompts), self.num_prompts, 1, False)

    def select(self, rows: torch.Tensor | slice | Sequence[int]) -> "Rollout":
        """A subset of rows, e.g. a micro-batch. The result is a flat bag of rows
        (num_prompts = its row count, n = 1, has_greedy False): the prompt/sample
        layout does not survive an arbitrary selection, so do group maths before."""
        if not isinstance(rows, slice):
            rows = torch.as_tensor(rows, dtype=torch.long, device=self.prompt_ids.device)
        count = self.prompt_ids[rows].shape[0]
        return self._rows(rows, count, 1, False)

    def model_inputs(self) -> dict[str, torch.Tensor]:
        """input_ids, attention_mask, position_ids (N, P+R) for a forward over all rows."""
        return model_inputs(self.prompt_ids, self.prompt_mask, self.response_ids, self.response_mask)

    @property
    def input_ids(self) -> torch.Tensor:
        return torch.cat([self.prompt_ids, self.response_ids], dim=1)  # (N, P+R)

    @property
    def attention_mask(self) -> torch.Tensor:
        # tokens after the first EOS are masked out: no token that counts attends to them
        return torch.cat([self.prompt_mask.long(), self.response_mask.long()], dim=1)  # (N, P+R)

    @property
    def position_ids(self) -> torch.Tensor:
        """Positions counted from the first real prompt token, as `generate` counts them:
        left padding must not shift positions. Computed on cat(prompt_mask, ones) so that
        positions after EOS keep increasing exactly as they did during generation."""
        return position_ids_for(self.prompt_mask, self.response_ids.shape[1])  # (N, P+R)


def position_ids_for(prompt_mask: torch.Tensor, response_len: int) -> torch.Tensor:
    """(N, P) prompt mask -> (N, P+R) position ids; left pads get 0 (they are masked)."""
    ones = prompt_mask.new_ones(prompt_mask.shape[0], response_len)
    mask = torch.cat([prompt_mask, ones], dim=1)  # (N, P+R)
    return (mask.long().cumsum(-1) - 1).clamp(min=0)


def model_inputs(
    prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, response_ids: torch.Tensor, response_mask: torch.Tensor
) -> dict[str, torch.Tensor]:
    """input_ids, attention_mask, position_ids (each (N, P+R)) for one forward pass over
    prompt + response, positioned exactly as `generate` positioned them."""
    return {
        "input_ids": torch.cat([prompt_ids, response_ids], dim=1),
        "attention_mask": torch.cat([prompt_mask.long(), response_mask.long()], dim=1),
        "position_ids": position_ids_for(prompt_mask, response_ids.shape[1]),
    }


class ArgmaxRowsProcessor(LogitsProcessor):
    """Sets every logit but the row's argmax to -inf on the rows in `row_mask`.

    Order: in transformers 5 (`GenerationMixin._get_logits_processor`) the processors
    passed by the user run right after the built-in non-sampling processors and BEFORE
    the sampling warpers (temperature, top-k, top-p, min-p, ...). The argmax survives
    them: -inf / T stays -inf and the kept logit stays finite, so the row's softmax is
    one-hot; top-k and top-p always keep the most likely token (min_tokens_to_keep=1).
    Were the order reversed, the argmax would still be the raw argmax: temperature
    is monotonic and top-k / top-p never drop the top token. Either way the row is
    argmax decoding, token for token what `do_sample=False` gives (same tie-break,
    `torch.argmax`, first index)."""

    def __init__(self, row_mask: torch.Tensor):
        self.row_mask = row_mask  # (N,) bool

    def __call__(self, input_ids: torch.LongTensor, scores: torch.Tensor) -> torch.Tensor:
        top = scores.argmax(dim=-1, keepdim=True)  # (N, 1)
        not_top = torch.ones_like(scores, dtype=torch.bool).scatter_(-1, top, False)  # (N, V)
        drop = not_top & self.row_mask.to(scores.device)[:, None]
        return scores.masked_fill(drop, float("-inf"))


# Settings that a checkpoint's generation_config.json could carry and that would change
# the sampling distribution (so that log-probs computed later no longer describe the
# sampler) or the shape of the output. Passed explicitly: transformers 5 fills every
# unset field from the model's generation_config, then from global defaults (top_k=50!).
_NEUTRAL_GENERATE_KWARGS = dict(
    num_beams=1,
    num_return_sequences=1,
    repetition_penalty=1.0,
    no_repeat_ngram_size=0,
    min_length=0,
    min_new_tokens=None,
    min_p=None,
    top_h=None,
    typical_p=1.0,
    epsilon_cutoff=0.0,
    eta_cutoff=0.0,
    bad_words_ids=None,
    suppress_tokens=None,
    begin_suppress_tokens=None,
    forced_bos_token_id=None,
    forced_eos_token_id=None,
    sequence_bias=None,
    guidance_scale=None,
    return_dict_in_generate=False,
    output_scores=False,
    output_logits=False,
    use_cache=True,
)


def _check_args(n: int, greedy: bool, temperature: float, top_p: float, top_k: int, max_new_tokens: int) -> None:
    if n < 0 or (n == 0 and not greedy):
        raise ValueError(f"need n >= 1 sampled responses (or n=0 with greedy=True), got n={n}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0 (greedy rows come from greedy=True), got {temperature}")
    if not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    if top_k < 0 or max_new_tokens < 1:
        raise ValueError(f"need top_k >= 0 and max_new_tokens >= 1, got {top_k}, {max_new_tokens}")


@contextmanager
def eval_mode(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """`model.eval()` for the block, then every module's flags back as they were found:
    `training` per module and `gradient_checkpointing` where a module has one.

    `model.train(flag)` afterwards would not do: it sets ONE flag on every module, while
    the trainer keeps the model in eval mode with only its checkpointing layers in
    training mode (`remax.trainer.memory`), so a plain `train(False)` silently switches
    gradient checkpointing off (issue 15, item 6). Everything that runs the policy in
    eval mode for a moment (generation, the vLLM probe) goes through this."""
    found = [(m, m.training, getattr(m, "gradient_checkpointing", None)) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, training, checkpointing in found:
            module.training = training
            if checkpointing is not None:
                module.gradient_checkpointing = checkpointing


@torch.no_grad()  # not inference_mode: its tensors cannot enter a later forward with grad
def generate_rollout(
    model,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    *,
    n: int = 1,
    greedy: bool = False,
    max_new_tokens: int = 32,
    temperature: float = 1.0,
    top_p: float = 1.0,
    top_k: int = 0,
    eos_token_id: int | Sequence[int],
    pad_token_id: int,
    decoder: str = "fast",
) -> Rollout:
    """Sample n responses per prompt and, if `greedy`, one argmax response per prompt.

    prompt_ids, prompt_mask: (B, P) left-padded. top_k=0 disables top-k. Stops at EOS or
    after max_new_tokens. The model runs in eval mode (no dropout) and is restored to
    its previous train/eval state afterwards. Returns a Rollout on the model's device.

    decoder: 'fast' (`remax.rollout.decode`: each prompt prefilled once for all its rows,
    finished rows out of the batch; falls back to `generate` for a model whose cache
    cannot be shared) or 'generate' (one `model.generate` call, the reference)."""
    _check_args(n, greedy, temperature, top_p, top_k, max_new_tokens)
    if decoder not in DECODERS:
        raise ValueError(f"decoder must be one of {', '.join(DECODERS)}, got {decoder!r}")
    device = next(model.parameters()).device
    prompt_ids, prompt_mask = prompt_ids.to(device), prompt_mask.to(device).long()
    B = prompt_ids.shape[0]

    # rows [i*n, (i+1)*n) sample prompt i; rows B*n + i decode prompt i greedily
    parts_ids = [prompt_ids.repeat_interleave(n, dim=0)] + ([prompt_ids] if greedy else [])
    parts_mask = [prompt_mask.repeat_interleave(n, dim=0)] + ([prompt_mask] if greedy else [])
    all_ids, all_mask = torch.cat(parts_ids), torch.cat(parts_mask)  # (N, P)
    is_greedy_row = torch.arange(all_ids.shape[0], device=device) >= B * n  # (N,)

    with eval_mode(model):
        response_ids = None
        if decoder == "fast":
            response_ids = decode_shared_prefix(
                model, prompt_ids, prompt_mask, n=n, greedy=greedy, max_new_tokens=max_new_tokens,
                temperature=temperature, top_p=top_p, top_k=top_k, eos_token_id=eos_token_id,
                pad_token_id=pad_token_id)  # (N, R), or None: this model's cache cannot be shared
        if response_ids is None:
            response_ids = _generate(model, all_ids, all_mask, is_greedy_row, max_new_tokens=max_new_tokens,
                                     temperature=temperature, top_p=top_p, top_k=top_k,
                                     eos_token_id=eos_token_id, pad_token_id=pad_token_id)
    mask = make_response_mask(response_ids, eos_token_id)  # (N, R) float32
    # generate already pads finished rows; enforce it so other backends match exactly
    response_ids = response_ids.masked_fill(mask == 0, pad_token_id)
    return Rollout(all_ids, all_mask, response_ids, mask, num_prompts=B, n=n, has_greedy=greedy)


def _generate(model, all_ids, all_mask, is_greedy_row, *, max_new_tokens, temperature, top_p, top_k, eos_token_id,
              pad_token_id) -> torch.Tensor:
    """(N, P) rows in Rollout's layout -> (N, R) response ids from ONE `model.generate` call."""
    out = model.generate(
        input_ids=all_ids,
        attention_mask=all_mask,
        do_sample=True,
        temperature=temperature,
        top_p=top_p,
        # 0 switches TopKLogitsWarper off. None works as a kwarg too, but in a GenerationConfig
        # object None means "unset" and becomes the global default top_k=50
        top_k=top_k,
        max_new_tokens=max_new_tokens,
        eos_token_id=eos_token_id if isinstance(eos_token_id, int) else list(eos_token_id),  # stops on any
        pad_token_id=pad_token_id,
        logits_processor=LogitsProcessorList([FiniteLogitsCheck(), ArgmaxRowsProcessor(is_greedy_row)]),
        **_NEUTRAL_GENERATE_KWARGS,
    )  # (N, P+R)
    return out[:, all_ids.shape[1] :]  # (N, R), R <= max_new_tokens

