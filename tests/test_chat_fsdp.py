"""Mid-training and SFT (TRL's SFTTrainer with nanochat's Muon/AdamW) under FSDP2, as the 3B/7B recipes
run it with accelerate_configs/fsdp.yaml, on 2 gloo CPU ranks (tests/fsdp_helpers.py): the
parameters are sharded, the losses and the final model equal one process on the same batch,
and a run stopped after a sharded checkpoint resumes to the same losses and weights."""
import json
import shutil
from pathlib import Path

import pytest
import yaml
from fsdp_helpers import FSDP_ON_CPU_ENTRY, assert_weights_close, launch, losses
from safetensors.torch import load_file
from sft_helpers import tiny_model, tiny_tokenizer

from hf_nanochat.train.sft import SFTStageConfig, run_sft_stage

# nanochat's chat stages: fp32 here, no gradient clipping (mid_train.py clips nothing). 4 packed
# rows of <= 128 tokens a step: on one process 2 rows x 2 accumulation steps, on two ranks 1 row
# x 2 ranks x 2 accumulation steps (tokens_per_step derives both), so each step sees the same rows.
RECIPE = dict(
    stage="mid", max_length=128, packing=True, tokens_per_step=512, max_steps=4, optimizer="muon", precision="fp32",
    max_grad_norm=0.0, logging_steps=1, save_steps=2, data={"train": [{"source": "arithmetic", "size": 64}]},
)
DONE = "mid: done, 4 steps"
# One process and two ranks do not add the same fp32 numbers in the same order (a forward of 2
# rows vs 1 row; micro-batch gradients summed by accumulation vs by the reduce-scatter), ~1e-7
# apart relatively. Muon normalises its update (block matrices and lm_head end within 4e-7), but
# AdamW divides each gradient entry by its own magnitude: the embedding rows of tokens that barely
# occur, whose gradients nearly cancel, amplify the rounding (measured 4.8e-6 after 4 steps at
# lr 0.49). A sharding fault (an unreduced or lost shard) moves a weight by ~lr, > 1e-3.
ONE_VS_TWO_ATOL = {"transformer.wte.weight": 1e-4}


def stopped_after(src: Path, dst: Path, step: int) -> None:
    """`dst`: the run `src` as if it had stopped right after checkpoint `step`."""
    shutil.copytree(src / "checkpoints" / f"checkpoint-{step}", dst / "checkpoints" / f"checkpoint-{step}")
    kept = [line for line in (src / "metrics.jsonl").read_text().splitlines() if json.loads(line)["step"] <= step]
    (dst / "metrics.jsonl").write_text("".join(line + "\n" for line in kept))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("chat_fsdp")
    tiny_model(depth=2).save_pretrained(root / "base")
    tiny_tokenizer().save_pretrained(root / "base")
    recipe = {**RECIPE, "model": str(root / "base")}
    (root / "mid.yaml").write_text(yaml.safe_dump(recipe))
    entry = root / "fsdp_entry.py"
    entry.write_text(FSDP_ON_CPU_ENTRY)
    run_sft_stage(SFTStageConfig.from_dict({**recipe, "output_dir": str(root / "one"), "per_device_train_batch_size": 2}))
    args = ["--config", str(root / "mid.yaml"), "--per_device_train_batch_size=1"]
    fsdp = launch(entry, [*args, f"--output_dir={root / 'fsdp'}"], DONE)
    stopped_after(root / "fsdp", root / "resumed", 2)
    resumed = launch(entry, [*args, f"--output_dir={root / 'resumed'}", "--resume"], DONE)
    return root, fsdp, resumed


