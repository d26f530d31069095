"""Chat evaluation: each task scores a known right answer right and a wrong one wrong."""
import json
from types import SimpleNamespace

import pytest
import torch
from sft_helpers import tiny_tokenizer

from hf_nanochat.evaluate import chat_eval
from hf_nanochat.data.tokenizer import encode_plain


class FavouriteTokenModel(torch.nn.Module):
    """Stands in for a model that always puts the highest logit on `favourite`, second on `second`."""

    def __init__(self, vocab, favourite, second):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.vocab, self.favourite, self.second = vocab, favourite, second

    def forward(self, input_ids):
        logits = torch.zeros(*input_ids.shape, self.vocab)
        logits[..., self.favourite] = 2.0
        logits[..., self.second] = 1.0
        return SimpleNamespace(logits=logits)


def _arc_row(answer):
    return {"question": "Which is a mammal?", "choices": {"text": ["shark", "whale", "trout", "eel"], "label": ["A", "B", "C", "D"]}, "answerKey": answer}


def test_multiple_choice_scores_the_argmax_letter(tmp_path):
    tok = tiny_tokenizer()
    letter = lambda x: encode_plain(tok, [x])[0][0]  # noqa: E731
    model = FavouriteTokenModel(len(tok), favourite=letter("B"), second=letter("C"))
    path = tmp_path / "arc.jsonl"
    path.write_text("\n".join(json.dumps(_arc_row(a)) for a in ["B", "C", "A"]))
    res = chat_eval.evaluate_chat(model, tok, ["ARC-Easy"], {"ARC-Easy": str(path)}, batch_size=2, progress=False)
    assert res["tasks"]["ARC-Easy"] == {
        "accuracy": pytest.approx(1 / 3), "correct": 1, "total": 3, "baseline": 0.25,
        "sample": {"scored": 3, "of": 3, "seed": 42, "random_sample": False}, "data": str(path),
    }
    # only the question's own letters compete: with choices A/C the second favourite (C) wins
    records = [{"messages": chat_eval.chat_data.mc_record("q", ["x", "y"], 1, letters=["A", "C"])["messages"], "letters": ["A", "C"], "answer": "C"}]
    assert chat_eval.predict_letters(model, tok, records) == ["C"]


def test_gsm8k_scores_the_final_answer(tmp_path):
    tok = tiny_tokenizer()
    rows = [{"question": "1+1?", "answer": "1+1=<<1+1=2>>2\n#### 2"}, {"question": "2+3?", "answer": "2+3=<<2+3=5>>5\n#### 5"}]
    path = tmp_path / "gsm8k.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    def answer(ids):  # right for 1+1, wrong for 2+3 (rows arrive in the seed-42 shuffled order)
        return ["The answer is\n#### 2"] if "1+1?" in tok.decode(ids) else ["I think\n#### 6"]

    res = chat_eval.evaluate_chat(_Dummy(), tok, ["GSM8K"], {"GSM8K": str(path)}, generate=answer, progress=False)
    assert res["tasks"]["GSM8K"]["correct"] == 1 and res["tasks"]["GSM8K"]["total"] == 2
    assert chat_eval.extract_answer("so #### 1,234.") == "1234."
    assert chat_eval.numeric_answer_correct(chat_eval.chat_data.gsm8k_record(rows[0]), "#### 2")
    assert not chat_eval.numeric_answer_correct(chat_eval.chat_data.gsm8k_record(rows[0]), "no answer")


def test_pass_at_k_counts_any_correct_sample():
    tok = tiny_tokenizer()
    record = chat_eval.chat_data.gsm8k_record({"question": "q", "answer": "#### 7"})
    assert chat_eval.score_generative(tok, [record], chat_eval.numeric_answer_correct, lambda ids: ["#### 1", "#### 7"]) == [True]
    assert chat_eval.score_generative(tok, [record], chat_eval.numeric_answer_correct, lambda ids: ["#### 1", "#### 8"]) == [False]


HUMANEVAL_ROW = {
    "task_id": "HumanEval/0",
    "prompt": "from typing import List\n\n\ndef add(xs: List[int]) -> int:\n    \"\"\"Sum of xs.\"\"\"\n",
    "canonical_solution": "    return sum(xs)\n",
    "test": "def check(candidate):\n    assert candidate([1, 2, 3]) == 6\n    assert candidate([]) == 0\n",
    "entry_point": "add",
}


