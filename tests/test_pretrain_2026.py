"""The pretraining loop with recipe nanochat-2026 on CPU: the derived numbers in the plan and in
the saved config, muon_adamw_2026 and the 2026 schedules in use, best-fit rows with their
dropped fraction logged, and an exact resume (optimizer second moments + best-fit buffer)."""
import json
import shutil
import sys
from pathlib import Path

import pytest
import torch
import yaml

from hf_nanochat.train.config import config_from_dict
from hf_nanochat.train.pretrain import schedules_at, train

sys.path.insert(0, str(Path(__file__).parent))
from pretrain_helpers import corpus_and_tokenizer, tiny_overrides  # noqa: E402

pytestmark = pytest.mark.usefixtures("fresh_accelerate_state")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return corpus_and_tokenizer(tmp_path_factory.mktemp("data"))


def overrides(data, out):
    # the batch and horizon are fixed here (derived ones would be far too big for a CPU test);
    # everything else is derived from the depth
    return tiny_overrides(*data, recipe="nanochat-2026", architecture="2026", packing="best_fit", num_iterations=8, save_every=4, eval_every=8, warmup_steps=2, output_dir=str(out))


def metrics(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_recipe_2026_trains_and_resumes_exactly(data, tmp_path, capsys):
    ref = tmp_path / "ref"
    train(config_from_dict(overrides(data, ref)))
    plan = capsys.readouterr().out
    assert "recipe     total_batch_size" in plan and "(set in the train config)" in plan
    assert "recipe     weight_decay" in plan and "0.28 x bs x D_ref/D" in plan
    assert "NorMuon + Polar Express in float32" in plan
    saved = yaml.safe_load((ref / "train_config.yaml").read_text())
    assert saved["optimizer"] == "muon_adamw_2026" and saved["grad_clip"] == 0.0 and saved["weight_decay_schedule"] == "cosine"
    assert saved["total_batch_size"] == 256 and saved["warmup_steps"] == 2 and saved["muon_momentum_warmdown"] == 0.9
    m = metrics(ref)
    assert len(m) == 8 and m[-1]["loss"] < m[0]["loss"]
    assert all(0 <= r["data_dropped_frac"] < 1 for r in m) and m[-1]["data_dropped_frac"] > 0
    # resume from step 4: the same losses as the uninterrupted run
    resumed = tmp_path / "resumed"
    shutil.copytree(ref / "checkpoints" / "step_000004", resumed / "checkpoints" / "step_000004")
    shutil.copy(ref / "metrics.jsonl", resumed / "metrics.jsonl")
    train(config_from_dict(overrides(data, resumed)), resume=True)
    for a, b in zip(metrics(resumed)[4:], m[4:]):
        assert abs(a["loss"] - b["loss"]) <= 1e-5, (a["step"], a["loss"], b["loss"])


def test_schedules_follow_the_config():
    cfg = config_from_dict(dict(recipe="nanochat-2026", warmup_steps=40, warmdown_ratio=0.65, final_lr_frac=0.05, muon_momentum_start=0.85,
                                muon_momentum_end=0.97, muon_momentum_ramp_steps=400, muon_momentum_warmdown=0.9, weight_decay_schedule="cosine"))
    assert schedules_at(cfg, 0, 1000) == pytest.approx((1 / 40, 0.85, 1.0))
    assert schedules_at(cfg, 1000, 1000) == pytest.approx((0.05, 0.90, 0.0), abs=1e-12)
    today = config_from_dict({})
    assert schedules_at(today, 0, 100) == pytest.approx((1.0, 0.85, 1.0))  # Nov 2025 recipe unchanged


@pytest.mark.slow
def test_2026_model_in_fp16_with_loss_scaling(data, tmp_path):
    """What the p100_2026 recipe runs (fp16 autocast + dynamic loss scaling, MuonAdamW2026), on
    CPU: overflowing first steps are skipped with the scale halved, every parameter (embeddings and
    value embeddings too) stays fp32, and the losses track the same run in fp32."""
    runs = {}
    for precision in ("fp16", "fp32"):
        out = tmp_path / precision
        values = overrides(data, out) | dict(precision=precision, fp16_init_scale=2.0**24, save_every=-1, num_iterations=12)
        train(config_from_dict(values))
        runs[precision] = metrics(out)
    fp16 = runs["fp16"]
    assert fp16[0]["skipped"] and fp16[0]["loss_scale"] == 2.0**23 and not any(m["skipped"] for m in fp16[-4:])
    applied = [m["step"] for m in fp16 if not m["skipped"]]
    assert fp16[-1]["loss"] < fp16[applied[0] - 1]["loss"]
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tmp_path / "fp16" / "model", trust_remote_code=True)
    assert model.config.nanochat_architecture == "2026" and {p.dtype for p in model.parameters()} == {torch.float32}
    # fp16 matmuls round to ~1e-3 relative; the skipped steps shift the schedule by a few steps
    assert fp16[-1]["loss"] == pytest.approx(runs["fp32"][-1 - len(fp16) + len(applied)]["loss"], rel=0.05)