def metric(run: Path, key: str) -> list:
    return [json.loads(line)[key] for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_mid_training_under_fsdp_shards_and_equals_one_process(runs):
    root, fsdp, _ = runs
    assert "1 rows x 128 x 2 x 2 grad-accumulation steps" in fsdp.stdout
    for rank in (0, 1):  # depth 2: 7 units (2 blocks, embedding, head, ...); every matrix split in half
        assert f"sharding   [rank {rank}/2] FSDP2: 7 fully_shard units, activation checkpointing on 2 blocks; holds 262,144 of 524,288" in fsdp.stdout
    one, two = losses(root / "one"), losses(root / "fsdp")
    assert len(one) == len(two) == 4 and one[-1] < one[0] - 1.0
    assert two == pytest.approx(one, abs=1e-5)
    # tokens seen: the padding of 2-row batches on one process is not counted (TRL would count
    # position_ids.size(1), one row)
    assert metric(root / "fsdp", "num_tokens") == metric(root / "one", "num_tokens")
    # the optimizer stepped the sharded parameters: the gathered export moved off the base, to
    # where one process took it
    base, final = load_file(root / "base/model.safetensors"), load_file(root / "fsdp/model.safetensors")
    assert all((final[k] - base[k]).abs().max() > 1e-3 for k in base)
    assert_weights_close(final, load_file(root / "one/model.safetensors"), atol=ONE_VS_TWO_ATOL)
    config = json.loads((root / "fsdp/config.json").read_text())
    assert config["auto_map"]["AutoModelForCausalLM"] == "modeling_nanochat_gpt.NanoChatGPTForCausalLM"
    assert not list((root / "fsdp").glob("_fsdp*.py"))


@pytest.mark.slow
def test_mid_training_resumes_from_a_sharded_checkpoint(runs):
    root, _, resumed = runs
    checkpoint = root / "fsdp/checkpoints/checkpoint-2"
    assert (checkpoint / "pytorch_model_fsdp_0").is_dir() and (checkpoint / "optimizer_0").is_dir()
    assert "resuming from" in resumed.stdout and "checkpoint-2" in resumed.stdout
    # steps 3-4 retrained from the sharded weights and optimizer state of step 2
    assert losses(root / "resumed") == pytest.approx(losses(root / "fsdp"), abs=1e-5)
    assert_weights_close(load_file(root / "resumed/model.safetensors"), load_file(root / "fsdp/model.safetensors"))


# SFT as sft.yaml runs it: one conversation per row, padded, loss on assistant tokens; 4
# conversations a step (conversations_per_step): 2 rows x 2 accumulation on one process, 1 row x
# 2 ranks x 2 accumulation under FSDP2.
SFT_RECIPE = dict(
    stage="sft", max_length=128, packing=False, conversations_per_step=4, max_steps=3, optimizer="muon", precision="fp32",
    max_grad_norm=0.0, logging_steps=1, save_steps=100, data={"train": [{"source": "arithmetic", "size": 64}]},
)


@pytest.fixture(scope="module")
def sft_runs(runs):
    root, _, _ = runs
    recipe = {**SFT_RECIPE, "model": str(root / "base")}
    (root / "sft.yaml").write_text(yaml.safe_dump(recipe))
    run_sft_stage(SFTStageConfig.from_dict({**recipe, "output_dir": str(root / "sft_one"), "per_device_train_batch_size": 2}))
    launch(root / "fsdp_entry.py", ["--config", str(root / "sft.yaml"), "--per_device_train_batch_size=1", f"--output_dir={root / 'sft_fsdp'}"],
           "sft: done, 3 steps")
    return root


@pytest.mark.slow
def test_sft_under_fsdp_equals_one_process(sft_runs):
    root = sft_runs
    one, two = losses(root / "sft_one"), losses(root / "sft_fsdp")
    assert len(one) == len(two) == 3 and one[-1] < one[0]
    # the loss is the mean over the step's assistant tokens on both layouts (Trainer sums the
    # token counts over accumulation steps and ranks), not a mean of per-rank means
    assert two == pytest.approx(one, abs=1e-5)
    assert_weights_close(load_file(root / "sft_fsdp/model.safetensors"), load_file(root / "sft_one/model.safetensors"), atol=ONE_VS_TWO_ATOL)
