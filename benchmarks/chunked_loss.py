"""Chunked loss (`loss_chunk_tokens`) vs the whole-batch loss, side by side in one run: training
step tokens/s and the bytes autograd keeps for backward, on a small model whose memory the
logits dominate (depth 4, vocab 32768, batch 4 x 512 on CPU; nanochat's P100 models are in the
same regime: d12's logits are half of its training memory at batch 4).

Bytes kept for backward are counted exactly with `torch.autograd.graph.saved_tensors_hooks`
(what the chunking changes; independent of the allocator). Runs are interleaved and the median
step time is reported.

    OMP_NUM_THREADS=2 python benchmarks/chunked_loss.py
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from hf_nanochat import NanoChatGPTConfig, NanoChatGPTForCausalLM
from hf_nanochat.train.memory import GiB, estimate_memory


def saved_bytes(model, x, y, chunk) -> int:
    total = 0

    def pack(t):
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = model(input_ids=x, shift_labels=y, loss_chunk_tokens=chunk).loss
    loss.backward()
    model.zero_grad(set_to_none=True)
    return total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--depth", type=int, default=4)
    ap.add_argument("--vocab", type=int, default=32768)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--chunks", type=int, nargs="+", default=[1024, 256])
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()

    torch.manual_seed(0)
    config = NanoChatGPTConfig.from_depth(args.depth, vocab_size=args.vocab, max_position_embeddings=args.seq)
    model = NanoChatGPTForCausalLM(config).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    rows = torch.randint(0, args.vocab, (args.batch, args.seq + 1))
    x, y = rows[:, :-1], rows[:, 1:]
    variants = {"whole batch": None, **{f"chunks of {c}": c for c in args.chunks}}

    def step(chunk):
        model(input_ids=x, shift_labels=y, loss_chunk_tokens=chunk).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for chunk in variants.values():
        step(chunk)  # warm-up
    times = {name: [] for name in variants}
    for _ in range(args.repeats):
        for name, chunk in variants.items():
            start = time.perf_counter()
            step(chunk)
            times[name].append(time.perf_counter() - start)

    tokens = args.batch * args.seq
    base_s = statistics.median(times["whole batch"])
    base_saved = saved_bytes(model, x, y, None)
    print(f"depth {args.depth}, vocab {args.vocab}, batch {args.batch} x {args.seq}, {torch.get_num_threads()} threads, "
          f"median of {args.repeats} interleaved steps")
    print()
    print("| loss | train tokens/s | vs whole batch | kept for backward MiB | vs whole batch | planner logits MiB |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, chunk in variants.items():
        s = statistics.median(times[name])
        kept = saved_bytes(model, x, y, chunk)
        planned = estimate_memory(config, args.batch, args.seq, on_gpu=False, loss_chunk_tokens=chunk or 0).logits
        print(f"| {name} | {tokens / s:,.0f} | {base_s / s:.2f}x | {kept / 2**20:,.0f} | {kept / base_saved:.2f}x | {planned / 2**20:,.0f} |")
    d12 = NanoChatGPTConfig.from_depth(12)
    whole, chunked = (estimate_memory(d12, 8, 2048, dtype="fp16", loss_chunk_tokens=c).total for c in (0, 2048))
    print()
    print(f"Planner, d12 on a P100 (fp16, batch 8 x 2048): {whole / GiB:.1f} GiB whole-batch loss, {chunked / GiB:.1f} GiB chunked (2048).")


if __name__ == "__main__":
    main()
