"""Run Python code in a fresh process that cannot import hf_nanochat.

This is how a user of another project sees a checkpoint: transformers and torch are
there, our package is not. The editable-install finder is dropped and any import of
hf_nanochat raises, so a test passing here proves the folder is self-contained.
"""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

PRELUDE = """
import sys
sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in getattr(f, "__module__", "")]
class _NoHfNanochat:
    @staticmethod
    def find_spec(name, path=None, target=None):
        if name == "hf_nanochat" or name.startswith("hf_nanochat."):
            raise ImportError("hf_nanochat is deliberately unavailable in this process")
        return None
sys.meta_path.insert(0, _NoHfNanochat)
try:
    import hf_nanochat  # noqa: F401
except ImportError:
    pass
else:
    raise SystemExit("hf_nanochat was importable")
"""


def run_without_hf_nanochat(code: str, cwd: str, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_MODULES_CACHE=os.path.join(cwd, "hf_modules"))
    script = PRELUDE + textwrap.dedent(code) + "\nassert 'hf_nanochat' not in sys.modules\n"
    result = subprocess.run(
        [sys.executable, "-I", "-c", script], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )
    assert result.returncode == 0, f"isolated process failed:\n{result.stdout}\n{result.stderr}"
    return result
