"""Tokenizer training time and batch-encode throughput: ours (HF `tokenizers`) vs rustbpe
(nanochat's trainer) vs tiktoken loaded with OUR merges, on the same corpus and vocab size.

    python benchmarks/tokenizer_speed.py [--data offline] [--vocab-size 8192] [--max-chars 0]

Also checks that tiktoken with our merges produces exactly our ids (so the encode comparison
is like for like). Prints a markdown section to append to benchmarks/RESULTS.md.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import rustbpe
import tiktoken

from hf_nanochat.data.stream import load_documents
from hf_nanochat.data.tokenizer import SPECIAL_TOKENS, SPLIT_PATTERN, encode_plain, train_tokenizer


def gpt2_byte_chars() -> dict[str, int]:
    """Printable character -> byte, the mapping byte-level BPE uses to write bytes (GPT-2's)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[chr(b)] = b
        else:
            chars[chr(256 + extra)] = b
            extra += 1
    return chars


def tiktoken_from(tok) -> tiktoken.Encoding:
    """tiktoken Encoding with our merges: a token's rank is its id (ids follow merge order)."""
    to_byte = gpt2_byte_chars()
    specials = set(SPECIAL_TOKENS)
    ranks = {bytes(to_byte[c] for c in token): i for token, i in tok.backend_tokenizer.get_vocab().items() if token not in specials}
    return tiktoken.Encoding(
        "ours", pat_str=SPLIT_PATTERN, mergeable_ranks=ranks, special_tokens={t: tok.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    )


def interleaved(fns: dict, rounds: int) -> tuple[dict, dict]:
    """Median seconds of each function over `rounds`, alternating them so that load from other
    jobs on the shared machine hits all of them alike; also each function's last result."""
    times = {name: [] for name in fns}
    results = {}
    for _ in range(rounds):
        for name, fn in fns.items():
            start = time.perf_counter()
            results[name] = fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}, results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="offline")
    parser.add_argument("--vocab-size", type=int, default=8192)
    parser.add_argument("--max-chars", type=int, default=0, help="0 = the whole train split")
    args = parser.parse_args()

    texts = [ex["text"][:10_000] for ex in load_documents(args.data, "train")]  # nanochat's doc cap
    if args.max_chars:
        kept, total = [], 0
        for t in texts:
            if total >= args.max_chars:
                break
            kept.append(t)
            total += len(t)
        texts = kept
    n_bytes = sum(len(t.encode()) for t in texts)
    mb = n_bytes / 1e6
    print(f"corpus: {len(texts)} documents, {mb:.2f} MB; vocab {args.vocab_size}; {os.cpu_count()} CPUs")

    bpe_vocab = args.vocab_size - len(SPECIAL_TOKENS)

    def train_rustbpe():
        t = rustbpe.Tokenizer()
        t.train_from_iterator(iter(texts), bpe_vocab, pattern=SPLIT_PATTERN)
        return t

    train_s, trained = interleaved(
        {"ours": lambda: train_tokenizer(texts, vocab_size=args.vocab_size), "rustbpe": train_rustbpe}, rounds=3
    )
    tok, rust = trained["ours"], trained["rustbpe"]
    ours_train, rust_train = train_s["ours"], train_s["rustbpe"]

    enc = tiktoken_from(tok)
    enc_s, ids = interleaved(
        {
            "ours": lambda: encode_plain(tok, texts),
            "transformers": lambda: tok(texts, add_special_tokens=False)["input_ids"],
            "tiktoken": lambda: enc.encode_ordinary_batch(texts, num_threads=os.cpu_count()),
            "rustbpe": lambda: rust.batch_encode(texts),
        },
        rounds=7,
    )
    ours_enc, hf_enc, tik_enc, rust_enc = enc_s["ours"], enc_s["transformers"], enc_s["tiktoken"], enc_s["rustbpe"]
    ours_ids = ids["ours"]
    parity = ids["tiktoken"] == ours_ids
    n_tokens = sum(map(len, ours_ids))

    rows = [
        ("hf tokenizers (ours, encode_batch_fast)", ours_train, ours_enc),
        ("transformers tokenizer(texts) (ours)", None, hf_enc),
        ("tiktoken with our merges", None, tik_enc),
        ("rustbpe (nanochat's trainer)", rust_train, rust_enc),
    ]
    print()
    print("## Tokenizer")
    print()
    print(f"2026-11-21, {platform.processor() or platform.machine()} 2-core CPU, `python benchmarks/tokenizer_speed.py "
          f"--data {args.data} --vocab-size {args.vocab_size}`: {len(texts)} documents, {mb:.2f} MB of Python's docs and "
          f"source (the offline corpus), {n_tokens:,} tokens with our vocab. Medians of interleaved runs "
          f"(3 trainings, 7 encodes each); all encoders use both cores.")
    print()
    print("| implementation | train s | train vs rustbpe | batch encode MB/s | encode vs tiktoken |")
    print("|---|---:|---:|---:|---:|")
    for name, train_s, enc_s in rows:
        tr = f"{train_s:.2f}" if train_s is not None else "-"
        ratio = f"{rust_train / train_s:.2f}x" if train_s is not None else "-"
        print(f"| {name} | {tr} | {ratio} | {mb / enc_s:.1f} | {tik_enc / enc_s:.2f}x |")
    print()
    print(f"tiktoken loaded with our merges gives identical ids on the whole corpus: {parity}. "
          f"rustbpe learns the same kind of merges (vocab {rust.vocab_size}); its ids differ in numbering.")


if __name__ == "__main__":
    main()
