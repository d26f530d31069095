"""The chat stages resume as the speedrun launches them (`train --config ... --resume`): killed
with SIGKILL after a checkpoint inside mid-training and inside SFT, the rerun finishes the same
model as a run that was never interrupted."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from sft_helpers import tiny_model, tiny_tokenizer

from hf_nanochat.speedrun.pipeline import build_stages
from hf_nanochat.speedrun.recipes import CONFIG_DIRS, RECIPES

REPO = Path(__file__).resolve().parent.parent

KILL_AFTER_SECOND_CHECKPOINT = """
import os, signal, sys
from transformers import Trainer
real = Trainer._save_checkpoint
saves = []
def save_then_die(self, *args, **kwargs):
    real(self, *args, **kwargs)
    saves.append(1)
    if len(saves) == 2:
        os.kill(os.getpid(), signal.SIGKILL)
Trainer._save_checkpoint = save_then_die
from hf_nanochat.train.entry import main
sys.exit(main(sys.argv[1:]))
"""


def test_the_speedrun_launches_every_training_stage_with_resume(tmp_path):
    recipe = RECIPES["p100"]
    stages = {s.name: s for s in build_stages(recipe, tmp_path, CONFIG_DIRS["launch"] / recipe.launch_config)}
    for name in ("base", "mid", "sft"):
        assert "--resume" in stages[name].command
    assert "--per_device_train_batch_size=4" in stages["mid"].command  # the recipe's planned device batch
    assert "--per_device_train_batch_size=4" in stages["sft"].command


def _run(script_args, env, expect_kill=False):
    done = subprocess.run([sys.executable, *script_args], env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
    if expect_kill:
        assert done.returncode == -9, done.stderr[-3000:]
    else:
        assert done.returncode == 0, done.stderr[-3000:]
    return done


@pytest.mark.slow
@pytest.mark.parametrize("recipe", ["mid_tiny_cpu.yaml", "sft_tiny_cpu.yaml"])
def test_kill_9_inside_a_chat_stage_then_resume_equals_an_uninterrupted_run(tmp_path, recipe):
    base = tmp_path / "base"
    tiny_model().save_pretrained(base)
    tiny_tokenizer().save_pretrained(base)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    args = ["--config", str(REPO / "train_configs" / recipe), f"--model={base}", "--max_steps=6", "--save_steps=2", "--logging_steps=1", "--resume"]
    _run(["-m", "hf_nanochat.cli", "train", *args, f"--output_dir={tmp_path / 'whole'}"], env)
    _run(["-c", KILL_AFTER_SECOND_CHECKPOINT, *args, f"--output_dir={tmp_path / 'killed'}"], env, expect_kill=True)
    assert not (tmp_path / "killed" / "model.safetensors").exists()
    assert sorted(p.name for p in (tmp_path / "killed" / "checkpoints").glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]
    resumed = _run(["-m", "hf_nanochat.cli", "train", *args, f"--output_dir={tmp_path / 'killed'}"], env)
    assert "resuming from" in resumed.stdout and "checkpoint-4" in resumed.stdout

    a, b = load_file(tmp_path / "whole" / "model.safetensors"), load_file(tmp_path / "killed" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    losses = [{e["step"]: e["loss"] for e in json.loads((tmp_path / run / "train_metrics.json").read_text())["log_history"] if "loss" in e}
              for run in ("whole", "killed")]
    # steps 1-4 come back from checkpoint-4's trainer state, 5-6 were trained after the restart
    assert sorted(losses[1]) == sorted(losses[0]) == [1, 2, 3, 4, 5, 6]
    assert all(losses[1][s] == pytest.approx(losses[0][s], abs=1e-6) for s in losses[0])
