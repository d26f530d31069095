"""Gradio chat UI for a trained model: `python -m hf_nanochat.serve.app --model PATH_OR_HUB_ID`.

`gr.ChatInterface` streams the engine's text; the sidebar holds temperature / top-k / max
tokens, examples sit under the box, the chatbot's trash icon clears the history. The limits
below make the app safe to host. Every input is bounded before any work is done on it: the
HTTP body size in front of Gradio (serve/body_limit.py: a crafted history never gets parsed),
then the history's entries and characters before it is tokenized, then the message length,
turns and total tokens; sampling settings are clamped. A violation reaches the user as a short
message in the chat, never a stack trace; the queue bounds how many generations run at once
and wait. The same checks cover the UI events and the documented `/chat` API (both read the
history through `respond`, and every request passes the body limit).
"""
from __future__ import annotations

import argparse
import logging
from collections.abc import Iterator
from dataclasses import dataclass

import gradio as gr
import torch

from hf_nanochat.serve.engine import Engine, load_chat_model, parse_rendered_reply
from hf_nanochat.data.tokenizer import render_for_completion

log = logging.getLogger(__name__)

EXAMPLES = [
    "Why is the sky blue?",
    "What is 12*7+3? Use the calculator.",
    "How many r are in strawberry?",
    "Write a haiku about the ocean.",
]


@dataclass(frozen=True)
class ChatLimits:
    """What one visitor may ask for. Defaults suit a small model on a shared machine."""

    max_message_chars: int = 2000
    max_turns: int = 20  # user messages in one conversation
    max_total_tokens: int = 2048  # prompt + reply; the model's context caps it too
    max_new_tokens: int = 512
    max_temperature: float = 2.0
    max_top_k: int = 200
    concurrency: int = 2  # generations running at once
    max_queue: int = 16  # requests waiting; more are turned away by the queue
    default_temperature: float = 0.6
    default_top_k: int = 50
    default_max_tokens: int = 256
    # None: derived. History characters: max_total_tokens x the tokenizer's longest token, the
    # most text that can still fit the token budget, so refusing more never refuses a chat that
    # would fit. Request bytes: that many characters at JSON's worst case (12 bytes for an
    # escaped emoji) plus room for Gradio's per-message fields.
    max_history_chars: int | None = None
    max_request_bytes: int | None = None


JSON_BYTES_PER_CHAR = 12  # "\ud83d\ude42": one emoji as ensure_ascii JSON
REQUEST_OVERHEAD_BYTES = 256 * 1024


def longest_token_chars(tokenizer) -> int:
    """Characters of the longest vocabulary entry (byte-level BPE: its bytes, >= its characters)."""
    return max(map(len, tokenizer.get_vocab()))


def resolved_limits(limits: ChatLimits, tokenizer, context: int | None = None) -> ChatLimits:
    """`limits` with the model's context applied and the derived bounds filled in."""
    total = min(limits.max_total_tokens, context) if context else limits.max_total_tokens
    chars = limits.max_history_chars or total * longest_token_chars(tokenizer)
    request = limits.max_request_bytes or REQUEST_OVERHEAD_BYTES + JSON_BYTES_PER_CHAR * (chars + limits.max_message_chars)
    return ChatLimits(**{**limits.__dict__, "max_total_tokens": total, "max_history_chars": chars, "max_request_bytes": request})


class LimitExceeded(ValueError):
    """A request outside ChatLimits; the message is meant for the user."""


LIMIT_PREFIX = "⚠️ Not sent to the model: "


def limit_message(text: str) -> str:
    """A limit violation shown as a reply in the chat, so the conversation stays on screen
    (a gr.Error toast hides it); the prefix marks it so the next turn leaves it and the refused
    message out of the prompt."""
    return LIMIT_PREFIX + text


def _text_content(content) -> str | None:
    if isinstance(content, list):  # Gradio 6 normalises content to parts
        return "".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
    return content if isinstance(content, str) else None  # files or components: None


def _is_limit_message(turn: dict) -> bool:
    text = _text_content(turn.get("content"))
    return turn.get("role") == "assistant" and text is not None and text.startswith(LIMIT_PREFIX)


