"""nanochat's 2026 optimizer (`optimizer: muon_adamw_2026`): one MuonAdamW with NorMuon-style
Muon for the block matrices and six AdamW groups with their own LRs, betas and decays.

Facts from karpathy/nanochat master `nanochat/optim.py` (`muon_step_fused`, `adamw_step_fused`)
and `nanochat/gpt.py` (`setup_optimizer`); see also /work/shared/NANOCHAT_2026.md "Optimizer".
Written by hand: neither torch nor transformers/accelerate provide Polar Express, NorMuon
variance reduction or cautious weight decay. Today's Muon (`hf_nanochat.train.optim`) is kept
as `optimizer: muon`; this module only reuses its rank-splitting helper.

Muon step for one matrix p (m x n) with gradient G, in this order:
  1. Nesterov momentum: buf = lerp(buf, G, 1-mu); g = lerp(G, buf, mu)
  2. row equilibration: each row rescaled to ||g||_F / sqrt(m)        } the expensive, whole-matrix
  3. Polar Express: g /= 1.01||g||_F + 1e-6, 5 iterations of           } part: computed once per
     X = aX + (bA + cA^2)X, A = XX^T (X^T X form for tall matrices)    } matrix across ranks
  4. renormalise: g *= sqrt(min(m, n)) / ||g||_F
  5. variance reduction (NorMuon): v = mean(g^2) per row (m >= n) or per column, EMA with beta2
     (no bias correction, as nanochat), g *= rsqrt(max(v_ema, 1e-10)), then rescaled back to the
     Frobenius norm g had before this step
  6. cautious decay + update with lr' = lr * max(1, m/n)**0.5:
     p -= lr' * g + lr' * wd * p * (g * p >= 0)
Steps 2-3 run in bf16 only when the run computes in bf16 (`polar_express_dtype`); everything
else in the parameter's dtype (fp32 master weights here).

Where this differs from nanochat, knowingly: nanochat stacks same-shape matrices into one
torch.compile'd kernel and keeps AdamW moments in the parameter's dtype; here each matrix is
stepped on its own (same math, no compile needed on CPU) and AdamW moments are fp32 always.
Distribution: under DDP every rank holds the same averaged gradient, so momentum, variance
statistics and the update run on every rank (state stays identical everywhere and checkpoints
need no gathering) while steps 2-3 are split across ranks (`transform_across_ranks`). Under
FSDP2 each matrix's owner rank gathers it whole for steps 2-3 (hf_nanochat.train.sharding) and
every rank does the rest on its own rows, the norms and per-column statistics summed over the
shards (`_shard_sum`); the per-row second moment is sharded like the matrix. fp16
loss scaling needs nothing here: `LossScaledStep` unscales the gradients before `step()`.
"""
from __future__ import annotations

import math
import re
from collections.abc import Callable

import torch
from torch import nn
from torch.distributed.tensor import DTensor

from hf_nanochat.train.optim import MuonAdamW, _wide, transform_across_ranks

# Polar Express (Amsel et al. 2025, arXiv 2505.16932) for 5 iterations, safety factor 2e-2,
# cushion 2: nanochat/optim.py `polar_express_coeffs`.
POLAR_EXPRESS_COEFFS = (
    (8.156554524902461, -22.48329292557795, 15.878769915207462),
    (4.042929935166739, -2.808917465908714, 0.5000178451051316),
    (3.8916678022926607, -2.772484153217685, 0.5060648178503393),
    (3.285753657755655, -2.3681294933425376, 0.46449024233003106),
    (2.3465413258596377, -1.7097828382687081, 0.42323551169305323),
)


def polar_express_dtype(compute_mode: str) -> torch.dtype:
    """bf16 only where the run's compute dtype is bf16 (nanochat: `COMPUTE_DTYPE == bfloat16`);
    fp16 would overflow in X @ X^T, and fp32 runs (CPU, P100 fp16 master weights) stay fp32."""
    return torch.bfloat16 if compute_mode == "bf16" else torch.float32


def equilibrate_rows(x: torch.Tensor) -> torch.Tensor:
    """MuonEq: every row rescaled to the mean row norm ||x||_F / sqrt(rows) (norms in fp32)."""
    target = _wide(x).norm() / math.sqrt(x.size(0))
    row_norm = _wide(x).norm(dim=-1, keepdim=True).clamp_min(1e-6)
    return x * (target / row_norm).to(x.dtype)


