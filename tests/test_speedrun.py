"""The tiny_cpu speedrun end to end, offline, killed mid-pretraining and finished by a rerun.

One run serves all the checks below (it takes minutes on 2 cores): the plan, skipping of
finished stages, resuming the interrupted one, and a report whose numbers are the run's own.
"""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from hf_nanochat.speedrun.pipeline import build_stages
from hf_nanochat.speedrun.recipes import CONFIG_DIRS, RECIPES

pytestmark = pytest.mark.slow


def _speedrun(out: Path, **kw) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "2", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "hf_nanochat.cli", "speedrun", "tiny_cpu", "--output", str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, start_new_session=True, **kw,
    )


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("speedrun")
    first = _speedrun(out)
    checkpoints = out / "base" / "checkpoints"
    deadline = time.time() + 900
    # Kill the whole process tree (as a crash would) once pretraining has saved a checkpoint.
    while time.time() < deadline and first.poll() is None:
        if checkpoints.exists() and any(p.name.startswith("step_") for p in checkpoints.iterdir()):
            break
        time.sleep(0.5)
    assert first.poll() is None, "the speedrun ended before pretraining saved a checkpoint:\n" + first.stdout.read()
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    killed_state = json.loads((out / "speedrun_state.json").read_text())
    tokenizer_mtime = (out / "tokenizer" / "tokenizer.json").stat().st_mtime

    second = _speedrun(out)
    log = second.communicate(timeout=1500)[0]
    assert second.returncode == 0, log
    return out, log, killed_state, tokenizer_mtime


def test_plan_is_printed_first(run):
    _, log, _, _ = run
    first_lines = log.splitlines()[:8]
    assert first_lines[0].startswith("speedrun tiny_cpu:")
    assert any("parameters" in line for line in first_lines) and any("tokens" in line for line in first_lines)


def test_rerun_skips_finished_stages_and_resumes_pretraining(run):
    out, log, killed_state, tokenizer_mtime = run
    assert killed_state["stages"]["tokenizer"]["status"] == "done"
    assert killed_state["stages"]["base"]["status"] == "running"
    assert "=== tokenizer: complete, skipped" in log
    assert (out / "tokenizer" / "tokenizer.json").stat().st_mtime == tokenizer_mtime
    assert "=== base (resuming)" in log
    state = json.loads((out / "speedrun_state.json").read_text())
    assert state["stages"]["tokenizer"]["attempts"] == 1
    assert state["stages"]["base"]["attempts"] == 2
    # The killed attempt's time is kept (from its heartbeat / log) and counted in the total.
    killed, finished = state["stages"]["base"]["attempt_log"]
    assert killed["status"] == "interrupted" and killed["seconds"] > 0 and finished["status"] == "done"
    assert state["stages"]["base"]["seconds"] == pytest.approx(killed["seconds"] + finished["seconds"])
    assert "removing the stale lock" in log  # the killed speedrun's lock, taken over
    assert all(s["status"] == "done" for s in state["stages"].values())
    # Pretraining continued from its checkpoint: every step logged exactly once, none redone from 1.
    steps = [json.loads(line)["step"] for line in (out / "base" / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, len(steps) + 1))
    resumed_from = [line for line in log.splitlines() if "resum" in line.lower() and "step" in line.lower()]
    assert resumed_from, "the base stage should say which step it resumed from"
    # The last lines tell the user how to chat with the result and share it.
    assert f"python -m hf_nanochat.serve.app --model {out / 'sft'}" in log
    assert f"hf-nanochat push {out / 'sft'} YOUR_NAME/nanochat-tiny_cpu" in log


