"""Tiny tokenizer/model fixtures for the chat-stage tests (seconds on 2 CPU cores)."""
from __future__ import annotations

import functools

import torch

from hf_nanochat import NanoChatGPTConfig, NanoChatGPTForCausalLM

VOCAB = 512


@functools.lru_cache(maxsize=1)
def tiny_tokenizer():
    from hf_nanochat.data.chat_data import build_mixture
    from hf_nanochat.data.tokenizer import train_tokenizer

    specs = [{"source": "arithmetic", "size": 150}, {"source": "identity", "size": 150}]
    specs += [{"source": s, "size": 150, "words": "bundled"} for s in ("spelling_bee", "simple_spelling")]
    mix = build_mixture(specs)
    texts = ["".join(p["text"] for m in row for p in m["content"]) for row in mix["messages"]]
    return train_tokenizer(texts, vocab_size=VOCAB)


def tiny_model(pretrained_like: bool = True, depth: int = 1, seed: int = 0, architecture: str = "2025-11") -> NanoChatGPTForCausalLM:
    """A depth-1 model. nanochat zero-initialises lm_head and the residual projections; a
    `pretrained_like` model gets small random values there instead, as a trained base has (LoRA
    on an all-zero head would receive no gradient)."""
    torch.manual_seed(seed)
    cfg = NanoChatGPTConfig.from_depth(depth, vocab_size=VOCAB, max_position_embeddings=256, architecture=architecture)
    model = NanoChatGPTForCausalLM(cfg)
    if pretrained_like:
        with torch.no_grad():
            for module in model.modules():
                if getattr(module, "zero_init", False):
                    module.weight.normal_(0.0, 0.02)
    return model


def assistant_loss(model, tokenizer, conversations) -> float:
    """Mean cross-entropy over assistant tokens (the SFT objective), one forward per conversation."""
    from hf_nanochat.data.tokenizer import render_conversation

    total, count = 0.0, 0
    model.eval()
    with torch.no_grad():
        for messages in conversations:
            ids, mask = render_conversation(tokenizer, messages)
            x = torch.tensor([ids])
            labels = torch.tensor([[i if m else -100 for i, m in zip(ids, mask)]])
            logits = model(input_ids=x).logits[0, :-1]
            tgt = labels[0, 1:]
            loss = torch.nn.functional.cross_entropy(logits, tgt, ignore_index=-100, reduction="sum")
            total += loss.item()
            count += int((tgt != -100).sum())
    return total / count
