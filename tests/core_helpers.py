"""A CORE bundle written in the eval bundle's exact layout, a byte tokenizer and a scripted model
whose answers follow one rule, so every accuracy below is known by construction.

The model ("repeat model"): after token u it gives logit 3 to u and 0 to every other token. So
  * multiple choice / schema: the row whose scored span has the most tokens equal to the token
    before them has the lowest mean cross-entropy and wins (ties: the first row, as nanochat);
  * language modelling: correct iff every continuation token equals the token before it.
The tokenizer has no merges (256 bytes + nanochat's specials), so one ASCII character is one
token and the spans can be counted by hand.
"""
from __future__ import annotations

import csv
import json
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers.modeling_outputs import CausalLMOutput

from hf_nanochat.data.tokenizer import train_tokenizer


def byte_tokenizer():
    return train_tokenizer(["abc"], vocab_size=265)  # 256 byte tokens + 9 specials: no merges


class RepeatModel(torch.nn.Module):
    def __init__(self, vocab_size: int):
        super().__init__()
        self.vocab_size = vocab_size
        self.anchor = torch.nn.Parameter(torch.zeros(()))  # gives the module a device
        self.calls: list[tuple[int, int]] = []  # shapes of the batches it was given

    def forward(self, input_ids, logits_to_keep: int | torch.Tensor = 0, **kwargs):
        self.calls.append(tuple(input_ids.shape))
        logits = 3.0 * F.one_hot(input_ids, self.vocab_size).float() + self.anchor
        # transformers' convention: an int keeps the last N positions (0: all), a tensor those positions
        if isinstance(logits_to_keep, int):
            return CausalLMOutput(logits=logits[:, -logits_to_keep:] if logits_to_keep else logits)
        return CausalLMOutput(logits=logits[:, logits_to_keep])


def _mc(i: int, winner: int, gold: int, n: int) -> dict:
    # "bbb" repeats twice in its span, the others ("abc", "cde", ...) never: "bbb" wins.
    others = iter(["abc", "cde", "fgh", "ijk"])
    choices = ["bbb" if k == winner else next(others) for k in range(n)]
    return {"query": f"Question {i}: which one?", "choices": choices, "gold": gold}


def _mc_prefix(i: int, winner: int, gold: int) -> dict:
    # "go aaa" vs "go abc": the common prefix ends after "go a"; spans "aa" (2 repeats) and "bc" (0).
    choices = ["go abc", "go abc"]
    choices[winner] = "go aaa"
    return {"query": f"Where {i}?", "choices": choices, "gold": gold}


def _schema(i: int, spaced: int | None, gold: int) -> dict:
    # An option ending in a space repeats it at the delimiter's space: it wins. None: a tie.
    options = [f"he sat {i}", f"he ran {i}"]
    if spaced is not None:
        options[spaced] += " "
    return {"context_options": options, "continuation": "and went home", "gold": gold}


# (label, type, shots, delimiter or None for the default, baseline %, rows, correct per row)
def _tasks():
    mc_zero = [(0, 0), (1, 1), (2, 0), (3, 3), (1, 2), (0, 0), (2, 2), (3, 1)]  # (winner, gold): 5 right
    mc_few = [(k % 5, k % 5 if k < 7 else (k + 1) % 5) for k in range(10)]  # 7 right
    mc_prefix = [(0, 0), (1, 1), (1, 1), (0, 1)]  # 3 right
    schema_zero = [(1, 1), (0, 0), (1, 0), (None, 0), (None, 1), (0, 0)]  # (spaced, gold): 4 right
    schema_few = [(0, 0), (1, 1), (0, 1), (1, 1), (0, 0), (None, 0), (1, 0), (0, 0)]  # 6 right
    lm_zero = ["zzz", "z", "zz z", "a", "zzzz"]  # default " " delimiter: the span starts with the space: none right
    lm_few = ["===", "==x", "x==", "=", "=a=", "====", "ab", "==", "=x", "= ="]  # "=" delimiter: 4 right
    return [
        ("mc_zero", "multiple_choice", 0, None, 25.0,
         [_mc(i, w, g, 4) for i, (w, g) in enumerate(mc_zero)], [w == g for w, g in mc_zero]),
        ("mc_fewshot", "multiple_choice", 3, "\nAnswer:", 20.0,
         [_mc(i, w, g, 5) for i, (w, g) in enumerate(mc_few)], [w == g for w, g in mc_few]),
        ("mc_prefix", "multiple_choice", 1, " ", 25.0,
         [_mc_prefix(i, w, g) for i, (w, g) in enumerate(mc_prefix)], [w == g for w, g in mc_prefix]),
        ("schema_zero", "schema", 0, None, 50.0,
         [_schema(i, s, g) for i, (s, g) in enumerate(schema_zero)], [(s if s is not None else 0) == g for s, g in schema_zero]),
        ("schema_fewshot", "schema", 2, " because", 50.0,
         [_schema(i, s, g) for i, (s, g) in enumerate(schema_few)], [(s if s is not None else 0) == g for s, g in schema_few]),
        ("lm_zero", "language_modeling", 0, None, 0.0,
         [{"context": f"say z {i} z", "continuation": c} for i, c in enumerate(lm_zero)], [False] * len(lm_zero)),
        ("lm_fewshot", "language_modeling", 3, "=", 0.0,
         [{"context": f"  value {i}  ", "continuation": c} for i, c in enumerate(lm_few)], [set(c) == {"="} for c in lm_few]),
    ]


EXPECTED_CORRECT = {"mc_zero": 5, "mc_fewshot": 7, "mc_prefix": 3, "schema_zero": 4, "schema_fewshot": 6, "lm_zero": 0, "lm_fewshot": 4}


def write_bundle(root: Path) -> dict[str, list[bool]]:
    """core.yaml + eval_meta_data.csv + eval_data/<uri> JSONL, as nanochat's eval_bundle; returns
    each task's per-row correctness under the repeat model, in file order."""
    root.mkdir(parents=True, exist_ok=True)
    lines = ["icl_tasks:"]
    flags = {}
    for label, kind, shots, delimiter, _, rows, correct in _tasks():
        uri = f"{kind}/{label}.jsonl"
        (root / "eval_data" / kind).mkdir(parents=True, exist_ok=True)
        (root / "eval_data" / uri).write_text("".join(json.dumps(r) + "\n" for r in rows))
        lines += ["-", f"  label: {label}", f"  dataset_uri: {uri}", f"  num_fewshot: [{shots}]", f"  icl_task_type: {kind}"]
        if delimiter is not None:
            lines.append(f"  continuation_delimiter: {json.dumps(delimiter)}")
        flags[label] = correct
    (root / "core.yaml").write_text("\n".join(lines) + "\n")
    with open(root / "eval_meta_data.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["Eval Task", "Task Category", "Task Type", "#shots", "Random baseline", "Centered Metric?", "Description"])
        for label, kind, shots, _, baseline, _, _ in _tasks():
            w.writerow([label, "test", kind, shots, baseline, "Yes", "written by the test"])
        w.writerow(["not_in_core_yaml", "test", "multiple_choice", 0, 99.0, "Yes", "ignored"])
    return flags
