"""`hf-nanochat` command line.

Each subcommand lives in the module that owns its feature; that module exposes
`add_arguments(parser)` and `run(args) -> int | None`, or `main(argv) -> int` when it parses
its own arguments (the training entry point, whose options depend on the recipe's stage). The table below is the only
place that lists them, and modules are imported lazily so `hf-nanochat info`
does not pay for importing gradio or TRL, and `hf-nanochat --help` imports neither torch nor
transformers (well under a second).

Errors in what the user typed end in one line (`error: ...`, exit 2), see hf_nanochat/errors.py;
`--debug` anywhere on the line (or HF_NANOCHAT_DEBUG=1) shows the traceback.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from hf_nanochat.errors import CliParser, run_main

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "info": ("hf_nanochat.info", "print model shapes and parameter counts for depths"),
    "convert": ("hf_nanochat.share.convert", "convert weights: to/from transformers' built-in nanochat, from a nanochat checkpoint"),
    "push": ("hf_nanochat.share.hub", "upload a model folder to the Hugging Face Hub with a model card"),
    "chat": ("hf_nanochat.serve.chat", "chat with a model: interactive terminal, one-shot -p, or --web for the Gradio app"),
    "eval": ("hf_nanochat.evaluate.chat_eval", "evaluate a model: base (val bpb), core (DCLM CORE) or chat (ARC, MMLU, GSM8K, HumanEval, spelling, ChatCORE)"),
    "merge": ("hf_nanochat.share.merge", "merge a LoRA adapter folder into its base model: merge ADAPTER_DIR OUT"),
    "tokenizer": ("hf_nanochat.data.tokenizer_cli", "train nanochat's BPE tokenizer, or print its bytes-per-token table"),
    "memory": ("hf_nanochat.train.memory_cli", "per-device memory of a training recipe: does it fit, largest device batch"),
    "train": ("hf_nanochat.train.entry", "train any stage (base, mid, sft) with Accelerate, as train.py: --config train_configs/X.yaml"),
    "speedrun": ("hf_nanochat.speedrun.pipeline", "the whole pipeline for a hardware recipe: tokenizer -> base -> mid -> SFT -> eval -> report"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = CliParser(
        prog="hf-nanochat",
        description=__doc__.splitlines()[0],
        epilog="--debug (anywhere) or HF_NANOCHAT_DEBUG=1: show the traceback of an error",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name, (module_name, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(_module=module_name)
        # Sub-parsers are configured lazily only for the chosen command (see main).
        p.add_argument("args", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None) -> int:
    return run_main(_dispatch, list(sys.argv[1:] if argv is None else argv))


def _dispatch(argv: list[str]) -> int:
    top = build_parser()
    ns = top.parse_args(argv[:1] if argv and not argv[0].startswith("-") else argv)
    module = importlib.import_module(ns._module)
    if not hasattr(module, "add_arguments"):
        return int(module.main(argv[1:]) or 0)
    parser = CliParser(prog=f"hf-nanochat {ns.command}", description=COMMANDS[ns.command][1])
    module.add_arguments(parser)
    args = parser.parse_args(argv[1:])
    return int(module.run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
