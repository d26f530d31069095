"""Tokens/s that `PretrainStream` delivers on this machine vs what d12 training on a P100 eats
(~20k tokens/s), plus the cost of resuming from a saved state.

    python benchmarks/data_stream_speed.py [--data offline] [--vocab-size 8192] [--seq-len 2048] [--batch-size 8]

Prints a markdown section to append to benchmarks/RESULTS.md.
"""
from __future__ import annotations

import argparse
import time

from hf_nanochat.data.stream import PretrainStream, load_documents
from hf_nanochat.data.tokenizer import train_tokenizer

P100_D12_TOKENS_PER_S = 20_000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="offline")
    parser.add_argument("--vocab-size", type=int, default=8192)
    parser.add_argument("--seq-len", type=int, default=2048)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--batches", type=int, default=200)
    args = parser.parse_args()

    tok = train_tokenizer((ex["text"] for ex in load_documents(args.data, "train")), vocab_size=args.vocab_size)
    stream = PretrainStream(tok, args.data, seq_len=args.seq_len, batch_size=args.batch_size)
    # timed from the start: a chunk holds hundreds of documents, so excluding the first batch
    # would hide a large part of the tokenization work
    start = time.perf_counter()
    it = iter(stream)
    for _ in range(args.batches):
        next(it)
    elapsed = time.perf_counter() - start
    it.close()
    tokens_per_s = args.batches * args.batch_size * args.seq_len / elapsed

    state = stream.state_dict()
    resumed = PretrainStream(tok, args.data, seq_len=args.seq_len, batch_size=args.batch_size)
    resumed.load_state_dict(state)
    start = time.perf_counter()
    it = iter(resumed)
    next(it)
    resume_s = time.perf_counter() - start
    it.close()

    print("## Data stream")
    print()
    print(f"2026-11-21, 2-core CPU, `python benchmarks/data_stream_speed.py --data {args.data} --vocab-size {args.vocab_size} "
          f"--seq-len {args.seq_len} --batch-size {args.batch_size}`: PretrainStream (datasets streaming parquet -> "
          f"Rust batch tokenization in a prefetch thread -> packed rows), {args.batches} batches timed from `iter()` "
          f"(the stream reached epoch {stream.epoch} of the corpus).")
    print()
    print("| measure | value |")
    print("|---|---:|")
    print(f"| tokens/s delivered | {tokens_per_s:,.0f} |")
    print(f"| d12 on a P100 needs | ~{P100_D12_TOKENS_PER_S:,} |")
    print(f"| headroom | {tokens_per_s / P100_D12_TOKENS_PER_S:.1f}x |")
    print(f"| first batch after resuming at batch {args.batches + 1} | {resume_s:.2f} s |")


if __name__ == "__main__":
    main()
