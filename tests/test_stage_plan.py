"""Every stage of every speedrun recipe is planned (base step, base val, base eval, mid and SFT
through TRL, chat eval), every recipe fits the memory it declares, the chat stages' device
batches are the planner's pick, and a stage that would not fit is refused before it starts."""
import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

from hf_nanochat.speedrun.pipeline import chat_stage_config, load_train_config, memory_budget, stage_peaks
from hf_nanochat.speedrun.recipes import CONFIG_DIRS, RECIPES
from hf_nanochat.train import stage_plan
from hf_nanochat import NanoChatGPTConfig
from hf_nanochat.train.memory import GiB, attention_mask_bytes, estimate_chat_memory
from hf_nanochat.train.memory_cli import launch_topology
from hf_nanochat.train.sft import accumulation_steps

pytestmark = pytest.mark.usefixtures("fresh_accelerate_state")

REPO = Path(__file__).resolve().parent.parent

# GiB per device, hf_nanochat.train.stage_plan on each recipe as the speedrun runs it.
PINNED = {
    "p100": {"base step": 14.47, "base val": 11.28, "base eval": 3.38, "mid step": 14.87, "sft step": 14.87, "chat eval": 9.96},
    "single_gpu": {"base step": 76.31, "base val": 40.49, "base eval": 4.44, "mid step": 78.88, "sft step": 78.88, "chat eval": 11.14},
    "h100x8": {"base step": 78.4, "base val": 42.58, "base eval": 4.44, "mid step": 45.92, "sft step": 28.4, "chat eval": 11.14},
    "3b": {"base step": 55.5, "base val": 16.44, "base eval": 9.82, "mid step": 75.49, "sft step": 18.27, "chat eval": 17.03},
    "7b": {"base step": 51.32, "base val": 17.79, "base eval": 18.52, "mid step": 71.84, "sft step": 27.48, "chat eval": 26.34},
    # nanochat 2026: no mid-training
    "gpt2_speedrun": {"base step": 66.73, "base val": 29.53, "base eval": 5.41, "sft step": 68.27, "chat eval": 8.94},
    "d12_2026": {"base step": 69.9, "base val": 38.24, "base eval": 2.82, "sft step": 59.03, "chat eval": 6.14},
    "p100_2026": {"base step": 13.25, "base val": 8.36, "base eval": 2.82, "sft step": 13.64, "chat eval": 6.14},
}
CHAT_STAGES = [(name, stage) for name in sorted(PINNED) for stage in RECIPES[name].chat_stages]


def _peaks(name):
    recipe = RECIPES[name]
    return {p.stage: p for p in stage_peaks(recipe, CONFIG_DIRS["launch"] / recipe.launch_config)}


@pytest.mark.parametrize("name", sorted(PINNED))
def test_every_stage_is_pinned_and_fits_the_declared_memory(name):
    peaks = _peaks(name)
    assert {stage: round(p.gib, 2) for stage, p in peaks.items()} == PINNED[name]
    budget = memory_budget(RECIPES[name])
    assert budget == RECIPES[name].gpu_memory_gib * GiB
    assert all(p.estimate.total <= budget for p in peaks.values()), {s: p.gib for s, p in peaks.items()}


def test_the_cpu_recipe_fits_this_machine():
    peaks = _peaks("tiny_cpu")
    assert all(p.estimate.total <= memory_budget(RECIPES["tiny_cpu"]) for p in peaks.values())


@pytest.mark.parametrize("name,stage", CHAT_STAGES)
def test_chat_device_batches_are_the_planners_pick(name, stage):
    """The largest device batch that divides the stage's target on this many devices and fits."""
    recipe = RECIPES[name]
    topology = launch_topology(str(CONFIG_DIRS["launch"] / recipe.launch_config))
    chosen = chat_stage_config(recipe, stage)
    model = load_train_config(recipe.base).model_config(recipe.tokenizer_vocab_size)
    fitting = []
    for batch in range(1, 65):
        cfg = dataclasses.replace(chosen, per_device_train_batch_size=batch)
        try:
            accumulation_steps(cfg, topology["world_size"])
        except ValueError:
            continue
        if stage_plan.chat_stage_peak(cfg, model, topology, on_gpu=True).estimate.total <= memory_budget(recipe):
            fitting.append(batch)
    assert chosen.per_device_train_batch_size == max(fitting)


def test_packed_rows_cost_what_separate_rows_cost():
    """TRL's padding-free packing would flatten the device batch into one row, a mask (and SDPA
    per-layer bias) of (B x L)^2; packed rows kept apart (PackedRowsCollator) cost B x L^2,
    the same as unpacked rows."""
    model = NanoChatGPTConfig.from_depth(20)
    one_row = attention_mask_bytes(model, 1, 16 * 2048, "bf16", on_gpu=True)
    rows = attention_mask_bytes(model, 16, 2048, "bf16", on_gpu=True)
    assert one_row == 16 * rows == (16 * 2048) ** 2 * (1 + 20 * 2)
    packed = estimate_chat_memory(model, 16, 2048, packing=True, dtype="bf16")
    padded = estimate_chat_memory(model, 16, 2048, packing=False, dtype="bf16")
    assert packed == padded and rows < packed.activations


