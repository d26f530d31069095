"""nanochat's 2026 MuonAdamW (hf_nanochat.train.optim_2026): every step of its Muon checked
against the formulas written out here (from nanochat/optim.py `muon_step_fused`), its six AdamW
groups against nanochat/gpt.py `setup_optimizer`, the fp16 path, and DDP equal to one process."""
import math
import os
import socket
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from hf_nanochat.train import optim_2026 as o26
from hf_nanochat.train.optim_2026 import (
    POLAR_EXPRESS_COEFFS, MuonAdamW2026, apply_schedule_2026, build_muon_adamw_2026, cautious_update_, equilibrate_rows,
    orthogonalise_2026, polar_express, polar_express_dtype, renormalise, variance_reduce,
)

F64 = torch.float64


def test_polar_express_coefficients_are_nanochats():
    assert POLAR_EXPRESS_COEFFS == (
        (8.156554524902461, -22.48329292557795, 15.878769915207462),
        (4.042929935166739, -2.808917465908714, 0.5000178451051316),
        (3.8916678022926607, -2.772484153217685, 0.5060648178503393),
        (3.285753657755655, -2.3681294933425376, 0.46449024233003106),
        (2.3465413258596377, -1.7097828382687081, 0.42323551169305323),
    )


def _polar_reference(x):
    """X /= 1.01||X||_F + 1e-6; X = aX + (bA + cA^2)X with A = XX^T, five times (wide form,
    applied to X^T for tall matrices: the same polynomial of the singular values)."""
    tall = x.shape[0] > x.shape[1]
    x = x.mT if tall else x
    x = x / (1.01 * torch.sqrt((x * x).sum()) + 1e-6)
    for a, b, c in POLAR_EXPRESS_COEFFS:
        A = x @ x.mT
        x = a * x + (b * A + c * A @ A) @ x
    return x.mT if tall else x


@pytest.mark.parametrize("shape", [(12, 5), (5, 12), (8, 8)])
def test_polar_express_is_the_written_out_iteration_and_nearly_orthogonal(shape):
    g = torch.randn(*shape, dtype=F64)
    out = polar_express(g)
    torch.testing.assert_close(out, _polar_reference(g), rtol=1e-10, atol=1e-12)
    u, _, vh = torch.linalg.svd(g, full_matrices=False)
    cos = (out * (u @ vh)).sum() / (out.norm() * (u @ vh).norm())
    assert cos > 0.98  # close to U V^T: singular values pushed towards 1
    s = torch.linalg.svdvals(out)
    assert s.max() < 1.3 and s.min() > 0.5
    with pytest.raises(ValueError, match="2-D"):
        polar_express(torch.randn(4))
    with pytest.raises(ValueError, match="1..5"):
        polar_express(g, steps=6)


def test_row_equilibration_sets_every_row_to_the_mean_row_norm():
    g = torch.randn(6, 10, dtype=F64) * torch.arange(1, 7, dtype=F64)[:, None]
    out = equilibrate_rows(g)
    target = math.sqrt((g * g).sum().item() / 6)
    torch.testing.assert_close(out.norm(dim=1), torch.full((6,), target, dtype=F64))
    # direction of each row unchanged
    torch.testing.assert_close(out / out.norm(dim=1, keepdim=True), g / g.norm(dim=1, keepdim=True))


def test_renormalise_snaps_frobenius_norm_to_sqrt_min_dim():
    g = torch.randn(7, 3, dtype=F64) * 5
    out = renormalise(g, (7, 3))
    assert out.norm().item() == pytest.approx(math.sqrt(3))
    torch.testing.assert_close(out / out.norm(), g / g.norm())


@pytest.mark.parametrize("shape", [(6, 4), (4, 6)])
def test_variance_reduction_is_normuon_with_beta2(shape):
    m, n = shape
    torch.manual_seed(0)
    buf = torch.zeros((m, 1) if m >= n else (1, n), dtype=F64)
    ref_buf = torch.zeros(m if m >= n else n, dtype=F64)
    for _ in range(3):
        g = torch.randn(m, n, dtype=F64)
        out = variance_reduce(g, buf, 0.9, shape)
        # written out: per-row mean of g^2 if m >= n else per-column; EMA 0.9 without bias
        # correction; g times rsqrt(max(v, 1e-10)); then rescaled to the incoming ||g||_F.
        v = [(g[i] ** 2).mean() for i in range(m)] if m >= n else [(g[:, j] ** 2).mean() for j in range(n)]
        ref_buf = 0.9 * ref_buf + 0.1 * torch.stack(v)
        scale = 1 / torch.sqrt(torch.clamp(ref_buf, min=1e-10))
        scaled = g * (scale[:, None] if m >= n else scale[None, :])
        expected = scaled * (torch.sqrt((g * g).sum()) / torch.sqrt((scaled * scaled).sum()))
        torch.testing.assert_close(out, expected)
        torch.testing.assert_close(buf.flatten(), ref_buf)
        assert out.norm().item() == pytest.approx(g.norm().item())


