"""Muon + AdamW: Newton-Schulz numerics, the update rules, nanochat's groups and schedules, and
Muon's work split across DDP ranks giving the single-process result."""
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from hf_nanochat import NanoChatGPTConfig, NanoChatGPTForCausalLM
from hf_nanochat.train import optim as optim_mod
from hf_nanochat.train.optim import MuonAdamW, apply_schedule, build_optimizer, lr_multiplier, muon_momentum, zeropower_via_newtonschulz5


@pytest.mark.parametrize("shape", [(48, 16), (16, 48), (32, 32)])
def test_newton_schulz_approximates_the_polar_factor(shape):
    g = torch.randn(*shape, dtype=torch.float64).float()
    out = zeropower_via_newtonschulz5(g, steps=5, dtype=torch.float32)
    assert out.shape == g.shape and out.dtype == torch.float32
    # nanochat's quintic pushes singular values into roughly [0.7, 1.2], not exactly 1.
    s = torch.linalg.svdvals(out)
    assert s.min() > 0.6 and s.max() < 1.25
    u, _, vh = torch.linalg.svd(g, full_matrices=False)
    polar = u @ vh
    cos = (out * polar).sum() / (out.norm() * polar.norm())
    assert cos > 0.97


def test_newton_schulz_bf16_close_to_fp32_and_rejects_vectors():
    g = torch.randn(64, 32)
    a = zeropower_via_newtonschulz5(g, dtype=torch.float32)
    b = zeropower_via_newtonschulz5(g, dtype=torch.bfloat16).float()
    assert (a - b).abs().max() < 0.05
    with pytest.raises(ValueError, match="2-D"):
        zeropower_via_newtonschulz5(torch.randn(8))


def test_muon_step_is_nesterov_momentum_then_orthogonalised_with_shape_scale():
    torch.manual_seed(0)
    p = torch.nn.Parameter(torch.randn(24, 8))
    opt = MuonAdamW([dict(params=[p], kind="muon", lr=0.1, momentum=0.9, nesterov=True, ns_steps=5, ns_dtype="float32")])
    p0 = p.detach().clone()
    grads = [torch.randn(24, 8) for _ in range(2)]
    buf = torch.zeros(24, 8)
    expected = p0.clone()
    for g in grads:
        p.grad = g.clone()
        opt.step()
        buf = 0.9 * buf + 0.1 * g
        nesterov = 0.1 * g + 0.9 * buf
        expected -= 0.1 * (24 / 8) ** 0.5 * zeropower_via_newtonschulz5(nesterov, 5, torch.float32)
    torch.testing.assert_close(p.detach(), expected, rtol=0, atol=1e-6)


def test_adamw_groups_match_torch_adamw_exactly():
    torch.manual_seed(0)
    a = torch.nn.Parameter(torch.randn(10, 6))
    b = torch.nn.Parameter(a.detach().clone())
    ours = MuonAdamW([dict(params=[a], kind="adamw", lr=0.01, betas=(0.8, 0.95), eps=1e-10, weight_decay=0.0)])
    ref = torch.optim.AdamW([b], lr=0.01, betas=(0.8, 0.95), eps=1e-10, weight_decay=0.0)
    for _ in range(4):
        g = torch.randn(10, 6)
        a.grad, b.grad = g.clone(), g.clone()
        ours.step()
        ref.step()
    assert torch.equal(a, b)


