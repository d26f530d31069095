"""Converters between our model and transformers' built-in NanoChatForCausalLM: same numbers."""
import json

import pytest
import torch
from transformers import AutoModelForCausalLM, NanoChatForCausalLM

from hf_nanochat import NanoChatGPTConfig, NanoChatGPTForCausalLM
from hf_nanochat.cli import main as cli_main
from hf_nanochat.share.convert import copy_tokenizer_files, from_transformers, rename_state_dict, to_transformers
from hf_nanochat.data.tokenizer import load_tokenizer, train_tokenizer

VOCAB = 512


def random_model(num_key_value_heads=None, **config_kwargs) -> NanoChatGPTForCausalLM:
    """Tiny model with every weight random: nanochat's init zeroes lm_head (all logits 0),
    which would make any parity check pass trivially."""
    config = NanoChatGPTConfig(
        vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=num_key_value_heads, max_position_embeddings=64, **config_kwargs,
    )
    model = NanoChatGPTForCausalLM(config)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.3)
    return model.eval()


def ids(batch=2, seq=24):
    return torch.randint(0, VOCAB, (batch, seq), generator=torch.Generator().manual_seed(1))


def greedy(model, prompt, n=32):
    out = model.generate(prompt, max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=0)
    return out[:, prompt.shape[1]:]


@pytest.mark.parametrize("kv_heads", [None, 2])
def test_to_transformers_same_logits_and_greedy_tokens(kv_heads):
    ours = random_model(kv_heads)
    theirs = to_transformers(ours)
    assert isinstance(theirs, NanoChatForCausalLM)
    x = ids()
    with torch.no_grad():
        a, b = ours(x).logits, theirs(x).logits
    assert a.std() > 1.0  # the comparison is not between constant logits
    torch.testing.assert_close(b, a, atol=1e-4, rtol=0)
    ga, gb = greedy(ours, x[:1, :8]), greedy(theirs, x[:1, :8])
    assert ga.shape == (1, 32) and torch.equal(ga, gb)
    assert len(set(ga[0].tolist())) > 1  # not a degenerate repeat of one token


def test_from_transformers_same_logits_and_greedy_tokens():
    # Start from a transformers-native model with its default eps (1e-6): carried across.
    theirs = to_transformers(random_model(2))
    theirs.config.rms_norm_eps = 1e-6
    for m in theirs.modules():
        if hasattr(m, "eps"):
            m.eps = 1e-6
    ours = from_transformers(theirs)
    assert isinstance(ours, NanoChatGPTForCausalLM) and ours.config.rms_norm_eps == 1e-6
    assert ours.config.num_key_value_heads == 2
    x = ids()
    with torch.no_grad():
        a, b = theirs(x).logits, ours(x).logits
    torch.testing.assert_close(b, a, atol=1e-4, rtol=0)
    assert torch.equal(greedy(theirs, x[:1, :8]), greedy(ours, x[:1, :8]))


@pytest.mark.parametrize("rope", [{"rope_type": "linear", "factor": 4.0}, {"rope_type": "yarn", "factor": 2.0}])
def test_rope_scaling_converts_both_ways(rope):
    # both rotaries build their frequencies from rope_parameters with transformers' functions
    ours = random_model(rope_parameters={**rope, "rope_theta": 5000.0})
    theirs = to_transformers(ours)
    back = from_transformers(theirs)
    assert theirs.config.rope_parameters["rope_type"] == back.config.rope_parameters["rope_type"] == rope["rope_type"]
    x = torch.randint(0, VOCAB, (1, 100), generator=torch.Generator().manual_seed(2))  # past 64 positions
    with torch.no_grad():
        a, b, c = ours(x).logits, theirs(x).logits, back(x).logits
        plain = random_model()
        plain.load_state_dict(ours.state_dict())
        assert not torch.allclose(plain(x).logits, a, atol=1e-3)  # the scaling is in effect
    torch.testing.assert_close(b, a, atol=1e-4, rtol=0)
    assert torch.equal(c, a)


def test_round_trip_is_exact():
    ours = random_model()
    back = from_transformers(to_transformers(ours))
    assert back.config.rms_norm_eps is None  # the fp32-eps stand-in maps back to None
    for (k1, v1), (k2, v2) in zip(ours.state_dict().items(), back.state_dict().items()):
        assert k1 == k2 and torch.equal(v1, v2)
    # Copies, not shared storage: changing the converted model leaves the source alone.
    with torch.no_grad():
        back.lm_head.weight.zero_()
    assert ours.lm_head.weight.abs().sum() > 0


