"""nanochat's optimizer: Muon for the block matrices, AdamW for embedding and lm_head.

Muon (momentum orthogonalised by a Newton-Schulz iteration) is written by hand: neither
torch nor transformers/accelerate provide it. The AdamW math is torch's own
(`torch.optim.adamw.adamw`). Both live in ONE `torch.optim.Optimizer` so that a GradScaler
(which steps and updates once per optimizer) and Accelerate's checkpointing see one object.

Recipe (nanochat): LRs matrix 0.02, embedding 0.2, unembedding 0.004, the AdamW ones scaled
by (n_embd/768)**-0.5; AdamW betas (0.8, 0.95), eps 1e-10, no weight decay; Muon momentum
ramps 0.85 -> 0.95 over the first 300 steps, Nesterov; LR flat then linear warmdown over the
last 20% of steps.

Distribution: under DDP every rank holds the same averaged gradient. Momentum is updated on
every rank (cheap, keeps optimizer state identical everywhere, so checkpoints need no
gathering), but each matrix is orthogonalised by one rank only and the results are
all-gathered, so N ranks share the Newton-Schulz work. `zeropower_via_newtonschulz5` takes a
whole matrix: a sharded (FSDP) version gathers the full matrix before it and keeps its own
shard of the result after it; `_orthogonalise` is the only place that knows about ranks.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.tensor import DTensor
from torch.optim.adamw import adamw as adamw_update

# Quintic Newton-Schulz coefficients from Muon/nanochat: chosen to push all singular values
# towards ~1 quickly (not exactly 1), which is all the update needs.
NS_COEFFS = (3.4445, -4.7750, 2.0315)


def zeropower_via_newtonschulz5(g: torch.Tensor, steps: int = 5, dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    """Approximately orthogonalise the full 2-D matrix `g` (U S V^T -> U V^T), computed in `dtype`."""
    if g.ndim != 2:
        raise ValueError(f"Newton-Schulz needs a 2-D matrix, got shape {tuple(g.shape)}")
    a, b, c = NS_COEFFS
    x = g.to(dtype)
    tall = x.size(0) > x.size(1)
    if tall:  # iterate on the wide orientation: X @ X^T is then the smaller Gram matrix
        x = x.mT
    x = x / (x.norm() + 1e-7)  # spectral norm <= Frobenius norm <= 1
    for _ in range(steps):
        gram = x @ x.mT
        x = a * x + (b * gram + c * gram @ gram) @ x
    return x.mT if tall else x


def _wide(t: torch.Tensor) -> torch.Tensor:
    """t in at least fp32 (statistics and AdamW math are never done in bf16/fp16)."""
    return t.to(torch.promote_types(t.dtype, torch.float32))


def lr_multiplier(step: int, num_iterations: int, warmup_ratio: float = 0.0, warmdown_ratio: float = 0.2, final_lr_frac: float = 0.0) -> float:
    """nanochat's schedule at optimizer step `step` (0-based): optional linear warmup, flat,
    then linear warmdown to `final_lr_frac` over the last `warmdown_ratio` of the run."""
    warmup = round(warmup_ratio * num_iterations)
    warmdown = round(warmdown_ratio * num_iterations)
    if step < warmup:
        return (step + 1) / warmup
    if step <= num_iterations - warmdown:
        return 1.0
    progress = (num_iterations - step) / warmdown
    return progress + (1 - progress) * final_lr_frac


def muon_momentum(step: int, start: float = 0.85, end: float = 0.95, ramp_steps: int = 300) -> float:
    frac = min(step / ramp_steps, 1.0) if ramp_steps > 0 else 1.0
    return (1 - frac) * start + frac * end


class MuonAdamW(torch.optim.Optimizer):
    """One optimizer, two update rules chosen per param group by `group["kind"]`:
    "muon" (2-D matrices: lr, momentum, nesterov, ns_steps, ns_dtype) or
    "adamw" (lr, betas, eps, weight_decay). ns_dtype is a name ("bfloat16"/"float32") so the
    state dict stays plain data."""

    REQUIRED = {"muon": ("lr", "momentum", "nesterov", "ns_steps", "ns_dtype"), "adamw": ("lr", "betas", "eps", "weight_decay")}

    def __init__(self, param_groups: list[dict], process_group=None):
        super().__init__(param_groups, {})
        for group in self.param_groups:
            kind = group.get("kind")
            if kind not in self.REQUIRED:
                raise ValueError(f"every param group needs kind 'muon' or 'adamw', got {kind!r}")
            missing = [k for k in self.REQUIRED[kind] if k not in group]
            if missing:
                raise ValueError(f"{kind} param group {group.get('name', '?')!r} is missing {missing}")
            if kind == "muon" and any(p.ndim != 2 for p in group["params"]):
                raise ValueError("Muon groups may only hold 2-D matrices")
            group.setdefault("initial_lr", group["lr"])
        self.process_group = process_group

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            if group["kind"] == "muon":
                self._muon_step(group)
            else:
                self._adamw_step(group)
        return loss

    def _adamw_step(self, group: dict) -> None:
        """torch's AdamW math (decoupled decay, bias correction) on fp32 copies of params kept in
        a lower precision (nanochat stores wte/value_embeds in bf16); fp32 params step in place."""
        params = [p for p in group["params"] if p.grad is not None]
        for p in params:
            state = self.state[p]
            if not state:
                state["step"] = torch.tensor(0.0)
                state["exp_avg"] = torch.zeros_like(p, dtype=_wide(p).dtype)
                state["exp_avg_sq"] = torch.zeros_like(p, dtype=_wide(p).dtype)
        work = [_wide(p) for p in params]  # p itself when already fp32
        beta1, beta2 = group["betas"]
        adamw_update(
            work,
            [p.grad.to(w.dtype) for p, w in zip(params, work)],
            [self.state[p]["exp_avg"] for p in params],
            [self.state[p]["exp_avg_sq"] for p in params],
            [],
            [self.state[p]["step"] for p in params],
            amsgrad=False,
            beta1=beta1,
            beta2=beta2,
            lr=group["lr"],
            weight_decay=group["weight_decay"],
            eps=group["eps"],
            maximize=False,
        )
        for p, w in zip(params, work):
            if w is not p:
                p.copy_(w)

    def _muon_step(self, group: dict) -> None:
        # Every rank must walk the same list in the same order (ownership is by position).
        params = [p for p in group["params"] if p.grad is not None]
        momentum = group["momentum"]
        candidates = []
        for p in params:
            state = self.state[p]
            if "momentum_buffer" not in state:
                state["momentum_buffer"] = torch.zeros_like(p)
            buf = state["momentum_buffer"]
            buf.lerp_(p.grad, 1 - momentum)
            candidates.append(p.grad.lerp(buf, momentum) if group["nesterov"] else buf)
        updates = self._orthogonalise(candidates, group["ns_steps"], getattr(torch, group["ns_dtype"]))
        for p, update in zip(params, updates):
            # nanochat's shape scaling: tall matrices get larger steps.
            scale = max(1.0, p.size(0) / p.size(1)) ** 0.5
            p.add_(update.to(p.dtype), alpha=-group["lr"] * scale)

    def _orthogonalise(self, matrices: list[torch.Tensor], steps: int, dtype: torch.dtype) -> list[torch.Tensor]:
        """Newton-Schulz of every matrix, the work shared across ranks (see `transform_across_ranks`).
        The lambda looks zeropower_via_newtonschulz5 up at call time (tests count its calls)."""
        return transform_across_ranks(matrices, lambda m: zeropower_via_newtonschulz5(m, steps, dtype), self.process_group)


def transform_across_ranks(matrices: list[torch.Tensor], transform, process_group=None) -> list[torch.Tensor]:
    """`transform(m)` of every whole matrix (same shape and dtype out as in), each computed once.

    With several DDP ranks (every rank holding the same matrices), each rank computes every
    world_size-th matrix of each shape and an all_gather shares the results. FSDP-sharded
    matrices (DTensors) go to hf_nanochat.train.sharding, which gathers each one whole for its
    owner rank and hands every rank back its own rows of the result.
    """
    if matrices and isinstance(matrices[0], DTensor):
        from hf_nanochat.train.sharding import orthogonalise_sharded

        return orthogonalise_sharded(matrices, 0, None, lambda full, _steps, _dtype: transform(full))
    world = dist.get_world_size(process_group) if dist.is_available() and dist.is_initialized() else 1
    if world == 1:
        return [transform(m) for m in matrices]
    rank = dist.get_rank(process_group)
    by_shape: dict[tuple, list[int]] = {}
    for i, m in enumerate(matrices):
        by_shape.setdefault(tuple(m.shape), []).append(i)
    results: list[torch.Tensor | None] = [None] * len(matrices)
    pending = []
    for indices in by_shape.values():
        for start in range(0, len(indices), world):
            chunk = indices[start : start + world]
            ref = matrices[chunk[0]]
            mine = (
                transform(matrices[chunk[rank]]).to(ref.dtype)
                if rank < len(chunk)
                else torch.zeros_like(ref)  # padding: this rank has no matrix in a short chunk
            )
            gathered = [torch.empty_like(ref) for _ in range(world)]
            pending.append((dist.all_gather(gathered, mine.contiguous(), group=process_group, async_op=True), chunk, gathered))
    for work, chunk, gathered in pending:
        work.wait()
        for slot, i in enumerate(chunk):
            results[i] = gathered[slot]
    return results


def build_optimizer(
    model: nn.Module,
    kind: str = "muon",
    matrix_lr: float = 0.02,
    embedding_lr: float = 0.2,
    unembedding_lr: float = 0.004,
    adamw_matrix_lr: float = 0.004,
    weight_decay: float = 0.0,
    ns_steps: int = 5,
    ns_dtype: torch.dtype = torch.float32,
    process_group=None,
) -> MuonAdamW:
    """nanochat's param groups for a NanoChatGPTForCausalLM (before any DDP/compile wrapping).

    kind "muon": Muon for every 2-D matrix in the blocks, AdamW for wte and lm_head.
    kind "adamw": plain AdamW everywhere (block matrices at `adamw_matrix_lr`), same betas/eps.
    """
    if kind not in ("muon", "adamw"):
        raise ValueError(f"optimizer must be 'muon' or 'adamw', got {kind!r}")
    embedding = [model.transformer.wte.weight]
    unembedding = [model.lm_head.weight]
    matrices = list(model.transformer.h.parameters())
    n_total = sum(1 for _ in model.parameters())
    if len(embedding) + len(unembedding) + len(matrices) != n_total:
        raise ValueError("model has parameters outside wte, lm_head and the blocks; nanochat's groups do not cover them")
    # AdamW LRs were tuned at width 768; wider models take proportionally smaller steps.
    dmodel_scale = (model.config.hidden_size / 768) ** -0.5
    adam = dict(kind="adamw", betas=(0.8, 0.95), eps=1e-10, weight_decay=weight_decay)
    groups = [
        dict(params=unembedding, lr=unembedding_lr * dmodel_scale, name="unembedding", **adam),
        dict(params=embedding, lr=embedding_lr * dmodel_scale, name="embedding", **adam),
    ]
    if kind == "muon":
        groups.append(dict(params=matrices, kind="muon", lr=matrix_lr, momentum=0.95, nesterov=True, ns_steps=ns_steps, ns_dtype=str(ns_dtype).removeprefix("torch."), name="matrices"))
    else:
        groups.append(dict(params=matrices, lr=adamw_matrix_lr, name="matrices", **adam))
    return MuonAdamW(groups, process_group=process_group)


def apply_schedule(optimizer: torch.optim.Optimizer, step: int, lr_mult: float, momentum: float) -> None:
    """Set each group's lr (initial_lr * multiplier) and the Muon momentum for this step."""
    for group in optimizer.param_groups:
        group["lr"] = group["initial_lr"] * lr_mult
        if group["kind"] == "muon":
            group["momentum"] = momentum


__all__ = ["zeropower_via_newtonschulz5", "lr_multiplier", "muon_momentum", "MuonAdamW", "transform_across_ranks", "build_optimizer", "apply_schedule"]
