"""FSDP2 on CPU (2 gloo processes): sharded parameters, activation checkpointing, Muon on
sharded matrices equal to the unsharded optimizer, training equal to DDP (the Nov 2025 model,
and the 2026 model with its MuonAdamW), sharded checkpoints resumed on 2 and on 1 process (and
DDP checkpoints on 1 process). How the ranks are launched under FSDP on CPU: tests/fsdp_helpers.py.
"""
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from accelerate.state import AcceleratorState
from fsdp_helpers import FSDP_ON_CPU_ENTRY, REPO, assert_weights_close, free_port, launch, losses
from pretrain_helpers import corpus_and_tokenizer, tiny_overrides
from safetensors.torch import load_file

DONE = '"steps": 8'  # the run's summary line: all 8 steps trained


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return corpus_and_tokenizer(tmp_path_factory.mktemp("data"), train_docs=1500, val_docs=100)


def cli_args(data, out: Path, *extra: str) -> list[str]:
    values = tiny_overrides(*data, save_every=4, output_dir=str(out))
    return [f"--{k}={v}" for k, v in values.items() if k != "sample_prompts"] + ["--sample_prompts=The red cat", *extra]


def final_weights(run: Path) -> dict:
    return load_file(run / "model" / "model.safetensors")


# FSDP2 vs DDP is not bitwise: the gradient-clipping norm differs in the last bits. DDP takes
# each parameter's norm over the whole tensor; FSDP2 (DTensor) sums the squares of each rank's
# shard and all-reduces them, another fp32 summation order: at step 1 the norms are 1.3887412548
# (DDP) and 1.3887426853 (FSDP2), 1.0e-6 apart relatively, and both are > 1, so every gradient is
# scaled by a coefficient that differs by that much. Muon normalises its update, so the block
# matrices end within 3e-7; the embedding's AdamW (eps 1e-10, lr 0.49 at this width) does not for
# the rows of rare tokens whose averaged gradient nearly cancels, which ends up to 2.5e-5 apart
# after 8 steps (measured 2.47e-5, the same under transformers 5.23 and 5.24, torch 2.13,
# accelerate 1.15). The same two runs with --grad_clip=0 end bitwise equal (every weight and loss),
# so nothing else in the sharded path differs. A real sharding bug (a missing average, a lost
# shard) moves weights by ~lr, > 1e-2.
DDP_VS_FSDP_ATOL = {"transformer.wte.weight": 1e-4}


def resume_copy(src: Path, dst: Path, step: int) -> None:
    """A run that stopped right after checkpoint `step`."""
    name = f"step_{step:06d}"
    shutil.copytree(src / "checkpoints" / name, dst / "checkpoints" / name)
    kept = [line for line in (src / "metrics.jsonl").read_text().splitlines() if json.loads(line)["step"] <= step]
    (dst / "metrics.jsonl").write_text("".join(line + "\n" for line in kept))


@pytest.fixture(scope="module")
def runs(data, tmp_path_factory):
    """2-process DDP and 2-process FSDP2, same recipe (Muon, fp32, 8 steps, checkpoints at 4 and 8)."""
    root = tmp_path_factory.mktemp("runs")
    entry = root / "fsdp_entry.py"
    entry.write_text(FSDP_ON_CPU_ENTRY)
    ddp = launch(REPO / "train.py", cli_args(data, root / "ddp"), DONE, fsdp=False)
    fsdp = launch(entry, cli_args(data, root / "fsdp"), DONE)
    return root, entry, ddp, fsdp


@pytest.mark.slow
def test_fsdp_shards_parameters_checkpoints_blocks_and_equals_ddp(runs):
    root, _, ddp, fsdp = runs
    assert "world size 2" in ddp.stdout and "world size 2" in fsdp.stdout
    for rank in (0, 1):
        # every rank holds exactly its half of every matrix (all row counts are even here)
        assert f"sharding   [rank {rank}/2] FSDP2: 7 fully_shard units, activation checkpointing on 2 blocks; holds 237,568 of 475,136" in fsdp.stdout
    assert "sharding" not in ddp.stdout
    # Muon on sharded matrices + FSDP reductions = DDP + Muon on whole matrices
    for a, b in zip(losses(root / "fsdp"), losses(root / "ddp"), strict=True):
        assert abs(a - b) <= 1e-5
    assert losses(root / "fsdp")[-1] < 0.5 * losses(root / "fsdp")[0]
    assert_weights_close(final_weights(root / "fsdp"), final_weights(root / "ddp"), atol=DDP_VS_FSDP_ATOL)
    # the sharded training state is DCP shards; the export is one consolidated, plain checkpoint
    state = root / "fsdp/checkpoints/step_000008/state"
    assert (state / "pytorch_model_fsdp_0").is_dir() and (state / "optimizer_0").is_dir()
    config = json.loads((root / "fsdp/model/config.json").read_text())
    assert config["auto_map"]["AutoModelForCausalLM"] == "modeling_nanochat_gpt.NanoChatGPTForCausalLM"
    assert not list((root / "fsdp/model").glob("_fsdp*.py"))
    from transformers import AutoModelForCausalLM

    reloaded = AutoModelForCausalLM.from_pretrained(root / "fsdp/model", trust_remote_code=True)
    assert reloaded.transformer.h[1].mlp.c_fc.weight.shape == (512, 128)


