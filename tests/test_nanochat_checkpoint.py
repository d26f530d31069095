"""Importing karpathy/nanochat checkpoints: weights, meta json, the pickled tiktoken tokenizer."""
import json
import pickle
from dataclasses import replace

import pytest
import rustbpe
import tiktoken
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.convert_slow_tokenizer import bytes_to_unicode

from hf_nanochat import NanoChatGPTConfig, NanoChatGPTForCausalLM
from hf_nanochat.cli import main as cli_main
from hf_nanochat.share.nanochat_checkpoint import (
    UnsupportedCheckpointError,
    detect_era,
    load_checkpoint,
    load_tiktoken_pickle,
    model_from_checkpoint,
    tiktoken_to_tokenizers,
)
from hf_nanochat.data.tokenizer import SPECIAL_TOKENS, SPLIT_PATTERN, train_tokenizer
from nanochat_2026_reference import era_constants, random_nanochat_state, reference_logits, window_lefts

TEXTS = [
    "The quick brown fox jumps over the lazy dog. " * 3,
    "Numbers like 12345 and 2025-11-21 split into pairs; don't we'll they're.",
    "Unicode: café, naïve, 日本語のテキスト, emoji 🙂🚀, tabs\tand\nnewlines\n\n  spaces.",
    "def f(x):\n    return x ** 2  # python code\n",
] * 40
PROBES = TEXTS[:4] + ["", " ", "\n\n\n", "zzzz qqqq", "über 999999 ünïcödé 🙂", "<|bos|> is text here"]


def nanochat_encoding(n_ranks: int = 400) -> tiktoken.Encoding:
    """What nanochat's RustBPETokenizer builds: rustbpe merges + specials after them."""
    trainer = rustbpe.Tokenizer()
    trainer.train_from_iterator(iter(TEXTS), n_ranks, pattern=SPLIT_PATTERN)
    ranks = {bytes(token): rank for token, rank in trainer.get_mergeable_ranks()}
    specials = {name: len(ranks) + i for i, name in enumerate(SPECIAL_TOKENS)}
    return tiktoken.Encoding(name="rustbpe", pat_str=trainer.get_pattern(), mergeable_ranks=ranks, special_tokens=specials)


def encoding_from_our_tokenizer() -> tiktoken.Encoding:
    """A tiktoken Encoding holding the merges of our own trained tokenizer (ids as ranks)."""
    ours = train_tokenizer(TEXTS, vocab_size=400 + len(SPECIAL_TOKENS))
    byte_of = {char: byte for byte, char in bytes_to_unicode().items()}
    vocab = ours.backend_tokenizer.get_vocab(with_added_tokens=False)
    ranks = {bytes(byte_of[c] for c in token): token_id for token, token_id in vocab.items()}
    specials = {name: ours.convert_tokens_to_ids(name) for name in SPECIAL_TOKENS}
    return tiktoken.Encoding(name="ours", pat_str=SPLIT_PATTERN, mergeable_ranks=ranks, special_tokens=specials)


ENCODINGS = {"rustbpe": nanochat_encoding, "ours": encoding_from_our_tokenizer}


def random_model(vocab_size: int, dtype=torch.float32) -> NanoChatGPTForCausalLM:
    config = NanoChatGPTConfig(vocab_size=vocab_size, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                               num_key_value_heads=2, max_position_embeddings=64)
    model = NanoChatGPTForCausalLM(config)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.3)
        model.transformer.wte.weight.copy_(model.transformer.wte.weight.bfloat16())  # nanochat keeps it bf16
    return model.to(dtype).eval()


def nanochat_meta(config: NanoChatGPTConfig, step: int, **extra_model_config) -> dict:
    return {
        "step": step,
        "val_bpb": 0.81,
        "model_config": {
            "sequence_len": config.max_position_embeddings,
            "vocab_size": config.vocab_size,
            "n_layer": config.num_hidden_layers,
            "n_head": config.num_attention_heads,
            "n_kv_head": config.num_key_value_heads,
            "n_embd": config.hidden_size,
            **extra_model_config,
        },
        "user_config": {"depth": config.num_hidden_layers},
    }


