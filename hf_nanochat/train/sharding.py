"""FSDP2 for 3B/7B: the sharding plugin train.py hands to Accelerate, and Muon on sharded matrices.

Accelerate does the sharding itself (`accelerate_configs/fsdp.yaml`: FSDP2 `fully_shard` on
every `NanoChatGPTBlock` - the model's `_no_split_modules` - and on the root, activation
checkpointing, sharded state dicts through torch.distributed.checkpoint). Two things it does
not do, written here:

- Mixed precision with fp32 reductions. Accelerate's FSDP2 policy reduces gradients in the
  compute dtype (bf16), and `fsdp.yaml` cannot say otherwise; `fsdp_plugin()` builds the plugin
  from the launcher's settings with `MixedPrecisionPolicy(param_dtype=bf16, reduce_dtype=fp32)`
  (summing 8+ bf16 gradients loses bits that Muon's normalised update would then amplify).
- Muon on sharded matrices. Newton-Schulz needs each matrix whole; every rank holds one row
  block (`Shard(0)`) of every matrix. `orthogonalise_sharded` gives matrix i to owner rank
  i % world: one all-to-all sends each owner the row blocks of its matrices, the owner runs
  Newton-Schulz on the full matrix, a second all-to-all returns every rank its own rows of the
  result. Each matrix is orthogonalised once (not on all N ranks) and each rank moves only
  about 2x its shard of data, the same traffic as one all-gather. Neither torch nor
  Accelerate provides this (torch's own Muon takes unsharded parameters), hence by hand.
"""
from __future__ import annotations

import os
from collections.abc import Callable

import torch
import torch.distributed as dist

MIXED_PRECISION_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def fsdp_launch_requested() -> bool:
    """True when `accelerate launch` was given an FSDP config (it exports ACCELERATE_USE_FSDP)."""
    return os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"


def fsdp_plugin(mode: str):
    """The FSDP plugin for `Accelerator(fsdp_plugin=...)`, or None when not launched with FSDP.

    Everything except mixed precision comes from the launcher (fsdp.yaml -> FSDP_* variables);
    `mode` is the precision plan's mode: bf16/fp16 cast parameters for compute while
    gradients are reduced in fp32, fp32 leaves everything in fp32.
    """
    if not fsdp_launch_requested():
        return None
    from accelerate.utils import FullyShardedDataParallelPlugin
    from torch.distributed.fsdp import MixedPrecisionPolicy

    version = int(os.environ.get("FSDP_VERSION", "1"))
    if version != 2:
        raise ValueError(
            f"the accelerate config asks for FSDP version {version}; use fsdp_version: 2 (FSDP2 / fully_shard): "
            "Muon's sharded update works on its DTensor parameters, and FSDP1 is deprecated"
        )
    policy = MixedPrecisionPolicy(param_dtype=MIXED_PRECISION_DTYPES.get(mode), reduce_dtype=torch.float32)
    return FullyShardedDataParallelPlugin(fsdp_version=2, mixed_precision_policy=policy)


def describe_sharding(model, rank: int, world: int) -> str:
    """One log line per rank: FSDP units, checkpointed blocks, and the share of parameter
    values this rank really stores (about 1/world under full sharding)."""
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import CheckpointWrapper  # what Accelerate applies
    from torch.distributed.fsdp import FSDPModule
    from torch.distributed.tensor import DTensor

    units = sum(isinstance(m, FSDPModule) for m in model.modules())
    checkpointed = sum(isinstance(m, CheckpointWrapper) for m in model.modules())
    total = sum(p.numel() for p in model.parameters())
    local = sum((p.to_local() if isinstance(p, DTensor) else p).numel() for p in model.parameters())
    return (
        f"sharding   [rank {rank}/{world}] FSDP2: {units} fully_shard units, activation checkpointing on "
        f"{checkpointed} blocks; holds {local:,} of {total:,} parameter values ({local / total:.1%})"
    )