@pytest.mark.slow
def test_chunked_loss_under_fsdp_trains_like_the_full_loss(runs, data, tmp_path):
    # the checkpointed head is recomputed in backward: lm_head must still be gathered then
    root, entry, _, _ = runs
    launch(entry, cli_args(data, tmp_path / "chunked", "--loss_chunk_tokens=24"), DONE)
    for a, b in zip(losses(tmp_path / "chunked"), losses(root / "fsdp"), strict=True):
        assert abs(a - b) <= 1e-5
    assert_weights_close(final_weights(tmp_path / "chunked"), final_weights(root / "fsdp"))


@pytest.mark.slow
def test_fsdp_checkpoint_resumes_on_two_and_on_one_process(runs, data):
    root, entry, _, _ = runs
    on_two, on_one = root / "resume2", root / "resume1"
    resume_copy(root / "fsdp", on_two, 4)
    launch(entry, cli_args(data, on_two, "--resume"), DONE)
    assert losses(on_two)[4:] == pytest.approx(losses(root / "fsdp")[4:], abs=1e-5)
    assert_weights_close(final_weights(on_two), final_weights(root / "fsdp"))

    resume_copy(root / "fsdp", on_one, 4)
    done = launch(entry, cli_args(data, on_one, "--resume"), DONE, processes=1)
    assert "resuming on 1 processes from a checkpoint saved by 2" in done.stdout
    assert "holds 475,136 of 475,136" in done.stdout
    state = json.loads((on_one / "checkpoints/step_000008/state/trainer_state.json").read_text())
    assert state["world_size"] == 1 and state["step"] == 8
    # the trained weights and optimizer were loaded: no relapse to a fresh model's loss
    assert losses(on_one)[4] < 0.5 * losses(on_one)[0]


@pytest.mark.slow
def test_ddp_checkpoint_resumes_on_one_process(runs, data):
    from hf_nanochat.train.pretrain import train
    from hf_nanochat.train.config import config_from_dict

    root = runs[0]
    on_one = root / "ddp_resume1"
    resume_copy(root / "ddp", on_one, 4)
    AcceleratorState._reset_state(reset_partial_state=True)
    try:
        summary = train(config_from_dict(tiny_overrides(*data, save_every=4, output_dir=str(on_one))), resume=True)
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
    assert summary["steps"] == 8 and summary["world_size"] == 1
    assert losses(on_one)[4] < 0.5 * losses(on_one)[0]


# What DDP_VS_FSDP_ATOL says of wte holds for the value embeddings (AdamW, eps 1e-10, rare-token
# rows). backout_lambda is the odd one: at depth 2 the last block starts as the identity (its
# output projections are zero-initialised), so the final RMSNorm sees (1 - backout) * x_mid and is
# invariant to it; its true gradient stays ~0 and the measured one is rounding noise, 1e-10..1e-7
# (printed per step: DDP -1.548e-08, FSDP2 -1.560e-08 at step 2), which Adam's m/sqrt(v) turns into
# steps of +-lr either way. Every other parameter, and every loss, agrees to 1e-5.
DDP_VS_FSDP_ATOL_2026 = {**DDP_VS_FSDP_ATOL, "transformer.value_embeds.1.weight": 1e-4, "transformer.backout_lambda": 1.0}
ARCH_2026 = ("--architecture=2026", "--optimizer=muon_adamw_2026", "--grad_clip=0")  # nanochat's 2026 recipe: no clipping


@pytest.fixture(scope="module")
def runs_2026(data, runs):
    """nanochat's 2026 model (value embeddings, windows, smear, backout, scalars outside the
    blocks) with its MuonAdamW, 2-process DDP and 2-process FSDP2."""
    root, entry, _, _ = runs
    launch(REPO / "train.py", cli_args(data, root / "ddp_2026", *ARCH_2026), DONE, fsdp=False)
    fsdp = launch(entry, cli_args(data, root / "fsdp_2026", *ARCH_2026), DONE)
    return root, fsdp


