"""What the report says about a run is what the run did: every attempt's time and cost (failed
and killed ones too), chat-stage losses over all steps of all attempts; progress and stage
logs arrive line by line when nobody is watching a terminal."""
import io
import json
import os
import sys
import threading
import time
from pathlib import Path

import pytest

from hf_nanochat.errors import UserError
from hf_nanochat.speedrun.pipeline import Stage, read_state, run_stage, speedrun
from hf_nanochat.train.progress import LineProgress, progress_bar
from hf_nanochat.train.run_lock import FolderInUse, folder_lock


def _stage(out: Path, code: str) -> Stage:
    return Stage("base", [sys.executable, "-c", code], out / "base_done")


def test_every_attempt_counts_failed_and_killed_ones(tmp_path):
    out = tmp_path
    (out / "logs").mkdir()
    state = {"stages": {}}
    with pytest.raises(UserError, match=r"stage base failed \(exit 3\); log: .*base.log. Rerun"):
        run_stage(_stage(out, "import time; time.sleep(0.5); raise SystemExit(3)"), out, state)
    entry = read_state(out)["stages"]["base"]
    assert [a["status"] for a in entry["attempt_log"]] == ["failed"] and entry["attempt_log"][0]["exit"] == 3
    assert entry["seconds"] >= 0.5
    # A speedrun killed during attempt 2: its state says running, last heartbeat 10 s in; the
    # stage log was written 30 s after the attempt started.
    now = time.time()
    state = read_state(out)
    state["stages"]["base"]["attempt_log"].append({"started": now - 50, "seconds": 10.0, "status": "running", "exit": None})
    state["stages"]["base"]["status"] = "running"
    os.utime(out / "logs/base.log", (now - 20, now - 20))
    run_stage(_stage(out, f"open({str(out / 'base_done')!r}, 'w').close()"), out, state)
    entry = read_state(out)["stages"]["base"]
    assert [a["status"] for a in entry["attempt_log"]] == ["failed", "interrupted", "done"]
    assert entry["attempt_log"][1]["seconds"] == pytest.approx(30, abs=1)
    assert entry["attempts"] == 3 and entry["status"] == "done"
    assert entry["seconds"] == pytest.approx(sum(a["seconds"] for a in entry["attempt_log"]))


def test_stage_log_gets_each_line_as_it_is_printed(tmp_path):
    (tmp_path / "logs").mkdir()
    (tmp_path / "done").touch()
    code = "import time; print('first line'); time.sleep(4); print('second line')"  # plain print: block-buffered into a pipe
    worker = threading.Thread(target=run_stage, args=(Stage("base", [sys.executable, "-c", code], tmp_path / "done"), tmp_path, {"stages": {}}))
    worker.start()
    log = tmp_path / "logs/base.log"
    deadline = time.time() + 3.5
    while time.time() < deadline and not (log.exists() and "first line" in log.read_text()):
        time.sleep(0.1)
    text = log.read_text()
    worker.join()
    assert "first line" in text and "second line" not in text


def test_report_time_cost_and_chat_losses_cover_every_attempt(tmp_path):
    from hf_nanochat.speedrun.recipes import RECIPES
    from hf_nanochat.speedrun.report import write_report

    state = {"recipe": "tiny_cpu", "stages": {
        "tokenizer": {"status": "done", "attempts": 1, "seconds": 100.0, "attempt_log": [{"seconds": 100.0, "status": "done"}]},
        "mid": {"status": "done", "attempts": 2, "seconds": 900.0,
                "attempt_log": [{"seconds": 600.0, "status": "interrupted"}, {"seconds": 300.0, "status": "done"}]},
    }}
    (tmp_path / "speedrun_state.json").write_text(json.dumps(state))
    (tmp_path / "mid").mkdir()
    # Steps 1-4 from the killed attempt, 5-8 from the resumed one; TRL's train_loss saw only 5-8.
    rows = [{"step": s, "loss": 4.0 - 0.25 * s} for s in range(1, 9)]
    (tmp_path / "mid/metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "mid/train_metrics.json").write_text(json.dumps({"train_loss": 2.375, "global_step": 8, "log_history": rows[4:]}))
    md, js = write_report(tmp_path)
    report = json.loads(js.read_text())
    assert report["chat"]["mid"]["train_loss"] == pytest.approx(sum(r["loss"] for r in rows) / 8)  # 2.875, not 2.375
    assert report["chat"]["mid"]["final_loss"] == 2.0 and report["chat"]["mid"]["logged_steps"] == 8
    rate = RECIPES["tiny_cpu"].dollars_per_hour
    assert report["total"] == {"seconds": 1000.0, "cost": pytest.approx(1000 / 3600 * rate), "attempts": 3}
    text = md.read_text()
    assert "| mid | done | 2 (1 failed or interrupted) | 900 s |" in text and "| **total** | | 3 | 1000 s |" in text
    assert "| train loss (mean, all steps) | 2.8750 |" in text


def test_line_progress_prints_whole_lines_every_n_steps():
    out = io.StringIO()
    bar = LineProgress(total=100, initial=0, desc="pretrain", every_steps=25, every_seconds=1e9, file=out)
    for step in range(1, 101):
        bar.set_postfix(loss=f"{1 / step:.3f}")
        bar.update(1)
    bar.close()
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue() and len(lines) == 4
    assert lines[0].startswith("pretrain: 25/100 (25%) elapsed 0:00:00, eta") and lines[0].endswith("loss=0.040")
    assert lines[-1].startswith("pretrain: 100/100 (100%)")


def test_progress_is_a_bar_only_on_a_terminal(monkeypatch):
    monkeypatch.delenv("HF_NANOCHAT_PROGRESS", raising=False)
    monkeypatch.setattr(sys, "stderr", io.StringIO())  # not a tty
    assert isinstance(progress_bar(total=10, desc="x"), LineProgress)
    monkeypatch.setenv("HF_NANOCHAT_PROGRESS", "bar")
    assert not isinstance(progress_bar(total=10, desc="x", disable=True), LineProgress)


def test_second_speedrun_on_a_folder_is_refused(tmp_path):
    with folder_lock(tmp_path):
        with pytest.raises(FolderInUse, match=f"in use by pid {os.getpid()}"):
            speedrun("tiny_cpu", tmp_path)
