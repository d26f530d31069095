"""generate() on every decoding path equals the argmax of full forwards, token by token.

The reference never uses a cache: it runs the whole sequence through the model for every new
token. transformers 5.24 renamed the cache argument (`past_key_values` -> `cache`) and a model
that only knew the old name silently decoded without its cache; each test below compares the
cached path with that reference, so such a drift fails here on whichever release CI installs.
"""
import pytest
import torch
from isolated import run_without_hf_nanochat
from transformers import pipeline

from hf_nanochat import NanoChatGPTConfig, NanoChatGPTForCausalLM
from hf_nanochat.modeling.modeling_nanochat_gpt import CACHE_NAME

VOCAB, PAD, NEW = 96, 0, 10


def random_model(seed: int = 0, depth: int = 2, kv_heads: int | None = None) -> NanoChatGPTForCausalLM:
    """Every weight random (nanochat zero-initialises lm_head, which would make every logit equal)."""
    torch.manual_seed(seed)
    config = NanoChatGPTConfig.from_depth(depth, vocab_size=VOCAB, max_position_embeddings=64,
                                          num_key_value_heads=kv_heads, pad_token_id=PAD)
    model = NanoChatGPTForCausalLM(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.3)
    model.generation_config.pad_token_id = PAD
    return model


@torch.no_grad()
def reference_greedy(model, prompt: torch.Tensor, new_tokens: int = NEW) -> torch.Tensor:
    """Greedy decoding by full forwards only, one unpadded prompt (1, T) at a time."""
    seq = prompt
    for _ in range(new_tokens):
        nxt = model(seq, use_cache=False).logits[:, -1].argmax(-1, keepdim=True)
        seq = torch.cat([seq, nxt], 1)
    return seq


def prompts(lengths=(5, 9), seed=1) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(1, VOCAB, (1, n), generator=g) for n in lengths]


def left_padded(rows: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(r.shape[1] for r in rows)
    ids = torch.full((len(rows), width), PAD)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - r.shape[1]:], mask[i, width - r.shape[1]:] = r[0], 1
    return ids, mask


def greedy(model, ids, **kw):
    return model.generate(ids, max_new_tokens=NEW, min_new_tokens=NEW, do_sample=False, **kw)


@pytest.mark.parametrize("use_cache", [True, False])
def test_greedy_batch_one_equals_full_forward_argmax(use_cache):
    model = random_model()
    (prompt,) = prompts((7,))
    expected = reference_greedy(model, prompt)
    assert torch.equal(greedy(model, prompt, use_cache=use_cache), expected)
    assert len(set(expected[0, 7:].tolist())) > 1  # a model that repeats one token would prove little


def test_left_padded_batch_equals_each_prompt_alone():
    model = random_model()
    rows = prompts((4, 9, 6))
    ids, mask = left_padded(rows)
    out = greedy(model, ids, attention_mask=mask)
    for i, r in enumerate(rows):
        assert out[i, ids.shape[1]:].tolist() == reference_greedy(model, r)[0, r.shape[1]:].tolist(), i


def test_gqa_cache_decoding_equals_full_forward():
    model = random_model(depth=4, kv_heads=1)  # depth 4: 2 query heads sharing 1 key/value head
    (prompt,) = prompts((6,))
    assert torch.equal(greedy(model, prompt), reference_greedy(model, prompt))


def test_static_cache_equals_full_forward():
    model = random_model()
    rows = prompts((5, 8))
    ids, mask = left_padded(rows)
    out = greedy(model, ids, attention_mask=mask, cache_implementation="static")
    for i, r in enumerate(rows):
        assert out[i, ids.shape[1]:].tolist() == reference_greedy(model, r)[0, r.shape[1]:].tolist(), i


def test_beam_search_same_with_and_without_cache():
    model = random_model()
    ids, mask = left_padded(prompts((5, 8)))
    kw = dict(attention_mask=mask, num_beams=3, num_return_sequences=2, max_new_tokens=NEW, do_sample=False)
    with_cache = model.generate(ids, use_cache=True, **kw)
    without = model.generate(ids, use_cache=False, **kw)
    assert torch.equal(with_cache, without)
    # Beam search keeps the best-scoring beam: at least as likely as the greedy continuation.
    assert with_cache.shape == (4, ids.shape[1] + NEW)


def test_seeded_sampling_same_with_and_without_cache():
    model = random_model()
    ids, mask = left_padded(prompts((5, 8)))
    runs = []
    for use_cache in (True, False):
        torch.manual_seed(123)
        runs.append(model.generate(ids, attention_mask=mask, do_sample=True, top_k=20, temperature=0.9,
                                   max_new_tokens=NEW, min_new_tokens=NEW, use_cache=use_cache))
    assert torch.equal(*runs)
    torch.manual_seed(124)
    other = model.generate(ids, attention_mask=mask, do_sample=True, top_k=20, temperature=0.9,
                           max_new_tokens=NEW, min_new_tokens=NEW)
    assert not torch.equal(runs[0], other)  # the seed matters, so equality above is not a constant


def test_prompt_lookup_decoding_equals_greedy():
    model = random_model()
    (prompt,) = prompts((12,))
    prompt = torch.cat([prompt, prompt[:, :6]], 1)  # repeated n-grams give prompt lookup candidates
    assert torch.equal(greedy(model, prompt, prompt_lookup_num_tokens=3), reference_greedy(model, prompt))