def test_cautious_weight_decay_only_where_update_and_weight_agree_in_sign():
    p = torch.tensor([[1.0, -1.0], [2.0, -2.0]], dtype=F64)
    g = torch.tensor([[0.5, 0.5], [-0.5, -0.5]], dtype=F64)
    cautious_update_(p, g, lr=0.1, weight_decay=0.5)
    # (0,0): g*p>0 -> decayed; (0,1): <0 -> not; (1,0): <0 -> not; (1,1): >0 -> decayed
    expected = torch.tensor([[1 - 0.05 - 0.05 * 1, -1 - 0.05], [2 + 0.05, -2 + 0.05 + 0.05 * 2]], dtype=F64)
    torch.testing.assert_close(p, expected)


def _muon_reference(p, grads, lr, mu, wd, beta2):
    """nanochat's Muon step written out in float64, for one matrix over several steps."""
    p = p.clone().to(F64)
    m, n = p.shape
    buf = torch.zeros_like(p)
    v = torch.zeros(m if m >= n else n, dtype=F64)
    for G in grads:
        G = G.to(F64)
        buf = mu * buf + (1 - mu) * G  # lerp(buf, G, 1-mu)
        g = (1 - mu) * G + mu * buf  # Nesterov: lerp(G, buf, mu)
        rows = torch.sqrt((g * g).sum(dim=1, keepdim=True)).clamp_min(1e-6)
        g = g * (torch.sqrt((g * g).sum()) / math.sqrt(m)) / rows  # row equilibration
        g = _polar_reference(g)
        g = g * math.sqrt(min(m, n)) / torch.sqrt((g * g).sum())  # renormalise
        stat = (g * g).mean(dim=1) if m >= n else (g * g).mean(dim=0)
        v = beta2 * v + (1 - beta2) * stat
        s = v.clamp_min(1e-10).rsqrt()
        scaled = g * (s[:, None] if m >= n else s[None, :])
        g = scaled * torch.sqrt((g * g).sum()) / torch.sqrt((scaled * scaled).sum())
        lr_eff = lr * max(1.0, m / n) ** 0.5
        p = p - lr_eff * g - lr_eff * wd * p * ((g * p) >= 0).to(F64)
    return p


@pytest.mark.parametrize("shape", [(12, 4), (4, 12)])
def test_muon_step_matches_the_written_out_formulas(shape):
    torch.manual_seed(1)
    p = nn.Parameter(torch.randn(*shape, dtype=F64))
    p0 = p.detach().clone()
    grads = [torch.randn(*shape, dtype=F64) for _ in range(3)]
    opt = MuonAdamW2026([dict(params=[p], kind="muon", lr=0.05, momentum=0.9, ns_steps=5, beta2=0.9, weight_decay=0.3, ns_dtype="float64")])
    for g in grads:
        p.grad = g.clone()
        opt.step()
    torch.testing.assert_close(p.detach(), _muon_reference(p0, grads, 0.05, 0.9, 0.3, 0.9), rtol=1e-9, atol=1e-10)
    state = opt.state[p]
    assert state["second_momentum_buffer"].shape == ((12, 1) if shape[0] >= shape[1] else (1, 12))


def test_polar_express_dtype_is_bf16_only_for_bf16_compute():
    assert polar_express_dtype("bf16") == torch.bfloat16
    assert polar_express_dtype("fp16") == torch.float32
    assert polar_express_dtype("fp32") == torch.float32
    g = torch.randn(16, 8)
    out = orthogonalise_2026(g, 5, torch.bfloat16)
    assert out.dtype == torch.float32  # back in the parameter's dtype
    ref = orthogonalise_2026(g, 5, torch.float32)
    # bf16 rounding, amplified by Polar Express's steep first step, moves the small singular
    # directions a little; the result is still the same near-orthogonal matrix
    assert (out * ref).sum() / (out.norm() * ref.norm()) > 0.99
    s = torch.linalg.svdvals(out)
    assert s.max() < 1.3 and s.min() > 0.5


