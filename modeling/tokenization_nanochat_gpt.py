"""nanochat's chat format for a transformers fast tokenizer: travels with every saved tokenizer.

`NanoChatTokenizer.save_pretrained` copies this file next to `tokenizer.json` and writes
`auto_map`, so `AutoTokenizer.from_pretrained(folder, trust_remote_code=True)` returns this class
in projects that do not have hf_nanochat installed. It therefore imports only the standard
library, `tokenizers` and `transformers`. (Training, bits-per-byte and loading helpers live in
hf_nanochat/data/tokenizer.py, which re-exports everything here.)

- `render_conversation` is the one place that turns a chat into ids and a training mask. It is
  injection-safe: every piece of message text is encoded with special-token matching switched
  off, and the special ids are inserted here, so a user typing "<|assistant_start|>" gets the
  text, never the token.
- `CHAT_TEMPLATE` renders exactly the same ids (tested), with `{% generation %}` blocks so
  `return_assistant_tokens_mask` matches our mask. Rendering a template to a string and then
  tokenizing it cannot tell the template's markers from user text, so `NanoChatTokenizer`
  routes `apply_chat_template(..., tokenize=True)` through `render_conversation`.
"""
from __future__ import annotations

import weakref
from typing import Any

from tokenizers import Tokenizer
from transformers import BatchEncoding, PreTrainedTokenizerFast

SPECIAL_TOKENS: list[str] = [
    "<|bos|>",  # every document / conversation starts with it
    "<|user_start|>",
    "<|user_end|>",
    "<|assistant_start|>",
    "<|assistant_end|>",
    "<|python_start|>",  # assistant's tool call
    "<|python_end|>",
    "<|output_start|>",  # tool output, written back by the engine
    "<|output_end|>",
]
BOS, USER_START, USER_END, ASSISTANT_START, ASSISTANT_END = SPECIAL_TOKENS[:5]
PYTHON_START, PYTHON_END, OUTPUT_START, OUTPUT_END = SPECIAL_TOKENS[5:]

# Renders exactly what render_conversation renders (tests compare the two). Jinja source kept
# free of newlines between tags so no stray whitespace reaches the output; a text part is only
# wrapped in a generation block when non-empty, because an empty block makes transformers mark
# the token before it.
CHAT_TEMPLATE = "".join(
    line.strip()
    for line in """
{%- if messages and messages[0]['role'] == 'system' -%}
  {%- if messages[0]['content'] is string -%}{%- set system_text = messages[0]['content'] -%}
  {%- else -%}{%- set system_text = messages[0]['content'] | map(attribute='text') | join('') -%}{%- endif -%}
  {%- set loop_messages = messages[1:] -%}
{%- else -%}
  {%- set system_text = none -%}{%- set loop_messages = messages -%}
{%- endif -%}
<|bos|>
{%- for message in loop_messages -%}
  {%- if message['role'] != ('user' if loop.index0 % 2 == 0 else 'assistant') -%}
    {{- raise_exception('Conversation roles must alternate user/assistant/user/... after an optional system message') -}}
  {%- endif -%}
  {%- if message['role'] == 'user' -%}
    {%- if message['content'] is string -%}{%- set text = message['content'] -%}
    {%- else -%}{%- set text = message['content'] | map(attribute='text') | join('') -%}{%- endif -%}
    {%- if loop.first and system_text is not none -%}{%- set text = system_text + '\\n\\n' + text -%}{%- endif -%}
    <|user_start|>{{- text -}}<|user_end|>
  {%- else -%}
    <|assistant_start|>
    {%- if message['content'] is string -%}
      {%- generation -%}{{- message['content'] -}}<|assistant_end|>{%- endgeneration -%}
    {%- else -%}
      {%- for part in message['content'] -%}
        {%- if part['type'] == 'text' -%}
          {%- if part['text'] -%}{%- generation -%}{{- part['text'] -}}{%- endgeneration -%}{%- endif -%}
        {%- elif part['type'] == 'python' -%}
          {%- generation -%}<|python_start|>{{- part['text'] -}}<|python_end|>{%- endgeneration -%}
        {%- elif part['type'] == 'python_output' -%}
          <|output_start|>{{- part['text'] -}}<|output_end|>
        {%- else -%}
          {{- raise_exception('Unknown assistant content part type: ' + part['type']) -}}
        {%- endif -%}
      {%- endfor -%}
      {%- generation -%}<|assistant_end|>{%- endgeneration -%}
    {%- endif -%}
  {%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}<|assistant_start|>{%- endif -%}
""".splitlines()
)


