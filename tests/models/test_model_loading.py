"""Loading the policy and tokenizer from local directories; the frozen reference."""

from __future__ import annotations

import pytest
import torch

from remax.models import load_causal_lm, load_tokenizer, make_reference, resolve_device

TEXT = "And God said, Let there be light"


def test_load_tokenizer_and_model_from_a_local_directory(tmp_path, capfd, tokenizer, tiny_model):
    tokenizer.save_pretrained(tmp_path)
    tiny_model.save_pretrained(tmp_path)
    capfd.readouterr()
    tok = load_tokenizer(tmp_path)
    assert tok.padding_side == "left" and tok.pad_token_id == tokenizer.pad_token_id
    assert tok(TEXT).input_ids == tokenizer(TEXT).input_ids

    model = load_causal_lm(str(tmp_path), dtype="float32", device="cpu")
    assert capfd.readouterr().err == ""  # transformers 5's "Loading weights" bar is off
    assert not model.training and next(model.parameters()).dtype == torch.float32
    ids = torch.tensor([tokenizer(TEXT).input_ids])
    torch.testing.assert_close(model(input_ids=ids).logits, tiny_model(input_ids=ids).logits, atol=0, rtol=0)
    assert next(load_causal_lm(tmp_path, dtype="bfloat16").parameters()).dtype == torch.bfloat16


def test_missing_pad_token_falls_back_to_eos(tmp_path, tokenizer):
    tok = load_tokenizer_without_pad(tmp_path, tokenizer)
    assert tok.pad_token == tok.eos_token and tok.padding_side == "left"


def load_tokenizer_without_pad(tmp_path, tokenizer):
    import copy

    no_pad = copy.deepcopy(tokenizer)
    no_pad.pad_token = None
    no_pad.save_pretrained(tmp_path)
    assert no_pad.pad_token is None
    return load_tokenizer(tmp_path)


def test_clear_one_line_error_on_a_missing_path(tmp_path, tiny_model):
    for missing in (str(tmp_path / "missing"), "./no/such/model"):
        with pytest.raises(OSError, match=r"cannot load model .*not a local directory") as info:
            load_causal_lm(missing)
        assert "\n" not in str(info.value) and "save_pretrained" in str(info.value)
    with pytest.raises(OSError, match="a local directory without config.json"):
        load_causal_lm(tmp_path)  # exists, but holds nothing
    tiny_model.config.save_pretrained(tmp_path)
    with pytest.raises(OSError, match=r"cannot load model .*a local directory \(.*model.safetensors"):
        load_causal_lm(tmp_path)  # a config but no weights: transformers' own reason, on one line
    with pytest.raises(ValueError, match="unknown dtype"):
        load_causal_lm(tmp_path, dtype="fp8")


def test_reference_is_frozen_and_independent(tokenizer, tiny_model):
    ref = make_reference(tiny_model)
    tiny_model.train()
    assert not ref.training and not any(p.requires_grad for p in ref.parameters())
    assert all(p.requires_grad for p in tiny_model.parameters())
    ids = torch.tensor([tokenizer(TEXT).input_ids])
    before = ref(input_ids=ids).logits
    with torch.no_grad():
        for p in tiny_model.parameters():
            p.add_(0.1)
    torch.testing.assert_close(ref(input_ids=ids).logits, before, atol=0, rtol=0)
    tiny_model.eval()
    assert not torch.allclose(tiny_model(input_ids=ids).logits, before)


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto") == torch.device("cuda" if torch.cuda.is_available() else "cpu")


def test_load_errors_are_one_line_input_errors(tmp_path):
    from remax.errors import InputError

    with pytest.raises(InputError, match=r"cannot load policy .*--model.policy: pass a hub id") as info:
        load_causal_lm(str(tmp_path / "missing"), kind="policy", flag="--model.policy")
    assert isinstance(info.value, OSError) and "\n" not in str(info.value)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_resolve_device_without_cuda_is_one_line():
    from remax.errors import InputError

    for device in ("cuda", "cuda:0"):
        with pytest.raises(InputError, match="CUDA is not available.*--model.device cpu"):
            resolve_device(device)
    with pytest.raises(InputError, match="unknown device 'tpu9'"):
        resolve_device("tpu9")


def test_max_positions(tokenizer):
    from remax.models.loading import max_positions
    from remax.models.tiny import tiny_causal_lm

    short, long = tiny_causal_lm(tokenizer, n_positions=16), tiny_causal_lm(tokenizer, n_positions=64)
    assert max_positions(long) == 64 and max_positions(short, long) == 16
    assert max_positions(torch.nn.Linear(1, 1)) is None  # no config: no limit known


def test_a_file_in_the_working_directory_is_not_sent_to_the_hub(tmp_path, monkeypatch):
    """`--model.policy prompts.jsonl` (a bare name, no slash) is a local file, not a hub id:
    one line, with no request to the hub first."""
    from remax.errors import InputError

    monkeypatch.chdir(tmp_path)
    (tmp_path / "prompts.jsonl").write_text('{"prompt": "Love is"}\n')
    with pytest.raises(InputError, match="a file, not a directory") as err:
        load_causal_lm("prompts.jsonl", kind="policy", flag="--model.policy")
    assert "\n" not in str(err.value) and "--model.policy" in str(err.value)
