"""The calculator tool protocol, token by token: the one implementation that the chat Engine
(hf_nanochat/serve/engine.py) and the RL rollouts (hf_nanochat/train/rl.py, through the Engine)
share.

A sample that writes `<|python_start|>expr<|python_end|>` gets `<|output_start|>result<|output_end|>`
forced into its next steps (nanochat's engine.py does the same). Forced tokens are not the model's
choices, so the RL loss skips them: `ToolCall.forced` tells the caller which ones they are. When
the calculator refuses an expression nothing is forced and the model goes on (as nanochat).
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from transformers import PreTrainedTokenizerBase

from hf_nanochat.data.tokenizer import OUTPUT_END, OUTPUT_START, PYTHON_END, PYTHON_START, encode_plain
from hf_nanochat.serve.calculator import CalculatorError, safe_eval

TOOL_TOKENS = (PYTHON_START, PYTHON_END, OUTPUT_START, OUTPUT_END)


@dataclass
class ToolCall:
    """One sample's state in the protocol."""

    forced: deque = field(default_factory=deque)  # tokens to emit instead of sampling (the tool's output)
    python_tokens: list[int] | None = None  # the expression so far while inside a python block


class CalculatorProtocol:
    """Watches a sample's tokens; on `<|python_end|>` runs the calculator and queues its output."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase):
        ids = {name: tokenizer.convert_tokens_to_ids(name) for name in TOOL_TOKENS}
        missing = [name for name, i in ids.items() if i is None or i == tokenizer.unk_token_id]
        if missing:
            raise ValueError(f"tokenizer lacks the tool special tokens {missing}")
        self.tokenizer = tokenizer
        self.ids = ids

    def next_token(self, state: ToolCall, sampled: int) -> tuple[int, bool]:
        """The token this sample emits now: the next forced tool-output token if one is queued
        (then `True`: not the model's choice), else what was sampled."""
        return (state.forced.popleft(), True) if state.forced else (sampled, False)

    def observe(self, state: ToolCall, token: int) -> str | None:
        """Track an emitted token. Returns the calculator's refusal message, if any."""
        if token == self.ids[PYTHON_START]:
            state.python_tokens = []
        elif token == self.ids[PYTHON_END] and state.python_tokens is not None:
            expression = self.tokenizer.decode(state.python_tokens, skip_special_tokens=True)
            state.python_tokens = None
            try:
                result = safe_eval(expression)
            except CalculatorError as err:
                return str(err)
            state.forced.extend([self.ids[OUTPUT_START], *self.encode_text(result), self.ids[OUTPUT_END]])
        elif state.python_tokens is not None:
            state.python_tokens.append(token)
        return None

    def encode_text(self, text: str) -> list[int]:
        # Plain text encoding: a calculator result such as '<|assistant_end|>'.lower() stays text.
        return encode_plain(self.tokenizer, [text])[0]


__all__ = ["CalculatorProtocol", "TOOL_TOKENS", "ToolCall"]