def polar_express(x: torch.Tensor, steps: int = 5) -> torch.Tensor:
    """Approximate polar factor of the 2-D matrix `x`, computed in x's dtype."""
    if x.ndim != 2:
        raise ValueError(f"Polar Express needs a 2-D matrix, got shape {tuple(x.shape)}")
    if not 1 <= steps <= len(POLAR_EXPRESS_COEFFS):
        raise ValueError(f"Polar Express has coefficients for 1..{len(POLAR_EXPRESS_COEFFS)} steps, got {steps}")
    x = x / (x.norm() * 1.01 + 1e-6)
    tall = x.size(0) > x.size(1)
    for a, b, c in POLAR_EXPRESS_COEFFS[:steps]:
        if tall:  # the Gram matrix on the small side: X^T X
            gram = x.mT @ x
            x = a * x + x @ (b * gram + c * gram @ gram)
        else:
            gram = x @ x.mT
            x = a * x + (b * gram + c * gram @ gram) @ x
    return x


def orthogonalise_2026(g: torch.Tensor, steps: int, dtype: torch.dtype) -> torch.Tensor:
    """Steps 2-3 on a whole matrix: equilibrate rows then Polar Express, in `dtype`; result in g's dtype."""
    return polar_express(equilibrate_rows(g.to(dtype)), steps).to(g.dtype)


def _local(t: torch.Tensor) -> torch.Tensor:
    return t.to_local() if isinstance(t, DTensor) else t


def renormalise(g: torch.Tensor, shape: tuple[int, int], all_sum: Callable = lambda t: t) -> torch.Tensor:
    """Muon+ (arXiv 2602.21545): snap ||g||_F to sqrt(min(m, n)), the norm of a semi-orthogonal
    matrix. `g` may be this rank's rows of the matrix; `all_sum` sums a tensor over the shards."""
    norm = all_sum(_wide(g).square().sum()).sqrt().clamp_min(1e-6)
    return g * (min(shape) ** 0.5 / norm).to(g.dtype)


def variance_reduce(g: torch.Tensor, second_moment: torch.Tensor, beta2: float, shape: tuple[int, int], all_sum: Callable = lambda t: t) -> torch.Tensor:
    """NorMuon (arXiv 2510.05491), as nanochat: per-row (m >= n) or per-column mean of g^2, EMA
    into `second_moment` (updated in place, shape (m, 1) or (1, n)), g scaled by its rsqrt and
    then back to g's incoming Frobenius norm. `g` may be this rank's rows (see `renormalise`)."""
    m, n = shape
    sq = _wide(g).square()
    if m >= n:
        v_mean = sq.mean(dim=-1, keepdim=True)  # rows are whole on every shard
    else:
        v_mean = all_sum(sq.sum(dim=-2, keepdim=True)) / m
    norm_before = all_sum(sq.sum()).sqrt()
    second_moment.lerp_(v_mean.to(second_moment.dtype), 1 - beta2)
    step_size = _wide(second_moment).clamp_min(1e-10).rsqrt()
    norm_after = all_sum((sq * step_size.square()).sum()).sqrt()
    return g * (step_size * (norm_before / norm_after.clamp_min(1e-10))).to(g.dtype)


def cautious_update_(p: torch.Tensor, g: torch.Tensor, lr: float, weight_decay: float) -> None:
    """p -= lr*g + lr*wd*p*(g*p >= 0): decay only where the update already pulls p towards 0."""
    mask = (g * p) >= 0
    p.sub_(lr * g + lr * weight_decay * p * mask)


