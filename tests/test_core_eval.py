"""CORE (hf_nanochat.evaluate.core) against nanochat's rules (nanochat/core_eval.py, scripts/base_eval.py):
prompts and spans counted by hand, exact accuracies from a scripted model, 1 vs 2 processes."""
import json
import os
import random
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from core_helpers import EXPECTED_CORRECT, RepeatModel, byte_tokenizer, write_bundle
from hf_nanochat.evaluate import core

REPO = Path(__file__).resolve().parents[1]
BASELINES = {"mc_zero": 25.0, "mc_fewshot": 20.0, "mc_prefix": 25.0, "schema_zero": 50.0, "schema_fewshot": 50.0,
             "lm_zero": 0.0, "lm_fewshot": 0.0}
TOTALS = {"mc_zero": 8, "mc_fewshot": 10, "mc_prefix": 4, "schema_zero": 6, "schema_fewshot": 8, "lm_zero": 5, "lm_fewshot": 10}


@pytest.fixture(scope="module")
def tok():
    return byte_tokenizer()


@pytest.fixture
def bundle(tmp_path):
    write_bundle(tmp_path / "eval_bundle")
    return core.load_bundle(tmp_path / "eval_bundle")


def _ids(tok, text):
    from hf_nanochat.data.tokenizer import encode_plain

    return encode_plain(tok, [text])[0]


# ------------------------------------------------------------------------------ bundle files


def test_bundle_reads_tasks_shots_delimiters_and_percent_baselines(bundle):
    tasks = {t.label: t for t in bundle.tasks}
    assert list(tasks) == list(TOTALS)  # core.yaml order
    assert tasks["mc_zero"].continuation_delimiter == " "  # the default when core.yaml has none
    assert tasks["mc_fewshot"].continuation_delimiter == "\nAnswer:" and tasks["mc_fewshot"].num_fewshot == 3
    assert tasks["lm_fewshot"].dataset_uri == "language_modeling/lm_fewshot.jsonl"
    assert {k: t.random_baseline for k, t in tasks.items()} == BASELINES
    assert not bundle.smoke


def test_rows_are_shuffled_by_1337_then_cut(bundle):
    task = bundle.tasks[0]
    lines = [json.loads(x) for x in (bundle.root / "eval_data" / task.dataset_uri).read_text().splitlines()]
    expected = list(lines)
    random.Random(1337).shuffle(expected)
    assert bundle.rows(task) == expected and expected != lines
    assert bundle.rows(task, max_per_task=3) == expected[:3]


def test_bundle_errors_name_the_missing_piece(tmp_path):
    with pytest.raises(FileNotFoundError, match="lacks core.yaml, eval_meta_data.csv, eval_data"):
        core.load_bundle(tmp_path)
    write_bundle(tmp_path / "b")
    csv_path = tmp_path / "b" / "eval_meta_data.csv"
    csv_path.write_text("\n".join(line for line in csv_path.read_text().splitlines() if not line.startswith("lm_zero")))
    with pytest.raises(ValueError, match="'lm_zero' has no 'Random baseline' row"):
        core.load_bundle(tmp_path / "b")


def test_download_is_refused_offline_with_the_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(RuntimeError, match="HF_HUB_OFFLINE is set: download .*eval_bundle.zip.*--bundle"):
        core.download_bundle(tmp_path)
    ready = tmp_path / "eval_bundle"
    write_bundle(ready)
    assert core.download_bundle(tmp_path) == ready  # cached: no network needed


# ------------------------------------------------------------------- rendering, by hand


def test_fewshot_draw_is_random_1234_plus_index():
    data = [{"i": k} for k in range(4)]
    # random.Random(1234).sample([1, 2, 3], 2) == [2, 1]; random.Random(1235).sample([0, 2, 3], 2) == [3, 2]
    assert core.fewshot_examples(data, 0, 2) == [{"i": 2}, {"i": 1}]
    assert core.fewshot_examples(data, 1, 2) == [{"i": 3}, {"i": 2}]
    assert core.fewshot_examples(data, 0, 0) == []
    assert len(core.fewshot_examples(data, 0, 10)) == 3  # a cut task gives what it has (nanochat's evals/core.py)


