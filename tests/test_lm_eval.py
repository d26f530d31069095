"""A model of ours evaluates in lm-evaluation-harness through its standard `hf` backend with
trust_remote_code, offline, in a process where hf_nanochat cannot be imported."""
import json

import pytest
from sft_helpers import tiny_model, tiny_tokenizer
from isolated import run_without_hf_nanochat

lm_eval = pytest.importorskip("lm_eval")

TASK_YAML = """task: tiny_local_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "Question: {{{{question}}}}\\nAnswer:"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{answer}}}}"
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
"""

DOCS = [
    {"question": "What is 2 + 2?", "choices": ["4", "5", "22"], "answer": 0},
    {"question": "Spell the word: cat", "choices": ["c,a,t", "d,o,g"], "answer": 0},
    {"question": "Who are you?", "choices": ["nanochat", "a cat", "a rock"], "answer": 0},
    {"question": "What is 10 * 3?", "choices": ["13", "30"], "answer": 1},
]


@pytest.mark.slow
def test_lm_eval_hf_backend_with_trust_remote_code(tmp_path):
    model_dir = tmp_path / "model"
    tiny_model().save_pretrained(model_dir)
    tiny_tokenizer().save_pretrained(model_dir)
    data = tmp_path / "docs.jsonl"
    data.write_text("\n".join(json.dumps(d) for d in DOCS))
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "tiny_local_mc.yaml").write_text(TASK_YAML.format(data=data))
    result = run_without_hf_nanochat(
        f"""
        import json, lm_eval
        from lm_eval.tasks import TaskManager
        out = lm_eval.simple_evaluate(
            model="hf",
            model_args="pretrained={model_dir},trust_remote_code=True,dtype=float32",
            tasks=["tiny_local_mc"],
            task_manager=TaskManager(include_path="{tasks}"),
            device="cpu",
            batch_size=2,
        )
        print("RESULT", json.dumps({{"acc": out["results"]["tiny_local_mc"]["acc,none"], "n": out["n-samples"]["tiny_local_mc"]["effective"]}}))
        """,
        cwd=str(tmp_path),
        timeout=600,
    )
    line = next(ln for ln in result.stdout.splitlines() if ln.startswith("RESULT "))
    got = json.loads(line.removeprefix("RESULT "))
    assert got["n"] == len(DOCS)
    assert got["acc"] * len(DOCS) == pytest.approx(round(got["acc"] * len(DOCS)))
