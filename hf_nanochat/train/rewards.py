"""Rewards for the RL stage: plain functions `reward(completion, answer, **kwargs) -> float`.

`completion` is the sampled reply as text (special tokens kept, as nanochat's `tokenizer.decode`
gives it, so tool calls read `<|python_start|>...`), `answer` the reference answer of the
question (GSM8K's number after `####`, commas removed). A recipe names any importable function
of that shape (`reward: my_module:my_reward`) and its keyword arguments (`reward_kwargs:`).

The default is nanochat's (tasks/gsm8k.py `GSM8K.reward` = `evaluate`, 06677c3): 1.0 when the
first `#### N` in the completion equals the reference after removing commas, else 0.0.
"""
from __future__ import annotations

import importlib
import re
from collections.abc import Callable
from functools import lru_cache

from hf_nanochat.evaluate.chat_eval import ANSWER_RE

# nanochat's GSM_RE (tasks/gsm8k.py): the one pattern the GSM8K eval uses too.
DEFAULT_ANSWER_PATTERN = ANSWER_RE.pattern

RewardFunction = Callable[..., float]


@lru_cache(maxsize=16)
def _compiled(pattern: str) -> re.Pattern:
    compiled = re.compile(pattern)
    if compiled.groups < 1:
        raise ValueError(f"answer pattern {pattern!r} needs a capturing group around the answer")
    return compiled


def extract_answer(text: str, pattern: str = DEFAULT_ANSWER_PATTERN) -> str | None:
    """The first answer `pattern` finds in `text` (its first group, stripped, commas removed:
    GSM8K's official normalisation), or None."""
    match = _compiled(pattern).search(text)
    return match.group(1).strip().replace(",", "") if match else None


def answer_match(completion: str, answer: str, pattern: str = DEFAULT_ANSWER_PATTERN) -> float:
    """1.0 when the completion's first answer equals `answer` (commas ignored on both sides),
    else 0.0 (also when the completion gives no answer)."""
    predicted = extract_answer(completion, pattern)
    return float(predicted is not None and predicted == str(answer).strip().replace(",", ""))


def load_reward(spec: str) -> RewardFunction:
    """`module:function` (or `module.function`) -> the function, with a clear error if missing."""
    module_name, sep, attr = spec.partition(":")
    if not sep:
        module_name, _, attr = spec.rpartition(".")
    if not module_name or not attr:
        raise ValueError(f"reward must look like 'package.module:function', got {spec!r}")
    try:
        fn = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as err:
        raise ValueError(f"reward {spec!r} cannot be imported: {err}") from err
    if not callable(fn):
        raise ValueError(f"reward {spec!r} is not callable")
    return fn


__all__ = ["DEFAULT_ANSWER_PATTERN", "RewardFunction", "answer_match", "extract_answer", "load_reward"]