def history_to_messages(history: list[dict], message: str) -> list[dict]:
    """Gradio's history (content as text or text parts) plus the new message, as the
    conversation `render_for_completion` takes; tool calls in earlier replies become parts again."""
    messages = []
    for turn in history:
        if _is_limit_message(turn):
            if messages and messages[-1]["role"] == "user":
                messages.pop()  # the refused message never reached the model
            continue
        content = _text_content(turn.get("content"))
        if content is None:
            continue  # files or components: not something this text model can read
        if turn.get("role") == "assistant":
            messages.append({"role": "assistant", "content": parse_rendered_reply(content)})
        elif turn.get("role") == "user":
            messages.append({"role": "user", "content": content})
    messages.append({"role": "user", "content": message})
    return messages


def _number(value, kind, name: str):
    try:
        return kind(value)
    except (TypeError, ValueError):
        raise LimitExceeded(f"{name} must be a number, got {value!r}.") from None


def checked_request(limits: ChatLimits, tokenizer, message, history, temperature, top_k, max_tokens):
    """Prompt ids and clamped sampling settings for a request, or LimitExceeded saying what to change."""
    if not isinstance(message, str) or not message.strip():
        raise LimitExceeded("Please type a message.")
    if len(message) > limits.max_message_chars:
        raise LimitExceeded(
            f"Your message is {len(message):,} characters long; the limit is {limits.max_message_chars:,}. Please shorten it."
        )
    history = history or []
    if not isinstance(history, list) or not all(isinstance(turn, dict) for turn in history):
        raise LimitExceeded("Cannot read this conversation; clear the chat to start a new one.")
    # Bounded before any parsing or tokenizing: entries, then characters.
    if len(history) > 4 * limits.max_turns + 4:
        raise LimitExceeded(f"This conversation has {len(history):,} messages; the limit is {limits.max_turns} turns. Clear the chat to start a new one.")
    max_chars = limits.max_history_chars or limits.max_total_tokens * longest_token_chars(tokenizer)
    chars = sum(len(text) for turn in history if (text := _text_content(turn.get("content"))) is not None)
    if chars > max_chars:
        raise LimitExceeded(
            f"This conversation is {chars:,} characters long; the limit is {max_chars:,}. Clear the chat to start a new one."
        )
    turns = 1 + sum(1 for turn in history if turn.get("role") == "user") - sum(1 for turn in history if _is_limit_message(turn))
    if turns > limits.max_turns:
        raise LimitExceeded(f"This conversation reached the limit of {limits.max_turns} turns. Clear the chat to start a new one.")
    sampling = {
        "temperature": min(max(_number(temperature, float, "Temperature"), 0.0), limits.max_temperature),
        "top_k": min(max(_number(top_k, int, "Top-k"), 0), limits.max_top_k) or None,
        "max_tokens": min(max(_number(max_tokens, int, "Max tokens"), 1), limits.max_new_tokens),
    }
    prompt_ids = render_for_completion(tokenizer, history_to_messages(history, message))
    budget = limits.max_total_tokens - len(prompt_ids)
    if budget < 1:
        raise LimitExceeded(
            f"This conversation is {len(prompt_ids):,} tokens long; the limit is {limits.max_total_tokens:,}. "
            "Clear the chat to start a new one."
        )
    sampling["max_tokens"] = min(sampling["max_tokens"], budget)
    return prompt_ids, sampling


def model_summary(model, name: str) -> str:
    params = sum(p.numel() for p in model.parameters())
    size = f"{params / 1e9:.2f}B" if params >= 1e9 else f"{params / 1e6:.1f}M"
    c = model.config
    return (
        f"### {name}\n{size} parameters ({params:,}) · depth {c.num_hidden_layers} · "
        f"context {c.max_position_embeddings} · {model.device.type} {str(next(model.parameters()).dtype).removeprefix('torch.')}"
    )