def test_assisted_decoding_equals_greedy():
    model, draft = random_model(seed=0), random_model(seed=7)
    (prompt,) = prompts((8,))
    assert torch.equal(greedy(model, prompt, assistant_model=draft), reference_greedy(model, prompt))


def test_continuing_from_a_returned_cache():
    model = random_model()
    (prompt,) = prompts((6,))
    first = model.generate(prompt, max_new_tokens=4, min_new_tokens=4, do_sample=False,
                           return_dict_in_generate=True)
    cache = getattr(first, CACHE_NAME)
    assert cache is not None and cache.get_seq_length() == prompt.shape[1] + 3  # the last token is not fed yet
    more = model.generate(first.sequences, max_new_tokens=6, min_new_tokens=6, do_sample=False, **{CACHE_NAME: cache})
    assert torch.equal(more, reference_greedy(model, prompt, 10))


def test_inputs_embeds_generation_equals_ids():
    model = random_model()
    (prompt,) = prompts((7,))
    embeds = model.get_input_embeddings()(prompt)
    out = model.generate(inputs_embeds=embeds, max_new_tokens=NEW, min_new_tokens=NEW, do_sample=False)
    assert out.tolist() == reference_greedy(model, prompt)[:, 7:].tolist()  # only new tokens come back


def test_return_dict_false_gives_tuples_in_transformers_order():
    model = random_model()
    (prompt,) = prompts((5,))
    out = model(prompt, labels=prompt, use_cache=True)
    loss, logits, cache = model(prompt, labels=prompt, use_cache=True, return_dict=False)
    assert torch.equal(loss, out.loss) and torch.equal(logits, out.logits)
    assert cache.get_seq_length() == 5
    (hidden,) = model.transformer(prompt, use_cache=False, return_dict=False)
    assert torch.equal(hidden, model.transformer(prompt, use_cache=False).last_hidden_state)


def test_either_cache_name_is_accepted_and_both_at_once_refused():
    from transformers import DynamicCache

    model = random_model()
    (prompt,) = prompts((6,))
    full = model(prompt).logits[:, -1]
    for name in ("cache", "past_key_values"):
        cache = DynamicCache(config=model.config)
        model(prompt[:, :5], use_cache=True, **{name: cache})
        step = model(prompt[:, 5:], use_cache=True, **{name: cache}).logits[:, -1]
        torch.testing.assert_close(step, full, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="not both"):
        model(prompt, cache=DynamicCache(config=model.config), past_key_values=DynamicCache(config=model.config))


def test_pipeline_text_generation_equals_reference(tmp_path):
    from chat_helpers import tiny_tokenizer

    tok = tiny_tokenizer()
    model = _model_for(tok)
    prompt_text = "The sky is blue"
    ids = torch.tensor([tok(prompt_text)["input_ids"]])
    expected = tok.decode(reference_greedy(model, ids)[0, ids.shape[1]:])
    gen = pipeline("text-generation", model=model, tokenizer=tok)
    out = gen(prompt_text, max_new_tokens=NEW, min_new_tokens=NEW, do_sample=False, return_full_text=False)
    assert out[0]["generated_text"] == expected


def _model_for(tok) -> NanoChatGPTForCausalLM:
    torch.manual_seed(0)
    config = NanoChatGPTConfig.from_depth(2, vocab_size=len(tok), max_position_embeddings=64,
                                          bos_token_id=tok.bos_token_id, eos_token_id=None, pad_token_id=tok.bos_token_id)
    model = NanoChatGPTForCausalLM(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.3)
    model.generation_config.pad_token_id = tok.bos_token_id
    model.generation_config.eos_token_id = None
    return model


@pytest.mark.slow
def test_remote_code_folder_generates_like_the_reference(tmp_path):
    """A saved folder in a process that cannot import hf_nanochat: the cache is used, and every
    decoding path above gives the reference tokens there too."""
    model = random_model()
    folder = tmp_path / "model"
    model.save_pretrained(folder)
    rows = prompts((5, 8))
    ids, mask = left_padded(rows)
    expected = [reference_greedy(model, r)[0, r.shape[1]:].tolist() for r in rows]
    torch.save({"ids": ids, "mask": mask, "rows": rows, "expected": expected}, tmp_path / "expected.pt")
    result = run_without_hf_nanochat(f"""
import torch
from transformers import AutoModelForCausalLM, pipeline
e = torch.load({str(tmp_path / "expected.pt")!r})
model = AutoModelForCausalLM.from_pretrained({str(folder)!r}, trust_remote_code=True).eval()
assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
kw = dict(max_new_tokens={NEW}, min_new_tokens={NEW}, do_sample=False)
width = e["ids"].shape[1]
for extra in ({{}}, {{"use_cache": False}}, {{"cache_implementation": "static"}}):
    out = model.generate(e["ids"], attention_mask=e["mask"], **kw, **extra)
    assert [row[width:].tolist() for row in out] == e["expected"], (extra, out)
for r, exp in zip(e["rows"], e["expected"]):
    alone = model.generate(r, prompt_lookup_num_tokens=2, **kw)
    assert alone[0, r.shape[1]:].tolist() == exp
print("REMOTE-GEN-OK")
""", cwd=str(tmp_path))
    assert "REMOTE-GEN-OK" in result.stdout
