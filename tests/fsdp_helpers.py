"""Launching 2 gloo CPU ranks under FSDP2, for the pretraining and chat-stage FSDP tests.

Accelerate only enables FSDP on GPU process types. `launch` starts the ranks the supported way
(cpu_ddp.yaml + ACCELERATE_USE_CPU) with accelerate_configs/fsdp.yaml's fsdp_config exported as
the FSDP_* variables `accelerate launch` would set, and FSDP_ON_CPU_ENTRY (a test-only entry
script) flips Accelerate's private PartialState distributed type from MULTI_CPU to MULTI_GPU
each time the state is set up (TrainingArguments resets and rebuilds it), so that Accelerator
takes its FSDP path (../shared/PLATFORM_NOTES.md). Everything after that is the production
train.py code path.
"""
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import torch
import yaml

REPO = Path(__file__).resolve().parent.parent

FSDP_ON_CPU_ENTRY = """
import sys
from accelerate.state import PartialState
from accelerate.utils import DistributedType
set_up = PartialState.__init__
def set_up_as_gpu_ranks(self, *args, **kwargs):  # test-only: let Accelerator take its FSDP path
    set_up(self, *args, **kwargs)
    if self.distributed_type == DistributedType.MULTI_CPU:
        self._shared_state["distributed_type"] = DistributedType.MULTI_GPU
PartialState.__init__ = set_up_as_gpu_ranks
from hf_nanochat.train.entry import main
sys.exit(main(sys.argv[1:]))
"""

# Same launcher arguments as the key names `accelerate launch` maps fsdp_config onto.
ENV_NAMES = {"transformer_layer_cls_to_wrap": "TRANSFORMER_CLS_TO_WRAP"}


def fsdp_env_from_recipe() -> dict:
    fsdp_config = yaml.safe_load((REPO / "accelerate_configs/fsdp.yaml").read_text())["fsdp_config"]
    env = {"ACCELERATE_USE_FSDP": "true"}
    for key, value in fsdp_config.items():
        name = key.removeprefix("fsdp_")
        env["FSDP_" + ENV_NAMES.get(name, name.upper())] = str(value).lower() if isinstance(value, bool) else str(value)
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(script: Path, args: list[str], expect: str, processes: int = 2, fsdp: bool = True) -> subprocess.CompletedProcess:
    """Run `script args` on `processes` CPU ranks; `expect` must be in its output (a run that
    finished, not only one that exited 0: see PLATFORM_NOTES on gloo at exit)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "true", **(fsdp_env_from_recipe() if fsdp else {})}
    cmd = [
        sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(REPO / "accelerate_configs/cpu_ddp.yaml"),
        "--num_processes", str(processes), "--main_process_port", str(free_port()), str(script), *args,
    ]
    done = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert expect in done.stdout, done.stdout[-2000:] + done.stderr[-4000:]
    return done


def losses(run: Path) -> list[float]:
    """Per-step losses from a run's metrics.jsonl (pretraining and the chat stages write one)."""
    return [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()]


def assert_weights_close(a: dict, b: dict, atol: dict | None = None) -> None:
    """Every tensor within rtol=atol=1e-5, or within the absolute tolerance `atol` gives its name."""
    assert sorted(a) == sorted(b)
    for k in a:
        tol = (atol or {}).get(k, 1e-5)
        assert torch.allclose(a[k], b[k], rtol=1e-5, atol=tol), (k, (a[k] - b[k]).abs().max().item())