def build_app(model, tokenizer, limits: ChatLimits = ChatLimits(), model_name: str = "nanochat") -> gr.Blocks:
    """The chat UI as Blocks (queue configured, not launched): tests launch it themselves."""
    engine = Engine(model, tokenizer)
    limits = resolved_limits(limits, tokenizer, getattr(model.config, "max_position_embeddings", None))

    def respond(message, history, temperature, top_k, max_tokens) -> Iterator[str]:
        try:
            prompt_ids, sampling = checked_request(limits, tokenizer, message, history, temperature, top_k, max_tokens)
        except LimitExceeded as err:
            yield limit_message(str(err))
            return
        except ValueError as err:  # a conversation render_for_completion cannot take
            yield limit_message(f"Cannot read this conversation: {err}")
            return
        reply = ""
        try:
            for chunk in engine.stream(prompt_ids, **sampling):
                reply += chunk
                yield reply
        except Exception:
            log.exception("generation failed")
            raise gr.Error("Generation failed on the server; please try again.", print_exception=False) from None
        if not reply:
            yield "(the model ended its reply without text)"

    with gr.Blocks(title=f"{model_name} chat") as demo:
        gr.Markdown(model_summary(model, model_name))
        gr.ChatInterface(
            respond,
            chatbot=gr.Chatbot(height=480, label="Chat"),
            textbox=gr.Textbox(placeholder="Ask something…", show_label=False, scale=7),
            additional_inputs=[
                # render=False: ChatInterface places them in its accordion.
                gr.Slider(0.0, limits.max_temperature, value=limits.default_temperature, step=0.05, label="Temperature", render=False),
                gr.Slider(0, limits.max_top_k, value=limits.default_top_k, step=1, label="Top-k (0 = off)", render=False),
                gr.Slider(1, limits.max_new_tokens, value=min(limits.default_max_tokens, limits.max_new_tokens), step=1, label="Max tokens", render=False),
            ],
            additional_inputs_accordion="Sampling",
            examples=[[e, None, None, None] for e in EXAMPLES],
            run_examples_on_click=False,
            concurrency_limit=limits.concurrency,
            api_name="chat",
        )
    demo.queue(default_concurrency_limit=limits.concurrency, max_size=limits.max_queue)
    demo.chat_limits = limits  # what `serve` puts in front of it (the request-size bound)
    return demo


def serve(demo: gr.Blocks, host: str = "127.0.0.1", port: int = 7860, **launch_kwargs):
    """Launch a `build_app` app behind its request-size limit (every route, before Gradio parses)."""
    from starlette.middleware import Middleware

    from hf_nanochat.serve.body_limit import BodyLimitMiddleware

    middleware = [Middleware(BodyLimitMiddleware, max_bytes=demo.chat_limits.max_request_bytes)]
    return demo.launch(server_name=host, server_port=port, ssr_mode=False, app_kwargs={"middleware": middleware}, **launch_kwargs)


def launch_app(model, tokenizer, host: str = "127.0.0.1", port: int = 7860, limits: ChatLimits = ChatLimits(), model_name: str = "nanochat", **launch_kwargs):
    return serve(build_app(model, tokenizer, limits, model_name), host, port, **launch_kwargs)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="save_pretrained folder or Hub id of a chat model")
    parser.add_argument("--host", default="127.0.0.1", help="interface to listen on (0.0.0.0 to share on a network)")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--device", default=None, help="cpu, cuda, mps (default: the best available)")
    parser.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"], help="default: as in training on this device")
    defaults = ChatLimits()
    parser.add_argument("--max-message-chars", type=int, default=defaults.max_message_chars)
    parser.add_argument("--max-turns", type=int, default=defaults.max_turns)
    parser.add_argument("--max-total-tokens", type=int, default=defaults.max_total_tokens)
    parser.add_argument("--max-new-tokens", type=int, default=defaults.max_new_tokens)
    parser.add_argument("--concurrency", type=int, default=defaults.concurrency, help="generations running at once")
    parser.add_argument("--max-queue", type=int, default=defaults.max_queue, help="requests allowed to wait")
    parser.add_argument("--max-history-chars", type=int, default=None, help="default: the most text that can fit --max-total-tokens")
    parser.add_argument("--max-request-bytes", type=int, default=None, help="largest HTTP body accepted (default: from the history limit)")


def limits_from_args(args: argparse.Namespace) -> ChatLimits:
    return ChatLimits(
        max_message_chars=args.max_message_chars,
        max_turns=args.max_turns,
        max_total_tokens=args.max_total_tokens,
        max_new_tokens=args.max_new_tokens,
        concurrency=args.concurrency,
        max_queue=args.max_queue,
        max_history_chars=args.max_history_chars,
        max_request_bytes=args.max_request_bytes,
    )


def run(args: argparse.Namespace) -> int:
    dtype = getattr(torch, args.dtype) if args.dtype else None
    model, tokenizer = load_chat_model(args.model, device=args.device, dtype=dtype)
    launch_app(model, tokenizer, args.host, args.port, limits_from_args(args), model_name=args.model)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hf_nanochat.serve.app", description="Chat with a model in the browser")
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
