"""ReMax in one file: a tiny GPT-2 learns to say "o" a lot (Li et al., arXiv 2310.10505).

Read it top to bottom; it imports nothing from the remax package. For each prompt:
  1. sample a response a ~ pi(.|x)             (temperature, top-p)
  2. decode greedily a_bar = argmax pi(.|x)    (the baseline: same weights, no sampling)
  3. score both: r = reward(a), b = reward(a_bar)
  4. loss = -sum_t G_t * log pi(a_t | x, a_<t) / (number of response tokens),
     G_t = (r - b) - beta * (log pi(a_t) - log pi_ref(a_t))    (KL per token, authors' code)
One optimizer step per batch, on-policy: the log-probs of the loss are reused, detached,
for the KL, so there is no extra forward pass. The library (remax.trainer) does the
same thing with more options; tests/test_example.py checks both give the same loss.

Why the toy settings (a random-init model is not a pretrained LM): ReMax's baseline is the
greedy reward, and greedy quickly becomes "oodood..." while samples from a near-uniform
policy lag behind, so r - b < 0 for most samples. That is fine in expectation only if every
token can be sampled: with top_p < 1 the baseline keeps pushing probability into the tail
the sampler never draws (a pretrained LM's tail is tiny; here it is 10% of the mass), so
train() samples with top_p=1.0. Short responses (4 tokens) and a 40-token vocabulary keep
the credit for each token clear. Reward, first 10 -> last 10 steps: about 0.1 -> 0.9.

    python examples/remax_minimal.py
"""

from __future__ import annotations

import copy

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

TEXT = [
    "the day is good and the night is long",
    "a good word is a light unto my path",
    "the sea is wide and the wind is cold",
    "my heart is glad for the morning is good",
] * 25
PROMPTS = ["the day is", "a word is", "the sea is", "my heart is", "the night is", "the wind is"]
TARGET = "o"


def build_tokenizer() -> PreTrainedTokenizerFast:
    """Byte-level BPE trained on TEXT, 40 tokens over TEXT's own characters (no 256-byte
    alphabet, so 5 tokens of 40 contain an "o"); left padding is set at construction (it must be)."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=40, special_tokens=["<|endoftext|>", "<pad>"], show_progress=False)
    tok.train_from_iterator(TEXT, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<pad>",
                                   padding_side="left")


def build_model(tokenizer, seed: int = 0) -> GPT2LMHeadModel:
    cfg = GPT2Config(vocab_size=len(tokenizer), n_positions=64, n_embd=32, n_layer=2, n_head=2,
                     bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(seed)
    return GPT2LMHeadModel(cfg)


def reward(responses: list[str]) -> torch.Tensor:
    """Share of the response's characters that are TARGET: a dense stand-in for a reward model."""
    return torch.tensor([r.count(TARGET) / max(len(r), 1) for r in responses])


def response_mask(response_ids: torch.Tensor, eos_id: int) -> torch.Tensor:
    """1 on response tokens up to and including the first EOS, 0 after it."""
    is_eos = (response_ids == eos_id).long()
    return ((is_eos.cumsum(-1) - is_eos) == 0).float()  # (B, R)


@torch.no_grad()
def rollout(model, tokenizer, prompts, max_new_tokens=12, temperature=1.0, top_p=0.9):
    """Sampled and greedy responses. (The library does both in one generate call.)"""
    enc = tokenizer(prompts, return_tensors="pt", padding=True)
    common = dict(max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id,
                  eos_token_id=tokenizer.eos_token_id)
    sampled = model.generate(**enc, do_sample=True, temperature=temperature, top_p=top_p, top_k=0, **common)
    greedy = model.generate(**enc, do_sample=False, **common)  # the baseline: argmax, from the prompt alone
    P = enc["input_ids"].shape[1]
    return enc["input_ids"], enc["attention_mask"], sampled[:, P:], greedy[:, P:]


def decode(tokenizer, response_ids, mask) -> list[str]:
    return tokenizer.batch_decode([ids[: int(m.sum())] for ids, m in zip(response_ids, mask)],
                                  skip_special_tokens=True)


def logprobs(model, prompt_ids, prompt_mask, response_ids, mask, temperature=1.0) -> torch.Tensor:
    """log pi(a_t | x, a_<t) for each response token: (B, R)."""
    ids = torch.cat([prompt_ids, response_ids], dim=1)
    attn = torch.cat([prompt_mask, mask.long()], dim=1)
    # positions count real tokens only: left padding must not shift them
    pos = (torch.cat([prompt_mask, torch.ones_like(response_ids)], 1).cumsum(-1) - 1).clamp(min=0)
    logits = model(input_ids=ids, attention_mask=attn, position_ids=pos).logits.float() / temperature
    P = prompt_ids.shape[1]
    logits = logits[:, P - 1 : -1]  # the logits that predicted each response token
    lp = logits.gather(-1, response_ids.unsqueeze(-1)).squeeze(-1) - logits.logsumexp(-1)
    return lp * mask


def remax_loss(logp, ref_logp, mask, rewards, baseline_rewards, kl_coef):
    """ReMax loss with the per-token KL of the authors' code (gamma = 1, no clip)."""
    kl = (logp.detach() - ref_logp) * mask  # (B, R), k1 estimate, no grad
    G = (rewards - baseline_rewards).unsqueeze(-1) - kl_coef * kl  # (B, R)
    return -(G * logp * mask).sum() / mask.sum()


def train(steps=100, batch_size=24, lr=3e-3, kl_coef=0.02, seed=0, log=print,
          max_new_tokens=4, temperature=1.0, top_p=1.0):
    torch.manual_seed(seed)
    tokenizer = build_tokenizer()
    policy = build_model(tokenizer, seed).eval()  # dropout off: the loss must see the sampler's log-probs
    reference = copy.deepcopy(policy).eval().requires_grad_(False)
    opt = torch.optim.AdamW(policy.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.1)
    eos = tokenizer.eos_token_id
    history = []
    for step in range(steps):
        prompts = [PROMPTS[(step * batch_size + i) % len(PROMPTS)] for i in range(batch_size)]
        p_ids, p_mask, sampled, greedy = rollout(policy, tokenizer, prompts, max_new_tokens, temperature, top_p)
        s_mask, g_mask = response_mask(sampled, eos), response_mask(greedy, eos)
        r = reward(decode(tokenizer, sampled, s_mask))
        b = reward(decode(tokenizer, greedy, g_mask))
        with torch.no_grad():
            ref_lp = logprobs(reference, p_ids, p_mask, sampled, s_mask, temperature)
        # with grad: the only policy forward, at the sampling temperature
        lp = logprobs(policy, p_ids, p_mask, sampled, s_mask, temperature)
        loss = remax_loss(lp, ref_lp, s_mask, r, b, kl_coef)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(policy.parameters(), 1.0)
        opt.step()
        history.append(float(r.mean()))
        if step % 10 == 0 or step == steps - 1:
            log(f"step {step:3d}  reward {r.mean():.3f}  greedy {b.mean():.3f}  loss {loss.item():+.4f}")
    return policy, tokenizer, history


if __name__ == "__main__":
    torch.set_num_threads(1)  # a model this small runs fastest on one thread (several only contend)
    _, _, hist = train()
    print(f"mean reward, first 10 steps {sum(hist[:10]) / 10:.3f} -> last 10 steps {sum(hist[-10:]) / 10:.3f}")