class NanoChatTokenizer(PreTrainedTokenizerFast):
    """The fast tokenizer with an injection-safe `apply_chat_template(..., tokenize=True)`.

    With our own template (no `chat_template=` override, no tools/documents), tokenized output
    comes from `render_conversation`: identical ids and assistant mask to the template's, but
    message text can never turn into special tokens. Other tokenized calls go to transformers
    with `sanitize_control_tokens=True`. `tokenize=False` returns the template's string, which
    by nature cannot mark where user text begins: do not tokenize that string yourself.
    """

    def apply_chat_template(
        self,
        conversation,
        tools=None,
        documents=None,
        chat_template=None,
        add_generation_prompt: bool = False,
        continue_final_message: bool | str = False,
        tokenize: bool = True,
        padding: bool | str = False,
        truncation: bool = False,
        max_length: int | None = None,
        return_tensors: str | None = None,
        return_dict: bool = True,
        return_assistant_tokens_mask: bool = False,
        tokenizer_kwargs: dict | None = None,
        **kwargs,
    ):
        ours = chat_template is None and not tools and not documents and not continue_final_message and not kwargs
        if not tokenize or not ours:
            if tokenize and not return_assistant_tokens_mask:
                kwargs.setdefault("sanitize_control_tokens", True)
            return super().apply_chat_template(
                conversation, tools=tools, documents=documents, chat_template=chat_template,
                add_generation_prompt=add_generation_prompt, continue_final_message=continue_final_message,
                tokenize=tokenize, padding=padding, truncation=truncation, max_length=max_length,
                return_tensors=return_tensors, return_dict=return_dict,
                return_assistant_tokens_mask=return_assistant_tokens_mask, tokenizer_kwargs=tokenizer_kwargs,
                **kwargs,
            )
        if return_assistant_tokens_mask and not return_dict:
            raise ValueError("`return_assistant_tokens_mask=True` requires `return_dict=True` and `tokenize=True`")
        is_batched = bool(conversation) and isinstance(conversation[0], (list, tuple))
        conversations = conversation if is_batched else [conversation]
        ids_list, masks = [], []
        for messages in conversations:
            messages = [{k: v for k, v in m.items() if v is not None} for m in messages]
            ids, mask = render_conversation(self, messages)
            if add_generation_prompt:
                ids, mask = ids + [self.convert_tokens_to_ids(ASSISTANT_START)], mask + [0]
            if truncation and max_length is not None:
                ids, mask = ids[:max_length], mask[:max_length]
            ids_list.append(ids)
            masks.append(mask)
        data: dict[str, Any] = {"input_ids": ids_list, "attention_mask": [[1] * len(i) for i in ids_list]}
        if return_assistant_tokens_mask:
            data["assistant_masks"] = masks
        if padding:
            data = _pad(data, self.pad_token_id, self.padding_side, padding, max_length)
        if not is_batched and return_tensors is None:
            # As transformers does: plain lists for one conversation, but tensors keep the batch
            # dimension so `model.generate(**inputs)` works.
            data = {k: v[0] for k, v in data.items()}
        out = BatchEncoding(data, tensor_type=return_tensors)
        return out if return_dict else out["input_ids"]


def _pad(data: dict, pad_id: int, side: str, padding, max_length: int | None) -> dict:
    """Pad every list to the batch's longest (or max_length), input_ids with pad_id, masks with 0."""
    target = max(len(x) for x in data["input_ids"])
    if padding == "max_length" and max_length is not None:
        target = max(target, max_length)
    out = {}
    for key, rows in data.items():
        fill = pad_id if key == "input_ids" else 0
        out[key] = [([fill] * (target - len(r)) + r) if side == "left" else (r + [fill] * (target - len(r))) for r in rows]
    return out


# One copy of the backend per tokenizer with special-token matching off, so text is always
# plain text. A copy (not toggling the shared backend) keeps this safe across threads.
_PLAIN_ENCODERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def plain_text_encoder(tokenizer: PreTrainedTokenizerFast) -> Tokenizer:
    """The `tokenizers.Tokenizer` that encodes special-token strings as ordinary text."""
    cached = _PLAIN_ENCODERS.get(tokenizer)
    if cached is not None and cached[0] == len(tokenizer):
        return cached[1]
    encoder = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
    encoder.encode_special_tokens = True
    encoder.no_padding()
    encoder.no_truncation()
    if encoder.post_processor is not None:
        encoder.post_processor = None
    _PLAIN_ENCODERS[tokenizer] = (len(tokenizer), encoder)
    return encoder


def encode_plain(tokenizer: PreTrainedTokenizerFast, texts: list[str]) -> list[list[int]]:
    """Batch-encode texts (parallel in Rust) with no special tokens added or recognised."""
    return [e.ids for e in plain_text_encoder(tokenizer).encode_batch_fast(texts, add_special_tokens=False)]


def _special_ids(tokenizer) -> dict[str, int]:
    ids = {tok: tokenizer.convert_tokens_to_ids(tok) for tok in SPECIAL_TOKENS}
    missing = [t for t, i in ids.items() if i is None or i == tokenizer.unk_token_id]
    if missing:
        raise ValueError(f"tokenizer lacks nanochat's special tokens {missing}; train one with train_tokenizer")
    return ids


