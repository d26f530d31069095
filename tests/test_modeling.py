"""The model: nanochat's shapes and numerics, and every transformers feature it claims."""
import math

import pytest
import torch
import torch.nn.functional as F
from chat_helpers import randomise_zero_initialised
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, DynamicCache

from hf_nanochat import NanoChatGPTConfig, NanoChatGPTForCausalLM, NanoChatGPTModel
from hf_nanochat.modeling.modeling_nanochat_gpt import CACHE_NAME

VOCAB = 256


def tiny(depth=2, vocab=VOCAB, attn="sdpa", **kw) -> NanoChatGPTForCausalLM:
    config = NanoChatGPTConfig.from_depth(depth, vocab_size=vocab, max_position_embeddings=64, **kw)
    config._attn_implementation = attn
    return randomise_zero_initialised(NanoChatGPTForCausalLM(config).eval())


# --- shapes and parameter counts -------------------------------------------------------------


@pytest.mark.parametrize(
    "depth,params",
    [(20, 560_988_160), (32, 1_879_048_192), (38, 3_015_835_648), (52, 7_347_372_032)],
)
def test_parameter_counts_pinned(depth, params):
    with torch.device("meta"):
        model = NanoChatGPTForCausalLM(NanoChatGPTConfig.from_depth(depth))
    assert sum(p.numel() for p in model.parameters()) == params


@pytest.mark.parametrize("depth,width,heads", [(1, 64, 1), (4, 256, 2), (12, 768, 6), (20, 1280, 10), (38, 2432, 19)])
def test_from_depth_follows_nanochat_scaling(depth, width, heads):
    c = NanoChatGPTConfig.from_depth(depth)
    assert (c.num_hidden_layers, c.hidden_size, c.num_attention_heads) == (depth, width, heads)
    assert c.num_key_value_heads == heads and c.intermediate_size == 4 * width
    assert c.vocab_size == 65536 and c.max_position_embeddings == 2048
    assert (c.n_layer, c.n_embd, c.n_head, c.n_kv_head) == (depth, width, heads, heads)  # nanochat names


def test_invalid_shapes_raise_clear_errors():
    with pytest.raises(ValueError, match="depth"):
        NanoChatGPTConfig.from_depth(0)
    with pytest.raises(ValueError, match="do not divide"):
        NanoChatGPTConfig.from_depth(5)  # width 320, 3 heads
    with pytest.raises(ValueError, match="num_key_value_heads"):
        NanoChatGPTConfig.from_depth(12, num_key_value_heads=4)  # 6 heads
    with pytest.raises(ValueError, match="divisible"):
        NanoChatGPTConfig(hidden_size=100, num_attention_heads=3)
    with pytest.raises(ValueError, match="untied"):
        NanoChatGPTConfig(tie_word_embeddings=True)


def test_nanochat_initialisation():
    torch.manual_seed(0)
    model = NanoChatGPTForCausalLM(NanoChatGPTConfig.from_depth(4, vocab_size=1024))
    assert torch.count_nonzero(model.lm_head.weight) == 0
    for block in model.transformer.h:
        assert torch.count_nonzero(block.attn.c_proj.weight) == 0
        assert torch.count_nonzero(block.mlp.c_proj.weight) == 0
        assert block.attn.c_q.weight.std().item() == pytest.approx(256**-0.5, rel=0.05)
        assert block.mlp.c_fc.weight.std().item() == pytest.approx(256**-0.5, rel=0.05)
    assert model.transformer.wte.weight.std().item() == pytest.approx(1.0, rel=0.05)
    # Zero lm_head: uniform predictions, loss = ln(vocab).
    x = torch.randint(0, 1024, (2, 16))
    assert model(x, labels=x).loss.item() == pytest.approx(math.log(1024), abs=1e-5)


def test_auto_classes_registered():
    config = AutoConfig.for_model("nanochat_gpt", num_hidden_layers=1, hidden_size=64, num_attention_heads=1)
    assert isinstance(config, NanoChatGPTConfig)
    assert isinstance(AutoModel.from_config(config), NanoChatGPTModel)
    assert isinstance(AutoModelForCausalLM.from_config(config), NanoChatGPTForCausalLM)