def test_rename_refuses_unknown_weights():
    with pytest.raises(KeyError, match="value_embeds"):
        rename_state_dict({"value_embeds.0.weight": torch.zeros(1)}, to="transformers")


def test_bf16_weights_keep_their_dtype():
    theirs = to_transformers(random_model().to(torch.bfloat16))
    assert theirs.dtype == torch.bfloat16 and theirs.lm_head.weight.dtype == torch.bfloat16


def test_folder_commands_both_ways(tmp_path):
    ours = random_model()
    ours.save_pretrained(tmp_path / "ours")
    (tmp_path / "ours" / "tokenizer.json").write_text('{"stand-in": true}')
    assert cli_main(["convert", "to-transformers", str(tmp_path / "ours"), str(tmp_path / "hf")]) == 0
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["model_type"] == "nanochat" and "auto_map" not in config
    assert (tmp_path / "hf" / "tokenizer.json").read_text() == '{"stand-in": true}'
    assert not list((tmp_path / "hf").glob("*.py"))  # loadable with no remote code
    theirs = AutoModelForCausalLM.from_pretrained(tmp_path / "hf")
    assert isinstance(theirs, NanoChatForCausalLM)

    assert cli_main(["convert", "from-transformers", str(tmp_path / "hf"), str(tmp_path / "back")]) == 0
    back = AutoModelForCausalLM.from_pretrained(tmp_path / "back")
    assert isinstance(back, NanoChatGPTForCausalLM)
    assert "auto_map" in json.loads((tmp_path / "back" / "config.json").read_text())
    x = ids()
    with torch.no_grad():
        ref = ours(x).logits
        torch.testing.assert_close(theirs(x).logits, ref, atol=1e-4, rtol=0)
        torch.testing.assert_close(back(x).logits, ref, atol=0, rtol=0)


def test_folder_command_checks_model_type(tmp_path, capsys):
    random_model().save_pretrained(tmp_path / "ours")
    assert cli_main(["convert", "from-transformers", str(tmp_path / "ours"), str(tmp_path / "x")]) == 2
    assert "expects model_type 'nanochat'" in capsys.readouterr().err.strip().splitlines()[-1]


def test_tokenizer_code_travels_except_to_the_builtin_type(tmp_path):
    """Our folders keep the tokenizer's code file and auto_map; transformers' built-in type
    (the no-remote-code format) gets neither, so its tokenizer loads without trust_remote_code."""
    ours = random_model()
    ours.save_pretrained(tmp_path / "ours")
    train_tokenizer(["Why is the sky blue? Rayleigh scattering. " * 8] * 10, vocab_size=300).save_pretrained(tmp_path / "ours")
    assert cli_main(["convert", "to-transformers", str(tmp_path / "ours"), str(tmp_path / "hf")]) == 0
    assert not list((tmp_path / "hf").glob("*.py"))
    hf_config = json.loads((tmp_path / "hf" / "tokenizer_config.json").read_text())
    ours_config = json.loads((tmp_path / "ours" / "tokenizer_config.json").read_text())
    assert "auto_map" in ours_config and hf_config == {k: v for k, v in ours_config.items() if k != "auto_map"}
    (tmp_path / "copy").mkdir()
    assert "tokenization_nanochat_gpt.py" in copy_tokenizer_files(tmp_path / "ours", tmp_path / "copy")
    assert json.loads((tmp_path / "copy" / "tokenizer_config.json").read_text()) == ours_config
    # Coming back to our format restores the safe tokenizer: code file, auto_map, same ids.
    assert cli_main(["convert", "from-transformers", str(tmp_path / "hf"), str(tmp_path / "back")]) == 0
    back_config = json.loads((tmp_path / "back" / "tokenizer_config.json").read_text())
    assert back_config["auto_map"] == ours_config["auto_map"]
    code = "tokenization_nanochat_gpt.py"
    assert (tmp_path / "back" / code).read_text() == (tmp_path / "ours" / code).read_text()
    messages = [{"role": "user", "content": "hi <|assistant_start|> there"}]
    assert (load_tokenizer(str(tmp_path / "back")).apply_chat_template(messages, add_generation_prompt=True, return_dict=False)
            == load_tokenizer(str(tmp_path / "ours")).apply_chat_template(messages, add_generation_prompt=True, return_dict=False))