def test_multiple_choice_prompts():
    shots = [{"query": "Q1", "choices": ["x", "y"], "gold": 1}, {"query": "Q2", "choices": ["u", "v"], "gold": 0}]
    item = {"query": "Q3", "choices": ["cat", "car"], "gold": 0}
    assert core.render_multiple_choice(item, "\nA:", shots) == ["Q1\nA:y\n\nQ2\nA:u\n\nQ3\nA:cat", "Q1\nA:y\n\nQ2\nA:u\n\nQ3\nA:car"]
    assert core.render_multiple_choice(item, " ") == ["Q3 cat", "Q3 car"]


def test_schema_prompts():
    shots = [{"context_options": ["A1", "A2"], "continuation": "c0", "gold": 1}]
    item = {"context_options": ["B1", "B2 "], "continuation": "rest", "gold": 0}
    assert core.render_schema(item, " ", shots) == ["A2 c0\n\nB1 rest", "A2 c0\n\nB2  rest"]


def test_language_modelling_prompts_trim_contexts_and_the_prefix():
    shots = [{"context": "  first ", "continuation": "one"}]
    item = {"context": " second  ", "continuation": "two"}
    assert core.render_language_modeling(item, " ", shots) == ["first one\n\nsecond", "first one\n\nsecond two"]
    assert core.render_language_modeling(item, "=") == ["second=", "second=two"]


# ------------------------------------------------------------------------- spans, by hand


def test_multiple_choice_span_starts_after_the_common_prefix(tok):
    bos = core.bos_token_id(tok)
    task = core.CoreTask("t", "t.jsonl", "multiple_choice", 0, " ", 25.0)
    data = [{"query": "Q3", "choices": ["cat", "car", "cab"], "gold": 0}]
    ex = core.prepare_example(task, data, 0, lambda texts: [_ids(tok, t) for t in texts], bos, None)
    # BOS + "Q3 ca" are shared (6 tokens); each row scores its last token: t, r, b
    assert ex.rows[0] == [bos, *_ids(tok, "Q3 cat")]
    assert ex.starts == [6, 6, 6] and ex.ends == [7, 7, 7] and ex.gold == 0


def test_schema_span_is_the_common_suffix(tok):
    task = core.CoreTask("t", "t.jsonl", "schema", 0, " ", 50.0)
    data = [{"context_options": ["he sat", "she ran "], "continuation": "home", "gold": 1}]
    ex = core.prepare_example(task, data, 0, lambda texts: [_ids(tok, t) for t in texts], core.bos_token_id(tok), None)
    # "he sat home" (12 tokens with BOS) / "she ran  home" (14): the shared suffix is " home" (5)
    assert [len(r) for r in ex.rows] == [12, 14]
    assert ex.starts == [7, 9] and ex.ends == [12, 14]


def test_language_modelling_span_is_the_continuation_after_the_stripped_prefix(tok):
    task = core.CoreTask("t", "t.jsonl", "language_modeling", 0, " ", 0.0)
    ex = core.prepare_example(task, [{"context": "ab ", "continuation": "cd"}], 0,
                              lambda texts: [_ids(tok, t) for t in texts], core.bos_token_id(tok), None)
    # without = "ab" (BOS + 2), with = "ab cd" (BOS + 5): the span is " cd", positions 3..5
    assert len(ex.rows) == 1 and len(ex.rows[0]) == 6 and ex.starts == [3] and ex.ends == [6] and ex.gold is None


def test_crop_keeps_the_last_tokens_and_shifts_spans():
    rows, starts, ends = core.crop([list(range(10)), list(range(4))], [6, 2], [10, 4], 8)
    assert rows == [list(range(2, 10)), list(range(4))] and starts == [4, 2] and ends == [8, 4]
    with pytest.raises(ValueError, match="does not fit a context of 4 tokens"):
        core.crop([list(range(10))], [6], [10], 4)


def test_lm_prefix_that_is_not_a_token_prefix_is_an_error():
    with pytest.raises(ValueError, match="not a proper prefix"):
        core.scoring_spans("language_modeling", [[1, 2, 3], [1, 2, 4, 5]])