class MuonAdamW2026(MuonAdamW):
    """One optimizer, rule per group `kind`: "muon" (2-D matrices: lr, momentum, ns_steps, beta2,
    weight_decay, ns_dtype) or "adamw" (lr, betas, eps, weight_decay; math in fp32).
    ns_dtype is a name ("bfloat16"/"float32") so the state dict stays plain data."""

    REQUIRED = {"muon": ("lr", "momentum", "ns_steps", "beta2", "weight_decay", "ns_dtype"), "adamw": ("lr", "betas", "eps", "weight_decay")}

    def __init__(self, param_groups: list[dict], process_group=None):
        super().__init__(param_groups, process_group)  # validation and the per-kind step() are MuonAdamW's
        for group in self.param_groups:
            if group["kind"] == "muon":
                group.setdefault("initial_weight_decay", group["weight_decay"])

    def _muon_step(self, group: dict) -> None:
        # Every rank must walk the same list in the same order (work is split by position).
        params = [p for p in group["params"] if p.grad is not None]
        mu = group["momentum"]
        candidates = []
        for p in params:
            state = self.state[p]
            if "momentum_buffer" not in state:
                state["momentum_buffer"] = torch.zeros_like(p)
                state["second_momentum_buffer"] = self._second_moment_zeros(p)
            buf = state["momentum_buffer"]
            buf.lerp_(p.grad, 1 - mu)
            candidates.append(p.grad.lerp(buf, mu))
        steps, dtype = group["ns_steps"], getattr(torch, group["ns_dtype"])
        updates = transform_across_ranks(candidates, lambda m: orthogonalise_2026(m, steps, dtype), self.process_group)
        for p, update in zip(params, updates):
            shape = (p.size(0), p.size(1))
            all_sum = _shard_sum(p)
            g = renormalise(_local(update).to(p.dtype), shape, all_sum)
            g = variance_reduce(g, _local(self.state[p]["second_momentum_buffer"]), group["beta2"], shape, all_sum)
            lr = group["lr"] * max(1.0, shape[0] / shape[1]) ** 0.5  # tall matrices get larger steps
            cautious_update_(_local(p), g, lr, group["weight_decay"])

    @staticmethod
    def _second_moment_zeros(p: torch.Tensor) -> torch.Tensor:
        """(m, 1) per-row statistics when m >= n, else (1, n) per column. For a row-sharded
        DTensor the per-row buffer is sharded like p and the per-column one replicated, so
        checkpoints (torch.distributed.checkpoint) save each exactly once."""
        m, n = p.shape
        shape = (m, 1) if m >= n else (1, n)
        if not isinstance(p, DTensor):
            return torch.zeros(shape, dtype=p.dtype, device=p.device)
        from torch.distributed.tensor import Replicate, Shard

        local_rows = p.to_local().size(0)
        local = torch.zeros((local_rows, 1) if m >= n else (1, n), dtype=p.dtype, device=p.to_local().device)
        placements = [Shard(0)] if m >= n else [Replicate()]
        return DTensor.from_local(local, p.device_mesh, placements, run_check=False, shape=torch.Size(shape), stride=(shape[1], 1))


def _shard_sum(p: torch.Tensor) -> Callable:
    """Sum over the ranks that each hold some rows of p (identity for an unsharded p)."""
    if not isinstance(p, DTensor):
        return lambda t: t
    import torch.distributed as dist

    group = p.device_mesh.get_group()

    def all_sum(t: torch.Tensor) -> torch.Tensor:
        t = t.clone()
        dist.all_reduce(t, op=dist.ReduceOp.SUM, group=group)
        return t

    return all_sum


# Parameter names -> AdamW group, matched on the name's last components so wrappers' prefixes
# (`_orig_mod.`, `model.`) do not matter. Names are nanochat's (gpt.py); the block matrices
# (`transformer.h.{i}.*`, ve_gate included) go to Muon.
ADAMW_GROUPS = (
    ("lm_head", re.compile(r"(^|\.)lm_head\.weight$")),
    ("wte", re.compile(r"(^|\.)wte\.weight$")),
    ("value_embeds", re.compile(r"(^|\.)value_embeds\.\d+\.weight$")),
    ("resid_lambdas", re.compile(r"(^|\.)resid_lambdas$")),
    ("x0_lambdas", re.compile(r"(^|\.)x0_lambdas$")),
    ("smear_backout", re.compile(r"(^|\.)(smear_gate\.weight|smear_lambda|backout_lambda)$")),
)
BLOCK_PARAM = re.compile(r"(^|\.)h\.\d+\.")


