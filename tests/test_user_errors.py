"""Every user error ends in one line naming the thing and the fix, exit status 2, no traceback
(unless --debug or HF_NANOCHAT_DEBUG=1). Table-driven: each bad input runs as a real command."""
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from chat_helpers import save_tiny_chat_model

REPO = Path(__file__).resolve().parent.parent
TINY = "train_configs/tiny_cpu.yaml"
SFT_TINY = "train_configs/sft_tiny_cpu.yaml"


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    import torch

    root = tmp_path_factory.mktemp("bad_inputs")
    good = root / "good"
    save_tiny_chat_model(good)
    no_tok = root / "no_tokenizer"
    shutil.copytree(good, no_tok)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        (no_tok / name).unlink(missing_ok=True)
    truncated = root / "truncated"
    shutil.copytree(good, truncated)
    weights = truncated / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    empty_tok = root / "empty_tokenizer"
    empty_tok.mkdir()
    evil = root / "evil_nanochat"
    evil.mkdir()

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    torch.save({"x": Evil()}, evil / "model_000010.pt")
    (evil / "meta_000010.json").write_text("{}")
    (evil / "tokenizer.pkl").write_bytes(b"never read: the weights are refused first")
    with_checkpoint = root / "has_checkpoint"
    (with_checkpoint / "checkpoints" / "step_000004").mkdir(parents=True)
    (root / "typo.yaml").write_text("stage: base\ndept: 4\n")
    return root


# (name, argv with {root} for the fixture folder, last line as a regex, exit status)
CASES = [
    ("missing model folder (chat)", ["chat", "--model", "/nonexistent/model", "-p", "hi"],
     r"error: model folder /nonexistent/model does not exist; pass a save_pretrained folder or a Hub id \(owner/name\)", 2),
    ("missing model folder (eval)", ["eval", "{root}/nope", "--kind", "base"], r"error: model folder \S+/nope does not exist; .*", 2),
    ("missing model folder (SFT --model=)", ["train", "--config", SFT_TINY, "--model={root}/nope", "--output_dir={root}/sft_out"],
     r"error: model folder \S+/nope does not exist; .*", 2),
    ("model folder without tokenizer.json", ["chat", "--model", "{root}/no_tokenizer", "-p", "hi"],
     r"error: tokenizer folder \S+/no_tokenizer has no tokenizer.json; .*", 2),
    ("truncated safetensors names the file", ["chat", "--model", "{root}/truncated", "-p", "hi"],
     r"error: \S+/truncated/model.safetensors is truncated \([\d,]+ of [\d,]+ bytes\); re-save or re-download the model", 2),
    ("empty tokenizer folder", ["tokenizer", "eval", "--tokenizer", "{root}/empty_tokenizer"],
     r"error: tokenizer folder \S+/empty_tokenizer has no tokenizer.json; .*", 2),
    ("mistyped flag gets did-you-mean", ["train", "--config", TINY, "--dept=4"],
     r"train.py: error: unrecognized arguments: --dept=4 \(did you mean --depth\?\); see train.py --help", 2),
    ("mistyped config key gets did-you-mean", ["train", "--config", "{root}/typo.yaml"],
     r"error: train config: \S+typo.yaml: unknown key\(s\) 'dept' \(did you mean 'depth'\?\)", 2),
    ("mistyped chat-stage key", ["train", "--config", SFT_TINY, "--max_step=3"],
     r"error: unknown keys in the sft stage config: 'max_step' \(did you mean max_steps\?\)", 2),
    ("missing train config", ["train", "--config", "{root}/none.yaml"], r"error: train config \S+/none.yaml does not exist", 2),
    ("mistyped command", ["chta"], r"hf-nanochat: error: argument COMMAND: invalid choice: 'chta' .*\(did you mean chat\?\); see hf-nanochat --help", 2),
    ("unreadable memory size", ["memory", "--config", TINY, "--gpu-memory", "lots"],
     r"hf-nanochat memory: error: argument --gpu-memory: cannot read a memory size from 'lots' \(try 16GB or 16GiB\); .*", 2),
    ("missing data source", ["train", "--config", TINY, "--dataset={root}/no_corpus", "--output_dir={root}/run_nodata", "--tokenizer={root}/good"],
     r"error: data source '\S+/no_corpus': no such file or folder .*", 2),
    ("missing tokenizer folder", ["train", "--config", TINY, "--tokenizer={root}/no_tok_dir", "--output_dir={root}/run_notok"],
     r"error: tokenizer folder \S+/no_tok_dir does not exist.*", 2),
    ("existing checkpoints without --resume", ["train", "--config", TINY, "--output_dir={root}/has_checkpoint", "--tokenizer={root}/good"],
     r"error: \S+/has_checkpoint already has checkpoints \(step_000004\); pass --resume or use another --output_dir", 2),
    ("pickle with code is refused", ["convert", "from-nanochat", "{root}/evil_nanochat", "{root}/evil_out"],
     r"error: refusing to load \S+/model_000010.pt: it holds more than tensors, which could run code \(.*GLOBAL posix.system.*\)", 2),
]


def run_cli(argv, root, **env):
    argv = [a.replace("{root}", str(root)) for a in argv]
    return subprocess.run([sys.executable, "-m", "hf_nanochat.cli", *argv], cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1", **env})


@pytest.mark.slow
@pytest.mark.parametrize("name,argv,last_line,code", CASES, ids=[c[0] for c in CASES])
def test_bad_input_ends_in_one_clear_line(folders, name, argv, last_line, code):
    done = run_cli(argv, folders)
    lines = done.stderr.strip().splitlines()
    assert lines, done.stdout[-2000:]
    assert done.returncode == code, done.stderr[-3000:]
    assert re.fullmatch(last_line, lines[-1]), lines[-1]
    assert "Traceback" not in done.stderr
    assert "pwned" not in done.stdout


@pytest.mark.slow
@pytest.mark.parametrize("how", ["flag", "env"])
def test_debug_shows_the_traceback(folders, how):
    argv = ["chat", "--model", "/nonexistent/model", "-p", "hi"] + (["--debug"] if how == "flag" else [])
    done = run_cli(argv, folders, **({"HF_NANOCHAT_DEBUG": "1"} if how == "env" else {}))
    assert done.returncode == 1 and "Traceback" in done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith("hf_nanochat.errors.UserError: model folder /nonexistent/model does not exist")


def test_train_help_lists_every_stage(capsys):
    from hf_nanochat.train.entry import main

    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "--depth VALUE" in out and "--total_batch_size VALUE" in out  # base
    assert "chat stages (stage: mid | sft" in out
    for key in ("--max_steps=-1", "--packing=True", "--data.train=required", "--init_lr_frac=1.0", "--peft=None"):
        assert key in out


def test_help_is_fast_and_imports_neither_torch_nor_transformers():
    code = "import sys, runpy; sys.argv=['hf-nanochat','--help']\ntry:\n runpy.run_module('hf_nanochat.cli', run_name='__main__')\nexcept SystemExit: pass\nprint(sorted(m for m in ('torch','transformers','gradio') if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.stdout.strip().splitlines()[-1] == "[]", done.stdout[-2000:] + done.stderr[-2000:]
    assert "train" in done.stdout and "speedrun" in done.stdout