def test_bos_is_bos_then_endoftext(tok):
    assert core.bos_token_id(tok) == tok.convert_tokens_to_ids("<|bos|>")


# ---------------------------------------------------------------- scores from a scripted model


def _expected_core():
    centred = {k: (EXPECTED_CORRECT[k] / TOTALS[k] - BASELINES[k] / 100) / (1 - BASELINES[k] / 100) for k in TOTALS}
    return centred, sum(centred.values()) / len(centred)


@pytest.mark.parametrize("batch_tokens", [0, 64, 100_000])
def test_scripted_model_gives_the_designed_accuracies_and_core(tok, bundle, batch_tokens):
    model = RepeatModel(len(tok))
    results = core.evaluate_core(model, tok, bundle, batch_tokens=batch_tokens, progress=False)
    centred, expected_core = _expected_core()
    for label, r in results["tasks"].items():
        assert (r["correct"], r["total"]) == (EXPECTED_CORRECT[label], TOTALS[label]), label
        assert r["accuracy"] == EXPECTED_CORRECT[label] / TOTALS[label]
        assert r["centred"] == pytest.approx(centred[label], abs=1e-12)
    assert results["core"] == pytest.approx(expected_core, abs=1e-12)
    assert results["complete"] is False  # 7 test tasks, not nanochat's 22
    if batch_tokens == 0:  # one forward per example holding all of its prompts
        assert len(model.calls) == sum(TOTALS.values())
        assert sorted({b for b, _ in model.calls}) == [1, 2, 4, 5]
    elif batch_tokens == 100_000:  # whole tasks in one forward
        assert len(model.calls) == len(TOTALS)


def test_max_per_task_takes_the_first_shuffled_rows(tok, tmp_path):
    flags = write_bundle(tmp_path / "b")
    bundle = core.load_bundle(tmp_path / "b")
    results = core.evaluate_core(RepeatModel(len(tok)), tok, bundle, max_per_task=3, progress=False)
    for task in bundle.tasks:
        order = list(range(len(flags[task.label])))
        random.Random(1337).shuffle(order)
        assert results["tasks"][task.label]["correct"] == sum(flags[task.label][i] for i in order[:3]), task.label
        assert results["tasks"][task.label]["total"] == 3


def test_markdown_table_lists_tasks_and_core(tok, bundle):
    results = core.evaluate_core(RepeatModel(len(tok)), tok, bundle, progress=False)
    md = core.markdown_table(results, "CORE: scripted")
    assert "| mc_fewshot | multiple_choice | 3 | 7 / 10 | 0.7000 | 0.6250 |" in md
    assert f"| **CORE** | | | | | **{results['core']:.4f}** |" in md
    assert "Partial CORE (7 tasks)" in md and "GPT-2 XL (1.5B) 0.2565" in md


def test_real_model_matches_a_one_prompt_at_a_time_reference(bundle):
    """Our model through the batched evaluator equals nanochat's rule applied prompt by prompt."""
    import torch
    import torch.nn.functional as F

    from chat_helpers import tiny_model
    from hf_nanochat.data.tokenizer import encode_plain

    tok = byte_tokenizer()
    model = tiny_model(len(tok))
    results = core.evaluate_core(model, tok, bundle, batch_tokens=4096, progress=False)
    bos = core.bos_token_id(tok)
    for task in bundle.tasks:
        data, correct = bundle.rows(task), 0
        for i in range(len(data)):
            ex = core.prepare_example(task, data, i, lambda t: encode_plain(tok, t), bos, None)
            scores = []
            for row, s, e in zip(ex.rows, ex.starts, ex.ends):
                with torch.no_grad():
                    logits = model(input_ids=torch.tensor([row])).logits[0]
                if task.task_type == "language_modeling":
                    scores.append(bool((logits[s - 1 : e - 1].argmax(-1) == torch.tensor(row[s:e])).all()))
                else:
                    scores.append(F.cross_entropy(logits[s - 1 : e - 1], torch.tensor(row[s:e])).item())
            correct += scores[0] if task.task_type == "language_modeling" else scores.index(min(scores)) == ex.gold
        assert results["tasks"][task.label]["correct"] == correct, task.label