@pytest.mark.slow
def test_2026_model_under_fsdp_equals_ddp(runs_2026):
    root, fsdp = runs_2026
    assert "model      nanochat 2026, depth 2" in fsdp.stdout
    # the scalars (resid/x0 lambdas of 2 layers, smear and backout) do not split evenly over 2 ranks
    for rank, held in ((0, "258,088"), (1, "258,050")):
        assert f"sharding   [rank {rank}/2] FSDP2: 7 fully_shard units, activation checkpointing on 2 blocks; holds {held} of 516,138" in fsdp.stdout
    for a, b in zip(losses(root / "fsdp_2026"), losses(root / "ddp_2026"), strict=True):
        assert abs(a - b) <= 1e-5
    assert losses(root / "fsdp_2026")[-1] < 0.5 * losses(root / "fsdp_2026")[0]
    weights = final_weights(root / "fsdp_2026")
    assert {"transformer.resid_lambdas", "transformer.smear_lambda", "transformer.value_embeds.1.weight"} <= set(weights)
    assert_weights_close(weights, final_weights(root / "ddp_2026"), atol=DDP_VS_FSDP_ATOL_2026)
    assert abs(weights["transformer.backout_lambda"].item() - 0.2) > 0.1  # the optimizer steps it (init 0.2)
    from transformers import AutoModelForCausalLM

    reloaded = AutoModelForCausalLM.from_pretrained(root / "fsdp_2026/model", trust_remote_code=True)
    assert reloaded.config.nanochat_architecture == "2026" and reloaded.config.layer_types == ["sliding_attention", "full_attention"]


MUON_SHARDED = textwrap.dedent(
    """
    import os, sys, torch, torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor
    from hf_nanochat.train.optim import zeropower_via_newtonschulz5
    from hf_nanochat.train.sharding import orthogonalise_sharded
    dist.init_process_group("gloo")
    mesh = init_device_mesh("cpu", (2,))
    torch.manual_seed(0)
    # odd and tiny row counts: uneven shards, and a rank holding no rows of a 1-row matrix
    full = [torch.randn(shape) for shape in [(7, 5), (5, 9), (1, 4), (3, 3), (64, 16), (16, 64), (9, 9)]]
    sharded = [distribute_tensor(m, mesh, [Shard(0)]) for m in full]
    out = orthogonalise_sharded(sharded, 5, torch.float32, zeropower_via_newtonschulz5)
    worst = 0.0
    for m, o in zip(full, out):
        assert o.placements == (Shard(0),) and tuple(o.shape) == tuple(m.shape)
        worst = max(worst, (o.full_tensor() - zeropower_via_newtonschulz5(m, 5, torch.float32)).abs().max().item())
    if dist.get_rank() == 0:
        print("MAXDIFF", worst, flush=True)
    dist.destroy_process_group()
    sys.stdout.flush()
    os._exit(0)
    """
)


@pytest.mark.slow
def test_sharded_newton_schulz_equals_unsharded_on_uneven_shards(tmp_path):
    script = tmp_path / "muon_sharded.py"
    script.write_text(MUON_SHARDED)
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()), str(script)],
        env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=300,
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("MAXDIFF")]
    assert lines, done.stderr[-3000:]
    assert float(lines[0].split()[1]) <= 1e-6


def test_memory_cli_for_the_7b_recipe(capsys):
    from hf_nanochat.cli import main

    rc = main(["memory", "--config", str(REPO / "train_configs/7b.yaml"), "--accelerate-config", str(REPO / "accelerate_configs/fsdp.yaml"), "--gpu-memory", "80GiB"])
    out = capsys.readouterr().out
    assert rc == 0
    assert "depth 52 (vocab 65536), bf16, muon, FSDP full shard x 8, activation checkpointing on, seq 2048, loss in chunks of 2,048 tokens" in out
    assert "per device at device batch 24:" in out and "total           51.32 GiB" in out
    assert "fits in 80.0 GiB" in out and "largest device batch that fits 80.0 GiB: 42" in out
    rc = main(["memory", "--config", str(REPO / "train_configs/7b.yaml"), "--accelerate-config", str(REPO / "accelerate_configs/fsdp.yaml"), "--gpu-memory", "40GiB"])
    assert rc == 1 and "does NOT fit in 40.0 GiB" in capsys.readouterr().out  # the exit status says so to scripts
