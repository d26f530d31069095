"""One run per output folder: a lock file naming the process that holds it.

Two runs writing one folder interleave their metrics, fight over checkpoint folders and hide
each other's failures, so the second start fails with a message naming the first. The lock is
`FOLDER/.run.lock`, JSON with pid, hostname and start time, created with O_EXCL (atomic, also on
shared filesystems) and removed on exit. A lock whose pid is dead on this host is stale (a
`kill -9` or a power cut) and is taken over with a warning; a lock from another host cannot be
checked from here, so the message says how to remove it by hand.

Hand-written: filelock (a transformers dependency) gives mutual exclusion, but neither names
the holder nor tells a dead holder's lock from a live one across hosts.
"""
from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from hf_nanochat.errors import UserError

LOCK_NAME = ".run.lock"


class FolderInUse(UserError):
    """Another live process holds the folder's lock."""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by another user
        return True
    return True


def _read(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}  # half-written by a process killed while creating it: no holder to name


def _describe(holder: dict) -> str:
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder.get("started", 0)))
    return f"pid {holder.get('pid', '?')} on {holder.get('host', '?')} (started {started}: {holder.get('command', '?')})"


def _is_stale(holder: dict, path: Path) -> bool:
    if not holder:  # unreadable: stale once it is older than a start takes to write it
        try:
            return time.time() - path.stat().st_mtime > 5
        except FileNotFoundError:
            return False
    return holder.get("host") == socket.gethostname() and not _pid_alive(int(holder.get("pid", -1)))


@contextlib.contextmanager
def _guard(folder: Path) -> Iterator[None]:
    """An flock on a side file, held only while a stale lock is checked and removed."""
    try:
        import fcntl
    except ImportError:  # not POSIX: the check-and-remove window stays (small)
        yield
        return
    with open(folder / f"{LOCK_NAME}.guard", "a") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def acquire(folder: Path, command: str | None = None) -> Path:
    """Create the lock or raise FolderInUse; a stale lock is replaced (with a warning on stderr)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_NAME
    me = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time(), "command": command or " ".join(sys.argv)}
    for _ in range(50):  # a stale lock removed, then retried; a racing start may win the retry
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = _read(path)
            if holder is None:
                continue  # released between our open and read
            if holder == {} and not _is_stale(holder, path):
                time.sleep(0.2)  # being written by a start that just created it
                continue
            if not _is_stale(holder, path):
                raise FolderInUse(
                    f"{folder} is in use by {_describe(holder)}; wait for it, stop it, or use another output folder "
                    f"(if that process is gone, delete {path})"
                ) from None
            with _guard(folder):  # two starts finding one stale lock: only one removes it
                if _read(path) == holder:
                    print(f"warning: removing the stale lock of a run that no longer runs: {_describe(holder)}", file=sys.stderr, flush=True)
                    path.unlink()
            continue
        with os.fdopen(fd, "w") as f:
            json.dump(me, f)
            f.flush()
            os.fsync(f.fileno())
        return path
    raise FolderInUse(f"could not lock {folder}: another run keeps taking it ({path})")


def release(path: Path) -> None:
    """Remove the lock if it is still ours."""
    holder = _read(path)
    if holder and holder.get("pid") == os.getpid() and holder.get("host") == socket.gethostname():
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


@contextlib.contextmanager
def folder_lock(folder: str | os.PathLike, command: str | None = None) -> Iterator[Path]:
    path = acquire(Path(folder), command)
    try:
        yield path
    finally:
        release(path)


def launcher_rank() -> int:
    """This process's global rank as the launcher (accelerate/torchrun) set it; 0 when unlaunched.
    Only rank 0 takes the lock: the other ranks of the same run write the folder too."""
    return int(os.environ.get("RANK", "0") or 0)


@contextlib.contextmanager
def run_lock(folder: str | os.PathLike) -> Iterator[None]:
    """`folder_lock` on the launch's rank 0, nothing on the other ranks."""
    if launcher_rank() != 0:
        yield
        return
    with folder_lock(folder):
        yield


__all__ = ["LOCK_NAME", "FolderInUse", "acquire", "release", "folder_lock", "run_lock", "launcher_rank"]
