"""nanochat 2026 model speed on CPU, side by side in one run.

1. training tokens/s (forward + backward, fp32): our 2026 model vs our Nov 2025 model at the
   same depth vs a plain-PyTorch forward of the same 2026 weights (nanochat's own structure
   with SDPA and a dense window mask, as nanochat runs without flash-attention 3);
2. decode tokens/s with the KV cache (generate(), greedy) for both architectures;
3. windowed vs full attention at sequence 2048 (small width): the 2026 model with its
   "SSSL" windows vs the same model with every layer full.

    python benchmarks/model_2026_speed.py [--depth 4] [--seq 512] [--repeats 3]
"""
from __future__ import annotations

import argparse
import math
import time

import torch
import torch.nn.functional as F

from hf_nanochat import NanoChatGPTConfig, NanoChatGPTForCausalLM


def best_time(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def plain_2026_loss(model: NanoChatGPTForCausalLM, ids: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """nanochat 2026's forward in plain PyTorch over our model's parameters (no transformers
    code on the path): SDPA with a dense (T x T) window mask per sliding layer."""
    c, t = model.config, model.transformer
    norm = lambda x: F.rms_norm(x, (x.size(-1),))  # noqa: E731
    B, T = ids.shape
    hd, H, KV = c.head_dim, c.num_attention_heads, c.num_key_value_heads
    x = norm(t.wte(ids))
    gate = t.smear_lambda * torch.sigmoid(t.smear_gate(x[:, 1:, : c.smear_gate_channels]))
    x = torch.cat([x[:, :1], x[:, 1:] + gate * x[:, :-1]], dim=1)
    x0 = x
    inv_freq = 1.0 / (c.rope_theta ** (torch.arange(0, hd, 2, dtype=torch.float32) / hd))
    freqs = torch.outer(torch.arange(T, dtype=torch.float32), inv_freq)
    cos, sin = freqs.cos()[None, :, None], freqs.sin()[None, :, None]
    i, j = torch.arange(T)[:, None], torch.arange(T)[None]
    window_mask = (j <= i) & (j > i - (c.sliding_window or T))

    def rotate(u):
        d = u.shape[-1] // 2
        return torch.cat([u[..., :d] * cos + u[..., d:] * sin, -u[..., :d] * sin + u[..., d:] * cos], -1)

    x_mid = None
    for li, block in enumerate(t.h):
        a = block.attn
        x = t.resid_lambdas[li] * x + t.x0_lambdas[li] * x0
        h = norm(x)
        q = a.c_q(h).view(B, T, H, hd)
        k = a.c_k(h).view(B, T, KV, hd)
        v = a.c_v(h).view(B, T, KV, hd)
        if a.ve_gate is not None:
            g = c.value_embedding_gate_scale * torch.sigmoid(a.ve_gate(h[..., : c.value_embedding_gate_channels]))
            v = v + g[..., None] * t.value_embeds[str(li)](ids).view(B, T, KV, hd)
        q = (norm(rotate(q)) * c.qk_scale).transpose(1, 2)
        k = (norm(rotate(k)) * c.qk_scale).transpose(1, 2)
        v = v.transpose(1, 2)
        if a.sliding_window is not None:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=window_mask, enable_gqa=KV != H)
        else:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=KV != H)
        x = x + a.c_proj(y.transpose(1, 2).reshape(B, T, -1))
        x = x + block.mlp(norm(x))
        if li == c.backout_layer:
            x_mid = x
    x = norm(x - t.backout_lambda * x_mid)
    logits = model.lm_head(x)[..., : c.vocab_size].float()
    logits = 15 * torch.tanh(logits / 15)
    return F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1))


