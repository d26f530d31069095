"""Optimizer step time: nanochat's 2026 MuonAdamW (`optimizer: muon_adamw_2026`) vs today's Muon
(`optimizer: muon`), side by side in one run on the same parameter shapes and gradients.

Shapes: the block matrices of a depth-`--depth` model (width ceil(64*depth/128)*128, 4C MLP,
as both recipes) plus wte and lm_head at `--vocab`; the 2026 run also steps the ve_gates, value
embeddings and scalars that its architecture adds (so its row is the optimizer it would run).
fp32 on CPU (Newton-Schulz / Polar Express in fp32, as both pick on CPU). Steps are
interleaved, the median is reported; the first `--warmup` steps of each are not timed.

    OMP_NUM_THREADS=2 python benchmarks/optim_2026_speed.py
"""
from __future__ import annotations

import argparse
import math
import statistics
import time

import torch
from torch import nn

from hf_nanochat.train.optim import MuonAdamW as MuonToday
from hf_nanochat.train.optim_2026 import build_muon_adamw_2026


def shapes(depth: int, vocab: int, with_2026: bool) -> dict[str, tuple[int, ...]]:
    width = math.ceil(64 * depth / 128) * 128
    kv = width // 128
    out = {"transformer.wte.weight": (vocab, width), "lm_head.weight": (vocab, width)}
    for i in range(depth):
        for name in ("c_q", "c_k", "c_v", "c_proj"):
            out[f"transformer.h.{i}.attn.{name}.weight"] = (width, width)
        out[f"transformer.h.{i}.mlp.c_fc.weight"] = (4 * width, width)
        out[f"transformer.h.{i}.mlp.c_proj.weight"] = (width, 4 * width)
        if with_2026 and i % 2 == (depth - 1) % 2:
            out[f"transformer.h.{i}.attn.ve_gate.weight"] = (kv, 12)
            out[f"value_embeds.{i}.weight"] = (vocab, width)
    if with_2026:
        out.update({"resid_lambdas": (depth,), "x0_lambdas": (depth,), "smear_gate.weight": (1, 24), "smear_lambda": (1,), "backout_lambda": (1,)})
    return out


class Params(nn.Module):
    def __init__(self, named: dict, width: int):
        super().__init__()
        self.config = type("Cfg", (), {"hidden_size": width})()
        self._names = list(named)
        for name, shape in named.items():
            self.register_parameter(name.replace(".", "__"), nn.Parameter(torch.randn(shape) * 0.02))

    def named_parameters(self, *args, **kwargs):  # the dotted names the optimizers group by
        for name, p in super().named_parameters(*args, **kwargs):
            yield name.replace("__", "."), p


def today(model: Params) -> MuonToday:
    named = dict(model.named_parameters())
    matrices = [p for n, p in named.items() if ".h." in n]
    adam = dict(kind="adamw", betas=(0.8, 0.95), eps=1e-10, weight_decay=0.0)
    return MuonToday([
        dict(params=[named["lm_head.weight"]], lr=0.004, **adam),
        dict(params=[named["transformer.wte.weight"]], lr=0.2, **adam),
        dict(params=matrices, kind="muon", lr=0.02, momentum=0.95, nesterov=True, ns_steps=5, ns_dtype="float32"),
    ])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--depth", type=int, default=2)
    ap.add_argument("--vocab", type=int, default=8192)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    args = ap.parse_args()
    torch.manual_seed(0)
    width = math.ceil(64 * args.depth / 128) * 128
    runs = {}
    for label, with_2026 in (("today's muon", False), ("muon_adamw_2026 (same shapes)", False), ("muon_adamw_2026 (+2026 params)", True)):
        model = Params(shapes(args.depth, args.vocab, with_2026), width)
        opt = today(model) if label.startswith("today") else build_muon_adamw_2026(model, ns_dtype=torch.float32)
        grads = {n: torch.randn_like(p) * 1e-3 for n, p in model.named_parameters()}
        runs[label] = (model, opt, grads, [])
    for step in range(args.warmup + args.steps):
        for label, (model, opt, grads, times) in runs.items():
            for n, p in model.named_parameters():
                p.grad = grads[n].clone()
            t0 = time.perf_counter()
            opt.step()
            dt = time.perf_counter() - t0
            if step >= args.warmup:
                times.append(dt)
    base = statistics.median(runs["today's muon"][3])
    print(f"depth {args.depth} (width {width}), vocab {args.vocab}, fp32, torch threads {torch.get_num_threads()}, median of {args.steps} steps")
    print(f"| optimizer | parameters | step ms | / today's muon |")
    print(f"|---|---:|---:|---:|")
    for label, (model, _, _, times) in runs.items():
        n = sum(p.numel() for p in model.parameters())
        med = statistics.median(times)
        print(f"| {label} | {n:,} | {med * 1e3:.1f} | {med / base:.2f} |")


if __name__ == "__main__":
    main()