def _adam_reference(p, grads, lr, betas, eps, wd):
    p = p.clone().to(F64)
    m = torch.zeros_like(p)
    v = torch.zeros_like(p)
    for t, g in enumerate(grads, 1):
        g = g.to(F64)
        p = p * (1 - lr * wd)
        m = betas[0] * m + (1 - betas[0]) * g
        v = betas[1] * v + (1 - betas[1]) * g * g
        p = p - lr / (1 - betas[0] ** t) * m / (torch.sqrt(v / (1 - betas[1] ** t)) + eps)
    return p


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_adamw_group_is_fp32_math_with_eps_1e_10(dtype):
    torch.manual_seed(2)
    p = nn.Parameter(torch.randn(5, 3).to(dtype))
    p0 = p.detach().clone()
    grads = [torch.randn(5, 3) for _ in range(3)]
    opt = MuonAdamW2026([dict(params=[p], kind="adamw", lr=0.01, betas=(0.8, 0.995), eps=1e-10, weight_decay=0.01)])
    for g in grads:
        p.grad = g.to(dtype)
        opt.step()
    assert opt.state[p]["exp_avg"].dtype == torch.float32 and p.dtype == dtype
    if dtype == torch.float32:
        torch.testing.assert_close(p.detach().double(), _adam_reference(p0, grads, 0.01, (0.8, 0.995), 1e-10, 0.01), rtol=1e-6, atol=1e-6)
    else:  # each step in fp32, rounded to bf16 once per step (as nanochat's adamw_step_fused)
        q = p0.float()
        ref = torch.optim.AdamW([nn.Parameter(q)], lr=0.01, betas=(0.8, 0.995), eps=1e-10, weight_decay=0.01)
        # the reference rounds to bf16 after every step too
        qp = ref.param_groups[0]["params"][0]
        for g in grads:
            qp.grad = g.to(torch.bfloat16).float()
            ref.step()
            with torch.no_grad():
                qp.copy_(qp.to(torch.bfloat16).float())
        torch.testing.assert_close(p.detach().float(), qp.detach(), rtol=0, atol=1e-2)


class Tiny2026(nn.Module):
    """The parameter names of nanochat's 2026 GPT (gpt.py), on a 2-layer width-256 stand-in."""

    def __init__(self, width=256, vocab=64, layers=2, kv=2):
        super().__init__()
        self.config = type("Cfg", (), {"hidden_size": width})()
        self.transformer = nn.Module()
        self.transformer.wte = nn.Embedding(vocab, width)
        self.transformer.h = nn.ModuleList()
        for i in range(layers):
            block = nn.Module()
            block.attn = nn.Module()
            for name in ("c_q", "c_k", "c_v", "c_proj"):
                setattr(block.attn, name, nn.Linear(width, width, bias=False))
            if i % 2 == (layers - 1) % 2:
                block.attn.ve_gate = nn.Linear(12, kv, bias=False)
            block.mlp = nn.Module()
            block.mlp.c_fc = nn.Linear(width, 4 * width, bias=False)
            block.mlp.c_proj = nn.Linear(4 * width, width, bias=False)
            self.transformer.h.append(block)
        self.value_embeds = nn.ModuleDict({str(i): nn.Embedding(vocab, width) for i in range(layers) if i % 2 == (layers - 1) % 2})
        self.lm_head = nn.Linear(width, vocab, bias=False)
        self.resid_lambdas = nn.Parameter(torch.ones(layers))
        self.x0_lambdas = nn.Parameter(torch.zeros(layers))
        self.smear_gate = nn.Linear(24, 1, bias=False)
        self.smear_lambda = nn.Parameter(torch.zeros(1))
        self.backout_lambda = nn.Parameter(torch.full((1,), 0.2))