# --- numerics ---------------------------------------------------------------------------------


def reference_nanochat_logits(model: NanoChatGPTForCausalLM, idx: torch.Tensor) -> torch.Tensor:
    """nanochat's forward written out from DESIGN.md's facts, in plain torch, on our weights."""
    c = model.config
    sd = {k: v.float() for k, v in model.state_dict().items()}
    B, T = idx.shape
    H, D = c.num_attention_heads, c.head_dim
    norm = lambda t: F.rms_norm(t, (t.size(-1),))  # noqa: E731
    inv = 1.0 / (10000 ** (torch.arange(0, D, 2).float() / D))
    freqs = torch.outer(torch.arange(T).float(), inv)
    cos, sin = freqs.cos()[None, :, None], freqs.sin()[None, :, None]

    def rot(t):
        a, b = t[..., : D // 2], t[..., D // 2 :]
        return torch.cat([a * cos + b * sin, a * (-sin) + b * cos], -1)

    x = norm(sd["transformer.wte.weight"][idx])
    for i in range(c.num_hidden_layers):
        p = f"transformer.h.{i}."
        h = norm(x)
        q = (h @ sd[p + "attn.c_q.weight"].T).view(B, T, H, D)
        k = (h @ sd[p + "attn.c_k.weight"].T).view(B, T, H, D)
        v = (h @ sd[p + "attn.c_v.weight"].T).view(B, T, H, D)
        q, k = norm(rot(q)), norm(rot(k))
        y = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True)
        x = x + y.transpose(1, 2).reshape(B, T, -1) @ sd[p + "attn.c_proj.weight"].T
        m = F.relu(norm(x) @ sd[p + "mlp.c_fc.weight"].T).square()
        x = x + m @ sd[p + "mlp.c_proj.weight"].T
    logits = norm(x) @ sd["lm_head.weight"].T
    return 15 * torch.tanh(logits / 15)


def test_matches_nanochat_reference_forward():
    model = tiny(depth=2)
    idx = torch.randint(0, VOCAB, (2, 24))
    torch.testing.assert_close(model(idx).logits, reference_nanochat_logits(model, idx), atol=1e-5, rtol=1e-5)


def test_logits_are_fp32_and_softcapped_even_in_bf16():
    model = tiny().to(torch.bfloat16)
    with torch.no_grad():
        model.lm_head.weight.normal_(0, 50.0)  # push raw logits far past the cap
    logits = model(torch.randint(0, VOCAB, (1, 8))).logits
    assert logits.dtype == torch.float32
    assert logits.abs().max() <= 15.0 and logits.abs().max() > 14.0


def test_loss_shifts_labels_ignores_minus_100_and_accepts_aligned_targets():
    model = tiny()
    idx = torch.randint(0, VOCAB, (2, 12))
    labels = idx.clone()
    labels[0, :5] = -100
    out = model(idx, labels=labels)
    expected = F.cross_entropy(out.logits[:, :-1].reshape(-1, VOCAB), labels[:, 1:].reshape(-1), ignore_index=-100)
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-6)
    # Pretraining rows come as (inputs, targets) already aligned: shift_labels skips the shift.
    aligned = model(idx[:, :-1], shift_labels=labels[:, 1:]).loss
    assert aligned.item() == pytest.approx(expected.item(), rel=1e-5)
    # num_items_in_batch turns the mean into sum / N (exact gradient accumulation).
    n = int((labels[:, 1:] != -100).sum())
    summed = model(idx, labels=labels, num_items_in_batch=torch.tensor(2 * n)).loss
    assert summed.item() == pytest.approx(expected.item() / 2, rel=1e-5)


