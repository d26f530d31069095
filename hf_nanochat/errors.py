"""User errors end in one line: `error: WHAT, and the fix`, exit status 2, no traceback.

`UserError` is raised where the pipeline knows the input is wrong (a missing folder, a file that
is not what it should be). `run_main` is the wrapper every command line goes through
(`hf-nanochat`, `train.py`): it prints a user error, and the errors that libraries raise on bad
input (missing files, refused values, corrupt safetensors or pickles), as one line. Anything else
is a bug and keeps its traceback. `--debug` anywhere on the command line, or
HF_NANOCHAT_DEBUG=1, shows the traceback of user errors too.

Deliberately import-light (argparse, difflib): `hf-nanochat --help` goes through here.
"""
from __future__ import annotations

import argparse
import difflib
import os
import re
import sys
from collections.abc import Callable, Iterable

DEBUG_FLAG = "--debug"
DEBUG_ENV = "HF_NANOCHAT_DEBUG"
EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what a shell reports for Ctrl-C


class UserError(Exception):
    """Bad input; the message names the thing and says how to fix it, in one line."""


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """' (did you mean X?)' for the closest choice, or '' when none is close."""
    match = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {match[0]}?)" if match else ""


def debug_requested(argv: list[str]) -> bool:
    return DEBUG_FLAG in argv or os.environ.get(DEBUG_ENV, "").lower() in ("1", "true", "yes")


def _user_error_types() -> tuple[type[BaseException], ...]:
    """Exceptions that mean "the input is wrong" rather than "the code is wrong"."""
    types: list[type[BaseException]] = [UserError, ValueError, OSError]  # OSError: missing/unreadable files, Hub lookups
    import pickle

    types.append(pickle.UnpicklingError)  # torch.load(weights_only=True) refusing a pickle
    if "safetensors" in sys.modules:
        from safetensors import SafetensorError

        types.append(SafetensorError)
    return tuple(types)


def one_line(err: BaseException) -> str:
    """The message of `err` on one line (library messages often span several)."""
    text = " ".join(part.strip() for part in str(err).splitlines() if part.strip())
    if isinstance(err, OSError) and err.filename and not text:
        text = f"{err.strerror}: {err.filename}"
    return text or type(err).__name__


def run_main(func: Callable[[list[str]], int | None], argv: list[str]) -> int:
    """`func(argv)` with user errors as one line on stderr (exit 2) and Ctrl-C as exit 130."""
    debug = debug_requested(argv)
    argv = [a for a in argv if a != DEBUG_FLAG]
    try:
        return int(func(argv) or 0)
    except KeyboardInterrupt:
        if debug:
            raise
        print("\ninterrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as err:
        if debug or not isinstance(err, _user_error_types()):
            raise
        sys.stdout.flush()
        print(f"error: {one_line(err)}", file=sys.stderr, flush=True)
        return EXIT_USER_ERROR


class CliParser(argparse.ArgumentParser):
    """argparse with a short error: the problem, a did-you-mean for a mistyped flag, and where
    the full usage is (argparse would print the whole usage, 30 lines for train.py)."""

    def error(self, message: str):
        hint = ""
        if message.startswith("unrecognized arguments:"):
            flags = [s for a in self._actions for s in a.option_strings]
            for token in message.split(":", 1)[1].split():
                if token.startswith("-"):
                    hint = did_you_mean(token.split("=", 1)[0], flags)
                    if hint:
                        break
        elif (choice := re.search(r"invalid choice: '([^']*)' \(choose from (.*)\)", message)) is not None:
            hint = did_you_mean(choice.group(1), re.findall(r"'([^']*)'", choice.group(2)))
        sys.stderr.write(f"{self.prog}: error: {message}{hint}; see {self.prog} --help\n")
        sys.exit(EXIT_USER_ERROR)


__all__ = ["UserError", "CliParser", "did_you_mean", "run_main", "one_line", "debug_requested"]
