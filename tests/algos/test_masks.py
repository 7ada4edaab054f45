"""masks.response_mask: the first EOS is a response token, nothing after it is."""

import torch

from remax.algos import response_mask


def test_first_eos_included_rest_excluded():
    ids = torch.tensor([
        [5, 7, 2, 9, 2],  # EOS (2) at index 2: tokens 0..2 count
        [2, 5, 5, 5, 5],  # EOS first: only the EOS itself counts
        [5, 6, 7, 8, 9],  # never ends: every token counts
        [5, 2, 2, 2, 2],  # pad == eos (common): only the first 2 counts
    ])
    mask = response_mask(ids, eos_token_id=2)
    assert mask.dtype == torch.float32
    assert mask.shape == (4, 5)
    assert mask.tolist() == [
        [1, 1, 1, 0, 0],
        [1, 0, 0, 0, 0],
        [1, 1, 1, 1, 1],
        [1, 1, 0, 0, 0],
    ]


def test_multiple_eos_ids_first_of_any():
    ids = torch.tensor([
        [5, 3, 2, 9],  # 3 comes first
        [5, 6, 2, 3],  # 2 comes first
        [5, 6, 7, 8],  # neither
    ])
    mask = response_mask(ids, eos_token_id=[2, 3])
    assert mask.tolist() == [[1, 1, 0, 0], [1, 1, 1, 0], [1, 1, 1, 1]]
    # with a single id the same rows end elsewhere: the ids really are all used
    assert response_mask(ids, eos_token_id=2).tolist() == [[1, 1, 1, 0], [1, 1, 1, 0], [1, 1, 1, 1]]
