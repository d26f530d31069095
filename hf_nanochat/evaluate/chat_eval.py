"""`hf-nanochat eval`: nanochat's evaluations of a base or chat model.

Base model: validation bits per byte on the pretraining data's val split, or DCLM CORE
(`--kind core`, in hf_nanochat.evaluate.core).
Chat model (nanochat's ChatCORE tasks):
  * ARC-Easy, ARC-Challenge, MMLU - multiple choice scored without sampling: the prompt ends in
    `<|assistant_start|>` and the prediction is the answer letter with the highest logit there
    (among the question's letters only).
  * GSM8K, SpellingBee - generation through `Engine` (with the calculator tool); correct when
    the `#### N` answer matches the reference.
  * HumanEval - generation, then the program + the task's tests run in `hf_nanochat.evaluate.sandbox`.
ChatCORE (nanochat): each task's accuracy centred on its random baseline,
(acc - baseline) / (1 - baseline) with baseline 0.25 for the 4-way multiple choice tasks and 0
for the generative ones, averaged over the tasks. Results go to JSON and a markdown table.

Tasks load from the Hub or from local files (`--data GSM8K=./gsm8k_test.jsonl`), rows in the
Hub dataset's own format, shuffled with seed 42 as nanochat's tasks are; `--max-problems N`
scores the first N of that order (nanochat's scripts/chat_eval.py does the same), i.e. a seeded
random sample, the same for every task, and the results say so (`sample`).
"""
from __future__ import annotations

import argparse
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from hf_nanochat.data import chat_data

ANSWER_RE = re.compile(r"#### (\-?[0-9\.\,]+)")


def extract_answer(text: str) -> str | None:
    """The number after `####` (GSM8K's official normalisation: commas removed)."""
    match = ANSWER_RE.search(text)
    return match.group(1).strip().replace(",", "") if match else None


def reference_text(record: dict) -> str:
    """The reference assistant message's text (python calls left out)."""
    return "".join(p["text"] for p in record["messages"][-1]["content"] if p["type"] != "python")


def numeric_answer_correct(record: dict, completion: str) -> bool:
    ref = extract_answer(reference_text(record))
    return ref is not None and extract_answer(completion) == ref


CODE_BLOCK_RE = re.compile(r"```(?:python)?\s*\n(.*?)\n```", re.DOTALL)


def humaneval_program(record: dict, completion: str) -> str:
    """The prompt's imports + the completion's code (first fenced block if any) + the task's
    tests + `check(entry_point)`: the program the sandbox runs."""
    prompt = record["messages"][0]["content"][0]["text"]
    imports = []
    for line in prompt.splitlines():
        stripped = line.strip()
        if stripped.startswith(("import ", "from ")):
            imports.append(stripped)
        elif stripped and not stripped.startswith("#"):
            break
    blocks = CODE_BLOCK_RE.findall(completion)
    code = (blocks[0] if blocks else completion).strip()
    return "\n".join(imports) + "\n\n" + code + "\n\n" + record["test"] + "\n" + f"check({record['entry_point']})\n"


def humaneval_correct(record: dict, completion: str, timeout: float = 5.0) -> bool:
    from hf_nanochat.evaluate.sandbox import run_python

    return run_python(humaneval_program(record, completion), timeout=timeout).success


@dataclass(frozen=True)
class ChatTask:
    kind: str  # "categorical" | "generative"
    baseline: float  # accuracy of random guessing, for ChatCORE
    load: Callable[[str | None], Any]  # local path or None (Hub) -> Dataset of records
    check: Callable[[dict, str], bool] | None = None  # generative tasks: record, completion -> correct


TASKS: dict[str, ChatTask] = {
    "ARC-Easy": ChatTask("categorical", 0.25, lambda path: chat_data.arc("ARC-Easy", "test", path)),
    "ARC-Challenge": ChatTask("categorical", 0.25, lambda path: chat_data.arc("ARC-Challenge", "test", path)),
    "MMLU": ChatTask("categorical", 0.25, lambda path: chat_data.mmlu("all", "test", path)),
    "GSM8K": ChatTask("generative", 0.0, lambda path: chat_data.gsm8k("main", "test", path), numeric_answer_correct),
    "HumanEval": ChatTask("generative", 0.0, lambda path: chat_data.humaneval("test", path), humaneval_correct),
    # synthetic: held-out test words and seeds (nanochat's chat_eval.py: SpellingBee(size=256, split="test"));
    # --data SpellingBee=WORDS names the word list (english, bundled or a file)
    "SpellingBee": ChatTask(
        "generative", 0.0,
        lambda path: chat_data.spelling_bee(size=256, split="test", words=path or "english").shuffle(seed=chat_data.TASK_SHUFFLE_SEED),
        numeric_answer_correct,
    ),
}


