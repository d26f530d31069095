"""nanochat's 2026 architecture as configuration of our model: numbers against an independent
reference (tests/nanochat_2026_reference.py), the cache, padding, packing, checkpointing, reload."""
import math
import sys

import pytest
import torch

from hf_nanochat import NanoChatGPTConfig, NanoChatGPTForCausalLM
from isolated import run_without_hf_nanochat
from nanochat_2026_reference import Era, reference_logits, window_lefts

SEQ = 48
WINDOW_LEFT = 7  # sliding layers see 8 keys: far shorter than the sequences below
MODEL_LEVEL = ("value_embeds.", "resid_lambdas", "x0_lambdas", "smear_gate.", "smear_lambda", "backout_lambda")


def config_2026(**overrides) -> NanoChatGPTConfig:
    kwargs = dict(vocab_size=100, max_position_embeddings=SEQ, sliding_window=WINDOW_LEFT + 1)
    kwargs.update(overrides)
    return NanoChatGPTConfig.from_depth(4, architecture="2026", **kwargs)


def random_model(config: NanoChatGPTConfig, seed: int = 0, attn: str = "sdpa") -> NanoChatGPTForCausalLM:
    torch.manual_seed(seed)
    config._attn_implementation = attn
    model = NanoChatGPTForCausalLM(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lambda" in name:
                p.uniform_(0.1, 0.9)
            else:
                p.normal_(0, 0.5 * p.shape[-1] ** -0.5 if p.ndim == 2 and "wte" not in name else 0.5)
    return model.eval()


def as_nanochat_state(model) -> dict:
    """Our state dict in nanochat's key names (model-level 2026 weights sit outside `transformer.`)."""
    out = {}
    for key, value in model.state_dict().items():
        short = key.removeprefix("transformer.")
        out[short if short.startswith(MODEL_LEVEL) else key] = value
    return out


def reference_for(model, ids) -> torch.Tensor:
    c = model.config
    lefts = [c.sliding_window - 1 if t == "sliding_attention" else c.max_position_embeddings for t in c.layer_types]
    era = Era(c.rope_theta, c.qk_scale, c.value_embedding_gate_channels, c.value_embedding_gate_scale, WINDOW_LEFT)
    return reference_logits(as_nanochat_state(model), c.num_hidden_layers, c.num_attention_heads,
                            c.num_key_value_heads, c.vocab_size, lefts, era, ids)


def test_from_depth_2026_shapes():
    c = NanoChatGPTConfig.from_depth(24, architecture="2026")
    assert (c.hidden_size, c.num_attention_heads, c.head_dim) == (1536, 12, 128)
    assert (c.vocab_size, c.padded_vocab_size) == (32768, 32768)
    assert NanoChatGPTConfig.from_depth(20, architecture="2026").hidden_size == 1280
    assert NanoChatGPTConfig.from_depth(13, architecture="2026").hidden_size == 896  # ceil(832/128)*128
    assert NanoChatGPTConfig.from_depth(4, architecture="2026", vocab_size=1000).padded_vocab_size == 1024
    assert c.layer_types == ["sliding_attention"] * 3 + ["full_attention"] + (["sliding_attention"] * 3 + ["full_attention"]) * 5
    assert c.sliding_window == 513  # nanochat's left=512 plus the query itself
    assert c.value_embedding_layers == list(range(1, 24, 2))
    assert (c.rope_theta, c.qk_scale, c.smear_gate_channels, c.backout_layer) == (100000.0, 1.2, 24, 12)
    assert c.nanochat_architecture == "2026"
    nov = NanoChatGPTConfig.from_depth(20)
    assert nov.nanochat_architecture == "2025-11" and nov.layer_types == ["full_attention"] * 20 and nov.vocab_size == 65536


def test_bad_2026_fields_are_rejected():
    with pytest.raises(ValueError, match="sliding_window"):
        NanoChatGPTConfig.from_depth(4, architecture="2026", sliding_window=None)
    with pytest.raises(ValueError, match="layer_types"):
        NanoChatGPTConfig.from_depth(4, sliding_window=9)
    with pytest.raises(ValueError, match="value_embedding_layers"):
        NanoChatGPTConfig.from_depth(4, value_embedding_layers=[7])
    with pytest.raises(ValueError, match="architecture"):
        NanoChatGPTConfig.from_depth(4, architecture="2027")


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("kv_heads", [2, 1])
def test_logits_match_independent_reference(attn, kv_heads):
    model = random_model(config_2026(num_key_value_heads=kv_heads), attn=attn)
    assert model.lm_head.weight.shape[0] == 128  # 100 padded to 64
    ids = torch.randint(0, 100, (2, SEQ), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours = model(ids).logits
    assert ours.shape == (2, SEQ, 100)
    torch.testing.assert_close(ours, reference_for(model, ids), atol=1e-5, rtol=1e-5)


def test_every_feature_changes_the_logits():
    """The reference comparison is only meaningful if each feature matters at these weights."""
    model = random_model(config_2026())
    ids = torch.randint(0, 100, (1, SEQ), generator=torch.Generator().manual_seed(2))
    base = reference_for(model, ids)
    for key in ("backout_lambda", "smear_lambda"):
        sd = dict(model.transformer.named_parameters())
        with torch.no_grad():
            old = sd[key].clone()
            sd[key].zero_()
            assert (reference_for(model, ids) - base).abs().max() > 1e-3, key
            sd[key].copy_(old)
    full = reference_logits(as_nanochat_state(model), 4, 2, 2, 100, [SEQ] * 4,
                            Era(1e5, 1.2, 12, 3.0, WINDOW_LEFT), ids)
    assert (full - base).abs().max() > 1e-3  # the windows matter at this length


def test_init_follows_nanochat_2026():
    torch.manual_seed(0)
    c = NanoChatGPTConfig.from_depth(4, architecture="2026", vocab_size=1000)
    model = NanoChatGPTForCausalLM(c)
    t, s = model.transformer, math.sqrt(3 / c.hidden_size)
    torch.testing.assert_close(t.resid_lambdas.data, 1.15 - 0.10 * torch.arange(4) / 3)
    torch.testing.assert_close(t.x0_lambdas.data, 0.20 - 0.15 * torch.arange(4) / 3)
    assert t.smear_lambda.item() == 0 and t.backout_lambda.item() == pytest.approx(0.2)
    attn, mlp = t.h[0].attn, t.h[0].mlp
    for w in (attn.c_q.weight, attn.c_k.weight, attn.c_v.weight, t.value_embeds["1"].weight):
        assert w.abs().max() <= s and w.abs().max() > 0.9 * s
    assert mlp.c_fc.weight.abs().max() <= 0.4 * s and mlp.c_fc.weight.abs().max() > 0.35 * s
    assert attn.c_proj.weight.abs().max() == 0 and mlp.c_proj.weight.abs().max() == 0
    assert t.wte.weight.std().item() == pytest.approx(0.8, rel=0.02)
    assert model.lm_head.weight.std().item() == pytest.approx(0.001, rel=0.05)
    for gate in (t.h[1].attn.ve_gate.weight, t.smear_gate.weight):
        assert gate.min() >= 0 and gate.max() <= 0.02
    assert t.h[0].attn.ve_gate is None and t.h[3].attn.ve_gate is not None


def _cache_of(out):
    return getattr(out, "cache", None) or out.past_key_values


def test_cached_decoding_equals_full_forward_step_by_step():
    model = random_model(config_2026())
    ids = torch.randint(0, 100, (2, 30), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        full = model(ids).logits
        out = model(ids[:, :5], use_cache=True)
        torch.testing.assert_close(out.logits, full[:, :5], atol=1e-5, rtol=1e-5)
        cache = _cache_of(out)
        for t in range(5, 30):  # one token at a time, well past the 8-key window
            out = model(ids[:, t : t + 1], cache=cache, use_cache=True)
            cache = _cache_of(out)
            torch.testing.assert_close(out.logits[:, 0], full[:, t], atol=1e-5, rtol=1e-5)


def test_chunked_prefill_is_exact():
    """nanochat drops the smear on a chunk's first token; the state in our cache keeps it."""
    model = random_model(config_2026())
    ids = torch.randint(0, 100, (1, 30), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        full = model(ids).logits
        cache, pieces = None, []
        for start in range(0, 30, 7):
            out = model(ids[:, start : start + 7], cache=cache, use_cache=True)
            cache = _cache_of(out)
            pieces.append(out.logits)
    torch.testing.assert_close(torch.cat(pieces, 1), full, atol=1e-5, rtol=1e-5)


def test_generate_matches_stepwise_greedy():
    model = random_model(config_2026())
    prompt = torch.randint(0, 100, (1, 6), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        generated = model.generate(prompt, max_new_tokens=20, do_sample=False, pad_token_id=0)
        seq = prompt
        for _ in range(20):  # no cache at all: the full forward each step
            seq = torch.cat([seq, model(seq).logits[:, -1:].argmax(-1)], 1)
    assert torch.equal(generated, seq)


def test_left_padding_never_smears_a_pad_into_a_real_token():
    model = random_model(config_2026())
    g = torch.Generator().manual_seed(6)
    a, b = torch.randint(1, 100, (1, 20), generator=g), torch.randint(1, 100, (1, 12), generator=g)
    pad = 0
    batch = torch.cat([a, torch.cat([torch.full((1, 8), pad), b], 1)])
    mask = torch.cat([torch.ones(1, 20), torch.cat([torch.zeros(1, 8), torch.ones(1, 12)], 1)]).long()
    with torch.no_grad():
        padded = model(batch, attention_mask=mask).logits
        alone = model(b).logits
        torch.testing.assert_close(padded[1, 8:], alone[0], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(padded[0], model(a).logits[0], atol=1e-5, rtol=1e-5)
        # and generation from the padded batch continues each row as if alone
        out = model.generate(batch, attention_mask=mask, max_new_tokens=12, do_sample=False, pad_token_id=pad)
        single = model.generate(b, max_new_tokens=12, do_sample=False, pad_token_id=pad)
    assert torch.equal(out[1, 20:], single[0, 12:])


def test_packed_documents_equal_separate_documents():
    model = random_model(config_2026())
    g = torch.Generator().manual_seed(7)
    docs = [torch.randint(0, 100, (1, n), generator=g) for n in (13, 20, 9)]
    packed = torch.cat(docs, 1)
    position_ids = torch.cat([torch.arange(d.shape[1]) for d in docs])[None]
    with torch.no_grad():
        logits = model(packed, position_ids=position_ids).logits
        separate = torch.cat([model(d).logits for d in docs], 1)
    torch.testing.assert_close(logits, separate, atol=1e-5, rtol=1e-5)


def test_gradient_checkpointing_gives_the_same_loss_and_gradients():
    ids = torch.randint(0, 100, (2, SEQ), generator=torch.Generator().manual_seed(8))
    grads = []
    for checkpointing in (False, True):
        model = random_model(config_2026()).train()
        if checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        loss = model(ids, labels=ids).loss
        loss.backward()
        grads.append((loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}))
    torch.testing.assert_close(grads[0][0], grads[1][0])
    assert set(grads[0][1]) == set(grads[1][1])
    for name, grad in grads[0][1].items():
        torch.testing.assert_close(grads[1][1][name], grad, msg=name)
    # every 2026 parameter learns
    for name in ("transformer.smear_lambda", "transformer.backout_lambda", "transformer.resid_lambdas",
                 "transformer.value_embeds.3.weight", "transformer.h.3.attn.ve_gate.weight"):
        assert grads[0][1][name].abs().sum() > 0, name


def test_chunked_loss_ignores_padded_vocab_rows():
    model = random_model(config_2026())
    ids = torch.randint(0, 100, (2, SEQ), generator=torch.Generator().manual_seed(9))
    whole = model(ids, labels=ids).loss
    chunked = model(ids, labels=ids, loss_chunk_tokens=17).loss
    torch.testing.assert_close(chunked, whole)


def test_num_flops_counts_windows_and_excludes_embeddings():
    c = NanoChatGPTConfig.from_depth(8, architecture="2026")
    with torch.device("meta"):
        model = NanoChatGPTForCausalLM(c)
    matmul = sum(p.numel() for n, p in model.named_parameters()
                 if "wte" not in n and "value_embeds" not in n and "lambda" not in n)
    keys = sum(512 if t == "sliding_attention" else 2048 for t in c.layer_types)
    assert model.num_flops_per_token() == 6 * matmul + 12 * c.hidden_size * keys
    full = NanoChatGPTConfig.from_depth(8, architecture="2026", layer_types=["full_attention"] * 8, sliding_window=None)
    with torch.device("meta"):
        assert NanoChatGPTForCausalLM(full).num_flops_per_token() > model.num_flops_per_token()


def test_save_reload_in_a_process_without_hf_nanochat(tmp_path):
    model = random_model(config_2026())
    model.save_pretrained(tmp_path / "m")
    ids = torch.randint(0, 100, (1, 30), generator=torch.Generator().manual_seed(10))
    with torch.no_grad():
        torch.save({"ids": ids, "logits": model(ids).logits}, tmp_path / "expected.pt")
    run_without_hf_nanochat(
        f"""
        import torch
        from transformers import AutoModelForCausalLM
        model = AutoModelForCausalLM.from_pretrained({str(tmp_path / "m")!r}, trust_remote_code=True)
        assert model.config.nanochat_architecture == "2026"
        expected = torch.load({str(tmp_path / "expected.pt")!r}, weights_only=True)
        with torch.no_grad():
            torch.testing.assert_close(model(expected["ids"]).logits, expected["logits"], atol=0, rtol=0)
            out = model.generate(expected["ids"][:, :4], max_new_tokens=8, do_sample=False, pad_token_id=0)
        assert out.shape == (1, 12)
        """,
        cwd=str(tmp_path),
    )


@pytest.mark.parametrize("length", [37, SEQ])
def test_plain_windows_skip_the_dense_mask_and_match_it(monkeypatch, length):
    """Training passes (no padding/cache/packing) under SDPA compute windows blockwise; the
    result equals transformers' masked path, which explicit position_ids force."""
    model = random_model(config_2026(num_key_value_heads=1))
    modeling_file = sys.modules[type(model).__module__]
    ids = torch.randint(0, 100, (2, length), generator=torch.Generator().manual_seed(11))

    def no_dense_mask(**kwargs):
        raise AssertionError("a plain window built transformers' (T x T) mask")

    with torch.no_grad():
        masked = model(ids, position_ids=torch.arange(length)[None]).logits
        monkeypatch.setattr(modeling_file, "create_sliding_window_causal_mask", no_dense_mask)
        blockwise = model(ids).logits
    torch.testing.assert_close(blockwise, masked, atol=1e-5, rtol=1e-5)


def test_info_and_model_card_name_the_architecture(capsys):
    from hf_nanochat.cli import main as cli_main
    from hf_nanochat.share.hub import model_table

    assert cli_main(["info", "--depth", "24", "--architecture", "2026"]) == 0
    row = capsys.readouterr().out.strip().splitlines()[-1].split()
    assert row[:7] == ["2026", "24", "1536", "12", "12", "128", "18x513"]
    assert cli_main(["info", "--depth", "20"]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1].split()[:7] == ["2025-11", "20", "1280", "10", "10", "128", "full"]
    assert "| 2026 | 4 | 256 |" in model_table(random_model(config_2026()))


def test_report_card_reads_the_architecture_from_the_saved_config(tmp_path):
    import json

    from hf_nanochat.speedrun.report import base_section

    model = random_model(config_2026())
    model.save_pretrained(tmp_path / "base" / "model")
    rows = [{"step": s, "tokens": 1000 * s, "loss": 5.0 - s, "tokens_per_s": 100.0} for s in (1, 2)]
    (tmp_path / "base" / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    base = base_section(tmp_path)
    assert base["architecture"] == "2026"
    assert base["params"] == sum(p.numel() for p in model.parameters())  # value embeddings included