def test_groups_are_nanochats_six_adamw_groups_and_muon_by_shape():
    model = Tiny2026()
    bs = 2 ** 0.5
    opt = build_muon_adamw_2026(model, matrix_lr=0.02 * bs, embedding_lr=0.3 * bs, unembedding_lr=0.008 * bs, scalar_lr=0.5 * bs, weight_decay=0.1)
    groups = {g["name"]: g for g in opt.param_groups}
    dm = (256 / 768) ** -0.5
    expected = {  # nanochat gpt.py setup_optimizer / NANOCHAT_2026.md table
        "lm_head": (0.008 * bs * dm, (0.8, 0.96), 0.01, [model.lm_head.weight]),
        "wte": (0.3 * bs * dm, (0.8, 0.995), 0.001, [model.transformer.wte.weight]),
        "value_embeds": (0.15 * bs * dm, (0.8, 0.995), 0.01, [model.value_embeds["1"].weight]),
        "resid_lambdas": (0.005 * bs, (0.8, 0.95), 0.05, [model.resid_lambdas]),
        "x0_lambdas": (0.5 * bs, (0.96, 0.95), 0.0, [model.x0_lambdas]),
        "smear_backout": (0.2, (0.8, 0.95), 0.0, [model.smear_gate.weight, model.smear_lambda, model.backout_lambda]),
    }
    for name, (lr, betas, wd, params) in expected.items():
        g = groups[name]
        assert g["kind"] == "adamw" and g["lr"] == pytest.approx(lr) and g["betas"] == betas and g["weight_decay"] == wd and g["eps"] == 1e-10
        assert sorted(id(p) for p in g["params"]) == sorted(id(p) for p in params)
    muon = [g for g in opt.param_groups if g["kind"] == "muon"]
    assert [g["name"] for g in muon] == ["muon_2x12", "muon_256x256", "muon_256x1024", "muon_1024x256"]  # sorted shapes
    assert all(g["lr"] == pytest.approx(0.02 * bs) and g["beta2"] == 0.9 and g["weight_decay"] == 0.1 and g["ns_steps"] == 5 for g in muon)
    assert groups["muon_2x12"]["params"] == [model.transformer.h[1].attn.ve_gate.weight]  # ve_gate is a Muon matrix
    ids = sorted(id(p) for g in opt.param_groups for p in g["params"])
    assert ids == sorted(id(p) for p in model.parameters())  # every parameter exactly once


def test_unknown_parameter_is_an_error_and_todays_model_groups():
    model = Tiny2026()
    model.extra = nn.Parameter(torch.zeros(3))
    with pytest.raises(ValueError, match="extra"):
        build_muon_adamw_2026(model)
    from hf_nanochat import NanoChatGPTConfig, NanoChatGPTForCausalLM

    today = NanoChatGPTForCausalLM(NanoChatGPTConfig.from_depth(2, vocab_size=64, max_position_embeddings=16))
    groups = {g["name"]: g for g in build_muon_adamw_2026(today).param_groups}
    assert groups["wte"]["params"] == [today.transformer.wte.weight] and "value_embeds" not in groups
    assert sum(len(g["params"]) for g in groups.values()) == len(list(today.parameters()))


def test_schedule_sets_lr_momentum_and_decay():
    model = Tiny2026()
    opt = build_muon_adamw_2026(model, weight_decay=0.2)
    apply_schedule_2026(opt, lr_mult=0.5, momentum=0.9, weight_decay_mult=0.25)
    for g in opt.param_groups:
        assert g["lr"] == pytest.approx(g["initial_lr"] * 0.5)
        if g["kind"] == "muon":
            assert g["momentum"] == 0.9 and g["weight_decay"] == pytest.approx(0.05)
    assert {g["name"]: g["weight_decay"] for g in opt.param_groups}["wte"] == 0.001  # AdamW decay is fixed


def test_fp16_loss_scaling_unscales_before_orthogonalising():
    """GradScaler.unscale_ divides the grads before step(): the scaled run equals the plain one,
    and an overflowing step is skipped (the optimizer never sees inf)."""
    torch.manual_seed(3)
    a = nn.Parameter(torch.randn(8, 4))
    b = nn.Parameter(a.detach().clone())
    make = lambda p: MuonAdamW2026([dict(params=[p], kind="muon", lr=0.05, momentum=0.9, ns_steps=5, beta2=0.9, weight_decay=0.1, ns_dtype="float32")])
    plain, scaled = make(a), make(b)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 10)
    for step in range(3):
        g = torch.randn(8, 4)
        a.grad = g.clone()
        plain.step()
        scaler.scale(torch.zeros(()))  # what scaling the loss does first (initialises the scale)
        b.grad = g * scaler.get_scale()
        scaler.unscale_(scaled)
        scaler.step(scaled)
        scaler.update()
    torch.testing.assert_close(a.detach(), b.detach(), rtol=1e-5, atol=1e-6)
    before = b.detach().clone()
    b.grad = torch.full((8, 4), float("inf"))
    scaler.unscale_(scaled)
    scaler.step(scaled)
    scaler.update()
    assert torch.equal(b.detach(), before) and scaler.get_scale() < 2.0 ** 10


