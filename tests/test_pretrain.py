"""The pretraining loop end to end on CPU: learning, fp16 loss scaling, checkpoints and exact
resume (1 process and 2-process DDP), and a kill -9 in the middle of a save."""
import json
import math
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from accelerate.utils import set_seed
from transformers import AutoModelForCausalLM, AutoTokenizer

import hf_nanochat.modeling  # noqa: F401  (registers the Auto classes)
from hf_nanochat import NanoChatGPTConfig, NanoChatGPTForCausalLM
from hf_nanochat.train.pretrain import evaluate_bpb, list_checkpoints, train
from hf_nanochat.train.config import config_from_dict

sys.path.insert(0, str(Path(__file__).parent))
from pretrain_helpers import corpus_and_tokenizer, tiny_overrides  # noqa: E402

pytestmark = pytest.mark.usefixtures("fresh_accelerate_state")

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return corpus_and_tokenizer(tmp_path_factory.mktemp("data"))


def read_metrics(output_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (output_dir / "metrics.jsonl").read_text().splitlines()]


def reference_overrides(data, output_dir, **extra):
    # 16 steps, checkpoints at 8 and 16: the run every resume test compares against.
    return tiny_overrides(*data, num_iterations=16, eval_every=8, save_every=8, output_dir=str(output_dir), **extra)


@pytest.fixture(scope="module")
def reference_run(data, tmp_path_factory):
    AcceleratorState._reset_state(reset_partial_state=True)
    out = tmp_path_factory.mktemp("reference")
    summary = train(config_from_dict(reference_overrides(data, out)))
    AcceleratorState._reset_state(reset_partial_state=True)
    return out, summary


def test_learns_and_writes_metrics_samples_checkpoints(reference_run):
    out, summary = reference_run
    metrics = read_metrics(out)
    assert [m["step"] for m in metrics] == list(range(1, 17)) and summary["steps"] == 16
    for m in metrics:
        assert {"step", "loss", "lr", "tokens_per_s", "mfu", "grad_norm"} <= m.keys() and m["tokens_per_s"] > 0
    assert [m["step"] for m in metrics if "val_bpb" in m] == [8, 16]
    first, last = metrics[0]["loss"], sum(m["loss"] for m in metrics[-3:]) / 3
    assert first == pytest.approx(math.log(320), rel=0.05)  # zero-init lm_head: uniform predictions
    assert last < 0.6 * first
    bpb = [m["val_bpb"] for m in metrics if "val_bpb" in m]
    assert bpb[1] < bpb[0]
    # LR: flat, then nanochat's linear warmdown over the last round(0.2 * 16) = 3 steps.
    mults = [m["lr_mult"] for m in metrics]
    assert mults[:14] == [1.0] * 14 and mults[14:] == pytest.approx([2 / 3, 1 / 3])
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert [s["step"] for s in samples] == [8, 16] and all(isinstance(s["completion"], str) for s in samples)
    assert [p.name for p in list_checkpoints(out)] == ["step_000008", "step_000016"]
    # The final save_pretrained folder loads like any transformers model, tokenizer included.
    model = AutoModelForCausalLM.from_pretrained(out / "model")
    tok = AutoTokenizer.from_pretrained(out / "model")
    assert len(tok) == model.config.vocab_size == 320
    ids = torch.tensor([[tok.bos_token_id] + tok("The red cat", add_special_tokens=False)["input_ids"]])
    assert model.generate(ids, max_new_tokens=3, do_sample=False).shape[1] == ids.shape[1] + 3
    state = json.loads((out / "checkpoints/step_000016/state/trainer_state.json").read_text())
    assert state["step"] == 16 and state["world_size"] == 1


def test_existing_checkpoints_need_resume(reference_run, data):
    out, _ = reference_run
    with pytest.raises(FileExistsError, match="--resume"):
        train(config_from_dict(reference_overrides(data, out)))


def _copy_checkpoint(src_run: Path, step: int, dst: Path) -> None:
    """A run that stopped right after checkpoint `step` (its log may run past it)."""
    name = f"step_{step:06d}"
    shutil.copytree(src_run / "checkpoints" / name, dst / "checkpoints" / name)
    shutil.copy(src_run / "metrics.jsonl", dst / "metrics.jsonl")