@pytest.mark.parametrize("chunk", [1, 5, 7, 1000])
@pytest.mark.parametrize("targets", ["labels", "shift_labels", "num_items"])
def test_chunked_loss_equals_full_loss_and_gradients(chunk, targets):
    model = tiny().train()
    idx = torch.randint(0, VOCAB, (2, 12))
    labels = idx.clone()
    labels[0, :5] = -100
    kwargs = {
        "labels": {"labels": labels},
        "shift_labels": {"shift_labels": labels[:, 1:]},
        "num_items": {"labels": labels, "num_items_in_batch": torch.tensor(31)},
    }[targets]
    inputs = idx[:, :-1] if targets == "shift_labels" else idx
    full = model(inputs, **kwargs)
    full.loss.backward()
    full_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    chunked = model(inputs, loss_chunk_tokens=chunk, **kwargs)
    chunked.loss.backward()
    assert chunked.logits is None
    torch.testing.assert_close(chunked.loss, full.loss, atol=1e-6, rtol=1e-6)
    for g, p in zip(full_grads, model.parameters()):
        torch.testing.assert_close(p.grad, g, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_chunked_loss_under_autocast_matches_full_loss(dtype):
    # the checkpointed head recomputes under the same autocast as the forward
    model = tiny().train()
    idx = torch.randint(0, VOCAB, (2, 12))
    results = []
    for chunk in (None, 5):
        model.zero_grad()
        with torch.autocast("cpu", dtype=dtype):
            loss = model(idx, labels=idx, loss_chunk_tokens=chunk).loss
        loss.backward()
        results.append((loss.detach(), [p.grad.clone() for p in model.parameters()]))
    (full, full_grads), (chunked, chunked_grads) = results
    assert full.dtype == chunked.dtype == torch.float32
    torch.testing.assert_close(chunked, full, atol=1e-5, rtol=1e-5)
    for a, b in zip(chunked_grads, full_grads):
        torch.testing.assert_close(a, b, atol=2e-3, rtol=2e-2)


def saved_for_backward_bytes(fn) -> tuple[int, int]:
    """(total bytes autograd saves for backward during fn, bytes of the largest saved tensor)."""
    sizes = []

    def pack(t):
        sizes.append(t.numel() * t.element_size())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(sizes), max(sizes)


def test_chunked_loss_never_keeps_whole_batch_logits_for_backward():
    vocab, tokens, chunk = 4096, 2 * 64, 16
    model = tiny(vocab=vocab).train()
    idx = torch.randint(0, vocab, (2, 64))
    full_total, full_largest = saved_for_backward_bytes(lambda: model(idx, labels=idx).loss)
    chunk_total, chunk_largest = saved_for_backward_bytes(lambda: model(idx, labels=idx, loss_chunk_tokens=chunk).loss)
    logits_bytes = 4 * tokens * vocab
    assert full_largest >= logits_bytes  # the unchunked path keeps (tokens x vocab) fp32 tensors
    assert chunk_largest < logits_bytes / 4  # chunked: nothing vocabulary-wide beyond one chunk
    assert full_total - chunk_total > 2 * logits_bytes


def test_chunked_loss_rejects_bad_chunk():
    idx = torch.randint(0, VOCAB, (1, 8))
    with pytest.raises(ValueError, match="loss_chunk_tokens must be >= 1"):
        tiny()(idx, labels=idx, loss_chunk_tokens=-4)


def test_eager_and_sdpa_agree():
    torch.manual_seed(1)
    sdpa = tiny(attn="sdpa")
    eager = tiny(attn="eager")
    eager.load_state_dict(sdpa.state_dict())
    idx = torch.randint(0, VOCAB, (2, 20))
    mask = torch.ones_like(idx)
    mask[1, :6] = 0
    torch.testing.assert_close(eager(idx).logits, sdpa(idx).logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(
        eager(idx, attention_mask=mask).logits[:, 6:], sdpa(idx, attention_mask=mask).logits[:, 6:], atol=1e-5, rtol=1e-5
    )


@pytest.mark.parametrize("kv_heads", [None, 1])
def test_kv_cache_decoding_equals_full_forward(kv_heads):
    model = tiny(depth=4, num_key_value_heads=kv_heads)  # depth 4: 2 heads, so kv_heads=1 is GQA
    idx = torch.randint(0, VOCAB, (2, 16))
    full = model(idx).logits
    cache = DynamicCache(config=model.config)
    prefill = model(idx[:, :10], use_cache=True, **{CACHE_NAME: cache})
    steps = [prefill.logits]
    for t in range(10, 16):
        steps.append(model(idx[:, t : t + 1], use_cache=True, **{CACHE_NAME: getattr(prefill, CACHE_NAME)}).logits)
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-5, rtol=1e-5)


def test_left_padding_matches_unpadded_and_batched_generate():
    model = tiny()
    model.generation_config.pad_token_id = 0
    short, long_ = torch.randint(1, VOCAB, (1, 5)), torch.randint(1, VOCAB, (1, 9))
    batch = torch.cat([torch.cat([torch.zeros(1, 4, dtype=torch.long), short], 1), long_])
    mask = torch.cat([torch.cat([torch.zeros(1, 4), torch.ones(1, 5)], 1), torch.ones(1, 9)]).long()
    torch.testing.assert_close(model(batch, attention_mask=mask).logits[0, 4:], model(short).logits[0], atol=1e-5, rtol=1e-5)
    gen = model.generate(batch, attention_mask=mask, max_new_tokens=8, do_sample=False)
    alone = model.generate(short, max_new_tokens=8, do_sample=False)
    assert gen[0, 9:].tolist() == alone[0, 5:].tolist()
    assert gen[1, 9:].tolist() == model.generate(long_, max_new_tokens=8, do_sample=False)[0, 9:].tolist()


def test_packed_documents_do_not_attend_across_position_reset():
    model = tiny()
    a, b = torch.randint(0, VOCAB, (1, 7)), torch.randint(0, VOCAB, (1, 5))
    packed = torch.cat([a, b], 1)
    position_ids = torch.cat([torch.arange(7), torch.arange(5)])[None]
    logits = model(packed, position_ids=position_ids).logits
    torch.testing.assert_close(logits[:, :7], model(a).logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(logits[:, 7:], model(b).logits, atol=1e-5, rtol=1e-5)
    # Without the reset the second document does see the first: the test above has teeth.
    assert not torch.allclose(model(packed).logits[:, 7:], model(b).logits, atol=1e-3)


def test_inputs_embeds_logits_to_keep_and_hidden_states():
    model = tiny(depth=2)
    idx = torch.randint(0, VOCAB, (2, 10))
    out = model(idx, output_hidden_states=True)
    embeds = model.get_input_embeddings()(idx)
    torch.testing.assert_close(model(inputs_embeds=embeds).logits, out.logits)
    torch.testing.assert_close(model(idx, logits_to_keep=1).logits, out.logits[:, -1:])
    assert len(out.hidden_states) == model.config.num_hidden_layers + 1
    # The backbone + head path TRL uses reproduces our logits (final_logit_softcapping is read by TRL).
    hidden = model.transformer(idx).last_hidden_state
    torch.testing.assert_close(out.hidden_states[-1], hidden)
    cap = model.config.final_logit_softcapping
    torch.testing.assert_close(cap * torch.tanh(model.get_output_embeddings()(hidden).float() / cap), out.logits)
    with pytest.raises(ValueError, match="exactly one"):
        model(idx, inputs_embeds=embeds)


def test_gradient_checkpointing_gives_same_gradients():
    model = tiny().train()
    idx = torch.randint(0, VOCAB, (2, 12))
    model(idx, labels=idx).loss.backward()
    plain = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    # transformers 5.23 renamed gradient_checkpointing_enable; the model files support older releases too.
    (getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable)()
    assert model.transformer.gradient_checkpointing
    model(idx, labels=idx).loss.backward()
    for g, p in zip(plain, model.parameters()):
        torch.testing.assert_close(p.grad, g, atol=1e-6, rtol=1e-5)
    assert model._no_split_modules == {"NanoChatGPTBlock"}