def group_parameters(named_parameters) -> tuple[dict[str, list[nn.Parameter]], list[nn.Parameter]]:
    """(AdamW group name -> params, Muon matrices). An unknown name is an error: a parameter
    with no group would silently never train."""
    adamw: dict[str, list] = {name: [] for name, _ in ADAMW_GROUPS}
    matrices, unknown = [], []
    for name, p in named_parameters:
        group = next((g for g, pattern in ADAMW_GROUPS if pattern.search(name)), None)
        if group is not None:
            adamw[group].append(p)
        elif BLOCK_PARAM.search(name) and p.ndim == 2:
            matrices.append(p)
        else:
            unknown.append(f"{name} {tuple(p.shape)}")
    if unknown:
        raise ValueError(
            "muon_adamw_2026 has no group for parameter(s) " + ", ".join(unknown)
            + " (it knows lm_head, wte, value_embeds.{i}, resid_lambdas, x0_lambdas, smear_gate, smear_lambda, "
            "backout_lambda, and 2-D matrices inside transformer.h.{i})"
        )
    return adamw, matrices


def build_muon_adamw_2026(
    model: nn.Module,
    *,
    matrix_lr: float = 0.02,
    embedding_lr: float = 0.3,
    unembedding_lr: float = 0.008,
    scalar_lr: float = 0.5,
    weight_decay: float = 0.28,
    momentum: float = 0.95,
    beta2: float = 0.9,
    ns_steps: int = 5,
    ns_dtype: torch.dtype = torch.float32,
    process_group=None,
) -> MuonAdamW2026:
    """nanochat's 2026 groups (gpt.py `setup_optimizer`). LRs are taken as given: the recipe
    (hf_nanochat.train.recipe_2026) has already multiplied in the batch LR scale; only the
    width scale dm = (C/768)**-0.5 is applied here, to lm_head, wte and value_embeds.
    `weight_decay` is the Muon decay (its schedule is applied per step by the training loop)."""
    adamw, matrices = group_parameters(model.named_parameters())
    width = model.config.hidden_size
    dm = (width / 768) ** -0.5
    spec = {  # group: (lr, betas, weight decay), nanochat gpt.py setup_optimizer
        "lm_head": (unembedding_lr * dm, (0.8, 0.96), 0.01),
        "wte": (embedding_lr * dm, (0.8, 0.995), 0.001),
        "value_embeds": (embedding_lr * dm * 0.5, (0.8, 0.995), 0.01),
        "resid_lambdas": (scalar_lr * 0.01, (0.8, 0.95), 0.05),
        "x0_lambdas": (scalar_lr, (0.96, 0.95), 0.0),
        "smear_backout": (0.2, (0.8, 0.95), 0.0),  # not batch-scaled in nanochat either
    }
    groups = [
        dict(params=adamw[name], kind="adamw", lr=lr, betas=betas, eps=1e-10, weight_decay=wd, name=name)
        for name, (lr, betas, wd) in spec.items()
        if adamw[name]
    ]
    dtype_name = str(ns_dtype).removeprefix("torch.")
    for shape in sorted({tuple(p.shape) for p in matrices}):  # one Muon group per shape, as nanochat
        groups.append(dict(
            params=[p for p in matrices if tuple(p.shape) == shape], kind="muon", lr=matrix_lr, momentum=momentum,
            ns_steps=ns_steps, beta2=beta2, weight_decay=weight_decay, ns_dtype=dtype_name, name=f"muon_{shape[0]}x{shape[1]}",
        ))
    return MuonAdamW2026(groups, process_group=process_group)


def apply_schedule_2026(optimizer: torch.optim.Optimizer, lr_mult: float, momentum: float, weight_decay_mult: float) -> None:
    """This step's lr (initial x multiplier) on every group; Muon momentum and decay
    (initial x cosine multiplier) on the Muon groups."""
    for group in optimizer.param_groups:
        group["lr"] = group["initial_lr"] * lr_mult
        if group["kind"] == "muon":
            group["momentum"] = momentum
            group["weight_decay"] = group["initial_weight_decay"] * weight_decay_mult


__all__ = [
    "POLAR_EXPRESS_COEFFS", "polar_express_dtype", "equilibrate_rows", "polar_express", "orthogonalise_2026", "renormalise",
    "variance_reduce", "cautious_update_", "MuonAdamW2026", "group_parameters", "build_muon_adamw_2026", "apply_schedule_2026",
]