def test_humaneval_runs_completions_in_the_sandbox(tmp_path):
    tok = tiny_tokenizer()
    path = tmp_path / "humaneval.jsonl"
    path.write_text(json.dumps(HUMANEVAL_ROW) + "\n" + json.dumps(HUMANEVAL_ROW))
    right = "```python\ndef add(xs: List[int]) -> int:\n    return sum(xs)\n```"
    wrong = "def add(xs):\n    return len(xs)\n"
    completions = iter([[right], [wrong]])
    res = chat_eval.evaluate_chat(_Dummy(), tok, ["HumanEval"], {"HumanEval": str(path)}, generate=lambda ids: next(completions), progress=False)
    assert res["tasks"]["HumanEval"]["correct"] == 1
    record = chat_eval.chat_data.humaneval_record(HUMANEVAL_ROW)
    hostile = "import os\ndef add(xs):\n    os.remove('/etc/hostname')\n    return sum(xs)\n"
    assert not chat_eval.humaneval_correct(record, hostile)


def test_spelling_bee_is_offline_and_scored():
    tok = tiny_tokenizer()

    def oracle(prompt_ids):  # answers from the prompt itself: counts the letter in the word
        return ["#### 0"]

    res = chat_eval.evaluate_chat(_Dummy(), tok, ["SpellingBee"], {"SpellingBee": "bundled"}, max_problems=20, generate=oracle, progress=False)
    records = list(chat_eval.TASKS["SpellingBee"].load("bundled").select(range(20)))
    zero = sum(chat_eval.extract_answer(chat_eval.reference_text(r)) == "0" for r in records)
    assert res["tasks"]["SpellingBee"]["correct"] == zero < 20


def test_max_problems_scores_a_seeded_random_sample_and_says_so(tmp_path, capsys):
    """nanochat's tasks shuffle with seed 42 and chat_eval.py scores the first N of that order:
    a random sample (not the first subjects of MMLU), the same N for every task, printed as such."""
    tok = tiny_tokenizer()
    rows = [{"question": f"q{i}", "choices": ["a", "b", "c", "d"], "answer": i % 4, "subject": f"s{i // 10}"} for i in range(40)]
    path = tmp_path / "mmlu.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    asked = []

    class Recorder(FavouriteTokenModel):
        def forward(self, input_ids):
            asked.extend(tok.decode(ids) for ids in input_ids.tolist())
            return super().forward(input_ids)

    a = encode_plain(tok, ["A"])[0][0]
    res = chat_eval.evaluate_chat(Recorder(len(tok), a, a), tok, ["MMLU"], {"MMLU": str(path)}, max_problems=5, batch_size=1)
    shuffled = [r["question"] for r in chat_eval.chat_data.Dataset.from_list(rows).shuffle(seed=42)][:5]
    assert [next(q for q in (r["question"] for r in rows) if f"question: {q}\n" in text) for text in asked] == shuffled
    assert shuffled != [f"q{i}" for i in range(5)]
    assert res["tasks"]["MMLU"]["sample"] == {"scored": 5, "of": 40, "seed": 42, "random_sample": True}
    assert "random sample of 5 of 40, seed 42" in capsys.readouterr().out
    assert "| random sample of 5 of 40, seed 42 |" in chat_eval.markdown_table(res, "t")


def test_chatcore_centres_on_baselines_and_table():
    assert chat_eval.chatcore({"ARC-Easy": 0.25, "GSM8K": 0.0}) == 0.0
    assert chat_eval.chatcore({"ARC-Easy": 0.5, "GSM8K": 0.2}) == pytest.approx(((0.5 - 0.25) / 0.75 + 0.2) / 2)
    assert chat_eval.chatcore({name: 1.0 for name in chat_eval.TASKS}) == pytest.approx(1.0)
    res = {"tasks": {"MMLU": {"accuracy": 0.4, "correct": 4, "total": 10, "baseline": 0.25}}, "chatcore": 0.2, "chatcore_complete": False}
    table = chat_eval.markdown_table(res, "Chat evaluation")
    assert "| MMLU | 40.00% | 4 / 10 | - | 0.2000 |" in table and "partial" in table


class _Dummy(torch.nn.Module):
    """A model slot for generative tasks whose generations the test supplies."""


