"""Rotary embeddings: nanochat's default numerics, transformers' `rope_parameters` (RoPE scaling
types) and configs written before that field existed."""
import json

import pytest
import torch
from chat_helpers import randomise_zero_initialised

from hf_nanochat import NanoChatGPTConfig, NanoChatGPTForCausalLM


def tiny_config(**kw) -> NanoChatGPTConfig:
    return NanoChatGPTConfig(vocab_size=97, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                             max_position_embeddings=32, **kw)


def nanochat_cos_sin(positions: torch.Tensor, head_dim: int, theta: float):
    # nanochat gpt.py `_precompute_rotary_embeddings`: inv_freq = 1 / base^(arange(0, d, 2) / d),
    # angles = t (outer) inv_freq; here in fp32 throughout (nanochat casts its tables to bf16).
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    angles = positions.float()[..., None] * inv_freq
    return angles.cos(), angles.sin()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_default_rotary_is_nanochats_formula_in_fp32(dtype):
    model = NanoChatGPTForCausalLM(tiny_config()).to(dtype)
    positions = torch.tensor([[0, 1, 2, 7, 31, 500]])
    cos, sin = model.transformer.rotary_emb(torch.zeros(1, dtype=dtype), positions)
    want_cos, want_sin = nanochat_cos_sin(positions, 32, 10000.0)
    # bit-identical: angles in fp32 even when the model (and its inv_freq buffer) is bf16
    assert cos.dtype == dtype and torch.equal(cos, want_cos.to(dtype)) and torch.equal(sin, want_sin.to(dtype))


def test_config_written_before_rope_parameters_loads_unchanged(tmp_path):
    # config.json as this project wrote it before `rope_parameters`: a top-level `rope_theta`
    old = tiny_config().to_dict()
    old.pop("rope_parameters")
    old["rope_theta"] = 500.0
    (tmp_path / "config.json").write_text(json.dumps(old))
    loaded = NanoChatGPTConfig.from_pretrained(tmp_path)
    assert loaded.rope_parameters == {"rope_type": "default", "rope_theta": 500.0}
    assert loaded.rope_theta == 500.0

    torch.manual_seed(0)
    reference = randomise_zero_initialised(NanoChatGPTForCausalLM(tiny_config(rope_theta=500.0)).eval())
    from_old = NanoChatGPTForCausalLM(loaded).eval()
    from_old.load_state_dict(reference.state_dict())
    ids = torch.randint(0, 97, (2, 20))
    with torch.no_grad():
        assert torch.equal(from_old(ids).logits, reference(ids).logits)
        other_theta = NanoChatGPTForCausalLM(tiny_config()).eval()
        other_theta.load_state_dict(reference.state_dict())
        assert not torch.allclose(other_theta(ids).logits, reference(ids).logits)
    # and it is written back in the standard form
    loaded.save_pretrained(tmp_path / "resaved")
    saved = json.loads((tmp_path / "resaved/config.json").read_text())
    assert saved["rope_parameters"] == {"rope_type": "default", "rope_theta": 500.0} and "rope_theta" not in saved


def test_linear_scaling_divides_positions_and_survives_save_load(tmp_path):
    scaled = tiny_config(rope_parameters={"rope_type": "linear", "factor": 4.0, "rope_theta": 10000.0})
    model = randomise_zero_initialised(NanoChatGPTForCausalLM(scaled).eval())
    x = torch.zeros(1)
    cos, sin = model.transformer.rotary_emb(x, torch.tensor([[0, 4, 8, 40]]))
    want_cos, want_sin = nanochat_cos_sin(torch.tensor([[0, 1, 2, 10]]), 32, 10000.0)
    torch.testing.assert_close(cos, want_cos)
    torch.testing.assert_close(sin, want_sin)

    # inv_freq is a non-persistent buffer: from_pretrained must rebuild it for the scaled type
    model.save_pretrained(tmp_path)
    reloaded = NanoChatGPTForCausalLM.from_pretrained(tmp_path).eval()
    assert reloaded.config.rope_parameters["rope_type"] == "linear"
    torch.testing.assert_close(reloaded.transformer.rotary_emb.inv_freq, model.transformer.rotary_emb.inv_freq, atol=0, rtol=0)
    ids = torch.randint(0, 97, (1, 30))
    with torch.no_grad():
        assert torch.equal(reloaded(ids).logits, model(ids).logits)


def test_unknown_rope_type_is_a_clear_error():
    with pytest.raises(ValueError, match="rope_type 'spiral'.*linear"):
        NanoChatGPTForCausalLM(tiny_config(rope_parameters={"rope_type": "spiral", "rope_theta": 10000.0}))