# ----------------------------------------------------------------------- CLI and smoke bundle


def test_eval_cli_writes_core_json_and_markdown_into_the_model_folder(tmp_path):
    from chat_helpers import tiny_model
    from hf_nanochat.cli import main

    tok = byte_tokenizer()
    folder = tmp_path / "model"
    tiny_model(len(tok)).save_pretrained(folder)
    tok.save_pretrained(folder)
    write_bundle(tmp_path / "b")
    assert main(["eval", str(folder), "--kind", "core", "--bundle", str(tmp_path / "b"), "--max-per-task", "4", "--device", "cpu"]) == 0
    results = json.loads((folder / "core_eval.json").read_text())
    assert set(results["tasks"]) == set(TOTALS) and all(r["total"] == 4 for r in results["tasks"].values())
    assert results["max_per_task"] == 4 and results["max_len"] is None  # our rotary model is never cropped
    md = (folder / "core_eval.md").read_text()
    assert f"**{results['core']:.4f}**" in md and "at most 4 examples per task" in md


def test_smoke_bundle_has_the_layout_and_is_labelled_not_core(tmp_path):
    from chat_helpers import tiny_model

    root = core.write_smoke_bundle(tmp_path / "smoke", rows_per_task=16)
    bundle = core.load_bundle(root)
    assert bundle.smoke and "NOT CORE" in (root / "core.yaml").read_text()
    assert {t.task_type for t in bundle.tasks} == set(core.TASK_TYPES) and any(t.num_fewshot for t in bundle.tasks)
    tok = byte_tokenizer()
    results = core.evaluate_core(tiny_model(len(tok)), tok, bundle, max_per_task=6, progress=False)
    assert results["smoke_bundle"] and not results["complete"]
    md = core.markdown_table(results, "smoke")
    assert "Offline smoke bundle, not CORE" in md and "**smoke score**" in md and "| **CORE**" not in md
    assert core.write_smoke_bundle(root) == root  # written once


# ------------------------------------------------------------------------------ two processes

