"""device_batch_size: auto - halving on a (simulated) out-of-memory keeps the total batch, and the
run is then exactly the run that started with the smaller device batch."""
import json
import sys
from pathlib import Path

import pytest
import torch
from accelerate.state import AcceleratorState

from hf_nanochat.train.auto_batch import halve, initial_device_batch, rows_per_step
from hf_nanochat.modeling.modeling_nanochat_gpt import NanoChatGPTForCausalLM
from hf_nanochat.train.pretrain import train
from hf_nanochat.train.config import config_from_dict

sys.path.insert(0, str(Path(__file__).parent))
from pretrain_helpers import make_corpus, make_tokenizer, tiny_overrides  # noqa: E402

pytestmark = pytest.mark.usefixtures("fresh_accelerate_state")


def test_initial_batch_and_halving_rules():
    assert rows_per_step(256, 32, 1) == 8
    assert initial_device_batch(256, 32, 1) == 8
    assert initial_device_batch(256, 32, 1, fits=lambda b: b <= 5) == 4  # largest divisor of 8 that fits
    assert initial_device_batch(96 * 32, 32, 1, fits=lambda b: b <= 40) == 32
    assert halve(8, 1) == (4, 2) and halve(4, 2) == (2, 4)
    with pytest.raises(ValueError, match="halve"):
        halve(1, 8)
    with pytest.raises(ValueError, match="multiple"):
        rows_per_step(250, 32, 1)


def test_simulated_oom_halves_device_batch_and_matches_a_fixed_batch_run(tmp_path, monkeypatch, capsys):
    corpus = make_corpus(tmp_path / "corpus", train_docs=800, val_docs=60)
    data = (corpus, make_tokenizer(tmp_path / "tok", corpus))
    fixed = train(config_from_dict(tiny_overrides(*data, device_batch_size=2, num_iterations=4, output_dir=str(tmp_path / "fixed"))))
    AcceleratorState._reset_state(reset_partial_state=True)

    real_forward = NanoChatGPTForCausalLM.forward
    calls = []

    def forward_with_2_row_memory(self, input_ids=None, **kwargs):
        if self.training and input_ids is not None and input_ids.shape[0] > 2:
            calls.append(input_ids.shape[0])
            raise torch.OutOfMemoryError(f"simulated: {input_ids.shape[0]} rows do not fit")
        return real_forward(self, input_ids=input_ids, **kwargs)

    monkeypatch.setattr(NanoChatGPTForCausalLM, "forward", forward_with_2_row_memory)
    auto = train(config_from_dict(tiny_overrides(*data, device_batch_size="auto", num_iterations=4, output_dir=str(tmp_path / "auto"))))
    out = capsys.readouterr()
    log = out.out + out.err
    assert "device_batch_size: auto -> 8" in log  # 256 tokens / 32 per row on 1 device
    assert calls == [8, 4]
    assert "device batch 8 -> 4, gradient accumulation 1 -> 2, total batch unchanged (256 tokens)" in log
    assert "device batch 4 -> 2, gradient accumulation 2 -> 4, total batch unchanged (256 tokens)" in log
    state = json.loads((tmp_path / "auto/checkpoints/step_000004/state/trainer_state.json").read_text())
    assert state["device_batch_size"] == 2
    a = [json.loads(line)["loss"] for line in (tmp_path / "auto/metrics.jsonl").read_text().splitlines()]
    b = [json.loads(line)["loss"] for line in (tmp_path / "fixed/metrics.jsonl").read_text().splitlines()]
    assert a == pytest.approx(b, abs=1e-6) and len(a) == 4
    assert auto["val_bpb"] == pytest.approx(fixed["val_bpb"], abs=1e-6)


def test_oom_after_the_first_steps_is_raised(tmp_path, monkeypatch):
    corpus = make_corpus(tmp_path / "corpus", train_docs=800, val_docs=60)
    data = (corpus, make_tokenizer(tmp_path / "tok", corpus))
    real_forward = NanoChatGPTForCausalLM.forward
    seen = []

    def oom_on_step_3(self, input_ids=None, **kwargs):
        if self.training:
            seen.append(1)
            if len(seen) > 2:  # device batch 8, no accumulation: the 3rd forward is step 3
                raise torch.OutOfMemoryError("simulated late OOM")
        return real_forward(self, input_ids=input_ids, **kwargs)

    monkeypatch.setattr(NanoChatGPTForCausalLM, "forward", oom_on_step_3)
    with pytest.raises(torch.OutOfMemoryError):
        train(config_from_dict(tiny_overrides(*data, device_batch_size="auto", num_iterations=4, output_dir=str(tmp_path / "late"))))


ONLY_RANK_1_OOMS = """
import os, sys, torch
import hf_nanochat.train.pretrain as P
from hf_nanochat.modeling.modeling_nanochat_gpt import NanoChatGPTForCausalLM
real = NanoChatGPTForCausalLM.forward
def forward(self, input_ids=None, **kwargs):
    if os.environ.get("RANK") == "1" and self.training and input_ids is not None and input_ids.shape[0] > 2:
        raise torch.OutOfMemoryError("simulated: rank 1 fits 2 rows")
    return real(self, input_ids=input_ids, **kwargs)
NanoChatGPTForCausalLM.forward = forward
sys.exit(P.main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_two_ranks_agree_when_only_one_runs_out_of_memory(tmp_path):
    """Rank 1 alone runs out of memory above 2 rows: both ranks halve together (8 -> 4 -> 2 rows,
    accumulation 1 -> 2 -> 4 on both) and the run equals a 2-process run at device batch 2."""
    import os
    import socket
    import subprocess

    repo = Path(__file__).resolve().parent.parent
    corpus = make_corpus(tmp_path / "corpus", train_docs=800, val_docs=60)
    tok = make_tokenizer(tmp_path / "tok", corpus)
    script = tmp_path / "rank1_ooms.py"
    script.write_text(ONLY_RANK_1_OOMS)

    def launch(out, batch):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        over = tiny_overrides(corpus, tok, device_batch_size=batch, num_iterations=3, total_batch_size=512, output_dir=str(out))
        args = [f"--{k}={v}" for k, v in over.items() if k != "sample_prompts"] + ["--sample_prompts=The red cat"]
        env = {**os.environ, "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "true"}
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(repo / "accelerate_configs/cpu_ddp.yaml"),
               "--main_process_port", str(port), str(script), *args]
        done = subprocess.run(cmd, env=env, cwd=repo, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
        return done.stdout + done.stderr

    fixed_log = launch(tmp_path / "fixed", 2)
    auto_log = launch(tmp_path / "auto", "auto")
    assert "device_batch_size: auto -> 8" in auto_log  # 512 tokens / (32 x 2 ranks)
    assert "device batch 8 -> 4, gradient accumulation 1 -> 2" in auto_log
    assert "device batch 4 -> 2, gradient accumulation 2 -> 4" in auto_log
    assert "grad-accumulation" in fixed_log
    state = json.loads((tmp_path / "auto/checkpoints/step_000003/state/trainer_state.json").read_text())
    assert state["device_batch_size"] == 2 and state["world_size"] == 2
    a = [json.loads(line)["loss"] for line in (tmp_path / "auto/metrics.jsonl").read_text().splitlines()]
    b = [json.loads(line)["loss"] for line in (tmp_path / "fixed/metrics.jsonl").read_text().splitlines()]
    assert len(a) == 3 and a == pytest.approx(b, abs=1e-5)
