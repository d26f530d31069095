"""One run per output folder: a second start fails naming the first; stale locks of dead
processes are taken over; the lock goes away when the run ends (also on Ctrl-C)."""
import json
import multiprocessing
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hf_nanochat.train.run_lock import LOCK_NAME, FolderInUse, acquire, folder_lock, release

sys.path.insert(0, str(Path(__file__).parent))
from pretrain_helpers import make_corpus, make_tokenizer, tiny_overrides  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_second_lock_names_the_holder_and_release_frees_it(tmp_path):
    with folder_lock(tmp_path, command="train.py --config a.yaml") as path:
        holder = json.loads(path.read_text())
        assert holder["pid"] == os.getpid() and holder["host"] == socket.gethostname()
        with pytest.raises(FolderInUse, match=rf"in use by pid {os.getpid()} on {socket.gethostname()} .*train.py --config a.yaml"):
            acquire(tmp_path)
    assert not (tmp_path / LOCK_NAME).exists()


def test_stale_lock_of_a_dead_process_is_taken_over(tmp_path, capsys):
    pid = dead_pid()
    (tmp_path / LOCK_NAME).write_text(json.dumps({"pid": pid, "host": socket.gethostname(), "started": 0, "command": "old run"}))
    path = acquire(tmp_path)
    assert json.loads(path.read_text())["pid"] == os.getpid()
    assert f"removing the stale lock of a run that no longer runs: pid {pid}" in capsys.readouterr().err
    release(path)


def test_lock_from_another_host_is_not_guessed_stale(tmp_path):
    (tmp_path / LOCK_NAME).write_text(json.dumps({"pid": 1, "host": "gpu-node-7", "started": 0, "command": "x"}))
    with pytest.raises(FolderInUse, match=rf"pid 1 on gpu-node-7 .*delete {tmp_path / LOCK_NAME}"):
        acquire(tmp_path)
    release(tmp_path / LOCK_NAME)  # not ours: left alone
    assert (tmp_path / LOCK_NAME).exists()


def _contend(folder, barrier, results):
    barrier.wait()
    try:
        acquire(Path(folder))
        results.put("won")
        time.sleep(1.0)  # hold it while the others try
    except FolderInUse:
        results.put("refused")


@pytest.mark.parametrize("stale", [False, True])
def test_concurrent_starts_exactly_one_wins(tmp_path, stale):
    if stale:  # every contender finds the same stale lock: still only one may take it over
        (tmp_path / LOCK_NAME).write_text(json.dumps({"pid": dead_pid(), "host": socket.gethostname(), "started": 0}))
    ctx = multiprocessing.get_context("fork")
    barrier, results = ctx.Barrier(6), ctx.Queue()
    procs = [ctx.Process(target=_contend, args=(str(tmp_path), barrier, results)) for _ in range(6)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
    outcomes = sorted(results.get(timeout=5) for _ in procs)
    assert outcomes == ["refused"] * 5 + ["won"]


@pytest.mark.slow
def test_two_training_runs_on_one_folder(tmp_path):
    """A real second `train.py` on a running run's folder: one-line error naming the first's
    pid, exit 2, the first run unharmed; Ctrl-C on the first releases the lock."""
    corpus = make_corpus(tmp_path / "corpus", train_docs=500, val_docs=50)
    tokenizer = make_tokenizer(tmp_path / "tok", corpus)
    out = tmp_path / "run"
    config = tiny_overrides(corpus, tokenizer, num_iterations=100_000, eval_every=-1, save_every=-1, output_dir=str(out))
    args = [f"--{k}={v}" for k, v in config.items() if k != "sample_prompts"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    first = subprocess.Popen([sys.executable, "train.py", *args], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 240
        while time.time() < deadline and not ((out / "metrics.jsonl").exists() and (out / "metrics.jsonl").read_text().count("\n") >= 2):
            assert first.poll() is None, first.stderr.read()[-2000:]
            time.sleep(0.5)
        assert json.loads((out / LOCK_NAME).read_text())["pid"] == first.pid
        second = subprocess.run([sys.executable, "train.py", *args, "--resume"], cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
        assert second.returncode == 2
        last = second.stderr.strip().splitlines()[-1]
        assert last.startswith(f"error: {out} is in use by pid {first.pid} on {socket.gethostname()}"), second.stderr[-2000:]
        assert "Traceback" not in second.stderr
        assert first.poll() is None  # still training
    finally:
        first.send_signal(signal.SIGINT)
        _, err = first.communicate(timeout=120)
    assert first.returncode == 130 and "Traceback" not in err, err[-2000:]
    assert not (out / LOCK_NAME).exists()
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, len(steps) + 1))  # one writer: no duplicated steps