def test_resume_matches_uninterrupted_run(reference_run, data, tmp_path):
    ref, _ = reference_run
    _copy_checkpoint(ref, 8, tmp_path)
    summary = train(config_from_dict(reference_overrides(data, tmp_path)), resume=True)
    assert summary["steps"] == 16
    ours, theirs = read_metrics(tmp_path), read_metrics(ref)
    assert [m["step"] for m in ours] == list(range(1, 17))  # the stale tail was replaced, not duplicated
    for a, b in zip(ours[8:], theirs[8:]):
        assert abs(a["loss"] - b["loss"]) <= 1e-5, (a["step"], a["loss"], b["loss"])
    assert abs(ours[-1]["val_bpb"] - theirs[-1]["val_bpb"]) <= 1e-5
    final = AutoModelForCausalLM.from_pretrained(tmp_path / "model").state_dict()
    expected = AutoModelForCausalLM.from_pretrained(ref / "model").state_dict()
    assert all(torch.allclose(final[k], expected[k], atol=1e-5) for k in expected)


def test_chunked_loss_trains_exactly_like_the_full_loss(reference_run, data, tmp_path):
    ref, _ = reference_run
    # 4 rows x 32 tokens per micro-batch, chunks of 24: uneven, and smaller than a row
    train(config_from_dict(reference_overrides(data, tmp_path, loss_chunk_tokens=24)))
    ours, theirs = read_metrics(tmp_path), read_metrics(ref)
    assert len(ours) == len(theirs) == 16
    for a, b in zip(ours, theirs):
        assert abs(a["loss"] - b["loss"]) <= 1e-5, (a["step"], a["loss"], b["loss"])
    assert abs(ours[-1]["val_bpb"] - theirs[-1]["val_bpb"]) <= 1e-5


def test_fp16_overflow_steps_are_skipped_counted_and_training_continues(data, tmp_path):
    # 2**24 times the first gradients overflows fp16 (max 65504): the first steps must be
    # skipped, each halving the scale, until it fits; then training proceeds normally.
    summary = train(config_from_dict(tiny_overrides(*data, precision="fp16", fp16_init_scale=2.0**24, num_iterations=14, eval_every=0, output_dir=str(tmp_path))))
    metrics = read_metrics(tmp_path)
    skipped = [m for m in metrics if m["skipped"]]
    assert len(skipped) >= 1 and summary["skipped_steps"] == len(skipped) == metrics[-1]["skipped_steps"]
    assert metrics[0]["skipped"] and metrics[0]["loss_scale"] == 2.0**23
    for prev, cur in zip(metrics, metrics[1:]):
        if cur["skipped"]:
            assert cur["loss_scale"] == prev["loss_scale"] / 2
    assert not any(m["skipped"] for m in metrics[-4:])
    applied = [m for m in metrics if not m["skipped"]]
    assert applied[-1]["loss"] < 0.7 * applied[0]["loss"]
    assert json.loads((tmp_path / "checkpoints/step_000014/state/trainer_state.json").read_text())["skipped_steps"] == len(skipped)


def test_fp16_overflowing_step_never_touches_the_weights(data, tmp_path):
    summary = train(config_from_dict(tiny_overrides(*data, precision="fp16", fp16_init_scale=2.0**40, num_iterations=1, eval_every=0, output_dir=str(tmp_path))))
    assert summary["skipped_steps"] == 1
    trained = AutoModelForCausalLM.from_pretrained(tmp_path / "model")
    set_seed(1)  # the run's seed: the same initial weights
    initial = NanoChatGPTForCausalLM(trained.config)
    for (name, a), b in zip(trained.state_dict().items(), initial.state_dict().values()):
        assert torch.equal(a, b), name