def test_build_optimizer_uses_nanochat_groups_and_lr_scaling():
    model = NanoChatGPTForCausalLM(NanoChatGPTConfig.from_depth(2, vocab_size=64, max_position_embeddings=16))
    opt = build_optimizer(model, "muon")
    groups = {g["name"]: g for g in opt.param_groups}
    scale = (128 / 768) ** -0.5
    assert groups["embedding"]["lr"] == pytest.approx(0.2 * scale)
    assert groups["unembedding"]["lr"] == pytest.approx(0.004 * scale)
    assert groups["matrices"]["lr"] == 0.02 and groups["matrices"]["kind"] == "muon"
    assert groups["embedding"]["betas"] == (0.8, 0.95) and groups["embedding"]["eps"] == 1e-10
    assert groups["embedding"]["weight_decay"] == 0.0
    assert groups["embedding"]["params"] == [model.transformer.wte.weight]
    assert groups["unembedding"]["params"] == [model.lm_head.weight]
    assert len(groups["matrices"]["params"]) == 2 * 6 and all(p.ndim == 2 for p in groups["matrices"]["params"])
    ids = [id(p) for g in opt.param_groups for p in g["params"]]
    assert sorted(ids) == sorted(id(p) for p in model.parameters())  # every param exactly once
    plain = build_optimizer(model, "adamw", adamw_matrix_lr=3e-4)
    assert {g["kind"] for g in plain.param_groups} == {"adamw"}
    assert {g["name"]: g["lr"] for g in plain.param_groups}["matrices"] == 3e-4
    with pytest.raises(ValueError, match="muon"):
        build_optimizer(model, "sgd")


def test_schedules():
    assert [lr_multiplier(s, 100) for s in (0, 50, 80)] == [1.0, 1.0, 1.0]
    assert lr_multiplier(90, 100) == pytest.approx(0.5)
    assert lr_multiplier(100, 100) == pytest.approx(0.0)
    assert lr_multiplier(90, 100, final_lr_frac=0.1) == pytest.approx(0.55)
    assert lr_multiplier(0, 100, warmup_ratio=0.1) == pytest.approx(0.1)
    assert muon_momentum(0) == pytest.approx(0.85)
    assert muon_momentum(150) == pytest.approx(0.90)
    assert muon_momentum(300) == muon_momentum(1000) == pytest.approx(0.95)
    p = torch.nn.Parameter(torch.randn(4, 4))
    q = torch.nn.Parameter(torch.randn(4))
    opt = MuonAdamW([
        dict(params=[p], kind="muon", lr=0.02, momentum=0.95, nesterov=True, ns_steps=5, ns_dtype="float32"),
        dict(params=[q], kind="adamw", lr=0.1, betas=(0.8, 0.95), eps=1e-10, weight_decay=0.0),
    ])
    apply_schedule(opt, 5, 0.5, 0.9)
    assert [g["lr"] for g in opt.param_groups] == [0.01, 0.05]
    assert opt.param_groups[0]["momentum"] == 0.9


def _shapes():
    # 5 matrices of two shapes: with 2 ranks the chunks are uneven (exercises the padding).
    return [(16, 8), (16, 8), (16, 8), (8, 24), (8, 24)]


def _run_muon(rank: int, world: int, port: int, out_path: str) -> None:
    if world > 1:
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(*s)) for s in _shapes()]
    calls = []
    original = optim_mod.zeropower_via_newtonschulz5

    def counting(g, steps, dtype):
        calls.append(tuple(g.shape))
        return original(g, steps, dtype)

    optim_mod.zeropower_via_newtonschulz5 = counting
    opt = MuonAdamW([dict(params=params, kind="muon", lr=0.05, momentum=0.95, nesterov=True, ns_steps=5, ns_dtype="float32")])
    gen = torch.Generator().manual_seed(1)
    for _ in range(3):
        for p in params:  # the same (already averaged) gradient on every rank, as after DDP
            p.grad = torch.randn(p.shape, generator=gen)
        opt.step()
    torch.save({"params": [p.detach() for p in params], "calls": len(calls)}, out_path)
    if world > 1:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_muon_work_split_across_ranks_equals_single_process(tmp_path):
    _run_muon(0, 1, 0, str(tmp_path / "single.pt"))
    port = _free_port()
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_run_muon, args=(r, 2, port, str(tmp_path / f"rank{r}.pt"))) for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    single = torch.load(tmp_path / "single.pt")
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    assert single["calls"] == 3 * 5
    # rank 0 owns matrices 0, 2 of the first shape and 0 of the second; rank 1 the rest.
    assert [r["calls"] for r in ranks] == [3 * 3, 3 * 2]
    for r in ranks:
        for a, b in zip(r["params"], single["params"]):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
