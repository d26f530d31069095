"""An independent plain-torch nanochat 2026 forward, written from /work/shared/NANOCHAT_2026.md
(the facts read from karpathy/nanochat master's nanochat/gpt.py), for tests to compare against.

It reads a state dict in nanochat's own key names (`value_embeds.{i}.weight`, `resid_lambdas`,
`transformer.h.{i}.attn.ve_gate.weight`, ...) and the era's constants that checkpoints do not
store; it shares no code with modeling/. fp32 throughout, explicit masks, one sequence at a time
semantics (no padding, no cache): the reference the model's fast paths must reproduce.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class Era:
    """Constants of one nanochat era (the facts file's checkpoint table)."""

    rope_base: float
    qk_scale: float
    ve_gate_channels: int
    ve_gate_scale: float
    short_window: int  # `left`: keys before the query on "S" layers
    softcap: float = 15.0
    smear_channels: int = 24


def era_constants(name: str, seq_len: int) -> Era:
    if name == "january":
        return Era(10000.0, 1.0, 32, 2.0, seq_len // 2)
    if name == "march9":
        return Era(100000.0, 1.15, 12, 3.0, math.ceil(seq_len / 3 / 128) * 128)
    if name == "march14":
        return Era(100000.0, 1.2, 12, 3.0, math.ceil(seq_len / 4 / 128) * 128)
    raise ValueError(name)


def window_lefts(pattern: str, n_layer: int, seq_len: int, short: int) -> list[int]:
    lefts = [short if pattern[i % len(pattern)] == "S" else seq_len for i in range(n_layer)]
    lefts[-1] = seq_len
    return lefts


def _norm(x):
    return F.rms_norm(x, (x.size(-1),))


def _rotate(x, cos, sin):
    d = x.shape[-1] // 2
    x1, x2 = x[..., :d], x[..., d:]
    return torch.cat([x1 * cos + x2 * sin, -x1 * sin + x2 * cos], dim=-1)


def reference_logits(sd: dict, n_layer: int, n_head: int, n_kv_head: int, vocab_size: int,
                     lefts: list[int], era: Era, ids: torch.Tensor) -> torch.Tensor:
    """(B, T, vocab_size) fp32 soft-capped logits of nanochat 2026 for token ids (B, T)."""
    sd = {k: v.float() for k, v in sd.items()}
    B, T = ids.shape
    C = sd["transformer.wte.weight"].shape[1]
    hd = C // n_head
    x = _norm(sd["transformer.wte.weight"][ids])
    if "smear_gate.weight" in sd:
        gate = sd["smear_lambda"] * torch.sigmoid(x[:, 1:, : era.smear_channels] @ sd["smear_gate.weight"].T)
        x = torch.cat([x[:, :1], x[:, 1:] + gate * x[:, :-1]], dim=1)
    x0 = x
    inv_freq = 1.0 / (era.rope_base ** (torch.arange(0, hd, 2, dtype=torch.float32) / hd))
    freqs = torch.outer(torch.arange(T, dtype=torch.float32), inv_freq)
    cos, sin = freqs.cos()[None, :, None], freqs.sin()[None, :, None]
    i_idx = torch.arange(T)[:, None]
    j_idx = torch.arange(T)[None, :]
    x_mid = None
    for i in range(n_layer):
        p = f"transformer.h.{i}."
        if "resid_lambdas" in sd:
            x = sd["resid_lambdas"][i] * x + sd["x0_lambdas"][i] * x0
        h = _norm(x)
        q = (h @ sd[p + "attn.c_q.weight"].T).view(B, T, n_head, hd)
        k = (h @ sd[p + "attn.c_k.weight"].T).view(B, T, n_kv_head, hd)
        v = (h @ sd[p + "attn.c_v.weight"].T).view(B, T, n_kv_head, hd)
        if f"value_embeds.{i}.weight" in sd:
            g = era.ve_gate_scale * torch.sigmoid(h[..., : era.ve_gate_channels] @ sd[p + "attn.ve_gate.weight"].T)
            v = v + g[..., None] * sd[f"value_embeds.{i}.weight"][ids].view(B, T, n_kv_head, hd)
        q = _norm(_rotate(q, cos, sin)) * era.qk_scale
        k = _norm(_rotate(k, cos, sin)) * era.qk_scale
        rep = n_head // n_kv_head
        k = k.repeat_interleave(rep, dim=2)
        v = v.repeat_interleave(rep, dim=2)
        scores = torch.einsum("bihd,bjhd->bhij", q, k) / math.sqrt(hd)
        visible = (j_idx <= i_idx) & (i_idx - j_idx <= lefts[i])
        scores = scores.masked_fill(~visible, float("-inf"))
        y = torch.einsum("bhij,bjhd->bihd", scores.softmax(-1), v).reshape(B, T, C)
        x = x + y @ sd[p + "attn.c_proj.weight"].T
        x = x + F.relu(_norm(x) @ sd[p + "mlp.c_fc.weight"].T).square() @ sd[p + "mlp.c_proj.weight"].T
        if i == n_layer // 2:
            x_mid = x
    if "backout_lambda" in sd:
        x = x - sd["backout_lambda"] * x_mid
    logits = (_norm(x) @ sd["lm_head.weight"].T)[..., :vocab_size]
    return era.softcap * torch.tanh(logits / era.softcap)


def random_nanochat_state(n_layer: int, n_head: int, n_kv_head: int, n_embd: int, padded_vocab: int,
                          era: str, seed: int = 0) -> dict:
    """A nanochat-format state dict of one era with random (non-degenerate) weights; embeddings
    and value embeddings in bf16 as a GPU run saves them, the rest fp32."""
    g = torch.Generator().manual_seed(seed)
    hd = n_embd // n_head
    kv = n_kv_head * hd

    def r(*shape, std=None):
        std = std if std is not None else shape[-1] ** -0.5
        return torch.randn(*shape, generator=g) * std

    gate_ch = 32 if era == "january" else 12
    sd = {"transformer.wte.weight": r(padded_vocab, n_embd, std=1.0).bfloat16(),
          "lm_head.weight": r(padded_vocab, n_embd)}
    for i in range(n_layer):
        p = f"transformer.h.{i}."
        sd[p + "attn.c_q.weight"] = r(n_head * hd, n_embd)
        sd[p + "attn.c_k.weight"] = r(kv, n_embd)
        sd[p + "attn.c_v.weight"] = r(kv, n_embd)
        sd[p + "attn.c_proj.weight"] = r(n_embd, n_embd)
        sd[p + "mlp.c_fc.weight"] = r(4 * n_embd, n_embd)
        sd[p + "mlp.c_proj.weight"] = r(n_embd, 4 * n_embd)
        if i % 2 == (n_layer - 1) % 2:
            sd[f"value_embeds.{i}.weight"] = r(padded_vocab, kv, std=0.5).bfloat16()
            sd[p + "attn.ve_gate.weight"] = r(n_kv_head, gate_ch, std=0.5)
    sd["resid_lambdas"] = 1.0 + 0.1 * torch.randn(n_layer, generator=g)
    sd["x0_lambdas"] = 0.2 + 0.1 * torch.randn(n_layer, generator=g)
    if era == "march14":
        sd["smear_gate.weight"] = r(1, 24, std=0.5)
        sd["smear_lambda"] = torch.tensor([0.7])
        sd["backout_lambda"] = torch.tensor([0.3])
    return sd
