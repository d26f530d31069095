"""Progress that fits where it goes: a tqdm bar on a terminal, plain lines anywhere else.

Redirected to a file (nohup, CI, the speedrun's stage logs) every tqdm refresh is a `\\r` that
becomes its own line or one endless line. There the bar is replaced by `LineProgress`, which
prints one line every `every_steps` steps or `every_seconds` seconds (and the last step), and
the libraries' own bars (datasets' map, transformers' shard writing, hub downloads) are
switched off. HF_NANOCHAT_PROGRESS=bar|lines forces either.
"""
from __future__ import annotations

import os
import sys
import time

PROGRESS_ENV = "HF_NANOCHAT_PROGRESS"


def interactive(stream=None) -> bool:
    """Whether progress should be a live bar: forced by HF_NANOCHAT_PROGRESS, else stderr is a tty."""
    forced = os.environ.get(PROGRESS_ENV, "").lower()
    if forced in ("bar", "lines"):
        return forced == "bar"
    stream = stream or sys.stderr
    return bool(getattr(stream, "isatty", lambda: False)())


def quiet_library_progress_bars() -> None:
    """Turn off the dependencies' tqdm bars (they would each print a line per refresh)."""
    import datasets
    import huggingface_hub
    import transformers

    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()
    huggingface_hub.utils.disable_progress_bars()


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


class LineProgress:
    """The part of tqdm's interface the training loop uses, printing whole lines."""

    def __init__(self, total: int, initial: int = 0, desc: str = "", disable: bool = False,
                 every_steps: int | None = None, every_seconds: float = 30.0, file=None):
        self.total, self.n, self.desc, self.disable = total, initial, desc, disable
        self.every_steps = every_steps or max(1, total // 20)
        self.every_seconds = every_seconds
        self.file = file
        self.postfix = ""
        self._start_n, self._start = initial, time.monotonic()
        self._printed_n, self._printed_at = initial, self._start

    def set_postfix(self, refresh: bool = False, **values) -> None:
        self.postfix = ", ".join(f"{k}={v}" for k, v in values.items())

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.monotonic()
        if (self.n - self._printed_n >= self.every_steps or now - self._printed_at >= self.every_seconds
                or self.n >= self.total):
            self._print(now)

    def _print(self, now: float) -> None:
        if self.disable or self.n == self._printed_n:
            return
        elapsed = now - self._start
        done = self.n - self._start_n
        eta = elapsed / done * (self.total - self.n) if done else 0.0
        line = f"{self.desc}: {self.n:,}/{self.total:,} ({self.n / max(self.total, 1):.0%}) elapsed {_clock(elapsed)}, eta {_clock(eta)}"
        print(line + (f", {self.postfix}" if self.postfix else ""), file=self.file or sys.stdout, flush=True)
        self._printed_n, self._printed_at = self.n, now

    def write(self, text: str) -> None:
        if not self.disable:
            print(text, file=self.file or sys.stdout, flush=True)

    def close(self) -> None:
        self._print(time.monotonic())


def progress_bar(total: int, initial: int = 0, desc: str = "", disable: bool = False, **tqdm_kwargs):
    """tqdm on a terminal; LineProgress (and no library bars) when the output is a file or pipe."""
    if interactive():
        from tqdm.auto import tqdm

        return tqdm(total=total, initial=initial, desc=desc, disable=disable, **tqdm_kwargs)
    quiet_library_progress_bars()
    return LineProgress(total, initial, desc, disable)


__all__ = ["LineProgress", "progress_bar", "interactive", "quiet_library_progress_bars"]
