"""A tiny tokenizer and a learnable synthetic text stream with PretrainStream's interface.

The pretraining loop only needs (tokenizer, make_stream, token_bytes); these stand-ins keep its
tests fast, offline and independent of the real corpus. The text follows a small grammar, so a
model can learn it and the loss must go down.
"""
from __future__ import annotations

import random

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from hf_nanochat.pretrain import DataPipeline

SPECIALS = ["<|bos|>", "<|user_start|>", "<|user_end|>", "<|assistant_start|>", "<|assistant_end|>"]
ADJ = ["red", "small", "quiet", "old", "bright", "green"]
NOUN = ["cat", "river", "teacher", "engine", "garden", "planet"]
VERB = ["sees", "follows", "paints", "lifts", "finds", "counts"]
NUMBERS = ["one", "two", "three", "four", "five", "six", "seven", "eight"]


def synthetic_document(seed: int, index: int, split: str) -> str:
    rng = random.Random(f"{seed}-{split}-{index}")
    sentences = []
    for _ in range(rng.randint(2, 5)):
        if rng.random() < 0.5:
            sentences.append(f"the {rng.choice(ADJ)} {rng.choice(NOUN)} {rng.choice(VERB)} the {rng.choice(NOUN)}.")
        else:
            start = rng.randint(0, 3)
            sentences.append(" ".join(NUMBERS[start : start + 4]) + ".")
    return " ".join(sentences)


_TOKENIZERS: dict[int, PreTrainedTokenizerFast] = {}


def tiny_tokenizer(vocab_size: int = 320) -> PreTrainedTokenizerFast:
    """Byte-level BPE trained on the synthetic grammar (cached per vocab size)."""
    if vocab_size not in _TOKENIZERS:
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
        tok.train_from_iterator((synthetic_document(0, i, "train") for i in range(300)), trainer)
        _TOKENIZERS[vocab_size] = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|bos|>", eos_token="<|assistant_end|>", pad_token="<|assistant_end|>")
    return _TOKENIZERS[vocab_size]


def byte_lengths(tokenizer: PreTrainedTokenizerFast) -> torch.Tensor:
    """UTF-8 bytes of each token (ASCII-only vocabulary here); special tokens count 0."""
    special = set(tokenizer.all_special_ids)
    return torch.tensor(
        [0 if i in special else len(tokenizer.decode([i]).encode("utf-8")) for i in range(len(tokenizer))], dtype=torch.long
    )


class SyntheticStream:
    """Documents (BOS + text) concatenated and cut into rows of seq_len + 1 tokens; rank r
    reads documents r, r + world, ...; the position is a JSON-serialisable state."""

    def __init__(self, tokenizer, seq_len: int, batch_size: int, split: str = "train", rank: int = 0, world_size: int = 1, seed: int = 0):
        self.tokenizer, self.seq_len, self.batch_size = tokenizer, seq_len, batch_size
        self.split, self.rank, self.world_size, self.seed = split, rank, world_size, seed
        self.next_doc = rank
        self.buffer: list[int] = []

    def state_dict(self) -> dict:
        return {"next_doc": self.next_doc, "buffer": list(self.buffer)}

    def load_state_dict(self, state: dict) -> None:
        self.next_doc, self.buffer = state["next_doc"], list(state["buffer"])

    def __iter__(self):
        return self

    def __next__(self):
        need = self.batch_size * (self.seq_len + 1)
        while len(self.buffer) < need:
            text = synthetic_document(self.seed, self.next_doc, self.split)
            self.buffer += [self.tokenizer.bos_token_id] + self.tokenizer(text, add_special_tokens=False)["input_ids"]
            self.next_doc += self.world_size
        rows = torch.tensor(self.buffer[:need]).view(self.batch_size, self.seq_len + 1)
        self.buffer = self.buffer[need:]
        return rows[:, :-1].contiguous(), rows[:, 1:].contiguous()


def synthetic_pipeline(vocab_size: int = 320, seed: int = 0) -> DataPipeline:
    tokenizer = tiny_tokenizer(vocab_size)

    def make_stream(split, rank, world_size, batch_size, seq_len):
        return SyntheticStream(tokenizer, seq_len, batch_size, split, rank, world_size, seed)

    return DataPipeline(tokenizer, make_stream, byte_lengths(tokenizer))


def tiny_overrides(**extra) -> dict:
    """A config that trains in seconds on one CPU core."""
    base = dict(
        depth=2,
        max_seq_len=32,
        device_batch_size=4,
        total_batch_size=256,
        num_iterations=8,
        eval_every=4,
        eval_tokens=256,
        sample_prompts=["the red cat"],
        sample_max_tokens=4,
        precision="fp32",
        seed=1,
    )
    base.update(extra)
    return base
