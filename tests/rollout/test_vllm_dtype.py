"""rollout.vllm_dtype without vLLM: how auto resolves, what is refused (one line naming the
fix), the push's cast, the probe's trainer side under the engine's precision, and the
vllm_server client following its server's dtype. tests/vllm/test_vllm_dtype.py runs a
real bf16 engine."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from remax.algos import get_algorithm
from remax.config import Config, ConfigError
from remax.models.logprobs import response_logprobs
from remax.rollout.client import VLLMServerBackend
from remax.rollout.types import Sampling
from remax.rollout.vllm import cast_weights, make_probe, plain_weights, policy_cpu_save, trainer_probe_logprobs
from remax.trainer.precision import Precision, engine_dtype, resolve_mode
from remax.trainer.validate import validate_config

F32, BF16, F16 = torch.float32, torch.bfloat16, torch.float16


@pytest.mark.parametrize("name, mode, weights, expected", [
    ("auto", "bf16", F32, BF16),  # float32 master weights, bf16 autocast: the engine in bf16
    ("auto", "fp16", F32, F16),
    ("auto", "no", F32, F32),  # no mixed precision: the weights' dtype
    ("auto", "no", BF16, BF16),  # pure bf16 weights (--model.dtype bfloat16)
    ("float32", "bf16", F32, F32),  # the exact float32 engine, on request
    ("bfloat16", "no", F32, BF16),  # an fp32 trainer with a bf16 engine (TIS corrects the gap)
    ("float16", "fp16", F32, F16),
])
def test_engine_dtype_resolution(name, mode, weights, expected):
    assert engine_dtype(name, mode, weights) == expected


def test_auto_mixed_precision_on_cpu_keeps_the_weights_dtype():
    assert engine_dtype("auto", resolve_mode("auto", torch.device("cpu")), F32) == F32


@pytest.mark.parametrize("name, mode, fix", [("float16", "bf16", "bfloat16"), ("bfloat16", "fp16", "float16")])
def test_an_engine_dtype_against_the_mixed_precision_is_refused(name, mode, fix):
    with pytest.raises(ConfigError) as err:
        engine_dtype(name, mode, F32)
    message = str(err.value)
    assert "\n" not in message and f"--rollout.vllm_dtype {fix} (or auto)" in message


def config(**rollout) -> Config:
    cfg = Config(algo="remax", output_dir="runs/never-written")
    for key, value in rollout.items():
        setattr(cfg.rollout, key, value)
    return cfg


def validate(cfg: Config) -> None:
    validate_config(cfg, get_algorithm(cfg.algo), have_policy=True, have_rows=True)


@pytest.mark.parametrize("backend, fix", [
    ("hf", "the hf backend samples with the policy itself"),
    ("vllm_server", "`remax serve-rollout --dtype`"),
])
def test_an_explicit_dtype_for_another_backend_is_refused(backend, fix):
    cfg = config(backend=backend, vllm_dtype="bfloat16", server_url="http://127.0.0.1:8100")
    with pytest.raises(ConfigError) as err:
        validate(cfg)
    message = str(err.value)
    assert "\n" not in message and fix in message and message.endswith("remove --rollout.vllm_dtype")
    cfg.rollout.vllm_dtype = "auto"
    validate(cfg)  # auto is every backend's default


def test_the_colocated_backend_takes_every_meaningful_dtype():
    for name, mode in (("bfloat16", "no"), ("float32", "bf16"), ("bfloat16", "bf16"), ("auto", "fp16")):
        cfg = config(backend="vllm", vllm_dtype=name)
        cfg.train.mixed_precision = mode
        validate(cfg)
    cfg.train.mixed_precision = "bf16"
    cfg.rollout.vllm_dtype = "float16"
    with pytest.raises(ConfigError, match=r"^--rollout.vllm_dtype float16 under --train.mixed_precision bf16: "):
        validate(cfg)


def test_cli_refuses_an_explicit_dtype_with_the_hf_backend(tmp_path, capsys):
    from remax.cli import main

    code = main(["train", "--model.policy", "gpt2", "--data.train_file", str(tmp_path / "p.jsonl"),
                 "--output_dir", str(tmp_path / "run"), "--rollout.vllm_dtype", "bfloat16"])
    assert code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "remove --rollout.vllm_dtype" in lines[0], lines
    assert not (tmp_path / "run").exists()


def test_the_push_casts_lazily_one_tensor_at_a_time(tiny_model):
    weights = plain_weights(tiny_model)
    weights["step"] = torch.tensor([3])  # a non-floating tensor passes as it is
    pairs = cast_weights(weights, BF16)
    name, first = next(pairs)  # a generator: nothing is cast before the reload asks for it
    assert first.dtype == BF16 and torch.equal(first, weights[name].to(BF16))
    rest = dict(pairs)
    assert rest["step"] is weights["step"]
    assert all(t.dtype == BF16 for k, t in rest.items() if k != "step") and len(rest) == len(weights) - 1
    # the engine's own dtype: the policy's tensors themselves, no copy
    assert all(t is weights[k] for k, t in cast_weights(weights, F32))


def test_the_first_load_is_written_in_the_engines_dtype(tiny_model, tmp_path):
    policy_cpu_save(tiny_model, str(tmp_path), BF16)
    saved = load_file(str(tmp_path / "model.safetensors"))
    weights = plain_weights(tiny_model)
    assert {t.dtype for t in saved.values()} == {BF16} and saved.keys() == weights.keys()
    assert all(torch.equal(saved[k], weights[k].to(BF16)) for k in saved)


def test_the_probes_trainer_side_is_the_autocast_forward(tiny_model):
    """A bf16 engine is compared with the trainer's forward as the update computes it under
    --train.mixed_precision bf16 (Precision's autocast), bit for bit; a float32 engine
    with the float32 forward."""
    probe = make_probe(tiny_model.get_output_embeddings().weight.shape[0], 24)
    ids = probe[None]  # (1, L)

    def trainer(precision: Precision) -> torch.Tensor:
        with torch.no_grad(), precision.autocast():
            return response_logprobs(tiny_model, ids[:, :1], torch.ones(1, 1, dtype=torch.long), ids[:, 1:],
                                     torch.ones(1, ids.shape[1] - 1))[0].double()

    bf16, fp32 = trainer_probe_logprobs(tiny_model, probe, BF16), trainer_probe_logprobs(tiny_model, probe, F32)
    assert torch.equal(bf16, trainer(Precision("bf16", "cpu")))
    assert torch.equal(fp32, trainer(Precision("no", "cpu")))
    assert 0 < (bf16 - fp32).abs().max() < 0.1  # bf16 rounding: real, and within the bf16 tolerance


def test_the_server_client_casts_its_push_to_the_servers_dtype(tiny_model):
    sampling = Sampling(max_new_tokens=4, temperature=1.0, top_p=1.0, top_k=0, eos_token_id=0, pad_token_id=1)
    vocab = tiny_model.get_output_embeddings().weight.shape[0]
    client = VLLMServerBackend("http://127.0.0.1:9", sampling, device=torch.device("cpu"), dtype=F32,
                               vocab_size=vocab)  # no request is made: only the packing is under test
    try:
        assert client.tol == 1e-4
        client.set_dtype(BF16)  # what check_server does with a server started with --dtype bfloat16
        assert client.tol == 0.1
        body, flats = client._pack(tiny_model, version=3)
        assert {d for _, _, d in body["tensors"]} == {"bfloat16"} and [d for d, _ in flats] == [BF16]
        weights = plain_weights(tiny_model)
        sent = [weights[name].to(BF16).reshape(-1) for name, _, _ in body["tensors"]]
        assert torch.equal(flats[0][1], torch.cat(sent))
        assert body["aliases"]  # GPT-2's tied head travels once
    finally:
        client.close()
    explicit = VLLMServerBackend("http://127.0.0.1:9", sampling, device=torch.device("cpu"), dtype=F32,
                                 vocab_size=vocab, verify_tol=0.05)
    explicit.set_dtype(BF16)
    assert explicit.tol == 0.05  # rollout.verify_tol, when set, wins
    explicit.close()
