"""`--resume` past damage: the newest COMPLETE checkpoint is resumed, each skipped one is named
with the reason, and the run ends exactly where an undamaged run ends."""
import json
import shutil
import sys
from pathlib import Path

import pytest
from accelerate.state import AcceleratorState

from hf_nanochat.model_folder import safetensors_problem
from hf_nanochat.train.checkpoints import newest_complete, pretrain_checkpoint_problems, trl_checkpoint_problems
from hf_nanochat.train.config import config_from_dict
from hf_nanochat.train.pretrain import train

sys.path.insert(0, str(Path(__file__).parent))
from pretrain_helpers import corpus_and_tokenizer, tiny_overrides  # noqa: E402

pytestmark = pytest.mark.usefixtures("fresh_accelerate_state")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return corpus_and_tokenizer(tmp_path_factory.mktemp("data"), train_docs=1000, val_docs=100)


def overrides(data, out):
    return tiny_overrides(*data, num_iterations=12, eval_every=6, save_every=6, keep_checkpoints=3, output_dir=str(out))


@pytest.fixture(scope="module")
def reference(data, tmp_path_factory):
    AcceleratorState._reset_state(reset_partial_state=True)
    out = tmp_path_factory.mktemp("reference")
    train(config_from_dict(overrides(data, out)))
    AcceleratorState._reset_state(reset_partial_state=True)
    return out


def truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


DAMAGE = {
    "no trainer_state.json": (lambda c: (c / "state/trainer_state.json").unlink(), "state/trainer_state.json is missing"),
    "truncated model.safetensors": (lambda c: truncate(c / "model/model.safetensors"), "model/model.safetensors is truncated"),
    "truncated training state": (lambda c: truncate(c / "state/model.safetensors", 0.9), "state/model.safetensors is truncated"),
    "empty optimizer": (lambda c: (c / "state/optimizer.bin").write_bytes(b""), "optimizer.bin is empty"),
    "no data position": (lambda c: (c / "state/data_rank0.json").unlink(), "state/data_rank0.json is missing"),
    "garbled config": (lambda c: (c / "model/config.json").write_text('{"dep'), "model/config.json is unreadable"),
}


