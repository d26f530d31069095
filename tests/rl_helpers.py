"""A synthetic arithmetic task a tiny model learns by RL in a few dozen CPU steps, and the
format warm-up that gives RL something to start from (a random model never writes `#### N`)."""
from __future__ import annotations

import random

import torch
from datasets import Dataset

from hf_nanochat.data.chat_data import message

# Eight fixed one-digit sums: small enough to learn in ~30 steps, yet the answer depends on the question.
QUESTIONS = [(1, 2), (2, 5), (3, 3), (4, 1), (0, 7), (6, 2), (5, 4), (2, 2)]


def addition_conversations(repeat: int = 8) -> Dataset:
    """`messages` records: "What is a + b?" -> "#### a+b" (the reference reply)."""
    rows = [[message("user", f"What is {a} + {b}?"), message("assistant", f"#### {a + b}")] for a, b in QUESTIONS] * repeat
    return Dataset.from_dict({"messages": rows})


def warm_up_format(model, tokenizer, steps: int = 60, lr: float = 3e-3, seed: int = 0) -> None:
    """Teach the reply format `#### D<|assistant_end|>` with a uniformly random digit D, so the
    start policy answers each question right about 1 time in 10 (plain supervised steps)."""
    from hf_nanochat.data.tokenizer import render_conversation

    rng = random.Random(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    model.train()
    for _ in range(steps):
        batch = []
        for a, b in QUESTIONS:
            ids, mask = render_conversation(tokenizer, [message("user", f"What is {a} + {b}?"), message("assistant", f"#### {rng.randrange(10)}")])
            batch.append((ids, mask))
        width = max(len(i) for i, _ in batch)
        x = torch.tensor([i + [0] * (width - len(i)) for i, _ in batch])
        y = torch.tensor([[t if m else -100 for t, m in zip(i, mk)] + [-100] * (width - len(i)) for i, mk in batch])
        logits = model(input_ids=x).logits[:, :-1]
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)), y[:, 1:].reshape(-1), ignore_index=-100)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    model.eval()


@torch.no_grad()
def expected_reward(model, tokenizer) -> float:
    """Mean over the questions of the probability the model gives the right digit right after
    `#### ` (teacher-forced): the policy's expected reward, without sampling noise."""
    from hf_nanochat.data.tokenizer import encode_plain, render_for_completion

    model.eval()
    total = 0.0
    for a, b in QUESTIONS:
        prompt = render_for_completion(tokenizer, [message("user", f"What is {a} + {b}?")])
        head = encode_plain(tokenizer, ["#### "])[0]
        full = encode_plain(tokenizer, [f"#### {a + b}"])[0]
        assert full[: len(head)] == head and len(full) == len(head) + 1, "the answer digit must be one token after '#### '"
        logits = model(input_ids=torch.tensor([prompt + head])).logits[0, -1]
        total += torch.softmax(logits.float(), -1)[full[-1]].item()
    return total / len(QUESTIONS)
