"""save_pretrained folders reload exactly, with and without hf_nanochat."""
import json

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers, decoders, trainers
from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast, pipeline

from hf_nanochat import NanoChatGPTConfig, NanoChatGPTForCausalLM
from isolated import run_without_hf_nanochat


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A tiny model with non-zero weights everywhere and a byte-level tokenizer, saved."""
    folder = tmp_path_factory.mktemp("d2")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(
        ["the quick brown fox jumps over the lazy dog"] * 20,
        trainers.BpeTrainer(vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), special_tokens=["<|bos|>"]),
    )
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|bos|>", eos_token="<|bos|>", pad_token="<|bos|>")
    config = NanoChatGPTConfig.from_depth(2, vocab_size=len(tokenizer), max_position_embeddings=64)
    torch.manual_seed(0)
    model = NanoChatGPTForCausalLM(config)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.05)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    ids = torch.tensor([[5, 17, 42, 99, 7, 3, 250, 11]])
    torch.save({"ids": ids, "logits": model.eval()(ids).logits}, folder / "expected.pt")
    return folder, model, ids


def test_folder_holds_safetensors_auto_map_and_code(saved):
    folder, _, _ = saved
    assert (folder / "model.safetensors").exists() and not list(folder.glob("*.bin"))
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "nanochat_gpt"
    assert config["auto_map"]["AutoConfig"] == "configuration_nanochat_gpt.NanoChatGPTConfig"
    assert config["auto_map"]["AutoModelForCausalLM"] == "modeling_nanochat_gpt.NanoChatGPTForCausalLM"
    assert (folder / "modeling_nanochat_gpt.py").exists() and (folder / "configuration_nanochat_gpt.py").exists()


def test_from_pretrained_reproduces_logits(saved):
    folder, model, ids = saved
    reloaded = AutoModelForCausalLM.from_pretrained(folder)
    assert isinstance(reloaded, NanoChatGPTForCausalLM)
    torch.testing.assert_close(reloaded(ids).logits, model(ids).logits, atol=0, rtol=0)


def test_fresh_process_without_hf_nanochat_loads_with_remote_code(saved, tmp_path):
    folder, _, _ = saved
    run_without_hf_nanochat(
        f"""
        import torch
        from transformers import AutoModelForCausalLM
        model = AutoModelForCausalLM.from_pretrained({str(folder)!r}, trust_remote_code=True)
        assert type(model).__name__ == "NanoChatGPTForCausalLM"
        assert "hf_nanochat" not in type(model).__module__
        expected = torch.load({str(folder / "expected.pt")!r}, weights_only=True)
        torch.testing.assert_close(model(expected["ids"]).logits, expected["logits"], atol=0, rtol=0)
        """,
        cwd=str(tmp_path),
    )


def test_text_generation_pipeline(saved):
    folder, model, _ = saved
    generator = pipeline("text-generation", model=str(folder), trust_remote_code=True)
    out = generator("the quick brown", max_new_tokens=10, do_sample=False)
    text = out[0]["generated_text"]
    assert text.startswith("the quick brown") and len(text) > len("the quick brown")
    # Same greedy continuation as calling generate directly.
    tokenizer = generator.tokenizer
    ids = tokenizer("the quick brown", return_tensors="pt").input_ids
    direct = model.generate(ids, max_new_tokens=10, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    assert text == tokenizer.decode(direct[0])