@pytest.mark.parametrize("packing", ["stream", "best_fit"])
def test_base_eval_bpb_matches_closed_form(tmp_path, packing):
    """An untrained nanochat model (zero lm_head) predicts uniformly: every token costs log2(V)
    bits, so bpb = log2(V) * (tokens with bytes) / (their bytes) on the very batches read, rows
    cut as `packing` cuts them (the two packings give different rows, hence different numbers)."""
    import math

    from sft_helpers import tiny_model

    from hf_nanochat.data.best_fit import BestFitStream
    from hf_nanochat.data.stream import PretrainStream
    from hf_nanochat.data.tokenizer import token_byte_lengths

    tok = tiny_tokenizer()
    folder = tmp_path / "corpus"
    folder.mkdir()
    for i in range(2):  # the last file is the val split
        (folder / f"shard_{i}.jsonl").write_text("\n".join(json.dumps({"text": f"document {i}-{j}: the quick brown fox counts {j * 7} apples" + " and pears" * (j % 5)}) for j in range(40)))
    model = tiny_model(pretrained_like=False)
    res = chat_eval.evaluate_base(model, tok, str(folder), seq_len=32, batch_size=2, max_batches=3, packing=packing)
    nbytes = token_byte_lengths(tok)

    def closed_form(stream_class):
        batches = [b for _, b in zip(range(3), stream_class(tok, source=str(folder), seq_len=32, batch_size=2, split="val"))]
        counted = nbytes[torch.cat([y.reshape(-1) for _, y in batches])]
        return math.log2(len(tok)) * int((counted > 0).sum()) / int(counted.sum())

    expected = {"stream": closed_form(PretrainStream), "best_fit": closed_form(BestFitStream)}
    assert expected["stream"] != pytest.approx(expected["best_fit"], rel=1e-3)
    assert res["val_bpb"] == pytest.approx(expected[packing], rel=1e-5)
    assert res["val_tokens"] == 3 * 2 * 32
    assert res["packing"] == packing


def test_eval_cli_writes_json_and_markdown(tmp_path):
    """`hf-nanochat eval` end to end on a saved model with the real Engine and local task files."""
    pytest.importorskip("hf_nanochat.serve.engine")
    from sft_helpers import tiny_model

    from hf_nanochat.cli import main

    model_dir = tmp_path / "model"
    tiny_model().save_pretrained(model_dir)
    tiny_tokenizer().save_pretrained(model_dir)
    arc = tmp_path / "arc.jsonl"
    arc.write_text("\n".join(json.dumps(_arc_row(a)) for a in "ABCD"))
    gsm = tmp_path / "gsm.jsonl"
    gsm.write_text(json.dumps({"question": "1+1?", "answer": "<<1+1=2>>2\n#### 2"}))
    out = tmp_path / "report" / "eval.json"
    rc = main(["eval", str(model_dir), "--tasks", "ARC-Easy,GSM8K", "--data", f"ARC-Easy={arc}", "--data", f"GSM8K={gsm}",
               "--max-tokens", "8", "--device", "cpu", "--out", str(out)])
    assert rc == 0
    res = json.loads(out.read_text())
    # one letter wins for every question with the same four choices: exactly one of A-D is right
    assert res["tasks"]["ARC-Easy"]["correct"] == 1 and res["tasks"]["ARC-Easy"]["total"] == 4
    assert res["tasks"]["GSM8K"]["total"] == 1
    assert res["chatcore"] == pytest.approx(chat_eval.chatcore({k: v["accuracy"] for k, v in res["tasks"].items()}))
    assert "| ARC-Easy | 25.00% | 1 / 4 |" in out.with_suffix(".md").read_text()


@pytest.mark.parametrize("final, expected", [("51", True), ("50", False)])
def test_gsm8k_through_the_engine_with_a_calculator_call(final, expected):
    """A scripted model calls the calculator (the engine forces the result in) and then writes
    `#### final`; the task scores the decoded completion."""
    from chat_helpers import ScriptedModel
    from chat_helpers import tiny_model as engine_model

    tok = tiny_tokenizer()
    t = tok.convert_tokens_to_ids
    enc = lambda s: encode_plain(tok, [s])[0]  # noqa: E731
    forced = [t("<|output_start|>"), *enc("51"), t("<|output_end|>")]
    script = enc("So ") + [t("<|python_start|>"), *enc("17*3"), t("<|python_end|>")] + [0] * len(forced) + enc(f"\n#### {final}")
    model = ScriptedModel(engine_model(len(tok)), script, t("<|assistant_end|>"))
    record = chat_eval.chat_data.gsm8k_record({"question": "What is 17*3?", "answer": "17*3=<<17*3=51>>51\n#### 51"})
    generate = chat_eval.engine_generator(model, tok, max_tokens=64, temperature=0.0)
    assert chat_eval.score_generative(tok, [record], chat_eval.numeric_answer_correct, generate) == [expected]
