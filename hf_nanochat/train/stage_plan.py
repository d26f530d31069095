"""Per-stage memory plan: the peak of every stage as it really runs, and a refusal to start one
that would not fit.

    base step   a pretraining step (hf_nanochat.train.pretrain)            memory.estimate_memory
    base val    evaluate_bpb in the middle of pretraining                  memory.estimate_eval_memory
    base eval   `hf-nanochat eval --kind base` on the finished base model  memory.estimate_eval_memory
    mid step    a mid-training step through TRL (packed, padding-free)     memory.estimate_chat_memory
    sft step    an SFT step through TRL (one conversation per row)         memory.estimate_chat_memory
    chat eval   `hf-nanochat eval --kind chat` (multiple choice, sampling)  memory.estimate_chat_eval_memory

Each figure comes with the knob that lowers it, so a refusal says what to change. The budget is
what the recipe declares (speedrun recipes: `gpu_memory_gib`), else what the device has.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

from hf_nanochat.train.memory import (
    GiB,
    MemoryEstimate,
    estimate_chat_eval_memory,
    estimate_chat_memory,
    estimate_eval_memory,
    estimate_memory,
)

EVAL_BATCH_SIZE = 8  # `hf-nanochat eval --batch-size` default (hf_nanochat.evaluate.chat_eval)
# `eval --kind base` takes its loss this many tokens at a time (no whole-batch logits; same bpb)
BASE_EVAL_LOSS_CHUNK_TOKENS = 2048
CHAT_EVAL_MAX_TOKENS = 2048  # prompts are padded to at most the model's context


@dataclass(frozen=True)
class StagePeak:
    stage: str
    estimate: MemoryEstimate
    knob: str  # what to turn when it does not fit

    @property
    def gib(self) -> float:
        return self.estimate.total / GiB


class MemoryPlanError(SystemExit):
    """A stage's planned peak exceeds the memory it has: raised before any work starts."""


def compute_dtype(precision: str, launcher_mixed_precision: str | None) -> str:
    """The planner's dtype: an explicit recipe choice wins; `auto` follows the launcher, else fp32
    (what resolve_precision does on the GPUs each launcher config is written for)."""
    return precision if precision != "auto" else (launcher_mixed_precision or "fp32")


def base_stage_peaks(config, model_config, topology: dict, on_gpu: bool) -> list[StagePeak]:
    """`base step` and `base val` for a base TrainConfig under an accelerate topology
    (hf_nanochat.train.memory_cli.launch_topology's dict)."""
    dtype = compute_dtype(config.precision, topology["mixed_precision"])
    batch = 1 if config.device_batch_size == "auto" else config.device_batch_size
    common = dict(dtype=dtype, world_size=topology["world_size"], fsdp=topology["fsdp"], optimizer=config.optimizer, on_gpu=on_gpu,
                  loss_chunk_tokens=config.loss_chunk_tokens)
    step = estimate_memory(model_config, batch, config.max_seq_len, activation_checkpointing=topology["activation_checkpointing"], **common)
    val = estimate_eval_memory(model_config, batch, config.max_seq_len, **common)
    return [
        StagePeak("base step", step, "device_batch_size (accumulation keeps total_batch_size), or --loss_chunk_tokens=2048"),
        StagePeak("base val", val, "--loss_chunk_tokens=2048 (evaluation chunks like the step), or device_batch_size"),
    ]


def base_eval_peak(model_config, seq_len: int, dtype: str, on_gpu: bool, batch_size: int = EVAL_BATCH_SIZE) -> StagePeak:
    est = estimate_eval_memory(model_config, batch_size, seq_len, dtype=dtype, on_gpu=on_gpu, during_training=False,
                               loss_chunk_tokens=BASE_EVAL_LOSS_CHUNK_TOKENS)
    return StagePeak("base eval", est, "hf-nanochat eval --batch-size")


def chat_stage_peak(cfg, model_config, topology: dict, on_gpu: bool) -> StagePeak:
    """`mid step` / `sft step` for an SFTStageConfig."""
    from hf_nanochat.train.chat_optim import resolve_optimizer

    est = estimate_chat_memory(
        model_config, cfg.per_device_train_batch_size, cfg.max_length, packing=cfg.packing,
        dtype=compute_dtype(cfg.precision, topology["mixed_precision"]), world_size=topology["world_size"], fsdp=topology["fsdp"],
        activation_checkpointing=topology["activation_checkpointing"] or cfg.activation_checkpointing,
        optimizer="adamw" if cfg.peft is not None else resolve_optimizer(cfg.optimizer, model_config), on_gpu=on_gpu,
    )
    target = "tokens_per_step" if cfg.tokens_per_step else "conversations_per_step" if cfg.conversations_per_step else "gradient_accumulation_steps"
    return StagePeak(f"{cfg.stage} step", est, f"per_device_train_batch_size (accumulation follows from {target}), or activation_checkpointing: true")


def chat_eval_peak(model_config, dtype: str, on_gpu: bool, batch_size: int = EVAL_BATCH_SIZE) -> StagePeak:
    est = estimate_chat_eval_memory(model_config, batch_size, CHAT_EVAL_MAX_TOKENS, dtype=dtype, on_gpu=on_gpu)
    return StagePeak("chat eval", est, "hf-nanochat eval --batch-size")


def device_budget(device, local_processes: int = 1) -> int:
    """What this device has: a GPU's total memory, or on CPU the machine's RAM shared by the
    processes on this node."""
    if getattr(device, "type", device) == "cuda":
        import torch

        return torch.cuda.mem_get_info(device)[1]
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // max(1, local_processes)


def misfits(peaks: list[StagePeak], budget_bytes: int) -> list[str]:
    return [
        f"{p.stage}: ~{p.gib:.2f} GiB per device does not fit {budget_bytes / GiB:.1f} GiB; lower {p.knob}"
        for p in peaks if p.estimate.total > budget_bytes
    ]


def refuse_if_too_big(peaks: list[StagePeak], budget_bytes: int, where: str) -> None:
    """Raise MemoryPlanError naming each stage that would not fit and its knob."""
    problems = misfits(peaks, budget_bytes)
    if problems:
        raise MemoryPlanError(f"{where}: the memory plan says this would run out of memory:\n  " + "\n  ".join(problems))


__all__ = [
    "BASE_EVAL_LOSS_CHUNK_TOKENS", "StagePeak", "MemoryPlanError", "compute_dtype", "base_stage_peaks", "base_eval_peak", "chat_stage_peak", "chat_eval_peak",
    "device_budget", "misfits", "refuse_if_too_big",
]
