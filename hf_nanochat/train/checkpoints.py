"""Which checkpoint `--resume` continues from: the newest COMPLETE one.

Checkpoints are written to a temp folder and renamed, so a kill leaves the previous checkpoint
intact; but an interrupted copy, a filesystem without atomic rename, or a disk error can still
leave a `step_N/` (or TRL `checkpoint-N/`) with a file missing or truncated. Complete means
every file the loader will read is present and readable: JSON parses, safetensors headers
parse and the file is as long as its header says, binary state files are non-empty. Damaged
folders newer than the one resumed are moved aside to `damaged_<name>` (the run will write
those steps again, and a rename onto an existing folder would fail), each with a warning that
names it and why.
"""
from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from pathlib import Path

from hf_nanochat.model_folder import safetensors_problem

DAMAGED_PREFIX = "damaged_"


def _json_problem(path: Path) -> str | None:
    try:
        json.loads(path.read_text())
    except FileNotFoundError:
        return f"{path} is missing"
    except (OSError, ValueError) as err:
        return f"{path} is unreadable ({type(err).__name__})"
    return None


def _nonempty_problem(path: Path) -> str | None:
    try:
        if path.is_dir():
            return None if any(path.iterdir()) else f"{path.name}/ is empty"
        if path.stat().st_size == 0:
            return f"{path.name} is empty"
        if not os.access(path, os.R_OK):
            return f"{path.name} is not readable"
    except FileNotFoundError:
        return f"{path.name} is missing"
    return None


def _tree_problems(folder: Path) -> list[str]:
    """Every JSON and safetensors file below `folder` must parse."""
    problems = []
    for path in sorted(folder.rglob("*")):
        if path.suffix == ".json":
            problem = _json_problem(path)
        elif path.suffix == ".safetensors":
            problem = safetensors_problem(path)
        else:
            continue
        if problem:
            problems.append(problem.replace(str(path), str(path.relative_to(folder))))
    return problems


def _any(folder: Path, patterns: tuple[str, ...], what: str) -> str | None:
    found = [p for pattern in patterns for p in folder.glob(pattern)]
    if not found:
        return f"no {what} ({' / '.join(patterns)})"
    return next((problem for p in found if (problem := _nonempty_problem(p))), None)


def pretrain_checkpoint_problems(folder: Path) -> list[str]:
    """What is missing or damaged in a pretraining `step_N/` (model/ + state/, see pretrain.py)."""
    state, model = folder / "state", folder / "model"
    problems = []
    trainer_state = None
    try:
        trainer_state = json.loads((state / "trainer_state.json").read_text())
    except FileNotFoundError:
        problems.append("state/trainer_state.json is missing")
    except (OSError, ValueError):
        problems.append("state/trainer_state.json is unreadable")
    world = int((trainer_state or {}).get("world_size", 1))
    for rank in range(world):
        for name in (f"data_rank{rank}.json",):
            if not (state / name).is_file():
                problems.append(f"state/{name} is missing")
        problem = _nonempty_problem(state / f"random_states_{rank}.pkl")
        if problem:
            problems.append("state/" + problem)
    for patterns, what in (
        (("model*.safetensors", "pytorch_model*"), "model state"),
        (("optimizer*",), "optimizer state"),
    ):
        problem = _any(state, patterns, what)
        if problem:
            problems.append("state/: " + problem)
    for name in ("config.json", "tokenizer.json"):
        if not (model / name).is_file():
            problems.append(f"model/{name} is missing")
    if not list(model.glob("*.safetensors")):
        problems.append("model/ has no safetensors weights")
    problems += _tree_problems(folder)
    return list(dict.fromkeys(problems))


def trl_checkpoint_problems(folder: Path) -> list[str]:
    """What is missing or damaged in a Trainer `checkpoint-N/` (full model or LoRA adapter)."""
    problems = []
    if not (folder / "trainer_state.json").is_file():
        problems.append("trainer_state.json is missing")
    for patterns, what in (
        (("model*.safetensors", "adapter_model.safetensors", "pytorch_model*"), "model weights"),
        (("optimizer*",), "optimizer state"),
        (("scheduler.pt",), "scheduler state"),
        (("rng_state*.pth",), "RNG state"),
    ):
        problem = _any(folder, patterns, what)
        if problem:
            problems.append(problem)
    problems += _tree_problems(folder)
    return list(dict.fromkeys(problems))


def newest_complete(
    checkpoints: list[Path],
    problems: Callable[[Path], list[str]],
    warn: Callable[[str], None] | None = None,
    move_damaged: bool = True,
) -> list[Path]:
    """`checkpoints` (oldest first) up to the newest complete one. Damaged ones newer than it
    are reported through `warn` and (move_damaged) renamed to `damaged_<name>`; older damaged
    ones are dropped from the list (rotation deletes them)."""
    warn = warn or (lambda text: print(text, file=sys.stderr, flush=True))
    for index in range(len(checkpoints) - 1, -1, -1):
        found = problems(checkpoints[index])
        if not found:
            return [c for c in checkpoints[:index] if not problems(c)] + [checkpoints[index]]
        action = ""
        if move_damaged:
            moved = _free_name(checkpoints[index].with_name(DAMAGED_PREFIX + checkpoints[index].name))
            os.replace(checkpoints[index], moved)
            action = f"; moved to {moved}"
        warn(f"warning: skipping checkpoint {checkpoints[index]}: {'; '.join(found)}{action}")
    return []


def _free_name(target: Path) -> Path:
    n, candidate = 1, target
    while candidate.exists():
        n += 1
        candidate = target.with_name(f"{target.name}.{n}")
    return candidate


__all__ = ["newest_complete", "pretrain_checkpoint_problems", "trl_checkpoint_problems", "DAMAGED_PREFIX"]