def write_checkpoint(model, folder, step, compiled=True, extra_weights=None, **extra_model_config):
    """model_<step>.pt as nanochat writes it: torch.compile prefix, bf16 embedding."""
    folder.mkdir(parents=True, exist_ok=True)
    prefix = "_orig_mod." if compiled else ""
    state = {prefix + k: v.clone() for k, v in model.state_dict().items()}
    state[prefix + "transformer.wte.weight"] = state[prefix + "transformer.wte.weight"].bfloat16()
    state.update(extra_weights or {})
    torch.save(state, folder / f"model_{step:06d}.pt")
    (folder / f"meta_{step:06d}.json").write_text(json.dumps(nanochat_meta(model.config, step, **extra_model_config)))


@pytest.mark.parametrize("source", ENCODINGS)
def test_tiktoken_conversion_keeps_every_id(source):
    enc = ENCODINGS[source]()
    tok = tiktoken_to_tokenizers(enc)
    assert tok.get_vocab_size() == enc.n_vocab == 400 + len(SPECIAL_TOKENS)
    # every mergeable token: same id, same bytes (vocab strings are byte-level encoded)
    byte_of = {char: byte for byte, char in bytes_to_unicode().items()}
    for token_bytes, rank in enc._mergeable_ranks.items():
        assert bytes(byte_of[c] for c in tok.id_to_token(rank)) == token_bytes
    assert sorted(tok.get_vocab().values()) == list(range(enc.n_vocab))
    for name in SPECIAL_TOKENS:
        assert tok.token_to_id(name) == enc._special_tokens[name]
    # special strings in text: tiktoken's allowed-specials encoding and ours agree
    text = "<|bos|><|user_start|>hi<|user_end|><|assistant_start|>"
    assert tok.encode(text, add_special_tokens=False).ids == enc.encode(text, allowed_special="all")
    tok.encode_special_tokens = True  # plain text: "<|bos|>" typed by a user stays text
    for text in PROBES:
        assert tok.encode(text, add_special_tokens=False).ids == enc.encode_ordinary(text), text


def test_tokenizer_pickle_round_trip(tmp_path):
    enc = nanochat_encoding()
    (tmp_path / "tokenizer.pkl").write_bytes(pickle.dumps(enc))  # exactly what nanochat saves
    loaded = load_tiktoken_pickle(tmp_path / "tokenizer.pkl")
    assert loaded._mergeable_ranks == enc._mergeable_ranks and loaded._special_tokens == enc._special_tokens
    assert loaded.encode_ordinary(PROBES[2]) == enc.encode_ordinary(PROBES[2])


class _Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_is_refused_without_running(tmp_path):
    marker = tmp_path / "pwned"
    (tmp_path / "tokenizer.pkl").write_bytes(pickle.dumps(_Exploit(marker)))
    with pytest.raises(pickle.UnpicklingError, match="refusing to load"):
        load_tiktoken_pickle(tmp_path / "tokenizer.pkl")
    assert not marker.exists()
    # An Encoding whose state is a registry name would make tiktoken download it: refused too.
    by_name = b"\x80\x04ctiktoken.core\nEncoding\n)\x81X\x0b\x00\x00\x00cl100k_baseb."
    (tmp_path / "tokenizer.pkl").write_bytes(by_name)
    with pytest.raises(pickle.UnpicklingError, match="self-contained"):
        load_tiktoken_pickle(tmp_path / "tokenizer.pkl")


