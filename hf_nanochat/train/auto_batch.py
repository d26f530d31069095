"""`device_batch_size: auto`: start from the largest device batch the memory plan allows, and
halve it on out-of-memory during the first steps.

The total batch (tokens per optimizer step) is the recipe's and never changes: the device batch
must divide `total_batch_size / (max_seq_len x world_size)`, and halving it doubles gradient
accumulation. Only the first PROBE_STEPS optimizer steps of a run may halve (the peak is
reached by then: step 1 allocates the optimizer state, step 2 is the first with both it and
activations alive); a later OOM is a real error and is raised.

The training loop asks three things of this module: which device batch to start from
(`starting_device_batch`), whether a step's out-of-memory is one to recover from
(`OutOfMemoryGuard.watch`), and how to roll the step back (`OutOfMemoryGuard.roll_back`); it
then rebuilds its data streams at the step's start position and redoes the step. With several
processes the ranks agree after every micro-batch of a probe step (`OutOfMemoryGuard.any_rank`),
so all of them halve together and accumulation stays the same on every rank.
"""
from __future__ import annotations

from collections.abc import Callable

import torch

PROBE_STEPS = 2


def rows_per_step(total_batch_size: int, seq_len: int, world_size: int) -> int:
    """Rows each device must process per optimizer step (device batch x accumulation)."""
    if total_batch_size % (seq_len * world_size):
        raise ValueError(
            f"device_batch_size: auto needs total_batch_size ({total_batch_size}) to be a multiple of "
            f"max_seq_len x world_size = {seq_len} x {world_size}"
        )
    return total_batch_size // (seq_len * world_size)


def initial_device_batch(total_batch_size: int, seq_len: int, world_size: int, fits=None) -> int:
    """Largest divisor of the per-device rows per step that `fits(batch) -> bool` accepts (all
    of them when `fits` is None: CPU, where the first steps find the limit). At least 1."""
    rows = rows_per_step(total_batch_size, seq_len, world_size)
    candidates = [b for b in range(rows, 0, -1) if rows % b == 0]
    return next((b for b in candidates if fits is None or fits(b)), 1)


def halve(device_batch_size: int, grad_accum: int) -> tuple[int, int]:
    """(device batch, accumulation) after an OOM; the product is unchanged."""
    if device_batch_size == 1 or device_batch_size % 2:
        raise ValueError(f"cannot halve device batch {device_batch_size} and keep the total batch")
    return device_batch_size // 2, grad_accum * 2


def starting_device_batch(
    total_batch_size: int,
    seq_len: int,
    world_size: int,
    device: torch.device,
    peak_bytes: Callable[[int], int],
    saved_state: dict,
) -> int:
    """What an `auto` run starts with: the batch an interrupted run settled on (same world size),
    else the largest one whose planned peak (`peak_bytes(batch)`) fits the GPU's memory; on CPU
    every candidate is allowed and the first steps find the limit."""
    if saved_state.get("world_size") == world_size and saved_state.get("device_batch_size"):
        return saved_state["device_batch_size"]
    budget = torch.cuda.mem_get_info(device)[1] if device.type == "cuda" else None
    fits = (lambda b: peak_bytes(b) <= budget) if budget else None
    return initial_device_batch(total_batch_size, seq_len, world_size, fits)


class OutOfMemoryGuard:
    """Catches torch.OutOfMemoryError in the micro-batches of a probe step of an `auto` run.

        with guard.watch(step, device_batch) as oom:
            ...forward/backward of every micro-batch...
        if oom.hit:
            new_batch, new_accum, message = guard.roll_back(...)

    The exception is swallowed on leaving the `with`, so the frames that held the failed
    micro-batch's activations are already gone when `roll_back` frees the cache."""

    def __init__(self, enabled: bool, first_step: int):
        self.enabled = enabled
        self.first_step = first_step  # probing counts from where this run (or resume) began
        self.hit = False
        self._armed = False

    def probing(self, step: int) -> bool:
        return self.enabled and step < self.first_step + PROBE_STEPS

    def watch(self, step: int, device_batch_size: int) -> OutOfMemoryGuard:
        self._armed = self.probing(step) and device_batch_size > 1  # batch 1 cannot shrink: raise
        self.hit = False
        return self

    def __enter__(self) -> OutOfMemoryGuard:
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if self._armed and exc_type is not None and issubclass(exc_type, torch.OutOfMemoryError):
            self.hit = True
            return True
        return False

    @staticmethod
    def any_rank(failed: bool, device: torch.device) -> bool:
        """Did any rank run out of memory in this micro-batch? A flag max-reduced across ranks,
        so every rank takes the same branch (never one rolling back while another steps)."""
        flag = torch.tensor(float(failed), device=device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        return bool(flag.item())

    def roll_back(self, optimizer, device: torch.device, step: int, device_batch_size: int, grad_accum: int, total_batch_size: int):
        """Drop the partial gradients, free the cache, halve the device batch.
        Returns (new device batch, new accumulation, the message to print)."""
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.empty_cache()
        new_batch, new_accum = halve(device_batch_size, grad_accum)
        message = (
            f"out of memory at step {step + 1} with device batch {device_batch_size}: device batch {device_batch_size} -> {new_batch}, "
            f"gradient accumulation {grad_accum} -> {new_accum}, total batch unchanged ({total_batch_size:,} tokens)"
        )
        return new_batch, new_accum, message


def average_gradients(parameters, world_size: int) -> None:
    """DDP's gradient sync by hand (sum across ranks, divide by world size), for the probe steps
    whose backward ran under no_sync."""
    for p in parameters:
        if p.grad is not None:
            torch.distributed.all_reduce(p.grad)
            p.grad.div_(world_size)


__all__ = ["average_gradients", "PROBE_STEPS", "rows_per_step", "initial_device_batch", "halve", "starting_device_batch", "OutOfMemoryGuard"]