def test_evaluate_bpb_is_nanochats_definition():
    torch.manual_seed(0)
    accelerator = Accelerator(cpu=True)
    model = NanoChatGPTForCausalLM(NanoChatGPTConfig.from_depth(1, vocab_size=50, max_position_embeddings=16))
    model.lm_head.weight.data.normal_()
    token_bytes = torch.randint(1, 5, (50,))
    token_bytes[0] = 0  # a special token: no bytes, excluded
    batches = [(torch.randint(0, 50, (2, 8)), torch.randint(0, 50, (2, 8))) for _ in range(3)]
    batches[0][1][0, :3] = 0
    batches[1][1][1, 2] = -100  # ignored position
    got = evaluate_bpb(model, iter(batches), 10, token_bytes, torch.no_grad, accelerator)  # 10 > 3: stops at the end
    nats = n_bytes = 0.0
    for x, y in batches:
        with torch.no_grad():
            logits = model(input_ids=x).logits
        for b in range(y.shape[0]):
            for t in range(y.shape[1]):
                target = int(y[b, t])
                if target < 0 or token_bytes[target] == 0:
                    continue
                nats += float(F.cross_entropy(logits[b, t][None], y[b, t][None]))
                n_bytes += int(token_bytes[target])
    assert got == pytest.approx(nats / (math.log(2) * n_bytes), rel=1e-5)



@pytest.mark.parametrize("chunk", [5, 16, 1000])  # not dividing the 16 tokens of a batch, one row, more than a batch
def test_evaluate_bpb_chunked_is_the_same_number(chunk):
    """With the training step's loss_chunk_tokens, evaluation takes the chunked loss path (no
    whole-batch logits) and gets the same bits per byte."""
    torch.manual_seed(0)
    accelerator = Accelerator(cpu=True)
    model = NanoChatGPTForCausalLM(NanoChatGPTConfig.from_depth(1, vocab_size=50, max_position_embeddings=16))
    model.lm_head.weight.data.normal_()
    token_bytes = torch.randint(1, 5, (50,))
    token_bytes[0] = 0
    batches = [(torch.randint(0, 50, (2, 8)), torch.randint(0, 50, (2, 8))) for _ in range(3)]
    batches[0][1][0, :3] = 0
    batches[1][1][1, 2] = -100
    batches[2][1][:] = 0  # a batch with no bytes at all contributes nothing
    full = evaluate_bpb(model, iter(batches), 3, token_bytes, torch.no_grad, accelerator)
    calls = []
    real_forward = NanoChatGPTForCausalLM.forward

    def spy(self, *args, **kwargs):
        out = real_forward(self, *args, **kwargs)
        calls.append(out.logits)
        return out

    NanoChatGPTForCausalLM.forward = spy
    try:
        chunked = evaluate_bpb(model, iter(batches), 3, token_bytes, torch.no_grad, accelerator, loss_chunk_tokens=chunk)
    finally:
        NanoChatGPTForCausalLM.forward = real_forward
    assert chunked == pytest.approx(full, rel=1e-6)
    assert len(calls) == 3 and all(logits is None for logits in calls)  # the chunked path never returned whole logits

def _cli(data, out: Path, extra: list[str]) -> list[str]:
    args = [f"--{k}={v}" for k, v in reference_overrides(data, out).items() if k != "sample_prompts"]
    return args + ["--sample_prompts=The red cat"] + extra


KILL_DURING_SECOND_SAVE = """
import os, signal, sys
import hf_nanochat.train.pretrain as P
real = P._fsync_tree
calls = []
def fsync_then_die(path):
    calls.append(path)
    if len(calls) == 2:  # checkpoint 2 is fully written to its temp dir, not yet renamed
        os.kill(os.getpid(), signal.SIGKILL)
    real(path)
P._fsync_tree = fsync_then_die
sys.exit(P.main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_kill_9_during_a_save_leaves_the_last_checkpoint_loadable(reference_run, data, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    killed = subprocess.run([sys.executable, "-c", KILL_DURING_SECOND_SAVE, *_cli(data, tmp_path, [])], env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_000008"]
    assert len(list((tmp_path / "checkpoints").glob(".tmp_step_000016.*"))) == 1  # the interrupted one (named per run)
    assert (tmp_path / ".run.lock").exists()  # left by the killed run: stale, taken over below
    AutoModelForCausalLM.from_pretrained(tmp_path / "checkpoints/step_000008/model")  # loadable
    resumed = subprocess.run([sys.executable, "train.py", *_cli(data, tmp_path, ["--resume"])], env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert not list((tmp_path / "checkpoints").glob(".tmp_*"))
    assert "removing the stale lock" in resumed.stderr and not (tmp_path / ".run.lock").exists()
    ours, theirs = read_metrics(tmp_path), read_metrics(reference_run[0])
    assert [m["step"] for m in ours] == list(range(1, 17))
    for a, b in zip(ours, theirs):
        assert abs(a["loss"] - b["loss"]) <= 1e-5, (a["step"], a["loss"], b["loss"])


DDP_WITH_PARAM_DUMPS = """
import sys, torch
import hf_nanochat.train.pretrain as P
real = P.Checkpointer.save
def save_and_dump(self, step, model, *args, **kwargs):
    path = real(self, step, model, *args, **kwargs)
    params = {n: p.detach().clone() for n, p in self.accelerator.unwrap_model(model).named_parameters()}
    torch.save(params, self.output_dir / f"params_rank{self.accelerator.process_index}_step{step}.pt")
    return path
