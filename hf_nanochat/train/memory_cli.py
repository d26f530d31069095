"""`hf-nanochat memory`: plan a run's per-device memory from its two recipe files.

    hf-nanochat memory --config train_configs/3b.yaml --accelerate-config accelerate_configs/fsdp.yaml --gpu-memory 80GB

The train config gives the model (depth, vocab from its tokenizer when one is saved, else
tokenizer_vocab_size), sequence length, device batch, precision and optimizer; the accelerate
config gives the number of processes, FSDP on/off and activation checkpointing. The numbers
come from hf_nanochat.memory.estimate_memory (our eager implementation).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import yaml

from hf_nanochat.train.memory import GiB, estimate_memory, format_estimate, largest_device_batch, parse_size
from hf_nanochat.modeling.configuration_nanochat_gpt import NanoChatGPTConfig
from hf_nanochat.train.config import TrainConfig, load_config
from hf_nanochat.train.recipe_2026 import apply_recipe


def launch_topology(path: str | None) -> dict:
    """(world size, fsdp, activation checkpointing, mixed precision) from an accelerate config."""
    if path is None:
        return {"world_size": 1, "fsdp": False, "activation_checkpointing": False, "mixed_precision": None}
    raw = yaml.safe_load(Path(path).read_text()) or {}
    fsdp = raw.get("distributed_type") == "FSDP"
    fsdp_config = raw.get("fsdp_config") or {}
    return {
        "world_size": int(raw.get("num_processes", 1)),
        "fsdp": fsdp,
        "activation_checkpointing": bool(fsdp and fsdp_config.get("fsdp_activation_checkpointing", False)),
        "mixed_precision": raw.get("mixed_precision") if raw.get("mixed_precision") in ("bf16", "fp16") else None,
    }


def vocab_size(config) -> int:
    """The saved tokenizer's size when the recipe points at one, else the size it would train."""
    if config.tokenizer and (Path(config.tokenizer) / "tokenizer.json").is_file():
        tok = json.loads((Path(config.tokenizer) / "tokenizer.json").read_text())
        ids = list(tok["model"]["vocab"].values()) + [t["id"] for t in tok.get("added_tokens", [])]
        return max(ids) + 1
    return config.tokenizer_vocab_size


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="train config YAML (train_configs/*.yaml)")
    parser.add_argument("--accelerate-config", help="accelerate config YAML (accelerate_configs/*.yaml); default: 1 process")
    parser.add_argument("--gpu-memory", type=_size, help="memory per device, e.g. 16GB (16e9 bytes) or 16GiB (16 x 2**30): "
                        "says whether the run fits and the largest device batch that does")
    parser.add_argument("--cpu", action="store_true", help="leave out the CUDA context/allocator reserve (CPU runs)")


def _size(text: str) -> int:
    try:
        return parse_size(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def recipe_memory(config, accelerate_config: str | None, on_gpu: bool = True) -> tuple[TrainConfig, NanoChatGPTConfig, int, dict]:
    """(the train config as it runs: its recipe's numbers derived, model config, device batch,
    estimate_memory keyword arguments) for a train config run under an accelerate config.
    `device_batch_size: auto` is shown at batch 1."""
    topo = launch_topology(accelerate_config)
    # precision: an explicit train-config choice wins; `auto` follows the launcher, else fp32.
    dtype = config.precision if config.precision != "auto" else (topo["mixed_precision"] or "fp32")
    model = config.model_config(vocab_size(config))
    config, _ = apply_recipe(config, model)  # a derived optimizer changes the optimizer state
    kwargs = dict(dtype=dtype, world_size=topo["world_size"], fsdp=topo["fsdp"], activation_checkpointing=topo["activation_checkpointing"], optimizer=config.optimizer, on_gpu=on_gpu, loss_chunk_tokens=config.loss_chunk_tokens)
    batch = 1 if config.device_batch_size == "auto" else config.device_batch_size
    return config, model, batch, kwargs


def run(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    config, model, batch, kwargs = recipe_memory(config, args.accelerate_config, on_gpu=not args.cpu)
    dtype, fsdp, world = kwargs["dtype"], kwargs["fsdp"], kwargs["world_size"]
    budget = args.gpu_memory
    layout = "FSDP full shard" if fsdp else ("DDP" if world > 1 else "1 process")
    print(
        f"depth {config.depth} (vocab {model.vocab_size}), {dtype}, {config.optimizer}, {layout} x {world}, "
        f"activation checkpointing {'on' if kwargs['activation_checkpointing'] else 'off'}, seq {config.max_seq_len}"
        + (f", loss in chunks of {config.loss_chunk_tokens:,} tokens" if config.loss_chunk_tokens else "")
    )
    if config.device_batch_size == "auto":
        print("device_batch_size: auto (the run picks it); estimate shown for batch 1")
    est = estimate_memory(model, batch, config.max_seq_len, **kwargs)
    print(f"per device at device batch {batch}:")
    print(format_estimate(est, budget))
    if budget is not None:
        best = largest_device_batch(model, config.max_seq_len, budget, **kwargs)
        if best:
            print(f"largest device batch that fits {budget / GiB:.1f} GiB: {best}")
        else:
            print(f"even device batch 1 does not fit {budget / GiB:.1f} GiB: shard over more devices (FSDP) or use activation checkpointing")
        return 0 if est.total <= budget else 1
    return 0


__all__ = ["launch_topology", "vocab_size", "add_arguments", "run"]
