"""Model speed, side by side in one run: ours vs transformers' built-in NanoChatForCausalLM (same
weights, via hf_nanochat.share.convert) vs a plain-PyTorch nanochat GPT, on the same config (depth 4,
vocab 8192) on CPU.

- training step tokens/s: forward + backward + AdamW, batch 4 x seq 256
- greedy decode tokens/s with a KV cache: batch 1, 32-token prompt, 128 new tokens

Runs are interleaved (A, B, C, A, B, C, ...) and the median is reported, so load from other
processes hits all contenders alike; the ratios are what to read.

    OMP_NUM_THREADS=2 python benchmarks/model_speed.py
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn
from hf_nanochat import NanoChatGPTConfig, NanoChatGPTForCausalLM
from hf_nanochat.share.convert import to_transformers


class PlainGPT(nn.Module):
    """nanochat's forward in plain PyTorch, with a concatenating KV cache for decoding."""

    def __init__(self, c: NanoChatGPTConfig):
        super().__init__()
        self.c = c
        self.wte = nn.Embedding(c.vocab_size, c.hidden_size)
        self.qkv = nn.ModuleList(nn.Linear(c.hidden_size, 3 * c.hidden_size, bias=False) for _ in range(c.num_hidden_layers))
        self.proj = nn.ModuleList(nn.Linear(c.hidden_size, c.hidden_size, bias=False) for _ in range(c.num_hidden_layers))
        self.fc = nn.ModuleList(nn.Linear(c.hidden_size, 4 * c.hidden_size, bias=False) for _ in range(c.num_hidden_layers))
        self.fc2 = nn.ModuleList(nn.Linear(4 * c.hidden_size, c.hidden_size, bias=False) for _ in range(c.num_hidden_layers))
        self.lm_head = nn.Linear(c.hidden_size, c.vocab_size, bias=False)

    def forward(self, idx, cache=None):
        B, T = idx.shape
        H, D = self.c.num_attention_heads, self.c.head_dim
        start = 0 if cache is None or not cache else cache[0][0].shape[2]
        inv = 1.0 / (10000 ** (torch.arange(0, D, 2, dtype=torch.float32) / D))
        f = torch.outer(torch.arange(start, start + T, dtype=torch.float32), inv)
        cos, sin = f.cos()[None, :, None], f.sin()[None, :, None]

        def rot(t):
            a, b = t[..., : D // 2], t[..., D // 2 :]
            return torch.cat([a * cos + b * sin, b * cos - a * sin], -1)

        norm = lambda t: F.rms_norm(t, (t.size(-1),))  # noqa: E731
        x = norm(self.wte(idx))
        for i in range(self.c.num_hidden_layers):
            q, k, v = self.qkv[i](norm(x)).view(B, T, 3, H, D).unbind(2)
            q, k, v = norm(rot(q)).transpose(1, 2), norm(rot(k)).transpose(1, 2), v.transpose(1, 2)
            if cache is not None:
                if len(cache) > i:
                    k, v = torch.cat([cache[i][0], k], 2), torch.cat([cache[i][1], v], 2)
                    cache[i] = (k, v)
                else:
                    cache.append((k, v))
            y = F.scaled_dot_product_attention(q, k, v, is_causal=T > 1)
            x = x + self.proj[i](y.transpose(1, 2).reshape(B, T, -1))
            x = x + self.fc2[i](F.relu(self.fc[i](norm(x))).square())
        logits = self.lm_head(norm(x)).float()
        return 15 * torch.tanh(logits / 15)


def train_step_fn(model, batch, plain: bool):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    inputs, targets = batch[:, :-1].contiguous(), batch[:, 1:].contiguous()

    def step():
        if plain:
            logits = model(inputs)
            loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1))
        else:
            # labels is only a flag for the built-in model; shift_labels carries the targets.
            loss = model(inputs, labels=targets, shift_labels=targets).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def decode_fn(model, prompt, new_tokens: int, plain: bool):
    @torch.no_grad()
    def decode():
        if plain:
            cache, idx = [], prompt
            logits = model(idx, cache)
            for _ in range(new_tokens - 1):
                idx = logits[:, -1:].argmax(-1)
                logits = model(idx, cache)
        else:
            model.generate(prompt, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, pad_token_id=0)

    return decode


def bench(fns: dict, repeats: int) -> dict:
    for fn in fns.values():  # warm-up
        fn()
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(ts) for name, ts in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()
    torch.manual_seed(0)
    config = NanoChatGPTConfig.from_depth(4, vocab_size=8192, max_position_embeddings=512)
    ours, plain = NanoChatGPTForCausalLM(config), PlainGPT(config)
    for m in (ours, plain):
        with torch.no_grad():
            for p in m.parameters():
                p.normal_(0, 0.02)
    models = {"ours": ours, "builtin": to_transformers(ours), "plain": plain}  # builtin: the same weights

    batch = torch.randint(0, config.vocab_size, (4, 257))
    for m in models.values():
        m.train()
    train = bench({n: train_step_fn(m, batch, n == "plain") for n, m in models.items()}, args.repeats)
    train_tps = {n: 4 * 256 / t for n, t in train.items()}

    prompt = torch.randint(0, config.vocab_size, (1, 32))
    for m in models.values():
        m.eval()
    decode = bench({n: decode_fn(m, prompt, 128, n == "plain") for n, m in models.items()}, args.repeats)
    decode_tps = {n: 128 / t for n, t in decode.items()}

    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, depth 4, vocab 8192")
    print(f"{'':22}{'ours':>10}{'builtin':>10}{'plain':>10}{'ours/builtin':>14}{'ours/plain':>12}")
    for label, d in (("train tokens/s", train_tps), ("decode tokens/s", decode_tps)):
        print(
            f"{label:22}{d['ours']:>10.0f}{d['builtin']:>10.0f}{d['plain']:>10.0f}"
            f"{d['ours'] / d['builtin']:>14.2f}{d['ours'] / d['plain']:>12.2f}"
        )


if __name__ == "__main__":
    main()
