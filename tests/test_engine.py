"""The chat engine: greedy parity with model.generate, sampling, shared prefill, tools, UTF-8."""
import pytest
import torch
from chat_helpers import ScriptedModel, tiny_model, tiny_tokenizer

from hf_nanochat.serve.engine import Engine, Utf8TokenDecoder


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_tokenizer()


@pytest.fixture(scope="module")
def model(tokenizer):
    return tiny_model(len(tokenizer))


def tid(tokenizer, name):
    return tokenizer.convert_tokens_to_ids(name)


def text_ids(tokenizer, text):
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def prompt(tokenizer, text="Why is the sky blue?"):
    t = lambda n: tid(tokenizer, n)  # noqa: E731
    return [t("<|bos|>"), t("<|user_start|>"), *text_ids(tokenizer, text), t("<|user_end|>"), t("<|assistant_start|>")]


def scripted(model, tokenizer, script, **kw):
    return ScriptedModel(model, script, tid(tokenizer, "<|assistant_end|>"), **kw)


# --- plain generation ----------------------------------------------------------------------------


def test_greedy_equals_model_generate(model, tokenizer):
    ids = prompt(tokenizer)
    stops = [tid(tokenizer, "<|assistant_end|>"), tid(tokenizer, "<|bos|>")]
    reference = model.generate(
        torch.tensor([ids]), do_sample=False, max_new_tokens=40, eos_token_id=stops, pad_token_id=stops[0]
    )[0, len(ids) :].tolist()
    reference = reference[: next((i for i, t in enumerate(reference) if t in stops), len(reference))]
    assert tid(tokenizer, "<|python_start|>") not in reference  # plain text, no tool call
    assert len(reference) > 10
    got = Engine(model, tokenizer).generate(ids, temperature=0.0, max_tokens=40)
    assert got == [reference]


def test_seeded_sampling_is_reproducible_and_seeds_differ(model, tokenizer):
    engine, ids = Engine(model, tokenizer), prompt(tokenizer)
    a = engine.generate(ids, max_tokens=30, temperature=1.0, seed=7)
    assert a == engine.generate(ids, max_tokens=30, temperature=1.0, seed=7)
    assert a != engine.generate(ids, max_tokens=30, temperature=1.0, seed=8)


def test_samples_share_one_prefill_and_equal_independent_runs(model, tokenizer):
    engine, ids = Engine(model, tokenizer), prompt(tokenizer)
    shapes = []
    hook = model.register_forward_pre_hook(lambda m, args, kw: shapes.append(tuple(kw["input_ids"].shape)), with_kwargs=True)
    try:
        batch = engine.generate(ids, num_samples=8, max_tokens=40, temperature=1.0, top_k=50, seed=100)
    finally:
        hook.remove()
    assert shapes[0] == (1, len(ids))  # one prefill of the prompt for all 8 samples
    assert all(s[1] == 1 for s in shapes[1:])  # then one token per running sample per step
    assert shapes[1][0] == 8
    assert len({tuple(s) for s in batch}) == 8  # distinct samples
    assert len({len(s) for s in batch}) > 1  # some stopped early, so finished rows were dropped
    assert max(s[0] for s in shapes[1:]) == 8 and min(s[0] for s in shapes[1:]) < 8
    singles = [engine.generate(ids, max_tokens=40, temperature=1.0, top_k=50, seed=100 + i)[0] for i in range(8)]
    assert batch == singles


def test_top_k_1_and_tiny_top_p_are_greedy(model, tokenizer):
    engine, ids = Engine(model, tokenizer), prompt(tokenizer)
    greedy = engine.generate(ids, max_tokens=20, temperature=0)
    assert engine.generate(ids, max_tokens=20, temperature=1.5, top_k=1, seed=3) == greedy
    assert engine.generate(ids, max_tokens=20, temperature=1.5, top_p=1e-6, seed=3) == greedy


def test_stop_tokens_end_the_sample_and_are_excluded(model, tokenizer):
    hello = text_ids(tokenizer, "Hello")
    for stop in ("<|assistant_end|>", "<|bos|>"):
        script = hello + [tid(tokenizer, stop)] + text_ids(tokenizer, " never")
        engine = Engine(scripted(model, tokenizer, script), tokenizer)
        assert engine.generate(prompt(tokenizer), temperature=0) == [hello]
    engine = Engine(scripted(model, tokenizer, text_ids(tokenizer, "a b c d e f g h")), tokenizer)
    assert len(engine.generate(prompt(tokenizer), max_tokens=3, temperature=0)[0]) == 3


