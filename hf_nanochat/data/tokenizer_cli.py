"""`hf-nanochat tokenizer train|eval`: train nanochat's BPE on a data source; bytes-per-token table."""
from __future__ import annotations

import argparse
import time
from itertools import islice
from pathlib import Path

from hf_nanochat.data.stream import DEFAULT_SOURCE, load_documents
from hf_nanochat.data.tokenizer import encode_plain, load_tokenizer, train_tokenizer

# Held-out text of other kinds than the training data, as in nanochat's tok_eval: code from
# Python's own library and a few languages/scripts, so the table shows where the vocab is weak.
MULTILINGUAL_SAMPLE = (
    "한국어 문장은 토크나이저를 시험합니다. Deutsch: Größenordnung, Übermäßig. Français : déjà-vu, "
    "naïveté. Русский: быстрая коричневая лиса. 日本語の文章と中文句子。 العربية: مرحبا بالعالم. "
    "Math: ∫₀^∞ e^{-x²} dx = √π/2, 3.14159 × 10^8, x_i ≥ 0 ∀ i ∈ ℕ. Emoji 🙂🚀🔥."
)


def _code_sample() -> str:
    import json.decoder

    return Path(json.decoder.__file__).read_text(encoding="utf-8")


def eval_samples(data: str, text_column: str = "text", max_docs: int = 200) -> dict[str, str]:
    """name -> text to measure: the source's held-out split, some of its train split, code, languages."""
    val = "\n".join(ex[text_column] for ex in islice(load_documents(data, "val", text_column), max_docs))
    train = "\n".join(ex[text_column] for ex in islice(load_documents(data, "train", text_column), max_docs))
    return {"data-val": val, "data-train": train, "python-code": _code_sample(), "multilingual": MULTILINGUAL_SAMPLE}


def bytes_per_token_table(tokenizers: dict[str, object], samples: dict[str, str]) -> list[dict]:
    """One row per (sample, tokenizer): UTF-8 bytes, tokens, bytes per token. A tokenizer is a
    transformers tokenizer or a callable str -> list[int] (e.g. tiktoken's encode)."""
    rows = []
    for sample, text in samples.items():
        n_bytes = len(text.encode("utf-8"))
        for name, tok in tokenizers.items():
            ids = tok(text) if callable(tok) and not hasattr(tok, "backend_tokenizer") else encode_plain(tok, [text])[0]
            rows.append({"sample": sample, "tokenizer": name, "bytes": n_bytes, "tokens": len(ids), "ratio": n_bytes / max(1, len(ids))})
    return rows


def format_table(rows: list[dict]) -> str:
    names = list(dict.fromkeys(r["tokenizer"] for r in rows))
    header = f"{'sample':<14} {'bytes':>10} " + " ".join(f"{n + ' tok':>14} {'B/tok':>6}" for n in names)
    lines = [header, "-" * len(header)]
    for sample in dict.fromkeys(r["sample"] for r in rows):
        by = {r["tokenizer"]: r for r in rows if r["sample"] == sample}
        first = by[names[0]]
        lines.append(f"{sample:<14} {first['bytes']:>10,} " + " ".join(f"{by[n]['tokens']:>14,} {by[n]['ratio']:>6.2f}" for n in names))
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    train = sub.add_parser("train", help="train the BPE and save a transformers tokenizer folder")
    train.add_argument("--data", default=DEFAULT_SOURCE, help="Hub dataset id, local parquet/jsonl/txt file or folder, or 'offline'")
    train.add_argument("--vocab-size", type=int, default=65536, help="total vocabulary including the 9 special tokens")
    train.add_argument("--output", required=True, help="folder to write (AutoTokenizer.from_pretrained loads it)")
    train.add_argument("--max-chars", type=int, default=2_000_000_000, help="stop after this many characters (nanochat: 2B)")
    train.add_argument("--doc-cap", type=int, default=10_000, help="characters kept per document")
    train.add_argument("--text-column", default="text")
    ev = sub.add_parser("eval", help="bytes per token on held-out text (nanochat's tok_eval)")
    ev.add_argument("--tokenizer", required=True, help="tokenizer folder or Hub id")
    ev.add_argument("--data", default=DEFAULT_SOURCE, help="source whose val split is measured")
    ev.add_argument("--text-column", default="text")
    ev.add_argument("--max-docs", type=int, default=200, help="documents per split sample")
    ev.add_argument("--compare", nargs="*", default=[], help="tiktoken encodings to add as columns, e.g. gpt2 cl100k_base (needs them cached or network)")


def _train(args) -> int:
    texts = (ex[args.text_column] for ex in load_documents(args.data, "train", args.text_column))
    start = time.perf_counter()
    print(f"training a {args.vocab_size}-token BPE on {args.data} (up to {args.max_chars:,} chars)", flush=True)
    tok = train_tokenizer(texts, vocab_size=args.vocab_size, max_chars=args.max_chars, doc_cap=args.doc_cap, show_progress=True)
    tok.save_pretrained(args.output)
    print(f"trained in {time.perf_counter() - start:.1f}s; vocabulary {len(tok)}; saved to {args.output}")
    return 0


def _eval(args) -> int:
    tokenizers: dict[str, object] = {"ours": load_tokenizer(args.tokenizer)}
    for name in args.compare:
        import tiktoken

        try:
            tokenizers[name] = tiktoken.get_encoding(name).encode_ordinary
        except Exception as err:  # not cached and no network
            print(f"skipping {name}: {type(err).__name__}: {err}")
    rows = bytes_per_token_table(tokenizers, eval_samples(args.data, args.text_column, args.max_docs))
    print(format_table(rows))
    return 0


def run(args: argparse.Namespace) -> int:
    return _train(args) if args.action == "train" else _eval(args)
