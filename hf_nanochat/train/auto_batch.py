"""`device_batch_size: auto`: start from the largest device batch the memory plan allows, and
halve it on out-of-memory during the first steps.

The total batch (tokens per optimizer step) is the recipe's and never changes: the device batch
must divide `total_batch_size / (max_seq_len x world_size)`, and halving it doubles gradient
accumulation. Only the first PROBE_STEPS optimizer steps of a run may halve (the peak is
reached by then: step 1 allocates the optimizer state, step 2 is the first with both it and
activations alive); a later OOM is a real error and is raised.
"""
from __future__ import annotations

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


__all__ = ["PROBE_STEPS", "rows_per_step", "initial_device_batch", "halve"]
