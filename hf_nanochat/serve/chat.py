"""`hf-nanochat chat`: talk to a model in the terminal, one-shot with -p, or in the browser with --web.

Interactive commands: /clear forgets the conversation, /exit (or end of input) quits.
"""
from __future__ import annotations

import argparse
import contextlib
import sys
import warnings
from collections.abc import Iterator

import torch

from hf_nanochat.serve.engine import Engine, load_chat_model, parse_rendered_reply

HELP = "commands: /clear forgets the conversation, /exit quits"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="save_pretrained folder or Hub id of a chat model")
    parser.add_argument("-p", "--prompt", default=None, help="answer this one message and exit")
    parser.add_argument("--temperature", type=float, default=0.6, help="0 = greedy")
    parser.add_argument("--top-k", type=int, default=50, help="0 = off")
    parser.add_argument("--top-p", type=float, default=None)
    parser.add_argument("--max-tokens", type=int, default=512, help="longest reply in tokens")
    parser.add_argument("--seed", type=int, default=None, help="make sampling reproducible")
    parser.add_argument("--device", default=None, help="cpu, cuda, mps (default: the best available)")
    parser.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"], help="default: as in training on this device")
    parser.add_argument("--web", action="store_true", help="serve the Gradio app instead (see python -m hf_nanochat.serve.app --help for limits)")
    parser.add_argument("--host", default="127.0.0.1", help="with --web: interface to listen on")
    parser.add_argument("--port", type=int, default=7860, help="with --web: port")


def run(args: argparse.Namespace) -> int:
    dtype = getattr(torch, args.dtype) if args.dtype else None
    model, tokenizer = load_chat_model(args.model, device=args.device, dtype=dtype)
    if args.web:
        from hf_nanochat.serve.app import launch_app

        launch_app(model, tokenizer, args.host, args.port, model_name=args.model)
        return 0
    engine = Engine(model, tokenizer)
    sampling = {"temperature": args.temperature, "top_k": args.top_k or None, "top_p": args.top_p, "max_tokens": args.max_tokens, "seed": args.seed}
    if args.prompt is not None:
        return 0 if reply(engine, [{"role": "user", "content": args.prompt}], sampling) is not None else 1
    params = sum(p.numel() for p in model.parameters())
    print(f"Chatting with {args.model} ({params / 1e6:.1f}M parameters on {model.device.type}); {HELP}")
    return interactive(engine, sampling)


def interactive(engine: Engine, sampling: dict, read_line=input) -> int:
    """The conversation loop. Ctrl-C during a reply stops that reply (what was shown stays in
    the conversation); Ctrl-C at the prompt, /exit or end of input quits. No traceback."""
    history: list[dict] = []
    while True:
        try:
            line = read_line("\nUser: ")
        except (EOFError, KeyboardInterrupt):
            print()
            return 0
        command = line.strip()
        if command == "/exit":
            return 0
        if command == "/clear":
            history.clear()
            print("(conversation cleared)")
            continue
        if command.startswith("/"):
            print(f"unknown command {command}; {HELP}")
            continue
        if not command:
            continue
        history.append({"role": "user", "content": line})
        print("Assistant: ", end="", flush=True)
        text = reply(engine, history, sampling)
        if text is None:
            history.pop()  # the model never saw it
        else:
            history.append({"role": "assistant", "content": parse_rendered_reply(text)})


@contextlib.contextmanager
def warnings_after_reply() -> Iterator[None]:
    """Hold back Python warnings and transformers' log messages (FutureWarnings and the like from
    the libraries) while a reply streams, and print them after it, once each, on stderr: printed
    as they come they land in the middle of the reply."""
    import logging

    from transformers.utils import logging as hf_logging

    held: list[str] = []

    class Hold(logging.Handler):
        def emit(self, record):
            held.append(f"{record.levelname.lower()}: {record.getMessage()}")

    handler = Hold()
    hf_logging.disable_default_handler()
    hf_logging.add_handler(handler)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("default")
            yield
    finally:
        hf_logging.remove_handler(handler)
        hf_logging.enable_default_handler()
        held += [f"{w.category.__name__}: {w.message}" for w in caught]
        for text in dict.fromkeys(held):
            if text not in _SHOWN:
                _SHOWN.add(text)
                print(text, file=sys.stderr, flush=True)


_SHOWN: set[str] = set()  # each held-back warning is shown once per session


def reply(engine: Engine, messages: list[dict], sampling: dict) -> str | None:
    """Stream the reply to stdout; None (with the reason on stderr) if it could not be generated.
    Ctrl-C stops the reply and returns what was shown."""
    text = ""
    with warnings_after_reply():
        stream = engine.chat(messages, **sampling)
        try:
            for chunk in stream:
                print(chunk, end="", flush=True)
                text += chunk
        except ValueError as err:  # e.g. the conversation outgrew the context
            print(f"\nerror: {err}" + ("; /clear starts a new conversation" if len(messages) > 1 else ""), file=sys.stderr)
            return None
        except KeyboardInterrupt:
            stream.close()
            print("\n(reply stopped; Ctrl-C again at the prompt quits)", flush=True)
            return text
        print()  # inside: held-back warnings come after the reply's line
    return text