TWO_PROCESS_SCRIPT = """
import json, os, sys
sys.path.insert(0, {tests!r})
from accelerate import Accelerator
from core_helpers import RepeatModel, byte_tokenizer
from hf_nanochat.evaluate import core

accelerator = Accelerator()
assert accelerator.num_processes == 2, accelerator.num_processes
tok = byte_tokenizer()
results = core.evaluate_core(RepeatModel(len(tok)), tok, core.load_bundle(sys.argv[1]), accelerator=accelerator,
                             batch_tokens=int(sys.argv[3]), progress=False)
with open(sys.argv[2] + f".rank{{accelerator.process_index}}", "w") as f:
    json.dump(results, f)
accelerator.wait_for_everyone()
import torch.distributed as dist
dist.destroy_process_group()
sys.stdout.flush()
os._exit(0)
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_give_the_same_results(tok, bundle, tmp_path):
    script = tmp_path / "core_ddp.py"
    script.write_text(TWO_PROCESS_SCRIPT.format(tests=str(REPO / "tests")))
    out = tmp_path / "results.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "true"}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(REPO / "accelerate_configs/cpu_ddp.yaml"),
           "--main_process_port", str(_free_port()), str(script), str(bundle.root), str(out), "64"]
    done = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    single = core.evaluate_core(RepeatModel(len(tok)), tok, bundle, batch_tokens=64, progress=False)
    for rank in (0, 1):
        multi = json.loads(Path(f"{out}.rank{rank}").read_text())
        assert multi["processes"] == 2
        assert multi["core"] == single["core"]
        for label, r in single["tasks"].items():
            assert {k: multi["tasks"][label][k] for k in ("accuracy", "correct", "total", "centred", "tokens_forwarded")} == \
                   {k: r[k] for k in ("accuracy", "correct", "total", "centred", "tokens_forwarded")}, label


# ------------------------------------------------------------------- report card and model card


def _core_results(tok, bundle):
    return core.evaluate_core(RepeatModel(len(tok)), tok, bundle, progress=False)


def test_model_card_shows_the_core_table(tok, bundle, tmp_path):
    from hf_nanochat.share.hub import build_upload_folder
    from trained_folder import make_trained_folder

    folder = make_trained_folder(tmp_path / "model")
    results = _core_results(tok, bundle)
    core.write_results(results, folder / "core_eval.json", folder / "core_eval.md", "CORE")
    out = build_upload_folder(folder, tmp_path / "upload", "someone/nanochat-d2")
    card = (out / "README.md").read_text()
    assert "## CORE (DCLM, nanochat's base-model metric)" in card
    assert f"| **CORE** | | | | | **{results['core']:.4f}** |" in card
    assert json.loads((out / "core_eval.json").read_text()) == results


def test_report_card_states_core_or_smoke(tok, bundle, tmp_path):
    from hf_nanochat.speedrun.report import write_report
    from trained_folder import make_trained_folder

    out = tmp_path / "run"
    make_trained_folder(out / "base" / "model")
    (out / "base" / "metrics.jsonl").write_text("".join(
        json.dumps({"step": s, "loss": 5.0 - s, "tokens": 1000 * s, "tokens_per_s": 100.0}) + "\n" for s in (1, 2)))
    results = _core_results(tok, bundle)
    core.write_results(results, out / "base" / "model" / "core_eval.json", out / "base" / "model" / "core_eval.md", "CORE")
    md, js = write_report(out)
    assert json.loads(js.read_text())["base"]["core"]["score"] == results["core"]
    assert f"- CORE: {results['core']:.4f} (partial: 7 tasks or capped examples; GPT-2 XL 0.2565" in md.read_text()
    results["smoke_bundle"] = True
    core.write_results(results, out / "base" / "model" / "core_eval.json", out / "base" / "model" / "core_eval.md", "smoke")
    md, _ = write_report(out)
    assert f"- offline smoke score (synthetic bundle, NOT CORE): {results['core']:.4f} over 7 tasks" in md.read_text()


# ----------------------------------------------------------------------- other causal LMs (GPT-2)


def _gpt2_style_tokenizer():
    """A byte-level tokenizer whose only special token is GPT-2's <|endoftext|> (no <|bos|>)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    backend = Tokenizer(models.BPE(vocab={ch: i for i, ch in enumerate(alphabet)}, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens(["<|endoftext|>"])
    return PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|endoftext|>")


def test_gpt2_is_cropped_to_its_positions_and_matches_a_reference(bundle):
    import torch
    from types import SimpleNamespace

    from transformers import GPT2Config, GPT2LMHeadModel

    tok = _gpt2_style_tokenizer()
    assert core.bos_token_id(tok) == tok.convert_tokens_to_ids("<|endoftext|>") == 256
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_positions=48, n_embd=32, n_layer=1, n_head=2)).eval()
    assert core.default_max_len(model) == 48
    assert core.default_max_len(SimpleNamespace(config=SimpleNamespace(model_type="nanochat", max_position_embeddings=2048))) is None
    results = core.evaluate_core(model, tok, bundle, max_len=48, batch_tokens=2048, progress=False)
    assert results["max_len"] == 48
    # reference: the same cropped rows one at a time (the few-shot tasks' prompts exceed 48 tokens)
    from hf_nanochat.data.tokenizer import encode_plain

    longest = 0
    for task in bundle.tasks:
        data, correct = bundle.rows(task), 0
        for i in range(len(data)):
            ex = core.prepare_example(task, data, i, lambda t: encode_plain(tok, t), 256, 48)
            scores = []
            for row, s, e in zip(ex.rows, ex.starts, ex.ends):
                longest = max(longest, len(row))
                with torch.no_grad():
                    logits = model(input_ids=torch.tensor([row])).logits[0]
                if task.task_type == "language_modeling":
                    scores.append(bool((logits[s - 1 : e - 1].argmax(-1) == torch.tensor(row[s:e])).all()))
                else:
                    scores.append(torch.nn.functional.cross_entropy(logits[s - 1 : e - 1], torch.tensor(row[s:e])).item())
            correct += scores[0] if task.task_type == "language_modeling" else scores.index(min(scores)) == ex.gold
        assert results["tasks"][task.label]["correct"] == correct, task.label
    assert longest == 48  # some prompts were cropped