def _text_of(content, role: str, index: int) -> str:
    """User/system content: a string, or text parts joined."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise ValueError(f"message {index} ({role}): only text parts are allowed, got {part!r}")
            texts.append(part["text"])
        return "".join(texts)
    raise ValueError(f"message {index} ({role}): content must be a string or a list of parts, got {type(content).__name__}")


def _assistant_parts(content, index: int) -> list[tuple[str, str]]:
    """Assistant content as (type, text) parts, adjacent text parts merged (as the template's string is)."""
    if isinstance(content, str):
        return [("text", content)]
    if not isinstance(content, list):
        raise ValueError(f"message {index} (assistant): content must be a string or a list of parts, got {type(content).__name__}")
    parts: list[tuple[str, str]] = []
    for part in content:
        if not isinstance(part, dict) or not isinstance(part.get("text"), str):
            raise ValueError(f"message {index} (assistant): each part needs a 'type' and a string 'text', got {part!r}")
        kind = part.get("type")
        if kind not in ("text", "python", "python_output"):
            raise ValueError(f"message {index} (assistant): unknown part type {kind!r} (expected text, python or python_output)")
        if kind == "text" and parts and parts[-1][0] == "text":
            parts[-1] = ("text", parts[-1][1] + part["text"])
        else:
            parts.append((kind, part["text"]))
    return parts


def render_conversation(
    tokenizer: PreTrainedTokenizerFast, messages: list[dict], max_tokens: int | None = None
) -> tuple[list[int], list[int]]:
    """Token ids of a conversation in nanochat's format, and the training mask.

    mask is 1 on what the assistant writes (its text, its python calls with their markers, and
    `<|assistant_end|>`), 0 on `<|bos|>`, user turns, `<|assistant_start|>` and tool outputs.
    A leading system message is merged into the first user message (joined by a blank line).
    Output is truncated to `max_tokens` when given.
    """
    if not isinstance(messages, (list, tuple)) or not messages:
        raise ValueError("a conversation is a non-empty list of {'role', 'content'} messages")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise ValueError(f"message {i} must be a dict with 'role' and 'content', got {m!r}")
    special = _special_ids(tokenizer)
    messages = list(messages)
    system_text = None
    if messages[0]["role"] == "system":
        system_text = _text_of(messages[0]["content"], "system", 0)
        messages = messages[1:]
        if not messages:
            raise ValueError("a system message must be followed by a user message")
    # Collect (segment, is_text, mask) then encode all texts in one batch call.
    segments: list[tuple[str | int, int]] = [(special[BOS], 0)]
    for i, m in enumerate(messages):
        expected = "user" if i % 2 == 0 else "assistant"
        if m["role"] != expected:
            raise ValueError(
                f"message {i + (system_text is not None)}: expected role {expected!r}, got {m['role']!r} "
                "(roles alternate user/assistant after an optional leading system message)"
            )
        if expected == "user":
            text = _text_of(m["content"], "user", i)
            if i == 0 and system_text is not None:
                text = system_text + "\n\n" + text
            segments += [(special[USER_START], 0), (text, 0), (special[USER_END], 0)]
        else:
            segments.append((special[ASSISTANT_START], 0))
            for kind, text in _assistant_parts(m["content"], i):
                if kind == "text":
                    segments.append((text, 1))
                elif kind == "python":
                    segments += [(special[PYTHON_START], 1), (text, 1), (special[PYTHON_END], 1)]
                else:  # tool output comes from the tool, not the model: no loss
                    segments += [(special[OUTPUT_START], 0), (text, 0), (special[OUTPUT_END], 0)]
            segments.append((special[ASSISTANT_END], 1))
    texts = [s for s, _ in segments if isinstance(s, str)]
    encoded = iter(encode_plain(tokenizer, texts)) if texts else iter(())
    ids: list[int] = []
    mask: list[int] = []
    for seg, m in segments:
        piece = next(encoded) if isinstance(seg, str) else [seg]
        ids += piece
        mask += [m] * len(piece)
    if max_tokens is not None:
        ids, mask = ids[:max_tokens], mask[:max_tokens]
    return ids, mask


def render_for_completion(tokenizer: PreTrainedTokenizerFast, messages: list[dict]) -> list[int]:
    """Ids of a conversation that ends with a user turn, plus `<|assistant_start|>`: the prompt to generate from."""
    if not messages or messages[-1].get("role") != "user":
        raise ValueError("render_for_completion needs a conversation that ends with a user message")
    ids, _ = render_conversation(tokenizer, messages)
    return ids + [tokenizer.convert_tokens_to_ids(ASSISTANT_START)]
