"""Run untrusted generated Python (HumanEval samples) in a locked-down child process.

Layers (hand-written: no library in our stack sandboxes Python):
  * a fresh `python -I` child in its own session, cwd a new temp dir, a minimal environment;
    killed with its whole process group when the wall-clock timeout passes;
  * kernel limits set before exec (resource.setrlimit): CPU seconds, address space (memory),
    size of any file written, number of open files;
  * inside the child, before the sample runs, an audit hook (PEP 578; it cannot be removed once
    installed) refuses: sockets of any kind, starting processes (os.system, subprocess, exec,
    fork, spawn), ctypes (which could bypass everything), writing/creating/deleting/renaming
    files anywhere outside the temp dir, and reading files outside the temp dir and the
    interpreter's own library paths (imports must still work).
This stops what an honest-but-wrong model sample does (delete files, phone home, loop forever,
eat memory); it is not a boundary against a determined attacker with a kernel exploit - run
evaluations in a container for that.
"""
from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass

# The child reads the sample from stdin, installs the hook, then runs the sample. Paths in the
# allow-lists are resolved with realpath so "../" and symlinks cannot escape.
_BOOTSTRAP = r"""
import os, sys
_code = sys.stdin.read()
_real = os.path.realpath
_root = _real(os.getcwd())
_read_roots = tuple(_real(p) for p in sys.path if p and os.path.isdir(p)) + (_real(sys.prefix), _real(sys.base_prefix))
_PROC_EVENTS = {"os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.fork", "os.forkpty", "os.kill", "os.killpg",
                "subprocess.Popen", "pty.spawn", "os.startfile", "webbrowser.open"}
_PATH_EVENTS = {"os.remove", "os.rename", "os.rmdir", "os.mkdir", "os.chmod", "os.chown", "os.link", "os.symlink",
                "os.truncate", "os.utime", "os.chdir", "os.chflags", "shutil.rmtree", "shutil.copyfile", "shutil.move",
                "os.mkfifo", "os.mknod"}
_LIST_EVENTS = {"os.listdir", "os.scandir"}  # the import system lists its library folders

def _inside(path, roots):
    try:
        p = _real(os.fsdecode(path))
    except Exception:
        return False
    return any(p == r or p.startswith(r + os.sep) for r in roots)

def _hook(event, args):
    if event.startswith("socket.") or event.startswith("ctypes.") or event in _PROC_EVENTS:
        raise PermissionError(f"sandbox: {event} is not allowed")
    if event == "open":
        path, mode, flags = args
        if isinstance(path, int) or path is None:
            return
        writing = (mode is not None and any(c in str(mode) for c in "wax+")) or (isinstance(flags, int) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND))
        roots = (_root,) if writing else (_root,) + _read_roots
        if not _inside(path, roots):
            raise PermissionError(f"sandbox: opening {path!r} is not allowed")
    elif event in _LIST_EVENTS:
        if args and isinstance(args[0], (str, bytes, os.PathLike)) and not _inside(args[0], (_root,) + _read_roots):
            raise PermissionError(f"sandbox: listing {args[0]!r} is not allowed")
    elif event in _PATH_EVENTS:
        for a in args:
            if isinstance(a, (str, bytes, os.PathLike)) and not _inside(a, (_root,)):
                raise PermissionError(f"sandbox: {event} on {a!r} is not allowed")

sys.addaudithook(_hook)
del _hook
exec(compile(_code, "<sample>", "exec"), {"__name__": "__main__", "__builtins__": __builtins__})
"""


@dataclass
class ExecutionResult:
    success: bool  # exit status 0 within the limits
    stdout: str
    stderr: str
    timed_out: bool = False
    returncode: int | None = None


def _limits(timeout: float, memory_mb: int, max_file_mb: int):
    def apply():
        cpu = max(1, int(timeout) + 1)
        resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu))
        mem = memory_mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
        size = max_file_mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_FSIZE, (size, size))
        resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))

    return apply


def run_python(code: str, timeout: float = 5.0, memory_mb: int = 512, max_file_mb: int = 8, max_output_chars: int = 20_000) -> ExecutionResult:
    """Run `code` under the sandbox; success means it exited with status 0 within `timeout`
    seconds and `memory_mb` of address space."""
    with tempfile.TemporaryDirectory(prefix="hf_nanochat_sandbox_") as workdir:
        env = {"PATH": "/usr/bin:/bin", "HOME": workdir, "TMPDIR": workdir, "PYTHONHASHSEED": "0", "OMP_NUM_THREADS": "1"}
        proc = subprocess.Popen(
            [sys.executable, "-I", "-S", "-c", _BOOTSTRAP],
            cwd=workdir,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,  # its own process group, killed as a whole on timeout
            preexec_fn=_limits(timeout, memory_mb, max_file_mb),
        )
        try:
            out, err = proc.communicate(code.encode("utf-8"), timeout=timeout)
            timed_out = False
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
            timed_out = True
        decode = lambda b: b.decode("utf-8", errors="replace")[:max_output_chars]  # noqa: E731
        return ExecutionResult(
            success=proc.returncode == 0 and not timed_out,
            stdout=decode(out),
            stderr=decode(err) + ("\nsandbox: timed out" if timed_out else ""),
            timed_out=timed_out,
            returncode=proc.returncode,
        )


__all__ = ["ExecutionResult", "run_python"]