def _shapes():
    return [(16, 8), (16, 8), (16, 8), (8, 24), (8, 24)]  # uneven chunks with 2 ranks


def _run(rank: int, world: int, port: int, out_path: str) -> None:
    if world > 1:
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.manual_seed(0)
    params = [nn.Parameter(torch.randn(*s)) for s in _shapes()]
    calls = []
    original = o26.orthogonalise_2026

    def counting(g, steps, dtype):
        calls.append(tuple(g.shape))
        return original(g, steps, dtype)

    o26.orthogonalise_2026 = counting
    opt = MuonAdamW2026([dict(params=params, kind="muon", lr=0.05, momentum=0.9, ns_steps=5, beta2=0.9, weight_decay=0.2, ns_dtype="float32")])
    gen = torch.Generator().manual_seed(1)
    for _ in range(3):
        for p in params:  # the same averaged gradient on every rank, as after DDP's all-reduce
            p.grad = torch.randn(p.shape, generator=gen)
        opt.step()
    state = [opt.state[p]["second_momentum_buffer"] for p in params]
    torch.save({"params": [p.detach() for p in params], "state": state, "calls": len(calls)}, out_path)
    if world > 1:
        dist.destroy_process_group()


@pytest.mark.slow
def test_ddp_work_split_equals_single_process(tmp_path):
    _run(0, 1, 0, str(tmp_path / "single.pt"))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_run, args=(r, 2, port, str(tmp_path / f"rank{r}.pt"))) for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(180)
        assert p.exitcode == 0
    single = torch.load(tmp_path / "single.pt")
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    assert single["calls"] == 3 * 5
    assert [r["calls"] for r in ranks] == [3 * 3, 3 * 2]  # each matrix orthogonalised once
    for r in ranks:
        for a, b in zip(r["params"] + r["state"], single["params"] + single["state"]):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


# FSDP2 holds every matrix as a row-sharded DTensor (Shard(0)); uneven shards on 2 ranks, per-row
# (m >= n) and per-column second moments, compared with the same steps on plain tensors.
FSDP_SCRIPT = textwrap.dedent(
    """
    import os, sys, torch, torch.distributed as dist
    from torch import nn
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor
    from hf_nanochat.train.optim_2026 import MuonAdamW2026
    dist.init_process_group("gloo")
    mesh = init_device_mesh("cpu", (2,))
    torch.manual_seed(0)
    shapes = [(7, 5), (5, 9), (64, 16), (16, 64), (9, 9)]
    full = [torch.randn(s) for s in shapes]
    grads = [[torch.randn(s) for s in shapes] for _ in range(3)]
    group = lambda ps: [dict(params=ps, kind="muon", lr=0.05, momentum=0.9, ns_steps=5, beta2=0.9, weight_decay=0.2, ns_dtype="float32")]
    plain = [nn.Parameter(m.clone()) for m in full]
    sharded = [nn.Parameter(distribute_tensor(m.clone(), mesh, [Shard(0)])) for m in full]
    a, b = MuonAdamW2026(group(plain)), MuonAdamW2026(group(sharded))
    for gs in grads:
        for p, q, g in zip(plain, sharded, gs):
            p.grad = g.clone()
            q.grad = distribute_tensor(g.clone(), mesh, [Shard(0)])
        a.step(); b.step()
    worst = max((q.full_tensor() - p).abs().max().item() for p, q in zip(plain, sharded))
    worst_v = max((b.state[q]["second_momentum_buffer"].full_tensor() - a.state[p]["second_momentum_buffer"]).abs().max().item() for p, q in zip(plain, sharded))
    if dist.get_rank() == 0:
        print("MAXDIFF", worst, worst_v, flush=True)
    dist.destroy_process_group()
    sys.stdout.flush()
    os._exit(0)
    """
)


@pytest.mark.slow
def test_fsdp2_sharded_step_equals_unsharded(tmp_path):
    script = tmp_path / "muon2026_sharded.py"
    script.write_text(FSDP_SCRIPT)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port), str(script)],
        env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=300,
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("MAXDIFF")]
    assert lines, done.stderr[-3000:]
    params_diff, moments_diff = map(float, lines[0].split()[1:])
    assert params_diff <= 1e-6 and moments_diff <= 1e-7