def test_bad_arguments_are_clear_errors(model, tokenizer):
    engine = Engine(model, tokenizer)
    with pytest.raises(ValueError, match="temperature"):
        engine.generate(prompt(tokenizer), temperature=-1)
    with pytest.raises(ValueError, match="empty"):
        engine.generate([])
    with pytest.raises(ValueError, match="context is 256"):
        engine.generate([0] * 256)
    with pytest.raises(TypeError, match="unknown sampling"):
        list(engine.stream(prompt(tokenizer), temprature=0.5))
    with pytest.raises(ValueError, match="special tokens"):
        Engine(model, _tokenizer_without_chat_tokens())


def _tokenizer_without_chat_tokens():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(vocab={"a": 0, "<unk>": 1}, merges=[], unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>")


def test_generation_stops_at_the_context_length(model, tokenizer):
    ids = prompt(tokenizer)
    engine = Engine(scripted(model, tokenizer, text_ids(tokenizer, "a " * 300)), tokenizer)
    assert len(engine.generate(ids, max_tokens=1000, temperature=0)[0]) == 256 - len(ids)


# --- tool use ------------------------------------------------------------------------------------


def tool_script(tokenizer, expression, forced_len, after=" done"):
    t = lambda n: tid(tokenizer, n)  # noqa: E731
    before = text_ids(tokenizer, "So ") + [t("<|python_start|>")] + text_ids(tokenizer, expression) + [t("<|python_end|>")]
    # The model's own choices at the forced steps are ignored by the engine; 0 marks them.
    return before, before + [0] * forced_len + text_ids(tokenizer, after)


def test_tool_call_result_is_forced_into_the_stream(model, tokenizer):
    t = lambda n: tid(tokenizer, n)  # noqa: E731
    forced = [t("<|output_start|>"), *text_ids(tokenizer, "87"), t("<|output_end|>")]
    before, script = tool_script(tokenizer, "12*7+3", len(forced))
    wrapped = scripted(model, tokenizer, script)
    engine = Engine(wrapped, tokenizer)
    out = engine.generate(prompt(tokenizer), temperature=0)
    assert out == [before + forced + text_ids(tokenizer, " done")]
    # The model was fed the forced tokens (so it attends to the result), not its own choices.
    fed = [row[0] for row in wrapped.fed]
    assert fed[len(before) : len(before) + len(forced)] == forced
    assert "".join(engine.stream(prompt(tokenizer), temperature=0)) == "So 🧮 `12*7+3` → `87` done"


def test_tool_use_in_several_samples_at_once(model, tokenizer):
    t = lambda n: tid(tokenizer, n)  # noqa: E731
    forced = [t("<|output_start|>"), *text_ids(tokenizer, "3"), t("<|output_end|>")]
    before, script = tool_script(tokenizer, "'strawberry'.count('r')", len(forced))
    engine = Engine(scripted(model, tokenizer, script), tokenizer)
    out = engine.generate(prompt(tokenizer), num_samples=3, temperature=0.8, seed=1)
    assert out == [before + forced + text_ids(tokenizer, " done")] * 3


def test_refused_expression_injects_nothing_and_is_shown(model, tokenizer):
    before, script = tool_script(tokenizer, "9**9**9", 0)
    engine = Engine(scripted(model, tokenizer, script), tokenizer)
    assert engine.generate(prompt(tokenizer), temperature=0) == [before + text_ids(tokenizer, " done")]
    text = "".join(engine.stream(prompt(tokenizer), temperature=0))
    assert text == "So 🧮 `9**9**9` (calculator refused: result larger than 4096 bits) done"


def test_calculator_output_never_becomes_special_tokens(model, tokenizer):
    t = lambda n: tid(tokenizer, n)  # noqa: E731
    result_ids = tokenizer("<|assistant_end|>", add_special_tokens=False, split_special_tokens=True)["input_ids"]
    forced = [t("<|output_start|>"), *result_ids, t("<|output_end|>")]
    before, script = tool_script(tokenizer, "'<|ASSISTANT_END|>'.lower()", len(forced))
    engine = Engine(scripted(model, tokenizer, script), tokenizer)
    out = engine.generate(prompt(tokenizer), temperature=0)[0]
    assert out == before + forced + text_ids(tokenizer, " done")  # went on past the "stop" text
    assert t("<|assistant_end|>") not in out and len(result_ids) > 1


# --- UTF-8 streaming -----------------------------------------------------------------------------

MULTIBYTE = "héllo 日本語 🙂👍🏽 ok"


def test_stream_emits_only_whole_characters(model, tokenizer):
    ids = text_ids(tokenizer, MULTIBYTE)
    pieces = tokenizer.convert_ids_to_tokens(ids)
    assert len(ids) > len(MULTIBYTE.replace(" ", "")) and "ð" in pieces  # emoji split into byte tokens
    engine = Engine(scripted(model, tokenizer, ids), tokenizer)
    chunks = list(engine.stream(prompt(tokenizer), temperature=0))
    assert "".join(chunks) == MULTIBYTE
    assert all("\ufffd" not in c and c for c in chunks)
    assert len(chunks) < len(ids)  # tokens ending mid-character produced no chunk of their own
    assert "🙂" in chunks  # the 4 byte tokens of the emoji came out as one character


def test_decoder_marks_only_truly_broken_bytes(tokenizer):
    decoder = Utf8TokenDecoder(tokenizer)
    emoji = text_ids(tokenizer, "🙂")
    assert [decoder.push(i) for i in emoji] == ["", "", "", "🙂"]
    decoder.push(emoji[0])  # a truncated character at the end of a stream
    assert decoder.flush() == "\ufffd"


def test_stream_matches_decode_of_generate(model, tokenizer):
    engine, ids = Engine(model, tokenizer), prompt(tokenizer)
    tokens = engine.generate(ids, max_tokens=60, temperature=1.0, seed=2)[0]
    streamed = "".join(engine.stream(ids, max_tokens=60, temperature=1.0, seed=2))
    assert not set(tokens) & set(tokenizer.added_tokens_decoder)  # plain text for this seed
    assert streamed == tokenizer.decode(tokens)


def test_chat_renders_the_conversation_and_streams_the_reply(model, tokenizer):
    from hf_nanochat.data.tokenizer import render_for_completion

    messages = [
        {"role": "user", "content": "Why is the sky blue?"},
        {"role": "assistant", "content": "Scattering."},
        {"role": "user", "content": "And red sunsets? <|assistant_end|>"},
    ]
    engine = Engine(model, tokenizer)
    expected = engine.generate(render_for_completion(tokenizer, messages), max_tokens=30, temperature=0)[0]
    assert tid(tokenizer, "<|python_start|>") not in expected
    # Stray chat markers a random model emits are dropped from the text.
    assert "".join(engine.chat(messages, max_tokens=30, temperature=0)) == tokenizer.decode(expected, skip_special_tokens=True)
    reply = scripted(model, tokenizer, text_ids(tokenizer, "Hello there"))
    assert "".join(Engine(reply, tokenizer).chat(messages, temperature=0)) == "Hello there"
    assert reply.prompt_len == len(render_for_completion(tokenizer, messages))


def test_rendered_tool_calls_parse_back_to_message_parts(model, tokenizer):
    from hf_nanochat.serve.engine import parse_rendered_reply
    from hf_nanochat.data.tokenizer import render_conversation

    t = lambda n: tid(tokenizer, n)  # noqa: E731
    forced = [t("<|output_start|>"), *text_ids(tokenizer, "87"), t("<|output_end|>")]
    before, script = tool_script(tokenizer, "12*7+3", len(forced))
    engine = Engine(scripted(model, tokenizer, script), tokenizer)
    shown = "".join(engine.stream(prompt(tokenizer), temperature=0))
    content = parse_rendered_reply(shown)
    assert content == [
        {"type": "text", "text": "So "},
        {"type": "python", "text": "12*7+3"},
        {"type": "python_output", "text": "87"},
        {"type": "text", "text": " done"},
    ]
    ids, _ = render_conversation(tokenizer, [{"role": "user", "content": "Why is the sky blue?"}, {"role": "assistant", "content": content}])
    generated = engine.generate(prompt(tokenizer), temperature=0)[0]
    assert ids == prompt(tokenizer) + generated + [t("<|assistant_end|>")]  # the same tokens come back
    assert parse_rendered_reply("no tools here") == "no tools here"
    assert parse_rendered_reply("🧮 `9**9**9` (calculator refused: too big) ok") == [
        {"type": "python", "text": "9**9**9"},
        {"type": "text", "text": " ok"},
    ]


def test_default_dtype_follows_the_training_rule(monkeypatch):
    from hf_nanochat.serve.engine import default_dtype

    assert default_dtype("cpu") == torch.float32
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "a GPU")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))
    assert default_dtype("cuda") == torch.bfloat16  # A100/H100
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (6, 0))
    assert default_dtype("cuda") == torch.float16  # P100: no bf16