def test_report_numbers_come_from_the_run(run):
    out, _, _, _ = run
    report = json.loads((out / "report.json").read_text())
    metrics = [json.loads(line) for line in (out / "base" / "metrics.jsonl").read_text().splitlines()]
    base = report["base"]
    assert base["steps"] == metrics[-1]["step"] == 150
    assert base["tokens"] == metrics[-1]["tokens"]
    assert base["final_loss"] == metrics[-1]["loss"] < metrics[0]["loss"]
    assert base["val_bpb"] == json.loads((out / "eval_base.json").read_text())["val_bpb"]
    core_eval = json.loads((out / "base" / "model" / "core_eval.json").read_text())  # offline: the smoke bundle
    assert base["core"]["score"] == core_eval["core"] and core_eval["smoke_bundle"]
    assert all(t["total"] == 16 for t in core_eval["tasks"].values())  # the recipe's --max-per-task
    config = json.loads((out / "base" / "model" / "config.json").read_text())
    assert base["depth"] == config["num_hidden_layers"] and base["vocab_size"] == config["vocab_size"]
    for stage in ("mid", "sft"):
        evaluation = json.loads((out / f"eval_{stage}.json").read_text())
        assert report["chat"][stage]["tasks"] == {k: v["accuracy"] for k, v in evaluation["tasks"].items()}
        losses = [json.loads(line)["loss"] for line in (out / stage / "metrics.jsonl").read_text().splitlines()]
        assert report["chat"][stage]["train_loss"] == pytest.approx(sum(losses) / len(losses))  # every logged step
    assert report["total"]["seconds"] == pytest.approx(sum(s["seconds"] for s in report["stages"].values()))
    assert report["tokenizer"]["vocab_size"] == config["vocab_size"]
    assert report["chat_samples"] and all(s["reply"] for s in report["chat_samples"])
    md = (out / "report.md").read_text()
    assert f"{base['params']:,}" in md and "ChatCORE" in md and "report_loss.png" in md
    assert f"offline smoke score (synthetic bundle, NOT CORE): {core_eval['core']:.4f}" in md
    png = (out / "report_loss.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    # The final model folder carries the report, so the Hub card embeds it.
    assert (out / "sft" / "report.md").read_text() == md
    # Which data each stage read comes from the stages' own records, not the recipe.
    used = json.loads((out / "sft" / "data_used.json").read_text())["stages"]
    assert list(used) == ["base", "mid", "sft"] == list(report["data"])
    assert used["base"]["offline_corpus"] and used["mid"]["loss_tokens"] == "all" and used["sft"]["loss_tokens"] == "assistant"
    assert [p["rows"] for p in used["mid"]["train"]] == [400, 200, 200, 200]  # arithmetic, identity x2, spelling_bee, simple_spelling
    assert "## Data (what each stage read)" in md and "offline corpus of Python's own docs" in md
    assert json.loads((out / "eval_base.json").read_text())["source"] == "offline"  # the base stage's recorded source
    assert "SpellingBee: random sample of 16 of 256, seed 42" in md


def test_every_recipe_plans_without_running(tmp_path, capsys):
    from hf_nanochat.cli import main

    for name, recipe in RECIPES.items():
        stages = build_stages(recipe, tmp_path / name, CONFIG_DIRS["launch"] / recipe.launch_config)
        mid = ["mid", "mid_eval"] if recipe.mid else []  # nanochat 2026 recipes go base -> SFT
        assert [s.name for s in stages] == ["tokenizer", "base", "base_eval", "core_eval", *mid, "sft", "sft_eval"]
        args = ["speedrun", name, "--dry-run", "--output", str(tmp_path / name)]
        if name == "p100":  # one as a user types it, the rest in this process (a start-up each is 5 s)
            out = subprocess.run([sys.executable, "-m", "hf_nanochat.cli", *args], capture_output=True, text=True, check=True).stdout
        else:
            assert main(args) == 0
            out = capsys.readouterr().out
        assert out.startswith(f"speedrun {name}:") and "estimated memory per device" in out
        assert not (tmp_path / name).exists()  # a dry run writes nothing


def test_missing_chat_data_file_is_refused_before_any_stage(tmp_path, monkeypatch):
    """A recipe whose mid/SFT data names a local file that is not there fails at the start,
    not after base pretraining (nanochat's identity_conversations.jsonl for the GPU recipes)."""
    from hf_nanochat.speedrun import pipeline

    monkeypatch.setattr(pipeline, "REPO_ROOT", tmp_path)  # no identity file there
    monkeypatch.chdir(tmp_path)
    missing = pipeline.missing_data_files(RECIPES["p100"], with_rl=False)
    assert missing == [
        "train_configs/mid.yaml: identity file 'identity_conversations.jsonl' not found",
        "train_configs/sft.yaml: identity file 'identity_conversations.jsonl' not found",
    ]
    assert pipeline.missing_data_files(RECIPES["tiny_cpu"], with_rl=True) == []  # offline recipes name no files
    (tmp_path / "identity_conversations.jsonl").write_text("[]\n")
    assert pipeline.missing_data_files(RECIPES["p100"], with_rl=False) == []


def test_tiny_cpu_2026_goes_base_to_sft_on_the_2026_model(tmp_path):
    """The 2026 recipes' shape end to end: a 2026 base trained with recipe nanochat-2026 and
    best-fit rows, no mid-training, SFT from the base model with MuonAdamW2026, report and card."""
    out = tmp_path / "run"
    done = subprocess.run([sys.executable, "-m", "hf_nanochat.cli", "speedrun", "tiny_cpu_2026", "--output", str(out)],
                          env={**os.environ, "OMP_NUM_THREADS": "2"}, capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "stages: tokenizer -> base -> base_eval -> core_eval -> sft -> sft_eval -> report" in done.stdout
    assert not (out / "mid").exists()
    from hf_nanochat.modeling.configuration_nanochat_gpt import NanoChatGPTConfig

    base, sft = NanoChatGPTConfig.from_pretrained(out / "base" / "model"), NanoChatGPTConfig.from_pretrained(out / "sft")
    assert base.nanochat_architecture == sft.nanochat_architecture == "2026" and base.to_dict() == sft.to_dict()
    saved = yaml.safe_load((out / "base" / "train_config.yaml").read_text())
    assert (saved["optimizer"], saved["packing"], saved["grad_clip"], saved["warmdown_ratio"]) == ("muon_adamw_2026", "best_fit", 0.0, 0.65)
    metrics = [json.loads(line) for line in (out / "base" / "metrics.jsonl").read_text().splitlines()]
    assert len(metrics) == 40 and metrics[-1]["loss"] < metrics[0]["loss"] and "data_dropped_frac" in metrics[-1]
    sft = [json.loads(line)["loss"] for line in (out / "sft" / "metrics.jsonl").read_text().splitlines()]
    assert sft[-1] < sft[0]
    used = json.loads((out / "sft" / "data_used.json").read_text())["stages"]
    assert list(used) == ["base", "sft"]
    assert json.loads((out / "eval_base.json").read_text())["packing"] == "best_fit"  # val rows cut as in training
    md = (out / "report.md").read_text()
    assert "- architecture: nanochat 2026" in md and "| sft | done |" in md and "| mid |" not in md
    assert (out / "sft" / "report.md").read_text() == md