def randomised(model: NanoChatGPTForCausalLM, seed: int = 0) -> NanoChatGPTForCausalLM:
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.abs().max() == 0:  # zero-initialised projections / smear_lambda: make every path count
                p.normal_(0, 0.02 if p.ndim == 2 else 0.3)
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--seq", type=int, default=512)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--vocab", type=int, default=8192)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--decode-tokens", type=int, default=64)
    args = parser.parse_args()
    torch.manual_seed(0)
    seq = args.seq
    models = {
        "2025-11": NanoChatGPTConfig.from_depth(args.depth, vocab_size=args.vocab, max_position_embeddings=seq),
        "2026": NanoChatGPTConfig.from_depth(args.depth, architecture="2026", vocab_size=args.vocab, max_position_embeddings=seq),
    }
    models = {k: randomised(NanoChatGPTForCausalLM(c).train()) for k, c in models.items()}
    ids = torch.randint(0, args.vocab, (args.batch, seq + 1))
    x, y = ids[:, :-1], ids[:, 1:]
    tokens = args.batch * seq

    def train_step(model):
        def step():
            model.zero_grad(set_to_none=True)
            model(x, shift_labels=y).loss.backward()
        return step

    def plain_step():
        m = models["2026"]
        m.zero_grad(set_to_none=True)
        plain_2026_loss(m, x, y).backward()

    with torch.no_grad():
        ours, plain = models["2026"](x, shift_labels=y).loss, plain_2026_loss(models["2026"], x, y)
    assert torch.allclose(ours, plain, atol=1e-4), (ours, plain)  # same model, same numbers
    c26 = models["2026"].config
    print(f"CPU, {torch.get_num_threads()} threads; depth {args.depth}, batch {args.batch} x seq {seq}, vocab {args.vocab}; "
          f"2026 width {c26.hidden_size}, windows {c26.layer_types.count('sliding_attention')}x{c26.sliding_window}")
    print("\n1. training tokens/s (forward + backward, fp32)")
    rates = {}
    for name, fn in (("ours 2025-11", train_step(models["2025-11"])), ("ours 2026", train_step(models["2026"])),
                     ("plain PyTorch 2026", plain_step)):
        rates[name] = tokens / best_time(fn, args.repeats)
        print(f"   {name:<20} {rates[name]:>9.0f} tok/s   ({rates[name] / rates['ours 2025-11']:.2f}x ours 2025-11)")
    print(f"   ours 2026 / plain PyTorch 2026: {rates['ours 2026'] / rates['plain PyTorch 2026']:.2f}x")

    print(f"\n2. decode tokens/s with the KV cache (generate, greedy, batch 1, {args.decode_tokens} new tokens)")
    prompt = ids[:1, :16]
    for name, model in models.items():
        model.eval()

        def decode(model=model):
            with torch.no_grad():
                model.generate(prompt, max_new_tokens=args.decode_tokens, min_new_tokens=args.decode_tokens,
                               do_sample=False, pad_token_id=0)
        print(f"   {name:<8} {args.decode_tokens / best_time(decode, 1):>7.1f} tok/s")

    print("\n3. windowed vs full attention at sequence 2048 (depth 4, width 256, forward + backward)")
    long_seq = 2048
    long_ids = torch.randint(0, 512, (1, long_seq + 1))
    times = {}
    for name, overrides in (("SSSL windows (513)", {}),
                            ("all full", {"layer_types": ["full_attention"] * 4, "sliding_window": None})):
        config = NanoChatGPTConfig.from_depth(4, architecture="2026", vocab_size=512, max_position_embeddings=long_seq, **overrides)
        model = randomised(NanoChatGPTForCausalLM(config).train())

        def step(model=model):
            model.zero_grad(set_to_none=True)
            model(long_ids[:, :-1], shift_labels=long_ids[:, 1:]).loss.backward()
        times[name] = best_time(step, max(1, args.repeats - 1))
        print(f"   {name:<20} {long_seq / times[name]:>7.0f} tok/s")
    ratio = times["all full"] / times["SSSL windows (513)"]
    flops = {}
    for name, overrides in (("w", {}), ("f", {"layer_types": ["full_attention"] * 4, "sliding_window": None})):
        with torch.device("meta"):
            flops[name] = NanoChatGPTForCausalLM(NanoChatGPTConfig.from_depth(
                4, architecture="2026", vocab_size=512, max_position_embeddings=long_seq, **overrides)).num_flops_per_token()
    print(f"   windowed is {ratio:.2f}x the speed of full (FLOPs/token ratio {flops['f'] / flops['w']:.2f}x)")


if __name__ == "__main__":
    main()