def test_speedrun_refuses_a_recipe_that_does_not_fit_and_names_the_knobs(tmp_path):
    # The P100 recipe launched in fp32 (cpu.yaml): the base step and SFT no longer fit 16 GiB.
    done = subprocess.run(
        [sys.executable, "-m", "hf_nanochat.cli", "speedrun", "p100", "--dry-run", "--output", str(tmp_path / "run"),
         "--launch-config", str(CONFIG_DIRS["launch"] / "cpu.yaml")],
        capture_output=True, text=True, cwd=REPO,
    )
    assert done.returncode != 0
    assert "planned peak per device by stage (budget 16.0 GiB): base step 18.00" in done.stdout
    assert "refusing to start" in done.stderr
    assert "base step: ~18.00 GiB per device does not fit 16.0 GiB; lower device_batch_size" in done.stderr
    assert "sft step: ~18.76 GiB per device does not fit 16.0 GiB; lower per_device_train_batch_size" in done.stderr
    assert not (tmp_path / "run").exists()


def test_train_refuses_before_the_first_step_when_the_plan_does_not_fit(tmp_path, monkeypatch):
    sys.path.insert(0, str(Path(__file__).parent))
    from pretrain_helpers import make_corpus, make_tokenizer, tiny_overrides

    from hf_nanochat.train.config import config_from_dict
    from hf_nanochat.train.pretrain import train

    corpus = make_corpus(tmp_path / "corpus", train_docs=100, val_docs=20)
    overrides = tiny_overrides(corpus, make_tokenizer(tmp_path / "tok", corpus), num_iterations=2, output_dir=str(tmp_path / "out"))
    monkeypatch.setattr(stage_plan, "device_budget", lambda device, processes=1: 1 << 20)  # a 1 MiB device
    with pytest.raises(stage_plan.MemoryPlanError, match=r"base step: ~.* GiB per device does not fit 0\.0 GiB; lower device_batch_size"):
        train(config_from_dict(overrides))
    assert not (tmp_path / "out" / "metrics.jsonl").exists()


def test_chat_stage_refuses_before_tokenizing(tmp_path, monkeypatch):
    from sft_helpers import tiny_model, tiny_tokenizer

    from hf_nanochat.data import chat_data
    from hf_nanochat.train.sft import SFTStageConfig, run_sft_stage

    cfg = SFTStageConfig.from_dict(dict(stage="mid", model="unused", output_dir=str(tmp_path / "out"), max_length=128, packing=True,
                                        per_device_train_batch_size=4, tokens_per_step=1024, precision="fp32", optimizer="adamw",
                                        data={"train": [{"source": "arithmetic", "size": 8}]}))
    monkeypatch.setattr(stage_plan, "device_budget", lambda device, processes=1: 1 << 20)
    with pytest.raises(stage_plan.MemoryPlanError, match="mid step: .* lower per_device_train_batch_size .*tokens_per_step"):
        run_sft_stage(cfg, model=tiny_model(), tokenizer=tiny_tokenizer(), train_dataset=chat_data.build_mixture(cfg.train_data, seed=0))
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("name,steps,batch", [("gpt2_speedrun", 5568, 2**20), ("d12_2026", 2520, 2**19), ("p100_2026", 2520, 2**19)])
def test_2026_recipes_plan_nanochat_numbers_and_go_base_to_sft(name, steps, batch, tmp_path):
    """nanochat runs/speedrun.sh (d24, ratio 8) and the d12 reference (ratio 12): the horizon and
    batch come from the depth; SFT starts from the base model with the base run's batch."""
    from hf_nanochat.speedrun.pipeline import build_stages, format_plan, plan

    recipe = RECIPES[name]
    launch = CONFIG_DIRS["launch"] / recipe.launch_config
    p = plan(recipe, name, launch)
    assert (p["architecture"], p["steps"], p["total_batch_size"]) == ("2026", steps, batch)
    stages = build_stages(recipe, tmp_path, launch)
    assert f"base: {steps:,} steps of {batch:,} tokens (recipe nanochat-2026" in format_plan(p, stages)
    sft = next(s for s in stages if s.name == "sft")
    assert f"--model={tmp_path / 'base' / 'model'}" in sft.command and "mid" not in [s.name for s in stages]
    assert chat_stage_config(recipe, "sft").tokens_per_step == batch
    with pytest.raises(ValueError, match="this recipe has no mid stage"):
        chat_stage_config(recipe, "mid")
