"""Hardware -> numeric precision, and the loss-scaled optimizer step that fp16 needs.

Policy (nanochat's, with the seed guide's Volta/Turing mistake fixed):
  * CUDA compute capability >= 8.0 (A100, H100, ...): bf16 autocast.
  * CUDA 6.x / 7.x (P100, V100, T4): no bf16 arithmetic, so fp16 autocast + dynamic loss
    scaling; master weights stay fp32.
  * CPU (and anything else): fp32.
An explicit request overrides `auto`; asking for bf16 where the hardware has none is an error.

Accelerate applies autocast and `GradScaler` on GPUs, so there we only pick the mode. On CPU,
Accelerate silently runs fp32 when asked for fp16; this module then does fp16 itself
(`torch.autocast("cpu", float16)` + `torch.amp.GradScaler("cpu")`), which makes the fp16 path
(overflow -> step skipped and counted, scale backs off) exercisable on a CPU-only CI.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

PRECISIONS = ("auto", "fp32", "fp16", "bf16")


def cuda_capability(device: torch.device) -> tuple[int, int] | None:
    if device.type != "cuda":
        return None
    return torch.cuda.get_device_capability(device)


def supports_bf16(device: torch.device) -> bool:
    """True bf16 arithmetic: CUDA >= 8.0 or a CPU. (`torch.cuda.is_bf16_supported()` also says
    yes on Volta/Turing through emulation, which is slow and what the seed guide got wrong.)"""
    cap = cuda_capability(device)
    if cap is not None:
        return cap >= (8, 0)
    return device.type == "cpu"


def newton_schulz_dtype(device: torch.device) -> torch.dtype:
    """dtype for Muon's Newton-Schulz iteration: bf16 where the GPU has it (fast, and what
    nanochat uses); fp32 elsewhere (fp16 overflows in X @ X.T; CPU bf16 is slow emulation)."""
    cap = cuda_capability(device)
    return torch.bfloat16 if cap is not None and cap >= (8, 0) else torch.float32


@dataclass(frozen=True)
class PrecisionPlan:
    mode: str  # "fp32" | "fp16" | "bf16": what the forward pass computes in
    reason: str  # one line for the printed plan
    accelerate_mixed_precision: str  # passed to Accelerator(mixed_precision=...)
    explicit_fp16: bool  # True: this module does autocast + GradScaler (CPU fp16)


def resolve_precision(requested: str, device: torch.device, launcher_choice: str | None = None) -> PrecisionPlan:
    """Pick the precision for `device`.

    `requested` is the train config's `precision`; `launcher_choice` is what the accelerate
    config asked for (ACCELERATE_MIXED_PRECISION), honoured when the train config says `auto`.
    """
    if requested not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {requested!r}")
    cap = cuda_capability(device)
    hw = f"{torch.cuda.get_device_name(device)} (compute capability {cap[0]}.{cap[1]})" if cap else device.type.upper()
    if requested != "auto":
        mode, why = requested, f"precision: {requested} requested in the train config"
    elif launcher_choice in ("fp16", "bf16"):
        mode, why = launcher_choice, f"the accelerate config asks for {launcher_choice}"
    elif cap is not None and cap >= (8, 0):
        mode, why = "bf16", f"auto: {hw} has bf16"
    elif cap is not None and cap >= (6, 0):
        mode, why = "fp16", f"auto: {hw} has no bf16, so fp16 with dynamic loss scaling"
    else:
        mode, why = "fp32", f"auto: {hw}, no fast half precision"

    if mode == "bf16" and not supports_bf16(device):
        raise ValueError(
            f"bf16 was requested ({why}) but {hw} has no bf16 arithmetic (it needs compute "
            "capability >= 8.0: A100/H100 and newer). Use precision: fp16 (loss-scaled) or auto."
        )
    if mode == "fp16" and device.type == "cpu":
        # Accelerate would ignore fp16 here; we run it ourselves so the path is real and testable.
        return PrecisionPlan("fp16", why + " (CPU: explicit autocast + GradScaler, ~5x slower than fp32)", "no", True)
    return PrecisionPlan(mode, why + f"; master weights fp32", "no" if mode == "fp32" else mode, False)


class LossScaledStep:
    """Backward, clip and optimizer step, with dynamic loss scaling whichever library does it.

    fp16 steps whose gradients contain inf/nan are skipped (never applied) and counted; the
    scale then halves. The same calls work for fp32/bf16, where nothing is scaled.
    """

    def __init__(self, accelerator, plan: PrecisionPlan, init_scale: float = 2.0**16):
        # (On GPU fp16, Accelerate's own scaler gets init_scale through GradScalerKwargs.)
        self.accelerator = accelerator
        self.plan = plan
        self.scaler = torch.amp.GradScaler(accelerator.device.type, init_scale=init_scale) if plan.explicit_fp16 else None
        if self.scaler is not None:
            accelerator.register_for_checkpointing(self.scaler)  # Accelerate saves its own scaler itself
        self.skipped_steps = 0

    def autocast(self):
        if self.scaler is not None:
            return torch.autocast(self.accelerator.device.type, dtype=torch.float16)
        return self.accelerator.autocast() if self.plan.mode != "fp32" else contextlib.nullcontext()

    def backward(self, loss: torch.Tensor) -> None:
        self.accelerator.backward(self.scaler.scale(loss) if self.scaler is not None else loss)

    def loss_scale(self) -> float | None:
        scaler = self.scaler if self.scaler is not None else self.accelerator.scaler
        return float(scaler.get_scale()) if scaler is not None else None

    def clip_and_step(self, optimizer, parameters, max_norm: float) -> tuple[float, bool]:
        """Unscale, clip (max_norm <= 0: no clipping) and step. Returns (grad norm, applied)."""
        if self.scaler is not None:
            self.scaler.unscale_(optimizer)
        # Accelerate unscales its own scaler first; an infinite threshold only measures the norm.
        norm = self.accelerator.clip_grad_norm_(list(parameters), max_norm if max_norm > 0 else float("inf"))
        if self.scaler is not None:
            before = self.scaler.get_scale()
            self.scaler.step(optimizer)  # skips optimizer.step() when inf/nan were found
            self.scaler.update()
            applied = not self.scaler.get_scale() < before
        else:
            optimizer.step()
            applied = not self.accelerator.optimizer_step_was_skipped
        if not applied:
            self.skipped_steps += 1
        return float(norm), applied