P.Checkpointer.save = save_and_dump
sys.exit(P.main(sys.argv[1:]))
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch_ddp(script: Path, args: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "true"}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(REPO / "accelerate_configs/cpu_ddp.yaml"), "--main_process_port", str(_free_port()), str(script), *args]
    return subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_ddp_two_processes_identical_params_and_exact_resume(data, tmp_path):
    script = tmp_path / "ddp_train.py"
    script.write_text(DDP_WITH_PARAM_DUMPS)
    ref, resumed = tmp_path / "ref", tmp_path / "resumed"
    # device batch 4 x 32 tokens x 2 ranks x 1 accumulation step = 256 tokens per step.
    done = _launch_ddp(script, _cli(data, ref, []))
    assert done.returncode == 0, done.stderr[-3000:]
    state = json.loads((ref / "checkpoints/step_000016/state/trainer_state.json").read_text())
    assert state["world_size"] == 2 and "world size 2" in done.stdout
    for step in (8, 16):
        r0 = torch.load(ref / f"params_rank0_step{step}.pt")
        r1 = torch.load(ref / f"params_rank1_step{step}.pt")
        assert all(torch.equal(r0[k], r1[k]) for k in r0)  # replicas never drift apart
    assert (ref / "checkpoints/step_000016/state/data_rank1.json").exists()
    metrics = read_metrics(ref)
    assert metrics[-1]["loss"] < 0.6 * metrics[0]["loss"]

    _copy_checkpoint(ref, 8, resumed)
    done = _launch_ddp(script, _cli(data, resumed, ["--resume"]))
    assert done.returncode == 0, done.stderr[-3000:]
    ours, theirs = read_metrics(resumed), read_metrics(ref)
    assert [m["step"] for m in ours] == list(range(1, 17))
    for a, b in zip(ours[8:], theirs[8:]):
        assert abs(a["loss"] - b["loss"]) <= 1e-5, (a["step"], a["loss"], b["loss"])
    for rank in (0, 1):
        a = torch.load(resumed / f"params_rank{rank}_step16.pt")
        b = torch.load(ref / f"params_rank{rank}_step16.pt")
        assert all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)


@pytest.mark.slow
def test_tiny_cpu_recipe_end_to_end(tmp_path):
    """The shipped recipe, shortened: offline corpus, its own tokenizer, train, sample, reload."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "hf_nanochat.cli", "train", "--config", "train_configs/tiny_cpu.yaml", "--output_dir", str(tmp_path),
           "--num_iterations=4", "--eval_every=2", "--save_every=2", "--eval_tokens=4096", "--tokenizer_max_chars=300000", "--tokenizer_vocab_size=1024"]
    done = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("model      nanochat 2025-11, depth 2"))
    assert all(not line.startswith("step") for line in lines[:start])  # the plan comes before training
    assert lines[start + 1].startswith("precision  fp32: auto: CPU")
    metrics = read_metrics(tmp_path)
    assert [m["step"] for m in metrics] == [1, 2, 3, 4] and metrics[-1]["loss"] < metrics[0]["loss"]
    assert [m["step"] for m in metrics if "val_bpb" in m] == [2, 4]
    assert (tmp_path / "tokenizer" / "tokenizer.json").exists()
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "model")
    tok = AutoTokenizer.from_pretrained(tmp_path / "model")
    assert model.config.vocab_size == len(tok) <= 1024
    assert len((tmp_path / "samples.jsonl").read_text().splitlines()) == 2 * 3