TASK_DATA = {  # where a task's rows come from without --data (recorded with its score)
    "ARC-Easy": f"{chat_data.HUB_DATASETS['arc']} ARC-Easy test",
    "ARC-Challenge": f"{chat_data.HUB_DATASETS['arc']} ARC-Challenge test",
    "MMLU": f"{chat_data.HUB_DATASETS['mmlu']} all test",
    "GSM8K": f"{chat_data.HUB_DATASETS['gsm8k']} main test",
    "HumanEval": f"{chat_data.HUB_DATASETS['humaneval']} test",
    "SpellingBee": "synthetic, english word list (held-out test words)",
}


def describe_sample(sample: dict) -> str:
    if sample["random_sample"]:
        return f"random sample of {sample['scored']:,} of {sample['of']:,}, seed {sample['seed']}"
    return f"all {sample['of']:,}"


def chatcore(accuracies: dict[str, float]) -> float:
    """Mean over tasks of (accuracy - baseline) / (1 - baseline)."""
    if not accuracies:
        raise ValueError("no task accuracies to aggregate")
    centred = [(acc - TASKS[name].baseline) / (1.0 - TASKS[name].baseline) for name, acc in accuracies.items()]
    return sum(centred) / len(centred)


# --------------------------------------------------------------------------- scoring
def _prompt(tokenizer, record: dict) -> list[int]:
    from hf_nanochat.data.tokenizer import render_for_completion

    return render_for_completion(tokenizer, record["messages"][:-1])


@torch.no_grad()
def predict_letters(model, tokenizer, records: list[dict], batch_size: int = 8) -> list[str]:
    """For each multiple-choice record, the letter whose token has the highest logit right after
    `<|assistant_start|>`, among that record's letters."""
    from hf_nanochat.data.tokenizer import encode_plain

    letter_ids: dict[str, int] = {}
    device = next(model.parameters()).device
    pad = tokenizer.convert_tokens_to_ids("<|bos|>")  # positions after the answer are never read
    predictions = []
    for i in range(0, len(records), batch_size):
        batch = records[i : i + batch_size]
        prompts = [_prompt(tokenizer, r) for r in batch]
        width = max(len(p) for p in prompts)
        ids = torch.tensor([p + [pad] * (width - len(p)) for p in prompts], device=device)
        logits = model(input_ids=ids).logits
        for j, (record, prompt) in enumerate(zip(batch, prompts)):
            for letter in record["letters"]:
                if letter not in letter_ids:
                    enc = encode_plain(tokenizer, [letter])[0]
                    if len(enc) != 1:
                        raise ValueError(f"answer letter {letter!r} is {len(enc)} tokens; multiple choice needs single-token letters")
                    letter_ids[letter] = enc[0]
            choice_logits = logits[j, len(prompt) - 1, [letter_ids[x] for x in record["letters"]]]
            predictions.append(record["letters"][int(choice_logits.argmax())])
    return predictions


def engine_generator(model, tokenizer, num_samples: int = 1, max_tokens: int = 512, temperature: float = 0.0, top_k: int | None = 50, seed: int = 42):
    """prompt ids -> decoded completions, through the chat Engine (which runs calculator calls)."""
    from hf_nanochat.serve.engine import Engine

    engine = Engine(model, tokenizer)

    def generate(prompt_ids: list[int]) -> list[str]:
        outs = engine.generate(prompt_ids, num_samples=num_samples, max_tokens=max_tokens, temperature=temperature, top_k=top_k, seed=seed)
        return [tokenizer.decode(o, skip_special_tokens=True) for o in outs]

    return generate


def score_generative(tokenizer, records: list[dict], check: Callable[[dict, str], bool], generate: Callable[[list[int]], list[str]]) -> list[bool]:
    """A record passes when any of its sampled completions is correct (pass@k, k = num_samples)."""
    return [any(check(r, c) for c in generate(_prompt(tokenizer, r))) for r in records]


