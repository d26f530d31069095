"""nanochat's 2026 recipe derived from depth (`recipe: nanochat-2026` in a train config).

From karpathy/nanochat master `scripts/base_train.py` (scaling laws / muP section, the
`get_lr_multiplier`, `get_muon_momentum`, `get_weight_decay` schedules) and
/work/shared/NANOCHAT_2026.md "Recipe derived from depth":

  N      = block matrices + lm_head (embeddings, value embeddings and scalars excluded)
  D      = ratio * N (ratio 12 by default; the speedrun uses 8);  D_ref = ratio * N(d12)
  batch  = 2**round(log2(2**19 * (D/D_ref)**0.383))   (Power Lines, arXiv 2505.13738)
  bs     = sqrt(batch / 2**19): every LR but the smear/backout group's is multiplied by bs
  wd     = 0.28 * bs * D_ref/D                        (T_epoch, arXiv 2405.13698)
  steps  = D // batch
  LR: 40 warmup steps, flat, linear warmdown over the last 65% to 0.05; Muon momentum
  0.85 -> 0.97 over 400 steps, 0.97 -> 0.90 over the warmdown; Muon wd cosine to 0; no clipping.

`derive_recipe` is a pure function of the parameter counts, the ratio and the overrides; it
returns every number with where it came from, for the run's plan. A key that the train config
sets itself (it is in `recipe_fixed`, which config.py fills with the keys a YAML/command line
gave) is taken as given and the numbers that depend on it follow from it.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

RECIPES = ("none", "nanochat-2026")
B_REF = 2**19  # tokens per step at the d12 reference (nanochat base_train.py)
REF_DEPTH = 12
BATCH_EXPONENT = 0.383
BASE = dict(  # nanochat base_train.py argparse defaults (2026)
    target_param_data_ratio=12.0, matrix_lr=0.02, embedding_lr=0.3, unembedding_lr=0.008, scalar_lr=0.5, weight_decay=0.28,
    warmup_steps=40, warmdown_ratio=0.65, final_lr_frac=0.05,
)
SOURCE = "nanochat scripts/base_train.py"
BLOCK_PARAM = re.compile(r"(^|\.)h\.\d+\.")  # a parameter inside transformer.h.{i}


@dataclass(frozen=True)
class Derived:
    name: str  # a TrainConfig field, or an intermediate (prefixed "_") shown in the plan only
    value: float | int | str | None
    source: str  # where the number came from, one line


def architecture_2026_counts(depth: int, vocab_size: int = 32768, kv_heads: int | None = None) -> dict[str, int]:
    """Parameter counts of nanochat's 2026 GPT from its shapes alone (NANOCHAT_2026.md "Shapes"),
    as nanochat's `num_scaling_params` groups them. width C = ceil(64*depth/128)*128, head dim 128,
    MLP 4C, vocab padded to a multiple of 64; ve_gate (kv, 12) on layers i % 2 == (L-1) % 2 sits
    inside the blocks and so counts as a block matrix (as in nanochat, where it is
    `transformer.h.{i}.attn.ve_gate`); value_embeds, wte and the scalars do not count."""
    if depth < 1:
        raise ValueError(f"depth must be >= 1, got {depth}")
    width = math.ceil(64 * depth / 128) * 128
    heads = width // 128
    kv = heads if kv_heads is None else kv_heads
    padded_vocab = math.ceil(vocab_size / 64) * 64
    kv_width = kv * 128
    attention = width * width * 2 + width * kv_width * 2  # c_q, c_proj; c_k, c_v
    mlp = 2 * width * 4 * width
    ve_layers = sum(1 for i in range(depth) if i % 2 == (depth - 1) % 2)
    return {
        "width": width,
        "transformer_matrices": depth * (attention + mlp) + ve_layers * kv * 12,
        "lm_head": padded_vocab * width,
        "wte": padded_vocab * width,
        "value_embeds": ve_layers * padded_vocab * kv_width,
        "scalars": 2 * depth + 24 + 2,  # resid/x0 lambdas, smear_gate (1, 24), smear/backout lambdas
    }


def scaling_params(counts: dict[str, int]) -> int:
    """N: block matrices + lm_head (nanochat base_train.py `get_scaling_params`, dev/LOG.md Jan 27 2026)."""
    return counts["transformer_matrices"] + counts["lm_head"]


def model_scaling_params(model) -> int:
    """N of a built model (meta device is fine): its block parameters (`...h.{i}.*`) + lm_head,
    as nanochat's num_scaling_params `transformer_matrices + lm_head`."""
    blocks = sum(p.numel() for n, p in model.named_parameters() if BLOCK_PARAM.search(n))
    head = sum(p.numel() for n, p in model.named_parameters() if n.endswith("lm_head.weight"))
    if not blocks or not head:
        raise ValueError("model_scaling_params: found no transformer.h.{i} parameters or no lm_head.weight")
    return blocks + head