def test_weights_load_by_name_latest_step_and_bf16(tmp_path):
    model = random_model(512)
    write_checkpoint(random_model(512), tmp_path, step=50)
    write_checkpoint(model, tmp_path, step=100)
    (tmp_path / "model_000200_backup.pt").write_bytes(b"not a checkpoint")  # ignored, as nanochat does
    state, meta, step = load_checkpoint(tmp_path)
    assert step == 100 and not any(k.startswith("_orig_mod.") for k in state)
    assert state["transformer.wte.weight"].dtype == torch.bfloat16
    imported = model_from_checkpoint(state, meta)
    assert imported.dtype == torch.float32  # bf16 embedding + fp32 rest -> fp32, exactly
    x = torch.randint(0, 512, (2, 20))
    with torch.no_grad():
        torch.testing.assert_close(imported(x).logits, model(x).logits, atol=0, rtol=0)
    state50, _, _ = load_checkpoint(tmp_path, step=50)
    assert not torch.equal(state50["lm_head.weight"], state["lm_head.weight"])
    with pytest.raises(FileNotFoundError, match="available: \\[50, 100\\]"):
        load_checkpoint(tmp_path, step=75)


def test_all_bf16_checkpoint_stays_bf16(tmp_path):
    model = random_model(512, dtype=torch.bfloat16)
    write_checkpoint(model, tmp_path, step=1, compiled=False)
    imported = model_from_checkpoint(*load_checkpoint(tmp_path)[:2])
    assert imported.dtype == torch.bfloat16
    for k, v in model.state_dict().items():
        assert torch.equal(imported.state_dict()[k], v)


def test_padded_vocab_rows_are_dropped(tmp_path):
    model = random_model(500)
    pad = {"transformer.wte.weight": torch.randn(12, 64).bfloat16(), "lm_head.weight": torch.randn(12, 64)}
    state = {k: torch.cat([v, pad[k].to(v.dtype)]) if k in pad else v for k, v in model.state_dict().items()}
    imported = model_from_checkpoint(state, nanochat_meta(model.config, 1))
    assert imported.lm_head.weight.shape == (500, 64)
    assert torch.equal(imported.lm_head.weight, model.lm_head.weight)


def test_window_pattern_without_2026_weights_is_refused():
    model = random_model(512)
    with pytest.raises(UnsupportedCheckpointError, match="window_pattern='SSSL'"):
        model_from_checkpoint(model.state_dict(), nanochat_meta(model.config, 1, window_pattern="SSSL"))
    # all-long windows are plain causal attention: accepted as the Nov 2025 model
    meta = nanochat_meta(model.config, 1, window_pattern="L")
    assert model_from_checkpoint(model.state_dict(), meta).config.nanochat_architecture == "2025-11"
    with pytest.raises(UnsupportedCheckpointError, match="unrecognised \\['transformer.h.0.attn.mystery.weight'\\]"):
        model_from_checkpoint({**model.state_dict(), "transformer.h.0.attn.mystery.weight": torch.zeros(1)}, meta)


# nanochat 2026 shapes at toy size: head dim 128 as nanochat, vocab 409 padded to 448, T=256
ERA_SHAPES = dict(n_layer=4, n_head=2, n_kv_head=1, n_embd=256)
ERA_SEQ = 256