def evaluate_chat(
    model,
    tokenizer,
    tasks: list[str] | None = None,
    data_paths: dict[str, str] | None = None,
    max_problems: int | None = None,
    batch_size: int = 8,
    generate: Callable[[list[int]], list[str]] | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Accuracy per task and the ChatCORE aggregate over the tasks run."""
    tasks = list(TASKS) if tasks is None else tasks
    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        raise ValueError(f"unknown tasks {unknown}; choose from {list(TASKS)}")
    data_paths = data_paths or {}
    model.eval()
    results: dict[str, Any] = {"tasks": {}}
    for name in tasks:
        task = TASKS[name]
        ds = task.load(data_paths.get(name))  # every task arrives shuffled with seed 42
        available = len(ds)
        if max_problems is not None:
            ds = ds.select(range(min(max_problems, available)))
        records = list(ds)
        sample = {"scored": len(records), "of": available, "seed": chat_data.TASK_SHUFFLE_SEED, "random_sample": len(records) < available}
        if task.kind == "categorical":
            correct = [p == r["answer"] for p, r in zip(predict_letters(model, tokenizer, records, batch_size), records)]
        else:
            gen = generate or engine_generator(model, tokenizer)
            correct = score_generative(tokenizer, records, task.check, gen)
        acc = sum(correct) / max(len(correct), 1)
        results["tasks"][name] = {
            "accuracy": acc, "correct": sum(correct), "total": len(correct), "baseline": task.baseline, "sample": sample,
            "data": data_paths.get(name) or TASK_DATA[name],
        }
        if progress:
            print(f"{name}: {sum(correct)}/{len(correct)} = {100 * acc:.2f}% ({describe_sample(sample)})")
    accs = {n: r["accuracy"] for n, r in results["tasks"].items()}
    results["chatcore"] = chatcore(accs)
    results["chatcore_complete"] = set(accs) == set(TASKS)  # nanochat's number needs all six tasks
    return results


# --------------------------------------------------------------------------- base models
def evaluate_base(model, tokenizer, source: str, seq_len: int, batch_size: int, max_batches: int | None, packing: str = "stream") -> dict[str, Any]:
    """Validation bits per byte on the val split of a pretraining source (pretraining's own
    stream and `evaluate_bpb`), its rows packed as `packing` (train config `packing`: stream or
    best_fit) cuts them, the loss in chunks so no whole-batch logits exist."""
    import contextlib
    import itertools

    from accelerate import Accelerator

    from hf_nanochat.data.best_fit import stream_class
    from hf_nanochat.train.pretrain import evaluate_bpb
    from hf_nanochat.train.stage_plan import BASE_EVAL_LOSS_CHUNK_TOKENS
    from hf_nanochat.data.tokenizer import token_byte_lengths

    stream = stream_class(packing)(tokenizer, source=source, seq_len=seq_len, batch_size=batch_size, split="val")
    batches = list(itertools.islice(iter(stream), max_batches))
    if not batches:
        raise ValueError(f"the val split of {source} has no full batch of {batch_size} x {seq_len} tokens")
    bpb = evaluate_bpb(model, iter(batches), len(batches), token_byte_lengths(tokenizer), contextlib.nullcontext,
                       Accelerator(cpu=next(model.parameters()).device.type == "cpu"), loss_chunk_tokens=BASE_EVAL_LOSS_CHUNK_TOKENS)
    return {"val_bpb": bpb, "val_tokens": len(batches) * batch_size * seq_len, "source": source, "packing": packing}


# --------------------------------------------------------------------------- report
def markdown_table(results: dict[str, Any], title: str) -> str:
    lines = [f"## {title}", ""]
    if "val_bpb" in results:
        lines += ["| metric | value |", "|---|---|", f"| val bpb | {results['val_bpb']:.4f} |", f"| val tokens | {results['val_tokens']:,} |"]
        return "\n".join(lines) + "\n"
    lines += ["| task | accuracy | correct / total | problems | centred |", "|---|---|---|---|---|"]
    for name, r in results["tasks"].items():
        centred = (r["accuracy"] - r["baseline"]) / (1 - r["baseline"])
        problems = describe_sample(r["sample"]) if "sample" in r else "-"
        lines.append(f"| {name} | {100 * r['accuracy']:.2f}% | {r['correct']} / {r['total']} | {problems} | {centred:.4f} |")
    note = "" if results["chatcore_complete"] else " (partial: not all six tasks)"
    lines.append(f"| **ChatCORE**{note} | | | | **{results['chatcore']:.4f}** |")
    return "\n".join(lines) + "\n"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="save_pretrained folder or Hub id")
    parser.add_argument("--kind", choices=["chat", "base", "core"], default="chat",
                        help="chat: ChatCORE tasks; base: validation bpb; core: DCLM CORE, nanochat's base-model metric")
    parser.add_argument("--tasks", default=None, help=f"comma-separated subset of {','.join(TASKS)} (core: of the bundle's tasks; default: all)")
    parser.add_argument("--data", action="append", default=[], metavar="TASK=PATH", help="read a task from a local file/folder instead of the Hub (repeatable)")
    parser.add_argument("--max-problems", type=int, default=None, help="score a seeded random sample of N problems of each task (nanochat's seed-42 shuffle)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--num-samples", type=int, default=1, help="generations per problem (pass@k)")
    parser.add_argument("--max-tokens", type=int, default=512)
    parser.add_argument("--temperature", type=float, default=0.0)
    parser.add_argument("--top-k", type=int, default=50)
    parser.add_argument("--source", default=None, help="base: pretraining data source (default: the one the model's data_used.json records)")
    parser.add_argument("--seq-len", type=int, default=2048)
    parser.add_argument("--max-batches", type=int, default=None, help="base: val batches to read (default: the whole val split)")
    parser.add_argument("--packing", choices=["stream", "best_fit"], default="stream", help="base: how val rows are cut (the train config's packing)")
    parser.add_argument("--bundle", default=None, help="core: the unzipped eval_bundle folder; 'offline-smoke' for the "
                        "synthetic offline smoke bundle (not CORE); default: nanochat's bundle, downloaded once into the cache")
    parser.add_argument("--max-per-task", type=int, default=None, help="core: the first N examples of each shuffled task (as nanochat's -x)")
    parser.add_argument("--batch-tokens", type=int, default=16384, help="core: pack examples into forwards of up to N padded tokens (0: one example per forward)")
    parser.add_argument("--max-seq-len", type=int, default=None, help="core: crop prompts to their last N tokens (default: the "
                        "model's position table, e.g. GPT-2's 1024; never for our rotary model; 0: never)")
    parser.add_argument("--device", default=None)
    parser.add_argument("--out", default=None, help="write results JSON here (default: MODEL/eval_KIND.json for local folders; core: MODEL/core_eval.json)")
    parser.add_argument("--markdown", default=None, help="write the markdown table here (default: next to --out)")


def run(args: argparse.Namespace) -> int:
    if args.kind == "core":  # its own loop: all ranks evaluate, rank 0 writes
        from hf_nanochat.evaluate import core

        return core.run(args)
    from hf_nanochat.serve.engine import load_chat_model

    model, tokenizer = load_chat_model(args.model, device=args.device)
    if args.kind == "base":
        from hf_nanochat.data.provenance import read_stage_records

        # The val split of what the model was trained on (its data_used.json), unless told otherwise.
        recorded = (read_stage_records(args.model) if Path(args.model).is_dir() else {}).get("base", {}).get("source")
        source = args.source or recorded
        if source is None:
            raise SystemExit(f"{args.model} does not record its pretraining data (data_used.json): pass --source")
        results = evaluate_base(model, tokenizer, source, args.seq_len, args.batch_size, args.max_batches, args.packing)
    else:
        data_paths = {}
        for item in args.data:
            name, sep, path = item.partition("=")
            if not sep or name not in TASKS:
                raise SystemExit(f"--data expects TASK=PATH with TASK in {list(TASKS)}, got {item!r}")
            data_paths[name] = path
        generate = engine_generator(model, tokenizer, args.num_samples, args.max_tokens, args.temperature, args.top_k)
        tasks = args.tasks.split(",") if args.tasks else None
        results = evaluate_chat(model, tokenizer, tasks, data_paths, args.max_problems, args.batch_size, generate)
    results["model"] = args.model
    table = markdown_table(results, f"{'Chat' if args.kind == 'chat' else 'Base'} evaluation: {args.model}")
    print(table)
    out = Path(args.out) if args.out else (Path(args.model) / f"eval_{args.kind}.json" if Path(args.model).is_dir() else None)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=2))
        md = Path(args.markdown) if args.markdown else out.with_suffix(".md")
        md.write_text(table)
        print(f"wrote {out} and {md}")
    return 0


__all__ = [
    "TASKS",
    "chatcore",
    "engine_generator",
    "evaluate_base",
    "evaluate_chat",
    "extract_answer",
    "humaneval_program",
    "markdown_table",
    "predict_letters",
    "score_generative",
]
