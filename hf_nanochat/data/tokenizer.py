"""nanochat's tokenizer on the `tokenizers` library, saved as a transformers fast tokenizer.

- A byte-level BPE (GPT-4's split regex with numbers in groups of 1-2 digits, as nanochat),
  trained with `tokenizers.trainers.BpeTrainer`; nanochat's nine special tokens take the last
  ids of the vocabulary.
- The chat format (special tokens, `render_conversation`, the chat template and the
  injection-safe `NanoChatTokenizer`) lives in modeling/tokenization_nanochat_gpt.py, the file
  that travels with every saved tokenizer; it is re-exported here, so this module stays the one
  place the pipeline imports tokenizer pieces from.
"""
from __future__ import annotations

import os
from collections.abc import Iterable, Iterator

import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from hf_nanochat.modeling.tokenization_nanochat_gpt import (  # noqa: F401  (re-exported)
    ASSISTANT_END,
    ASSISTANT_START,
    BOS,
    CHAT_TEMPLATE,
    OUTPUT_END,
    OUTPUT_START,
    PYTHON_END,
    PYTHON_START,
    SPECIAL_TOKENS,
    USER_END,
    USER_START,
    NanoChatTokenizer,
    encode_plain,
    plain_text_encoder,
    render_conversation,
    render_for_completion,
)

# nanochat's split: GPT-4's pattern, but numbers split into groups of 1-2 digits (not 1-3),
# which nanochat found better for small vocabularies.
SPLIT_PATTERN: str = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,2}| ?[^\s\p{L}\p{N}]++[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+"""
)
DOC_CAP_CHARS = 10_000  # nanochat's tok_train caps each document at 10k characters


def _capped_texts(texts: Iterable[str], max_chars: int | None, doc_cap: int) -> Iterator[str]:
    """nanochat's tok_train input: each document capped at doc_cap chars, stop after max_chars."""
    seen = 0
    for text in texts:
        text = text[:doc_cap]
        if max_chars is not None:
            if seen >= max_chars:
                return
            text = text[: max_chars - seen]
        seen += len(text)
        yield text


def _serial_after_counting(texts: Iterator[str]) -> Iterator[str]:
    """Yield `texts`; once they run out, switch `tokenizers`' parallelism off for the merges.

    BpeTrainer counts words in parallel while it reads the iterator (worth it), then runs every
    one of its thousands of merge steps through a rayon parallel iterator over a handful of
    words, where the thread hand-off costs more than the work: serial merges train 1.4x (vocab
    8192) to 2x (vocab 32768) faster here, with identical merges. `tokenizers` reads
    TOKENIZERS_PARALLELISM at each parallel call, so setting it when the input is exhausted -
    between counting and merging - switches only the merge phase. The caller restores it.
    """
    yield from texts
    os.environ["TOKENIZERS_PARALLELISM"] = "false"


def train_tokenizer(
    texts: Iterable[str],
    vocab_size: int = 65536,
    max_chars: int | None = None,
    doc_cap: int = DOC_CAP_CHARS,
    show_progress: bool = False,
) -> NanoChatTokenizer:
    """Train nanochat's byte-level BPE on `texts`; the specials take the last 9 ids.

    `vocab_size` counts the specials (65536 = 2**16 total, as nanochat). If the corpus is too
    small to find enough merges the vocabulary comes out smaller: use `len(tokenizer)`.
    """
    min_size = 256 + len(SPECIAL_TOKENS)
    if vocab_size < min_size:
        raise ValueError(f"vocab_size must be >= {min_size} (256 byte tokens + {len(SPECIAL_TOKENS)} specials), got {vocab_size}")
    backend = Tokenizer(models.BPE(byte_fallback=False))
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(SPLIT_PATTERN), behavior="isolated"),
            # the regex already split the text; ByteLevel only maps bytes to printable chars
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - len(SPECIAL_TOKENS),
        min_frequency=0,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # all 256 bytes, so nothing is ever unknown
        special_tokens=[],
        show_progress=show_progress,
    )
    parallelism = os.environ.get("TOKENIZERS_PARALLELISM")
    try:
        backend.train_from_iterator(_serial_after_counting(_capped_texts(texts, max_chars, doc_cap)), trainer=trainer)
    finally:
        if parallelism is None:
            os.environ.pop("TOKENIZERS_PARALLELISM", None)
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = parallelism
    backend.add_special_tokens(SPECIAL_TOKENS)  # appended after the BPE tokens: the last ids
    if backend.get_vocab_size() < vocab_size:
        print(f"note: corpus too small for {vocab_size} tokens; trained vocabulary has {backend.get_vocab_size()}")
    return chat_tokenizer(backend)


def chat_tokenizer(backend: Tokenizer) -> NanoChatTokenizer:
    """Our transformers tokenizer (bos/eos/pad, chat template) around a BPE that has nanochat's
    special tokens - one we trained, or one converted from nanochat's tiktoken encoding."""
    missing = [t for t in SPECIAL_TOKENS if backend.token_to_id(t) is None]
    if missing:
        raise ValueError(f"tokenizer lacks nanochat's special tokens {missing}: the chat template needs them")
    return NanoChatTokenizer(
        tokenizer_object=backend,
        bos_token=BOS,
        eos_token=ASSISTANT_END,  # generation of a reply stops here
        # <|bos|> as padding: collators that mask labels equal to the pad id then never hide
        # <|assistant_end|>, which the model must learn to emit.
        pad_token=BOS,
        chat_template=CHAT_TEMPLATE,
        clean_up_tokenization_spaces=False,
    )


def load_tokenizer(path_or_hub_id: str, **kwargs) -> PreTrainedTokenizerFast:
    """`AutoTokenizer.from_pretrained`; a folder saved by `train_tokenizer` loads as NanoChatTokenizer."""
    import hf_nanochat.modeling  # noqa: F401  (registers NanoChatTokenizer with AutoTokenizer)
    from hf_nanochat.model_folder import check_tokenizer_source

    check_tokenizer_source(path_or_hub_id)  # a missing folder or tokenizer.json, said as such
    return AutoTokenizer.from_pretrained(path_or_hub_id, **kwargs)


def token_byte_lengths(tokenizer: PreTrainedTokenizerFast) -> torch.Tensor:
    """UTF-8 bytes of every token id (0 for special tokens), for nanochat's bits-per-byte.

    Byte-level BPE writes each byte as one printable character, so a token's byte count is the
    length of its token string.
    """
    special = set(tokenizer.all_special_ids) | {tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    tokens = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    return torch.tensor([0 if i in special else len(t) for i, t in enumerate(tokens)], dtype=torch.int64)