def write_era_checkpoint(folder, era: str, vocab_size: int, step: int = 5, seed: int = 0) -> dict:
    padded = -(-vocab_size // 64) * 64
    state = random_nanochat_state(**ERA_SHAPES, padded_vocab=padded, era=era, seed=seed)
    folder.mkdir(parents=True, exist_ok=True)
    torch.save({"_orig_mod." + k: v for k, v in state.items()}, folder / f"model_{step:06d}.pt")
    meta = {"step": step, "model_config": {"sequence_len": ERA_SEQ, "vocab_size": vocab_size, "window_pattern": "SSSL",
                                           **ERA_SHAPES}}
    (folder / f"meta_{step:06d}.json").write_text(json.dumps(meta))
    return state


def era_reference(state, era: str, vocab_size: int, ids):
    constants = era_constants(era, ERA_SEQ)
    lefts = window_lefts("SSSL", ERA_SHAPES["n_layer"], ERA_SEQ, constants.short_window)
    return reference_logits(state, ERA_SHAPES["n_layer"], ERA_SHAPES["n_head"], ERA_SHAPES["n_kv_head"], vocab_size,
                            lefts, constants, ids)


ERA_NAMES = {"january": "2026-01", "march9": "2026-03-09", "march14": "2026-03-14"}


@pytest.mark.parametrize("era", ERA_NAMES)
def test_every_2026_era_converts_to_the_reference_logits(tmp_path, era):
    state = write_era_checkpoint(tmp_path, era, vocab_size=409)
    assert state["transformer.wte.weight"].dtype == torch.bfloat16 and state["lm_head.weight"].shape[0] == 448
    sd, meta, _ = load_checkpoint(tmp_path)
    assert detect_era(sd) == ERA_NAMES[era]
    model = model_from_checkpoint(sd, meta)
    c = model.config
    assert c.nanochat_architecture == "2026" and c.padded_vocab_size == 409  # padding stripped
    assert model.transformer.value_embeds["1"].weight.shape == (409, 128)
    ids = torch.randint(0, 409, (2, 200), generator=torch.Generator().manual_seed(0))  # longer than every window
    with torch.no_grad():
        ours = model(ids).logits
    torch.testing.assert_close(ours, era_reference(state, era, 409, ids), atol=1e-5, rtol=1e-5)
    # each unstored constant matters at these weights, so getting one wrong would fail above
    constants = era_constants(era, ERA_SEQ)
    lefts = window_lefts("SSSL", 4, ERA_SEQ, constants.short_window)
    for change in (dict(rope_base=constants.rope_base * 10), dict(qk_scale=constants.qk_scale + 0.05),
                   dict(ve_gate_scale=constants.ve_gate_scale + 1)):
        wrong = reference_logits(state, 4, 2, 1, 409, lefts, replace(constants, **change), ids)
        assert (wrong - ours).abs().max() > 1e-3, change
    wrong_window = reference_logits(state, 4, 2, 1, 409, window_lefts("SSSL", 4, ERA_SEQ, 64), constants, ids)
    assert (wrong_window - ours).abs().max() > 1e-3


def test_convert_from_nanochat_command_for_a_2026_checkpoint(tmp_path, capsys):
    enc = nanochat_encoding()
    state = write_era_checkpoint(tmp_path / "ckpt", "march14", vocab_size=enc.n_vocab)
    (tmp_path / "ckpt" / "tokenizer.pkl").write_bytes(pickle.dumps(enc))
    assert cli_main(["convert", "from-nanochat", str(tmp_path / "ckpt"), str(tmp_path / "out")]) == 0
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    ids = torch.randint(0, enc.n_vocab, (1, 160), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, era_reference(state, "march14", enc.n_vocab, ids), atol=1e-5, rtol=1e-5)
    assert json.loads((tmp_path / "out" / "nanochat_meta.json").read_text())["nanochat_era"] == "2026-03-14"
    assert AutoTokenizer.from_pretrained(tmp_path / "out")("zzzz qqqq")["input_ids"] == enc.encode_ordinary("zzzz qqqq")
    # transformers' built-in type cannot hold it: refused before anything is written
    assert cli_main(["convert", "to-transformers", str(tmp_path / "out"), str(tmp_path / "builtin")]) == 2
    assert "built-in `nanochat` type cannot hold it" in capsys.readouterr().err
    assert not (tmp_path / "builtin").exists()


def test_2026_checkpoint_with_an_unknown_or_missing_key_names_it(tmp_path):
    state = random_nanochat_state(**ERA_SHAPES, padded_vocab=448, era="march14")
    meta = {"model_config": {"sequence_len": ERA_SEQ, "vocab_size": 409, "window_pattern": "SSSL", **ERA_SHAPES}}
    with pytest.raises(UnsupportedCheckpointError, match="transformer.h.2.attn.mystery"):
        model_from_checkpoint({**state, "transformer.h.2.attn.mystery": torch.zeros(3)}, meta)
    gateless = {k: v for k, v in state.items() if k != "transformer.h.3.attn.ve_gate.weight"}
    with pytest.raises(UnsupportedCheckpointError, match="missing \\['transformer.h.3.attn.ve_gate.weight'\\]"):
        model_from_checkpoint(gateless, meta)
    with pytest.raises(UnsupportedCheckpointError, match="x0_lambdas"):
        model_from_checkpoint({**state, "x0_lambdas": torch.zeros(5)}, meta)
    odd = {**state, "transformer.h.1.attn.ve_gate.weight": torch.zeros(1, 20), "transformer.h.3.attn.ve_gate.weight": torch.zeros(1, 20)}
    with pytest.raises(UnsupportedCheckpointError, match="no nanochat era"):
        model_from_checkpoint(odd, meta)
    with pytest.raises(UnsupportedCheckpointError, match="no window_pattern"):
        model_from_checkpoint(state, {"model_config": {"sequence_len": ERA_SEQ, "vocab_size": 409, **ERA_SHAPES}})


def test_convert_from_nanochat_command_round_trip(tmp_path):
    """A nanochat base dir (tokenizer/ + base_checkpoints/d2/) -> our folder: same logits, same ids."""
    enc = nanochat_encoding()
    model = random_model(enc.n_vocab)
    base = tmp_path / "nanochat"
    checkpoint = base / "base_checkpoints" / "d2"
    write_checkpoint(model, checkpoint, step=20)
    (base / "tokenizer").mkdir()
    (base / "tokenizer" / "tokenizer.pkl").write_bytes(pickle.dumps(enc))

    assert cli_main(["convert", "from-nanochat", str(checkpoint), str(tmp_path / "out")]) == 0
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    tok = AutoTokenizer.from_pretrained(tmp_path / "out")
    x = torch.randint(0, enc.n_vocab, (2, 24))
    with torch.no_grad():
        torch.testing.assert_close(loaded(x).logits, model(x).logits, atol=0, rtol=0)
    assert len(tok) == enc.n_vocab
    for text in PROBES:
        assert tok(text, add_special_tokens=False, split_special_tokens=True)["input_ids"] == enc.encode_ordinary(text)
    assert tok.convert_tokens_to_ids(SPECIAL_TOKENS) == [enc._special_tokens[t] for t in SPECIAL_TOKENS]
    ids = tok.apply_chat_template([{"role": "user", "content": "Why is the sky blue?"}], add_generation_prompt=True)["input_ids"]
    special = enc._special_tokens
    assert ids == [special["<|bos|>"], special["<|user_start|>"], *enc.encode_ordinary("Why is the sky blue?"),
                   special["<|user_end|>"], special["<|assistant_start|>"]]
    assert loaded.generation_config.eos_token_id == special["<|assistant_end|>"]
    assert loaded.config.bos_token_id == special["<|bos|>"]
    assert json.loads((tmp_path / "out" / "nanochat_meta.json").read_text())["converted_from_step"] == 20
    # the converted tokenizer carries its injection-safe class for projects without hf_nanochat
    assert (tmp_path / "out" / "tokenization_nanochat_gpt.py").is_file()
    assert "AutoTokenizer" in json.loads((tmp_path / "out" / "tokenizer_config.json").read_text())["auto_map"]


def test_convert_from_nanochat_checks_tokenizer(tmp_path, capsys):
    enc = nanochat_encoding()
    write_checkpoint(random_model(enc.n_vocab + 1), tmp_path / "ckpt", step=1)
    # User errors end in one line on stderr and exit status 2 (hf_nanochat.errors.run_main).
    assert cli_main(["convert", "from-nanochat", str(tmp_path / "ckpt"), str(tmp_path / "out")]) == 2
    assert "--tokenizer-dir" in capsys.readouterr().err.strip().splitlines()[-1]
    (tmp_path / "tok").mkdir()
    (tmp_path / "tok" / "tokenizer.pkl").write_bytes(pickle.dumps(enc))
    assert cli_main(["convert", "from-nanochat", str(tmp_path / "ckpt"), str(tmp_path / "out"), "--tokenizer-dir", str(tmp_path / "tok")]) == 2
    assert "vocab_size is 410" in capsys.readouterr().err.strip().splitlines()[-1]
