"""The chat stages' optimizer (`optimizer:` in the mid/SFT and RL recipes), shared by both.

  muon             nanochat Nov 2025 groups (hf_nanochat.train.optim): Muon on the block matrices,
                   AdamW on wte and lm_head; only a Nov 2025 model has no other parameters.
  adamw            the same groups, AdamW everywhere.
  muon_adamw_2026  nanochat master's groups (hf_nanochat.train.optim_2026): NorMuon per matrix
                   shape plus six AdamW groups (lm_head, wte, value_embeds, resid_lambdas,
                   x0_lambdas, smear/backout), each with its own betas and weight decay.
  auto             muon for a Nov 2025 model, muon_adamw_2026 for a 2026 one (the stage prints
                   which); an explicit muon/adamw on a 2026 model is refused, naming the fix.

Every LR is the recipe's times `init_lr_frac`, as nanochat's chat scripts multiply each group's
LR once at setup (scripts/chat_sft.py at master 00255c1, line 160: `group["lr"] = group["lr"] *
args.init_lr_frac`). For muon_adamw_2026 the recipe's `weight_decay` is Muon's (chat_sft.py
line 134 passes `weight_decay=0.0`: "pretraining ramps weight_decay to zero ... SFT continues
with zero"); the AdamW groups keep the decays setup_optimizer gives them.
"""
from __future__ import annotations

import os

import torch

CHAT_OPTIMIZERS = ("auto", "muon", "adamw", "muon_adamw_2026")
CONSTANT_MUON_MOMENTUM = 0.95  # Muon's setup_optimizer default (nanochat gpt.py), when no ramp sets it


def model_architecture(model_config) -> str:
    """"2026" or "2025-11" (NanoChatGPTConfig.nanochat_architecture); other model types count as 2025-11."""
    return getattr(model_config, "nanochat_architecture", "2025-11")


def resolve_optimizer(requested: str, model_config) -> str:
    """The optimizer the stage builds for `requested` on this model; a Nov 2025 one on a 2026 model is an error."""
    if requested not in CHAT_OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {CHAT_OPTIMIZERS}, got {requested!r}")
    arch = model_architecture(model_config)
    if requested == "auto":
        return "muon_adamw_2026" if arch == "2026" else "muon"
    if arch == "2026" and requested in ("muon", "adamw"):
        raise ValueError(
            f"optimizer: {requested} builds nanochat's Nov 2025 groups (wte, lm_head, block matrices), but this is a "
            "nanochat-2026 model (value embeddings, residual/smear/backout scalars): use optimizer: muon_adamw_2026 "
            "(or optimizer: auto)"
        )
    return requested


def describe_optimizer(requested: str, model_config) -> str:
    """One line for the stage's printed plan."""
    chosen = resolve_optimizer(requested, model_config)
    if requested == "auto":
        return f"{chosen} (optimizer: auto, {model_architecture(model_config)} model)"
    return chosen


def build_chat_optimizer(
    model,
    requested: str,
    *,
    init_lr_frac: float,
    matrix_lr: float,
    embedding_lr: float,
    unembedding_lr: float,
    adamw_matrix_lr: float,
    scalar_lr: float,
    weight_decay: float,
    precision: str,
    device: torch.device,
) -> torch.optim.Optimizer:
    """Full fine-tuning optimizer of a chat stage, every LR times `init_lr_frac`. Muon momentum
    starts at 0.95; a stage's schedule (sft.NanochatSchedule) may ramp it."""
    chosen = resolve_optimizer(requested, model.config)
    if chosen == "muon_adamw_2026":
        from hf_nanochat.train.optim_2026 import build_muon_adamw_2026, polar_express_dtype
        from hf_nanochat.train.precision import resolve_precision

        mode = resolve_precision(precision, device, os.environ.get("ACCELERATE_MIXED_PRECISION")).mode
        optimizer = build_muon_adamw_2026(
            model, matrix_lr=matrix_lr, embedding_lr=embedding_lr, unembedding_lr=unembedding_lr, scalar_lr=scalar_lr,
            weight_decay=weight_decay, momentum=CONSTANT_MUON_MOMENTUM, ns_dtype=polar_express_dtype(mode),
        )
    else:
        from hf_nanochat.train.optim import build_optimizer
        from hf_nanochat.train.precision import newton_schulz_dtype

        optimizer = build_optimizer(
            model, kind=chosen, matrix_lr=matrix_lr, embedding_lr=embedding_lr, unembedding_lr=unembedding_lr,
            adamw_matrix_lr=adamw_matrix_lr, weight_decay=weight_decay, ns_dtype=newton_schulz_dtype(device),
        )
    # After the build, as nanochat does, so fixed LRs (the 2026 smear/backout group's 0.2) are scaled too.
    for group in optimizer.param_groups:
        group["lr"] *= init_lr_frac
        group["initial_lr"] = group["lr"]
    return optimizer


__all__ = ["CHAT_OPTIMIZERS", "CONSTANT_MUON_MOMENTUM", "build_chat_optimizer", "describe_optimizer", "model_architecture", "resolve_optimizer"]