def derive_recipe(n_scaling: int, n_scaling_ref: int, overrides: dict | None = None) -> dict[str, Derived]:
    """Every number of the 2026 recipe for a model with `n_scaling` scaling parameters, the d12
    reference having `n_scaling_ref`. `overrides` maps TrainConfig keys to the values a config
    set; those are used as given (and what depends on them follows)."""
    given = dict(overrides or {})
    if n_scaling < 1 or n_scaling_ref < 1:
        raise ValueError(f"parameter counts must be positive, got {n_scaling} and {n_scaling_ref}")
    out: dict[str, Derived] = {}

    def take(name, value, source):
        if name in given:
            out[name] = Derived(name, given[name], "set in the train config")
        else:
            out[name] = Derived(name, value, source)
        return out[name].value

    ratio = take("target_param_data_ratio", BASE["target_param_data_ratio"], f"{SOURCE} default tokens:params")
    if ratio <= 0:
        raise ValueError(f"recipe nanochat-2026 needs target_param_data_ratio > 0, got {ratio}")
    tokens = int(ratio * n_scaling)
    ref_tokens = ratio * n_scaling_ref
    out["_scaling_params"] = Derived("_scaling_params", n_scaling, "block matrices + lm_head")
    out["_target_tokens"] = Derived("_target_tokens", tokens, f"D = {ratio:g} x {n_scaling:,}")
    out["_reference_tokens"] = Derived("_reference_tokens", int(ref_tokens), f"D_ref = {ratio:g} x {n_scaling_ref:,} (d{REF_DEPTH})")
    predicted = B_REF * (tokens / ref_tokens) ** BATCH_EXPONENT
    batch = take("total_batch_size", 2 ** round(math.log2(predicted)), f"2**round(log2(2**19 x (D/D_ref)**{BATCH_EXPONENT})) = 2**round(log2({predicted:,.0f}))")
    bs = math.sqrt(batch / B_REF)
    out["_batch_lr_scale"] = Derived("_batch_lr_scale", bs, f"bs = sqrt({batch:,} / 2**19)")
    steps = take("num_iterations", tokens // batch, f"D // batch = {tokens:,} // {batch:,}")
    for name in ("matrix_lr", "embedding_lr", "unembedding_lr", "scalar_lr"):
        take(name, BASE[name] * bs, f"{BASE[name]:g} x bs")
    take("weight_decay", BASE["weight_decay"] * bs * ref_tokens / tokens, f"{BASE['weight_decay']:g} x bs x D_ref/D (Muon, cautious)")
    take("optimizer", "muon_adamw_2026", SOURCE)
    take("warmup_steps", BASE["warmup_steps"], SOURCE)
    take("warmup_ratio", 0.0, "warmup is in steps")
    take("warmdown_ratio", BASE["warmdown_ratio"], SOURCE)
    take("final_lr_frac", BASE["final_lr_frac"], SOURCE)
    take("muon_momentum_start", 0.85, SOURCE)
    take("muon_momentum_end", 0.97, SOURCE)
    take("muon_momentum_ramp_steps", 400, SOURCE)
    take("muon_momentum_warmdown", 0.90, f"{SOURCE}: 0.97 -> 0.90 over the warmdown")
    take("weight_decay_schedule", "cosine", f"{SOURCE}: wd x 0.5(1 + cos(pi t/T))")
    take("grad_clip", 0.0, f"{SOURCE}: no gradient clipping")
    unknown = sorted(set(given) - set(out))
    if unknown:
        raise ValueError(f"recipe nanochat-2026 does not derive {unknown}")
    if steps < 1:
        raise ValueError(f"recipe nanochat-2026 gives {steps} steps ({tokens:,} tokens at {batch:,} per step); raise the ratio or lower total_batch_size")
    return out


def apply_recipe(config, model_config):
    """A TrainConfig with `recipe: nanochat-2026`'s numbers filled in for the model it trains
    (`model_config`), and the plan lines saying where each came from; other recipes unchanged.
    nanochat base_train.py: the d12 reference is the same model class at depth 12. Both are built
    on the meta device (only parameter counts are read), so planning allocates nothing."""
    if config.recipe != "nanochat-2026":
        return config, []
    import dataclasses

    import torch

    from hf_nanochat.modeling.modeling_nanochat_gpt import NanoChatGPTForCausalLM

    with torch.device("meta"):
        model = NanoChatGPTForCausalLM(model_config)
        reference = NanoChatGPTForCausalLM(dataclasses.replace(config, depth=REF_DEPTH).model_config(model_config.vocab_size))
    derived = derive_recipe(model_scaling_params(model), model_scaling_params(reference), {k: getattr(config, k) for k in config.recipe_fixed})
    config = dataclasses.replace(config, **{k: d.value for k, d in derived.items() if not k.startswith("_")}).validate()
    return config, format_recipe(derived)


# The TrainConfig keys derive_recipe fills (the `_` entries are plan-only intermediates).
DERIVED_KEYS = tuple(k for k in derive_recipe(10**8, 10**8) if not k.startswith("_"))


def format_recipe(derived: dict[str, Derived]) -> list[str]:
    """One plan line per number: `name  value  (source)`."""
    lines = []
    for d in derived.values():
        value = f"{d.value:,}" if isinstance(d.value, int) and not isinstance(d.value, bool) else (f"{d.value:.6g}" if isinstance(d.value, float) else str(d.value))
        lines.append(f"recipe     {d.name.lstrip('_'):26s} {value:>16s}  ({d.source})")
    return lines


def lr_multiplier_2026(step: int, num_iterations: int, warmup_steps: int = 40, warmdown_ratio: float = 0.65, final_lr_frac: float = 0.05) -> float:
    """base_train.py get_lr_multiplier: linear warmup over `warmup_steps`, flat, linear warmdown."""
    warmdown = round(warmdown_ratio * num_iterations)
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if step <= num_iterations - warmdown:
        return 1.0
    progress = (num_iterations - step) / warmdown
    return progress + (1 - progress) * final_lr_frac


def muon_momentum_2026(step: int, num_iterations: int, start: float = 0.85, peak: float = 0.97, ramp_steps: int = 400, warmdown_end: float = 0.90, warmdown_ratio: float = 0.65) -> float:
    """base_train.py get_muon_momentum: start -> peak over ramp_steps, peak -> warmdown_end over the warmdown."""
    warmdown = round(warmdown_ratio * num_iterations)
    warmdown_start = num_iterations - warmdown
    if step < ramp_steps:
        frac = step / ramp_steps
        return (1 - frac) * start + frac * peak
    if step >= warmdown_start and warmdown > 0:
        progress = (step - warmdown_start) / warmdown
        return peak * (1 - progress) + warmdown_end * progress
    return peak


def weight_decay_multiplier(step: int, num_iterations: int, schedule: str = "cosine") -> float:
    """base_train.py get_weight_decay: cosine from 1 to 0 over the run ("constant": 1)."""
    if schedule == "constant":
        return 1.0
    if schedule != "cosine":
        raise ValueError(f"weight_decay_schedule must be constant or cosine, got {schedule!r}")
    return 0.5 * (1 + math.cos(math.pi * step / num_iterations))


__all__ = [
    "RECIPES", "Derived", "apply_recipe", "architecture_2026_counts", "scaling_params", "model_scaling_params", "derive_recipe", "DERIVED_KEYS", "format_recipe",
    "lr_multiplier_2026", "muon_momentum_2026", "weight_decay_multiplier",
]
