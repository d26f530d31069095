"""Packed chat training step, side by side in one run on CPU: the same documents and tokens as

- `one_row`:  TRL's padding-free packing, the device batch concatenated into ONE row of B x L
              tokens, documents kept apart by a dense (B x L)^2 block-diagonal mask;
- `rows`:     hf_nanochat.train.sft.PackedRowsCollator, B packed rows with per-row position_ids
              (a (B, 1, L, L) per-document mask);
- `separate`: the same tokens as B plain causal rows (no document boundaries: the cost floor).

Training step = forward + backward (depth 4, vocab 4096, B=8 rows of L=512, documents of 24-160
tokens; --length 256 on a loaded machine). Runs are interleaved, medians reported. Target: rows / separate <= 1.2; the loss of
`rows` equals `one_row`'s.

    OMP_NUM_THREADS=2 python benchmarks/packed_rows.py
"""
from __future__ import annotations

import argparse
import random
import statistics
import time

import torch

from hf_nanochat import NanoChatGPTConfig, NanoChatGPTForCausalLM


def packed_rows(batch: int, length: int, vocab: int, seed: int = 0):
    """B rows filled with whole documents; position_ids restart at each document."""
    rng = random.Random(seed)
    ids, pos = torch.zeros(batch, length, dtype=torch.long), torch.zeros(batch, length, dtype=torch.long)
    for r in range(batch):
        t = 0
        while t < length:
            n = min(rng.randint(24, 160), length - t)
            ids[r, t : t + n] = torch.randint(1, vocab, (n,))
            pos[r, t : t + n] = torch.arange(n)
            t += n
    labels = ids.clone()
    labels[pos == 0] = -100  # a document's first token is not a target of the one before
    return ids, pos, labels


def step(model, ids, labels, pos=None) -> tuple[float, float]:
    model.zero_grad(set_to_none=True)
    n = (labels[:, 1:] != -100).sum()
    t0 = time.perf_counter()
    loss = model(input_ids=ids, position_ids=pos, labels=labels, num_items_in_batch=n).loss
    loss.backward()
    return time.perf_counter() - t0, float(loss.detach())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--length", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.manual_seed(0)
    vocab = 4096
    model = NanoChatGPTForCausalLM(NanoChatGPTConfig.from_depth(4, vocab_size=vocab, max_position_embeddings=args.batch * args.length)).train()
    ids, pos, labels = packed_rows(args.batch, args.length, vocab)
    flat = lambda t: t.reshape(1, -1)  # noqa: E731  (TRL's padding-free row)
    plain_labels = ids.clone()
    runs = {
        "one_row": lambda: step(model, flat(ids), flat(labels), flat(pos)),
        "rows": lambda: step(model, ids, labels, pos),
        "separate": lambda: step(model, ids, plain_labels),
    }
    times: dict[str, list[float]] = {k: [] for k in runs}
    losses: dict[str, float] = {}
    for k in runs:  # warm-up
        runs[k]()
    for _ in range(args.repeats):
        for k, run in runs.items():
            dt, losses[k] = run()
            times[k].append(dt)
    med = {k: statistics.median(v) for k, v in times.items()}
    tokens = args.batch * args.length
    print(f"depth 4, vocab {vocab}, {args.batch} rows x {args.length} tokens, forward + backward, median of {args.repeats}\n")
    print("| | step s | tokens/s | / separate |")
    print("|---|---:|---:|---:|")
    for k in runs:
        print(f"| {k} | {med[k]:.3f} | {tokens / med[k]:,.0f} | {med[k] / med['separate']:.2f}x |")
    print(f"\nloss one_row {losses['one_row']:.6f}, rows {losses['rows']:.6f} (difference {abs(losses['one_row'] - losses['rows']):.1e})")


if __name__ == "__main__":
    main()