@pytest.mark.parametrize("kind", list(DAMAGE))
def test_resume_falls_back_to_the_newest_complete_checkpoint(reference, data, tmp_path, kind, capsys):
    shutil.copytree(reference / "checkpoints", tmp_path / "checkpoints")
    shutil.copy(reference / "metrics.jsonl", tmp_path / "metrics.jsonl")
    damage, reason = DAMAGE[kind]
    damage(tmp_path / "checkpoints/step_000012")
    assert pretrain_checkpoint_problems(tmp_path / "checkpoints/step_000012")
    summary = train(config_from_dict(overrides(data, tmp_path)), resume=True)
    out = capsys.readouterr().out
    warning = next(line for line in out.splitlines() if line.startswith("warning: skipping checkpoint"))
    assert "step_000012" in warning and reason in warning and "moved to" in warning
    assert f"resumed from {tmp_path / 'checkpoints/step_000006'} at step 6" in out
    assert summary["steps"] == 12
    ours = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    theirs = [json.loads(x) for x in (reference / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in ours] == list(range(1, 13))  # steps 7-12 redone once, not appended twice
    for a, b in zip(ours, theirs):
        assert abs(a["loss"] - b["loss"]) <= 1e-5, (a["step"], a["loss"], b["loss"])
    assert (tmp_path / "checkpoints/damaged_step_000012").is_dir()  # kept for inspection, out of the way
    assert not pretrain_checkpoint_problems(tmp_path / "checkpoints/step_000012")  # written again, complete


def test_every_checkpoint_damaged_starts_over_and_says_why(reference, data, tmp_path, capsys):
    shutil.copytree(reference / "checkpoints", tmp_path / "checkpoints")
    for step in (6, 12):
        (tmp_path / f"checkpoints/step_{step:06d}/state/trainer_state.json").unlink()
    summary = train(config_from_dict(overrides(data, tmp_path)), resume=True)
    out = capsys.readouterr().out
    assert out.count("warning: skipping checkpoint") == 2
    assert "no checkpoint" in out and summary["steps"] == 12


def test_safetensors_problem_names_the_file_and_the_sizes(tmp_path):
    import torch
    from safetensors.torch import save_file

    path = tmp_path / "w.safetensors"
    save_file({"a": torch.zeros(1000)}, path)
    assert safetensors_problem(path) is None
    size = path.stat().st_size
    truncate(path, 0.5)
    assert safetensors_problem(path) == f"{path} is truncated ({size // 2:,} of {size:,} bytes)"
    path.write_bytes(b"\x05")
    assert "not even a header" in safetensors_problem(path)
    path.write_bytes((10).to_bytes(8, "little") + b"not json!!")
    assert "header is not JSON" in safetensors_problem(path)
    assert safetensors_problem(tmp_path / "gone.safetensors") == f"{tmp_path / 'gone.safetensors'} is missing"


def test_trl_checkpoints_newest_complete_without_moving(tmp_path):
    import torch
    from safetensors.torch import save_file

    def checkpoint(step, **skip):
        c = tmp_path / f"checkpoint-{step}"
        c.mkdir()
        (c / "trainer_state.json").write_text(json.dumps({"global_step": step}))
        save_file({"w": torch.ones(4)}, c / "model.safetensors")
        for name in ("optimizer.pt", "scheduler.pt", "rng_state.pth"):
            (c / name).write_bytes(b"x")
        return c

    good, bad = checkpoint(5), checkpoint(10)
    truncate(bad / "model.safetensors")
    warnings = []
    assert newest_complete([good, bad], trl_checkpoint_problems, warnings.append, move_damaged=False) == [good]
    assert len(warnings) == 1 and "checkpoint-10" in warnings[0] and "model.safetensors is truncated" in warnings[0]
    assert bad.exists()  # other ranks only read
    (good / "scheduler.pt").unlink()
    assert trl_checkpoint_problems(good) == ["no scheduler state (scheduler.pt)"]


def test_chat_stage_resume_skips_a_damaged_trainer_checkpoint(tmp_path, capsys):
    """Real TRL checkpoints pass the completeness check; a truncated newest one is skipped."""
    from sft_helpers import tiny_model, tiny_tokenizer

    from hf_nanochat.train.sft import SFTStageConfig, run_sft_stage

    tiny_model().save_pretrained(tmp_path / "base")
    tiny_tokenizer().save_pretrained(tmp_path / "base")
    raw = dict(
        stage="sft", model=str(tmp_path / "base"), output_dir=str(tmp_path / "out"), max_length=128,
        per_device_train_batch_size=4, max_steps=4, logging_steps=1, save_steps=2, save_total_limit=None,
        precision="fp32", optimizer="adamw", data={"train": [{"source": "arithmetic", "size": 32}]},
    )
    run_sft_stage(SFTStageConfig.from_dict(raw))
    checkpoints = tmp_path / "out/checkpoints"
    assert [trl_checkpoint_problems(checkpoints / f"checkpoint-{s}") for s in (2, 4)] == [[], []]
    truncate(checkpoints / "checkpoint-4/model.safetensors")
    capsys.readouterr()
    metrics = run_sft_stage(SFTStageConfig.from_dict({**raw, "resume": True}))
    captured = capsys.readouterr()
    assert "checkpoint-4: model.safetensors is truncated" in captured.err
    assert f"resuming from {checkpoints / 'checkpoint-2'}" in captured.out
    assert metrics["global_step"] == 4 and (checkpoints / "damaged_checkpoint-4").is_dir()
    # metrics.jsonl spans both attempts, each step once: steps 3-4 of the first were redone.
    logged = [json.loads(line) for line in (tmp_path / "out/metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logged] == [1, 2, 3, 4] and all("loss" in r for r in logged)