def export_skeleton(model):
    """The module whose `save_pretrained(state_dict=<gathered full state dict>)` writes a plain
    checkpoint. FSDP2 swaps the model's class for a generated subclass (FSDPNanoChatGPTForCausalLM)
    whose save_pretrained would record that name in auto_map and copy torch's FSDP sources into
    the folder; an empty (meta-device) instance of the original class records ours."""
    from torch.distributed.fsdp import FSDPModule

    if not isinstance(model, FSDPModule):
        return model
    original = next(c for c in type(model).__mro__ if not issubclass(c, FSDPModule))
    with torch.device("meta"):
        return original(model.config)


def _row_counts(rows: int, world: int) -> list[int]:
    """Rows of each rank's shard under DTensor's Shard(0) (torch.chunk sizes, empty ranks last)."""
    sizes = [len(c) for c in torch.empty(rows, 0).chunk(world)]
    return sizes + [0] * (world - len(sizes))


def orthogonalise_sharded(matrices: list, steps: int, dtype: torch.dtype, newton_schulz: Callable) -> list:
    """`newton_schulz(full_matrix, steps, dtype)` of every row-sharded DTensor in `matrices`,
    returned as DTensors with the same sharding (each rank keeps its own rows of the result).

    Matrix i is owned by rank i % world. Every rank must pass the same list in the same order.
    """
    from torch.distributed.tensor import DTensor, Shard

    if not matrices:
        return []
    mesh = matrices[0].device_mesh
    for m in matrices:
        if not isinstance(m, DTensor) or m.ndim != 2 or m.device_mesh != mesh or tuple(m.placements) != (Shard(0),):
            raise ValueError("orthogonalise_sharded needs 2-D DTensors sharded by rows (Shard(0)) on one 1-D mesh (FSDP2 full shard)")
    group = mesh.get_group()
    world, rank = dist.get_world_size(group), dist.get_rank(group)
    results: list = [None] * len(matrices)
    for start in range(0, len(matrices), world):
        chunk = matrices[start : start + world]  # chunk[j] is owned by rank j
        counts = [_row_counts(m.shape[0], world) for m in chunk]
        locals_ = [m.to_local() for m in chunk]
        for m, c, local in zip(chunk, counts, locals_):
            if local.shape[0] != c[rank]:
                raise RuntimeError(f"unexpected shard of {tuple(m.shape)}: {local.shape[0]} rows on rank {rank}, expected {c[rank]}")
        # 1) Each rank sends its rows of chunk[j] to rank j; the owner receives every rank's rows.
        send = torch.cat([local.reshape(-1) for local in locals_])
        send_sizes = [local.numel() for local in locals_] + [0] * (world - len(chunk))
        mine = chunk[rank] if rank < len(chunk) else None
        recv_sizes = [c * mine.shape[1] for c in counts[rank]] if mine is not None else [0] * world
        received = send.new_empty(sum(recv_sizes))
        dist.all_to_all_single(received, send, recv_sizes, send_sizes, group=group)
        # 2) The owner orthogonalises its whole matrix (rank order = row order under Shard(0)).
        if mine is not None:
            full = received.view(mine.shape[0], mine.shape[1])
            update = newton_schulz(full, steps, dtype).to(send.dtype).contiguous()
            back = update.reshape(-1)
        else:
            back = send.new_empty(0)
        # 3) ...and returns each rank its rows of the result.
        back_sizes = recv_sizes
        out_sizes = send_sizes
        returned = send.new_empty(sum(out_sizes))
        dist.all_to_all_single(returned, back, out_sizes, back_sizes, group=group)
        for j, (m, local) in enumerate(zip(chunk, locals_)):
            offset = sum(out_sizes[:j])
            rows = returned[offset : offset + local.numel()].view_as(local)
            results[start + j] = DTensor.from_local(rows, mesh, m.placements, run_check=False, shape=m.shape, stride=m.stride())
    return results


__all__ = ["fsdp_launch_requested", "fsdp_plugin", "describe_sharding", "export_skeleton", "orthogonalise_sharded"]
