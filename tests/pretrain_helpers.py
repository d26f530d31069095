"""A tiny learnable corpus and tokenizer for pretraining tests, used through the real pipeline
(hf_nanochat.data.PretrainStream + hf_nanochat.data.tokenizer), so tests exercise what runs in
production. The text follows a small grammar: a model can learn it and the loss must go down.
"""
from __future__ import annotations

import json
import random
from pathlib import Path

ADJ = ["red", "small", "quiet", "old", "bright", "green"]
NOUN = ["cat", "river", "teacher", "engine", "garden", "planet"]
VERB = ["sees", "follows", "paints", "lifts", "finds", "counts"]
NUMBERS = ["one", "two", "three", "four", "five", "six", "seven", "eight"]


def grammar_document(index: int, split: str) -> str:
    rng = random.Random(f"{split}-{index}")
    sentences = []
    for _ in range(rng.randint(2, 5)):
        if rng.random() < 0.5:
            sentences.append(f"The {rng.choice(ADJ)} {rng.choice(NOUN)} {rng.choice(VERB)} the {rng.choice(NOUN)}.")
        else:
            start = rng.randint(0, 3)
            sentences.append(" ".join(NUMBERS[start : start + 4]) + ".")
    return " ".join(sentences)


def make_corpus(folder: Path, train_docs: int = 3000, val_docs: int = 200) -> Path:
    """Two jsonl files; PretrainStream treats the last (sorted) file as the val split."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, split, n in (("a_train.jsonl", "train", train_docs), ("b_val.jsonl", "val", val_docs)):
        with open(folder / name, "w") as f:
            for i in range(n):
                f.write(json.dumps({"text": grammar_document(i, split)}) + "\n")
    return folder


def make_tokenizer(folder: Path, corpus: Path, vocab_size: int = 320) -> Path:
    from hf_nanochat.data.tokenizer import train_tokenizer

    texts = [json.loads(line)["text"] for line in (corpus / "a_train.jsonl").read_text().splitlines()]
    train_tokenizer(texts, vocab_size=vocab_size).save_pretrained(folder)
    return folder


def corpus_and_tokenizer(root: Path, **sizes) -> tuple[Path, Path]:
    """(corpus folder, tokenizer folder) under `root`: what a tiny run's `dataset`/`tokenizer` take."""
    corpus = make_corpus(root / "corpus", **sizes)
    return corpus, make_tokenizer(root / "tokenizer", corpus)


def tiny_overrides(corpus: Path, tokenizer: Path, **extra) -> dict:
    """A run that takes a few seconds on one CPU core."""
    base = dict(
        depth=2,
        max_seq_len=32,
        device_batch_size=4,
        total_batch_size=256,
        num_iterations=8,
        eval_every=4,
        eval_tokens=256,
        sample_prompts=["The red cat"],
        sample_max_tokens=4,
        precision="fp32",
        seed=1,
        dataset=str(corpus),
        tokenizer=str(tokenizer),
    )
    base.update(extra)
    return base
