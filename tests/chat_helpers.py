"""Tiny chat model, tokenizer and a scripted model for the engine, app and CLI tests."""
from __future__ import annotations

import time

import torch
from torch import nn

from hf_nanochat import NanoChatGPTConfig, NanoChatGPTForCausalLM
from hf_nanochat.data.tokenizer import train_tokenizer

CORPUS = [
    "The sky is blue because air scatters blue light more than red light.",
    "Hello! How can I help you today? Let me compute that for you.",
    "The answer is 12. Two plus two is four. Counting letters in strawberry gives 3.",
] * 20


def tiny_tokenizer(vocab_size: int = 320):
    """nanochat's tokenizer trained on a little ASCII text, so accented letters, CJK and emoji
    come out as several byte tokens each (what the UTF-8 streaming tests need)."""
    return train_tokenizer(CORPUS, vocab_size=vocab_size)


def randomise_zero_initialised(model: nn.Module) -> nn.Module:
    """nanochat zero-initialises the output projections and lm_head, so every input gives the
    same logits; randomise them so tests compare something."""
    with torch.no_grad():
        for p in model.parameters():
            if p.abs().sum() == 0:
                p.normal_(0, 0.05)
    return model


def tiny_model(vocab_size: int, depth: int = 2, seed: int = 0, architecture: str = "2025-11") -> NanoChatGPTForCausalLM:
    """A random depth-`depth` model; different prompts give different logits. A "2026" one has a
    128-token short window (context 256) and a non-zero smear (its zero init is randomised too)."""
    torch.manual_seed(seed)
    config = NanoChatGPTConfig.from_depth(depth, vocab_size=vocab_size, max_position_embeddings=256, architecture=architecture)
    return randomise_zero_initialised(NanoChatGPTForCausalLM(config).eval())


class ScriptedModel(nn.Module):
    """A real model whose next-token logits are overridden to follow `script`.

    Generation step i (counted from the end of the prompt, forced tokens included) puts all
    probability on `script[i]`; after the script it emits `<|assistant_end|>`. The cache and
    shapes are the wrapped model's, so the engine drives it exactly like a real one.
    `fed` records every token fed after the prompt (to see what the engine forced in).
    """

    def __init__(self, model: nn.Module, script: list[int], end_id: int, delay: float = 0.0):
        super().__init__()
        self.inner = model
        self.config = model.config
        self.script = list(script)
        self.end_id = end_id
        self.delay = delay
        self.prompt_len = 0
        self.fed: list[list[int]] = []

    @property
    def device(self) -> torch.device:
        return self.inner.device

    def forward(self, input_ids, cache=None, **kwargs):
        if cache is None or cache.get_seq_length() == 0:
            self.prompt_len = input_ids.shape[1]
            self.fed = []
        else:
            self.fed.append(input_ids[:, -1].tolist())
        out = self.inner(input_ids=input_ids, cache=cache, **kwargs)
        step = cache.get_seq_length() - self.prompt_len
        token = self.script[step] if step < len(self.script) else self.end_id
        logits = torch.full_like(out.logits, -1e4)
        logits[:, -1, token] = 0.0
        out.logits = logits
        if self.delay:
            time.sleep(self.delay)  # lets a browser watch the reply grow
        return out


def save_tiny_chat_model(folder) -> None:
    """A loadable chat model folder (weights, config, tokenizer) for CLI and app tests."""
    tokenizer = tiny_tokenizer()
    tiny_model(len(tokenizer)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
