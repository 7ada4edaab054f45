"""ValueModel: PPO's critic, a separate copy of the policy trunk plus a scalar head."""

from __future__ import annotations

import torch

from remax.models import ValueModel, response_values
from remax.rollout import position_ids_for

PROMPTS = ["And God said", "The Lord is my shepherd; I", "Love"]


def batch(tokenizer):
    enc = tokenizer(PROMPTS, return_tensors="pt", padding=True)
    response = torch.tensor([[5, 7, 9, 0, 1], [11, 0, 1, 1, 1], [13, 17, 19, 23, 29]])  # (3, 5); EOS id 0
    rmask = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 0, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.float32)
    return enc.input_ids, enc.attention_mask, response, rmask


def test_from_policy_shares_no_parameter(tiny_model):
    critic = ValueModel.from_policy(tiny_model)
    policy_ptrs = {p.data_ptr() for p in tiny_model.parameters()}
    assert all(p.data_ptr() not in policy_ptrs for p in critic.parameters())
    assert all(p.requires_grad for p in critic.parameters())
    # the trunk starts equal to the policy's
    for (name, p), (_, q) in zip(critic.trunk.named_parameters(), tiny_model.transformer.named_parameters()):
        assert torch.equal(p, q), name


def test_shapes_and_positions(tokenizer, tiny_model):
    critic = ValueModel.from_policy(tiny_model).eval()
    ids, mask, response, rmask = batch(tokenizer)
    P, R = ids.shape[1], response.shape[1]
    full = critic(torch.cat([ids, response], 1), torch.cat([mask, rmask.long()], 1), position_ids_for(mask, R))
    assert full.shape == (3, P + R) and full.dtype == torch.float32
    values = response_values(critic, ids, mask, response, rmask)
    assert values.shape == (3, R)
    # the value before response token t sits at position P-1+t; 0 outside the mask
    torch.testing.assert_close(values, full[:, P - 1 : P + R - 1] * rmask)
    assert (values[rmask == 0] == 0).all() and (values[rmask == 1] != 0).all()


def test_save_load_round_trip(tmp_path, tokenizer, tiny_model):
    critic = ValueModel.from_policy(tiny_model).eval()
    with torch.no_grad():
        critic.head.bias.fill_(0.25)  # a head that differs from any fresh init
    critic.save_pretrained(tmp_path)
    assert (tmp_path / "value_head.safetensors").is_file()
    loaded = ValueModel.from_pretrained(tmp_path).eval()
    ids, mask, response, rmask = batch(tokenizer)
    torch.testing.assert_close(
        response_values(loaded, ids, mask, response, rmask), response_values(critic, ids, mask, response, rmask),
        atol=0, rtol=0,
    )


def test_from_a_policy_checkpoint(tmp_path, tokenizer, tiny_model):
    tiny_model.save_pretrained(tmp_path)  # a causal-LM checkpoint: no value head file
    critic = ValueModel.from_pretrained(tmp_path).eval()
    ids, mask, _, _ = batch(tokenizer)
    pos = position_ids_for(mask, 0)
    expected = tiny_model.transformer(input_ids=ids, attention_mask=mask, position_ids=pos).last_hidden_state
    got = critic.trunk(input_ids=ids, attention_mask=mask, position_ids=pos).last_hidden_state
    torch.testing.assert_close(got, expected)
