"""DCLM's CORE metric for base models, exactly as nanochat computes it, for any transformers causal LM.

nanochat states every base model's quality as CORE (DCLM, arXiv 2406.11794): 22 in-context tasks,
each task's accuracy centred on its random baseline, averaged (GPT-2 XL: 0.2565, nanochat's
Nov 2025 d20: 0.2219). The facts below match karpathy/nanochat `nanochat/core_eval.py` (at 11493e2)
and `scripts/base_eval.py` (at de6eac2); `evals/core.py` (at 437943b) keeps the same rules and adds
the bundle URL and the few-shot clamp for tiny max_per_task:

* bundle: `core.yaml` (`icl_tasks`: label, dataset_uri, num_fewshot (a list; the first is
  used), icl_task_type, continuation_delimiter default " "), `eval_meta_data.csv` (`Eval Task`,
  `Random baseline` in percent), `eval_data/<dataset_uri>` JSONL;
* rows shuffled with `random.Random(1337)`, then cut to `max_per_task`; the few-shot examples of
  row i are `random.Random(1234 + i).sample(<other rows>, k)`, each followed by a blank line;
* multiple choice: one prompt per choice, scored over the tokens after the choices' common
  prefix; schema: one prompt per context, scored over the common suffix; language modelling:
  correct iff greedy argmax reproduces every continuation token; BOS first, lowest mean
  cross-entropy wins;
* sequences longer than the model's context keep their last tokens (spans shifted);
* centred = (acc - b) / (1 - b), b = baseline / 100; CORE = the mean over tasks.

Where we differ, on purpose: prompts are tokenized with special-token strings read as plain text
(nanochat's HF wrapper would turn a literal `<|endoftext|>` in a row into the special token);
several examples can share one forward (`batch_tokens`) and only the scored positions' losses
are computed (the same numbers as nanochat's full-row cross-entropy, sliced), which changes only speed;
examples are shared over ranks with Accelerate instead of raw torch.distributed.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import random
import shutil
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

# nanochat's download location (evals/core.py EVAL_BUNDLE_URL): a zip holding `eval_bundle/`.
EVAL_BUNDLE_URL = "https://karpathy-public.s3.us-west-2.amazonaws.com/eval_bundle.zip"
TASK_TYPES = ("multiple_choice", "schema", "language_modeling")
PREPARE_WINDOW = 1024  # examples rendered and tokenized at once (memory stays bounded on 10k-row tasks)
SMOKE_MARKER = "OFFLINE_SMOKE_BUNDLE"  # present only in bundles written by write_smoke_bundle
SMOKE_BUNDLE = "offline-smoke"  # the `--bundle` value that asks for the offline smoke bundle
# The 22 tasks of nanochat's core.yaml, so a result can say whether it is the full metric.
CORE_TASKS = frozenset({
    "hellaswag_zeroshot", "jeopardy", "bigbench_qa_wikidata", "arc_easy", "arc_challenge", "copa",
    "commonsense_qa", "piqa", "openbook_qa", "lambada_openai", "hellaswag", "winograd", "winogrande",
    "bigbench_dyck_languages", "agi_eval_lsat_ar", "bigbench_cs_algorithms", "bigbench_operators",
    "bigbench_repeat_copy_logic", "squad", "coqa", "boolq", "bigbench_language_identification",
})
REFERENCE_SCORES = {"GPT-2 XL (1.5B)": 0.256525, "nanochat d20 (Nov 2025 speedrun)": 0.2219}


# ------------------------------------------------------------------------------------ the bundle


@dataclass(frozen=True)
class CoreTask:
    label: str
    dataset_uri: str
    task_type: str
    num_fewshot: int
    continuation_delimiter: str
    random_baseline: float  # percent, as eval_meta_data.csv stores it


@dataclass(frozen=True)
class Bundle:
    root: Path
    tasks: tuple[CoreTask, ...]
    smoke: bool  # an offline smoke bundle (write_smoke_bundle), not DCLM's data

    def rows(self, task: CoreTask, max_per_task: int | None = None) -> list[dict]:
        """The task's rows in nanochat's order: shuffled by Random(1337), then the first max_per_task."""
        path = self.root / "eval_data" / task.dataset_uri
        if not path.is_file():
            raise FileNotFoundError(f"CORE task {task.label!r}: data file {path} is missing from the bundle")
        with open(path, encoding="utf-8") as f:
            data = [json.loads(line) for line in f if line.strip()]
        random.Random(1337).shuffle(data)
        if max_per_task is not None and max_per_task > 0:
            data = data[:max_per_task]
        return data


def load_bundle(root: str | os.PathLike) -> Bundle:
    """Read a bundle folder (core.yaml, eval_meta_data.csv, eval_data/)."""
    import yaml

    root = Path(root).expanduser()
    missing = [name for name in ("core.yaml", "eval_meta_data.csv", "eval_data") if not (root / name).exists()]
    if missing:
        raise FileNotFoundError(f"{root} is not a CORE eval bundle: it lacks {', '.join(missing)} "
                                f"(unzip nanochat's {EVAL_BUNDLE_URL} and pass the eval_bundle folder)")
    config = yaml.safe_load((root / "core.yaml").read_text(encoding="utf-8")) or {}
    entries = config.get("icl_tasks")
    if not entries:
        raise ValueError(f"{root / 'core.yaml'} has no icl_tasks")
    with open(root / "eval_meta_data.csv", encoding="utf-8", newline="") as f:
        baselines = {row["Eval Task"]: float(row["Random baseline"]) for row in csv.DictReader(f)}
    tasks = []
    for entry in entries:
        label = entry["label"]
        if entry["icl_task_type"] not in TASK_TYPES:
            raise ValueError(f"CORE task {label!r}: unsupported icl_task_type {entry['icl_task_type']!r}; expected one of {TASK_TYPES}")
        if label not in baselines:
            raise ValueError(f"CORE task {label!r} has no 'Random baseline' row in {root / 'eval_meta_data.csv'}")
        shots = entry["num_fewshot"]
        tasks.append(CoreTask(
            label=label, dataset_uri=entry["dataset_uri"], task_type=entry["icl_task_type"],
            num_fewshot=int(shots[0] if isinstance(shots, list) else shots),  # nanochat: num_fewshot[0]
            continuation_delimiter=entry.get("continuation_delimiter", " "), random_baseline=baselines[label],
        ))
    return Bundle(root=root, tasks=tuple(tasks), smoke=(root / SMOKE_MARKER).exists())


def bundle_cache_dir() -> Path:
    from hf_nanochat.data.stream import offline_cache_dir

    return offline_cache_dir()


def download_bundle(cache_dir: str | os.PathLike | None = None, url: str = EVAL_BUNDLE_URL) -> Path:
    """nanochat's eval_bundle, downloaded once into the cache (with a progress bar) and unzipped.

    The bundle lives on S3, not on the Hub, so huggingface_hub cannot fetch it; this is a plain
    HTTP download. HF_HUB_OFFLINE=1 forbids it (one-line error with the fix)."""
    from filelock import FileLock

    cache = Path(cache_dir) if cache_dir is not None else bundle_cache_dir()
    target = cache / "eval_bundle"
    if (target / "core.yaml").exists():
        return target
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        raise RuntimeError(f"the CORE eval bundle is not cached at {target} and HF_HUB_OFFLINE is set: download "
                           f"{url} elsewhere, unzip it and pass --bundle PATH/eval_bundle")
    cache.mkdir(parents=True, exist_ok=True)
    with FileLock(str(cache / "eval_bundle.lock")):  # several ranks or runs: one downloads
        if (target / "core.yaml").exists():
            return target
        import urllib.error
        import urllib.request

        from tqdm.auto import tqdm

        with tempfile.TemporaryDirectory(dir=cache) as tmp:
            archive = Path(tmp) / "eval_bundle.zip"
            try:
                with urllib.request.urlopen(url, timeout=60) as response, open(archive, "wb") as f:
                    total = int(response.headers.get("Content-Length") or 0) or None
                    with tqdm(total=total, unit="B", unit_scale=True, desc="eval_bundle.zip") as bar:
                        while chunk := response.read(1 << 20):
                            f.write(chunk)
                            bar.update(len(chunk))
            except (urllib.error.URLError, OSError) as err:
                raise RuntimeError(f"could not download the CORE eval bundle from {url} ({err}); download and unzip it "
                                   "elsewhere and pass --bundle PATH/eval_bundle") from None
            with zipfile.ZipFile(archive) as z:
                z.extractall(tmp)
            if not (Path(tmp) / "eval_bundle" / "core.yaml").exists():
                raise RuntimeError(f"{url} did not contain eval_bundle/core.yaml")
            os.replace(Path(tmp) / "eval_bundle", target)  # atomic: never a half-unpacked bundle
    print(f"CORE eval bundle cached at {target}", flush=True)
    return target


def resolve_bundle(bundle: str | None) -> Path:
    """`--bundle`: a folder; `offline-smoke` (the synthetic smoke bundle, written once into the
    cache); or None: nanochat's bundle from the cache, downloaded there on first use."""
    if bundle is None:
        return download_bundle()
    if bundle == SMOKE_BUNDLE:
        return write_smoke_bundle(bundle_cache_dir() / "core_offline_smoke_bundle")
    path = Path(bundle).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(f"--bundle {bundle}: no such folder (give the unzipped eval_bundle folder, "
                                f"'{SMOKE_BUNDLE}', or nothing to download nanochat's bundle)")
    return path


# ----------------------------------------------------------------------------------- rendering


def fewshot_examples(data: Sequence[dict], idx: int, num_fewshot: int) -> list[dict]:
    """nanochat's draw: Random(1234 + idx).sample of the other rows. A task cut shorter than
    num_fewshot + 1 rows (a tiny max_per_task) gets all the others, as nanochat's evals/core.py."""
    if num_fewshot <= 0:
        return []
    others = [i for i in range(len(data)) if i != idx]
    return [data[i] for i in random.Random(1234 + idx).sample(others, min(num_fewshot, len(others)))]


def _shots(fewshot: Sequence[dict], render_one: Callable[[dict], str]) -> str:
    return "".join(render_one(example) + "\n\n" for example in fewshot)  # blank line after each


def render_multiple_choice(item: dict, delimiter: str, fewshot: Sequence[dict] = ()) -> list[str]:
    """One prompt per choice: shots (query, delimiter, gold choice), then query + delimiter + choice."""
    prefix = _shots(fewshot, lambda e: f"{e['query']}{delimiter}{e['choices'][e['gold']]}")
    return [f"{prefix}{item['query']}{delimiter}{choice}" for choice in item["choices"]]


def render_schema(item: dict, delimiter: str, fewshot: Sequence[dict] = ()) -> list[str]:
    """One prompt per context option, all ending in delimiter + the shared continuation."""
    prefix = _shots(fewshot, lambda e: f"{e['context_options'][e['gold']]}{delimiter}{e['continuation']}")
    return [f"{prefix}{option}{delimiter}{item['continuation']}" for option in item["context_options"]]


def render_language_modeling(item: dict, delimiter: str, fewshot: Sequence[dict] = ()) -> list[str]:
    """[prompt without the continuation, prompt with it]. Contexts are stripped (some rows carry
    trailing spaces) and so is the prompt without the continuation, so that its tokens are a
    clean prefix of the full prompt's (nanochat's render_prompts_lm)."""
    prefix = _shots(fewshot, lambda e: f"{str(e['context']).strip()}{delimiter}{e['continuation']}")
    without = f"{prefix}{str(item['context']).strip()}{delimiter}"
    return [without.strip(), f"{without}{item['continuation']}"]


RENDERERS = {"multiple_choice": render_multiple_choice, "schema": render_schema, "language_modeling": render_language_modeling}


# ------------------------------------------------------------------------------ scoring spans


def common_length(sequences: Sequence[Sequence[int]], from_end: bool = False) -> int:
    """Length of the prefix (or suffix) all sequences share."""
    shortest = min(len(s) for s in sequences)
    for i in range(shortest):
        pos = -1 - i if from_end else i
        if any(s[pos] != sequences[0][pos] for s in sequences):
            return i
    return shortest


def scoring_spans(task_type: str, tokens: list[list[int]]) -> tuple[list[list[int]], list[int], list[int]]:
    """(rows to forward, span starts, span ends): the tokens [start, end) of each row are scored."""
    if task_type == "multiple_choice":
        start = common_length(tokens)
        return tokens, [start] * len(tokens), [len(t) for t in tokens]
    if task_type == "schema":
        suffix = common_length(tokens, from_end=True)
        return tokens, [len(t) - suffix for t in tokens], [len(t) for t in tokens]
    without, with_ = tokens
    if not (len(without) < len(with_) and with_[: len(without)] == without):
        raise ValueError("language modelling prompt: the tokens without the continuation are not a proper prefix "
                         "of the tokens with it (the tokenizer merges across the continuation boundary)")
    return [with_], [len(without)], [len(with_)]


def crop(rows: list[list[int]], starts: list[int], ends: list[int], max_len: int | None):
    """Rows over max_len keep their last max_len tokens; spans move with them (nanochat's GPT-2 path)."""
    if not max_len:
        return rows, starts, ends
    out = ([], [], [])
    for row, s, e in zip(rows, starts, ends):
        cut = max(0, len(row) - max_len)
        if s - cut < 1:  # the token before the span must survive: it predicts the span's first token
            raise ValueError(f"a CORE prompt's scored span ({e - s} tokens) does not fit a context of {max_len} tokens")
        out[0].append(row[cut:])
        out[1].append(s - cut)
        out[2].append(e - cut)
    return out


@dataclass
class Prepared:
    """One example, ready to forward: its rows, their spans, and the gold index (mc/schema)."""

    index: int
    task_type: str
    rows: list[list[int]]
    starts: list[int]
    ends: list[int]
    gold: int | None


def bos_token_id(tokenizer) -> int:
    """nanochat's choice (HuggingFaceTokenizer.get_bos_token_id): `<|bos|>`, else `<|endoftext|>`
    (GPT-2); we also accept the tokenizer's declared BOS."""
    for token in ("<|bos|>", "<|endoftext|>"):
        tid = tokenizer.convert_tokens_to_ids(token)
        if isinstance(tid, int) and tid != tokenizer.unk_token_id:
            return tid
    if tokenizer.bos_token_id is not None:
        return tokenizer.bos_token_id
    raise ValueError("the tokenizer has no <|bos|>, <|endoftext|> or bos_token: CORE prompts start with BOS")


def prepare_examples(task: CoreTask, data: Sequence[dict], indices: Sequence[int],
                     encode: Callable[[list[str]], list[list[int]]], bos: int, max_len: int | None) -> list[Prepared]:
    """Render, tokenize (all prompts of all `indices` in one batch call) and find the spans."""
    rendered = []
    for idx in indices:
        item = data[idx]
        try:
            rendered.append(RENDERERS[task.task_type](item, task.continuation_delimiter, fewshot_examples(data, idx, task.num_fewshot)))
        except (KeyError, IndexError, TypeError) as err:
            raise ValueError(f"CORE task {task.label!r}: a row lacks a {task.task_type} field or has a bad gold index "
                             f"({type(err).__name__}: {err}); row {idx} after shuffling: {str(item)[:200]}") from err
    flat = iter(encode([p for prompts in rendered for p in prompts]))
    out = []
    for idx, prompts in zip(indices, rendered):
        tokens = [[bos, *next(flat)] for _ in prompts]
        rows, starts, ends = crop(*scoring_spans(task.task_type, tokens), max_len)
        gold = None if task.task_type == "language_modeling" else int(data[idx]["gold"])
        out.append(Prepared(idx, task.task_type, rows, starts, ends, gold))
    return out


def prepare_example(task: CoreTask, data: Sequence[dict], idx: int, encode: Callable[[list[str]], list[list[int]]],
                    bos: int, max_len: int | None) -> Prepared:
    return prepare_examples(task, data, [idx], encode, bos, max_len)[0]


@torch.no_grad()
def score(model, examples: Sequence[Prepared], pad_id: int, device) -> list[bool]:
    """Forward every row of `examples` as one right-padded batch; return each example's correctness.

    Padding sits after every scored position and attention is causal, so it is never read
    (nanochat pads with BOS the same way, without an attention mask). Only the scored positions'
    logits are computed, and all spans are reduced at once with one copy back to the host."""
    rows = [row for ex in examples for row in ex.rows]
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
    row_idx, pos_idx, span_idx = [], [], []  # position t predicts token t + 1: span [s, e) is read at s-1 .. e-2
    spans = [(s, e) for ex in examples for s, e in zip(ex.starts, ex.ends)]
    for k, (s, e) in enumerate(spans):
        row_idx += [k] * (e - s)
        pos_idx += range(s - 1, e - 1)
        span_idx += [k] * (e - s)
    ids = ids.to(device)
    # Logits only at the positions some span reads (transformers' logits_to_keep as positions):
    # the head never runs on the prompts, and the fp32 logits are rows x those positions, not
    # rows x width x vocabulary.
    kept = torch.tensor(sorted(set(pos_idx)), dtype=torch.long, device=device)
    logits = model(input_ids=ids, use_cache=False, logits_to_keep=kept).logits
    r, p, k = (torch.tensor(x, dtype=torch.long, device=device) for x in (row_idx, pos_idx, span_idx))
    picked = logits[r, torch.searchsorted(kept, p)].float()
    targets = ids[r, p + 1]
    losses = F.cross_entropy(picked, targets, reduction="none")
    misses = (picked.argmax(dim=-1) != targets).float()
    n = len(spans)
    counts = torch.bincount(k, minlength=n).float()
    mean_loss = torch.zeros(n, device=device).index_add_(0, k, losses) / counts  # an empty span: nan, as nanochat
    all_hit = torch.zeros(n, device=device).index_add_(0, k, misses) == 0
    mean_loss, all_hit = mean_loss.tolist(), all_hit.tolist()
    results, j = [], 0
    for ex in examples:
        if ex.task_type == "language_modeling":  # greedy argmax reproduces every continuation token
            results.append(bool(all_hit[j]))
        else:
            means = mean_loss[j : j + len(ex.rows)]
            results.append(means.index(min(means)) == ex.gold)  # lowest mean cross-entropy; ties: the first, as nanochat
        j += len(ex.rows)
    return results


def default_max_len(model) -> int | None:
    """Crop to the context a model can take: absolute position tables (GPT-2's 1024) or the
    declared maximum. Our rotary model computes angles for any length and, like nanochat's own
    model, is never cropped."""
    config = getattr(model, "config", None)
    # ours and transformers' port of nanochat ("nanochat"): rotary angles for any length
    if config is None or getattr(config, "model_type", None) in ("nanochat_gpt", "nanochat"):
        return None
    for name in ("n_positions", "max_position_embeddings"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def centred(accuracy: float, random_baseline_percent: float) -> float:
    b = 0.01 * random_baseline_percent
    return (accuracy - b) / (1.0 - b)


# --------------------------------------------------------------------------------- evaluation


def _groups(examples: list[Prepared], batch_tokens: int) -> list[list[Prepared]]:
    """Examples of similar length packed into forwards of at most batch_tokens (rows x width);
    an example alone over the budget gets a forward to itself. 0: one example per forward."""
    if batch_tokens <= 0:
        return [[ex] for ex in examples]
    ordered = sorted(examples, key=lambda ex: max(len(r) for r in ex.rows))
    groups, current, rows, width = [], [], 0, 0
    for ex in ordered:
        w = max(width, max(len(r) for r in ex.rows))
        if current and (rows + len(ex.rows)) * w > batch_tokens:
            groups.append(current)
            current, rows, w = [], 0, max(len(r) for r in ex.rows)
        current.append(ex)
        rows, width = rows + len(ex.rows), w
    if current:
        groups.append(current)
    return groups


def evaluate_task(model, tokenizer, task: CoreTask, data: list[dict], accelerator=None, max_len: int | None = None,
                  batch_tokens: int = 0, progress: bool = True) -> dict[str, Any]:
    """Accuracy on one task; examples are strided over the processes (rank r takes r, r + n, ...)
    and the per-example results summed across them."""
    from hf_nanochat.data.tokenizer import encode_plain
    from tqdm.auto import tqdm

    rank, world = (accelerator.process_index, accelerator.num_processes) if accelerator else (0, 1)
    model_device = next(model.parameters()).device
    device = accelerator.device if accelerator else model_device  # where the cross-rank sums live
    bos = bos_token_id(tokenizer)
    encode = lambda texts: encode_plain(tokenizer, texts)  # noqa: E731  (special-token text stays text)
    mine = list(range(rank, len(data), world))
    correct, tokens = [0.0] * len(data), 0
    bar = tqdm(total=len(mine), desc=task.label, mininterval=2.0, disable=not (progress and rank == 0), file=sys.stdout)
    # A window of examples at a time: tokenized in one call, packed by length, never all in memory.
    for w in range(0, len(mine), PREPARE_WINDOW):
        prepared = prepare_examples(task, data, mine[w : w + PREPARE_WINDOW], encode, bos, max_len)
        for group in _groups(prepared, batch_tokens):
            for ex, ok in zip(group, score(model, group, bos, model_device)):
                correct[ex.index] = float(ok)
            tokens += sum(len(r) for ex in group for r in ex.rows)  # real tokens, not padding: the same for any grouping
            bar.update(len(group))
    bar.close()
    correct = torch.tensor(correct, dtype=torch.float32, device=device)
    tokens = torch.tensor([tokens], dtype=torch.float64, device=device)
    if world > 1:
        correct, tokens = accelerator.reduce(correct, reduction="sum"), accelerator.reduce(tokens, reduction="sum")
    n_correct = int(correct.sum().item())
    accuracy = n_correct / len(data) if data else 0.0
    return {"accuracy": accuracy, "centred": centred(accuracy, task.random_baseline), "correct": n_correct,
            "total": len(data), "type": task.task_type, "shots": task.num_fewshot,
            "random_baseline": task.random_baseline, "tokens_forwarded": int(tokens.item())}


def evaluate_core(model, tokenizer, bundle: Bundle, max_per_task: int | None = None, accelerator=None,
                  max_len: int | None = None, batch_tokens: int = 0, tasks: Sequence[str] | None = None,
                  progress: bool = True) -> dict[str, Any]:
    """Every task of the bundle (or `tasks`), then CORE = the mean centred accuracy. All ranks
    must call this; every rank returns the same numbers."""
    max_per_task = max_per_task if max_per_task and max_per_task > 0 else None  # nanochat's -1 = all
    chosen = list(bundle.tasks)
    if tasks is not None:
        unknown = sorted(set(tasks) - {t.label for t in chosen})
        if unknown:
            raise ValueError(f"unknown CORE tasks {unknown}; the bundle has {[t.label for t in chosen]}")
        chosen = [t for t in chosen if t.label in set(tasks)]
    model.eval()
    main = accelerator is None or accelerator.is_main_process
    results: dict[str, Any] = {"tasks": {}}
    t_start = time.time()
    for task in chosen:
        t0 = time.time()
        data = bundle.rows(task, max_per_task)
        if not data:
            raise ValueError(f"CORE task {task.label!r} has no rows")
        r = evaluate_task(model, tokenizer, task, data, accelerator, max_len, batch_tokens, progress)
        r["seconds"] = round(time.time() - t0, 3)
        results["tasks"][task.label] = r
        if progress and main:
            print(f"CORE {task.label} ({task.num_fewshot}-shot {task.task_type}): {r['correct']}/{r['total']} "
                  f"accuracy {r['accuracy']:.4f} centred {r['centred']:.4f} ({r['seconds']:.1f} s)", flush=True)
    centred_scores = [r["centred"] for r in results["tasks"].values()]
    results.update(
        core=sum(centred_scores) / len(centred_scores),
        complete=(not bundle.smoke and set(results["tasks"]) == CORE_TASKS and not max_per_task),
        smoke_bundle=bundle.smoke, bundle=str(bundle.root), max_per_task=max_per_task,
        max_len=max_len, processes=accelerator.num_processes if accelerator else 1,
        seconds=round(time.time() - t_start, 3),
    )
    return results


# -------------------------------------------------------------------------------------- output


def markdown_table(results: dict[str, Any], title: str) -> str:
    lines = [f"## {title}", ""]
    if results.get("smoke_bundle"):
        lines += ["**Offline smoke bundle, not CORE**: synthetic tasks from the offline corpus that exercise the "
                  "evaluator; the number is not comparable with nanochat's or GPT-2's.", ""]
    elif not results.get("complete"):
        cut = f", at most {results['max_per_task']} examples per task" if results.get("max_per_task") else ""
        lines += [f"Partial CORE ({len(results['tasks'])} tasks{cut}): not directly comparable with the full metric.", ""]
    lines += ["| task | type | shots | correct / total | accuracy | centred |", "|---|---|---:|---:|---:|---:|"]
    for name, r in results["tasks"].items():
        lines.append(f"| {name} | {r['type']} | {r['shots']} | {r['correct']} / {r['total']} | {r['accuracy']:.4f} | {r['centred']:.4f} |")
    label = "smoke score" if results.get("smoke_bundle") else "CORE"
    lines.append(f"| **{label}** | | | | | **{results['core']:.4f}** |")
    if not results.get("smoke_bundle"):
        lines += ["", "For scale: " + ", ".join(f"{k} {v:.4f}" for k, v in REFERENCE_SCORES.items()) + "."]
    return "\n".join(lines) + "\n"


def write_results(results: dict[str, Any], out_json: Path, out_md: Path, title: str) -> str:
    from hf_nanochat.train.pretrain import atomic_write_text

    table = markdown_table(results, title)
    out_json.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_json, json.dumps(results, indent=2))
    atomic_write_text(out_md, table)
    return table


def run(args: argparse.Namespace) -> int:
    """`hf-nanochat eval MODEL --kind core`: load, evaluate on all ranks, write from rank 0."""
    import contextlib

    from accelerate import Accelerator

    from hf_nanochat.serve.engine import default_dtype, load_chat_model

    accelerator = Accelerator(cpu=args.device == "cpu")
    with accelerator.main_process_first():  # rank 0 downloads or writes the bundle, the others then read it
        bundle = load_bundle(resolve_bundle(args.bundle))
    device = torch.device(args.device) if args.device else accelerator.device
    # nanochat's base_eval.py: fp32 weights under bf16 autocast on GPUs (fp16 where bf16 is missing)
    model, tokenizer = load_chat_model(args.model, device=device, dtype=torch.float32)
    amp = default_dtype(device)
    autocast = torch.autocast(device.type, dtype=amp) if amp != torch.float32 else contextlib.nullcontext()
    max_len = default_max_len(model) if args.max_seq_len is None else (args.max_seq_len or None)
    tasks = args.tasks.split(",") if args.tasks else None
    with autocast:
        results = evaluate_core(model, tokenizer, bundle, args.max_per_task, accelerator, max_len, args.batch_tokens, tasks)
    results["precision"] = f"fp32 weights, {str(amp).removeprefix('torch.')} autocast" if amp != torch.float32 else "fp32"
    results["model"] = args.model
    if accelerator.is_main_process:
        slug = args.model.replace("/", "--")  # a Hub id: ./core_eval_<owner>--<name>.json
        out = Path(args.out) if args.out else (Path(args.model) / "core_eval.json" if Path(args.model).is_dir() else Path(f"core_eval_{slug}.json"))
        md = Path(args.markdown) if args.markdown else out.with_suffix(".md")
        title = f"{'Offline smoke bundle (not CORE)' if bundle.smoke else 'CORE (DCLM)'}: {args.model}"
        print(write_results(results, out, md, title))
        print(f"wrote {out} and {md}", flush=True)
    accelerator.wait_for_everyone()
    return 0


# ------------------------------------------------------------------------- offline smoke bundle


def write_smoke_bundle(out: str | os.PathLike, rows_per_task: int = 64, seed: int = 0) -> Path:
    """Write (once) an OFFLINE SMOKE BUNDLE, NOT CORE: a few synthetic tasks of each type in the
    eval bundle's exact layout, made from the offline corpus (Python's own docs), so offline runs
    (the tiny_cpu speedrun, CI) exercise the whole CORE path. Its score means nothing next to
    nanochat's CORE; results from it are labelled as such."""
    import pyarrow.parquet as pq
    import yaml

    from hf_nanochat.data.stream import _data_files, offline_corpus

    out = Path(out)
    if (out / SMOKE_MARKER).exists():
        return out
    val_shard = _data_files(offline_corpus())[-1]  # the corpus' validation split
    lines = []
    for text in pq.read_table(val_shard, columns=["text"]).column("text").to_pylist():
        for line in text.splitlines():
            words = line.split()
            if 8 <= len(words) <= 24 and all(w.isascii() for w in words):
                lines.append(words)
    rng = random.Random(seed)
    rng.shuffle(lines)
    if len(lines) < 4 * rows_per_task:
        raise ValueError(f"the offline corpus has only {len(lines)} usable lines for the smoke bundle")
    vocab = sorted({w for words in lines for w in words})
    pick = iter(lines)

    def mc_row():
        words = next(pick)
        choices = [words[-1], *rng.sample([w for w in vocab if w != words[-1]], 3)]
        rng.shuffle(choices)
        return {"query": " ".join(words[:-1]), "choices": choices, "gold": choices.index(words[-1])}

    def schema_row():
        words, other = next(pick), next(pick)
        cut = len(words) // 2
        options = [" ".join(words[:cut]), " ".join(other[: len(other) // 2])]
        gold = rng.randrange(2)
        if gold:
            options.reverse()
        return {"context_options": options, "continuation": " ".join(words[cut:]), "gold": gold}

    def lm_row():
        words = next(pick)
        return {"context": " ".join(words[:-2]), "continuation": " ".join(words[-2:])}

    specs = [  # label, type, shots, delimiter, baseline %, row maker
        ("smoke_next_word_mc", "multiple_choice", 0, " ", 25.0, mc_row),
        ("smoke_next_word_mc_3shot", "multiple_choice", 3, " ", 25.0, mc_row),
        ("smoke_sentence_schema", "schema", 0, " ", 50.0, schema_row),
        ("smoke_last_words_lm", "language_modeling", 0, " ", 0.0, lm_row),
        ("smoke_last_words_lm_3shot", "language_modeling", 3, " => ", 0.0, lm_row),
    ]
    tmp = Path(tempfile.mkdtemp(dir=out.parent if out.parent.exists() else None, prefix=".smoke_bundle_"))
    (tmp / "eval_data" / "smoke").mkdir(parents=True)
    entries = []
    for label, task_type, shots, delimiter, _, make in specs:
        uri = f"smoke/{label}.jsonl"
        (tmp / "eval_data" / uri).write_text("".join(json.dumps(make()) + "\n" for _ in range(rows_per_task)))
        entries.append({"label": label, "dataset_uri": uri, "num_fewshot": [shots], "icl_task_type": task_type,
                        "continuation_delimiter": delimiter})
    (tmp / "core.yaml").write_text("# OFFLINE SMOKE BUNDLE, NOT CORE: synthetic tasks from the offline corpus\n"
                                   + yaml.safe_dump({"icl_tasks": entries}, sort_keys=False))
    with open(tmp / "eval_meta_data.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["Eval Task", "Task Category", "Task Type", "#shots", "Random baseline", "Centered Metric?", "Description"])
        for label, task_type, shots, _, baseline, _ in specs:
            writer.writerow([label, "offline smoke", task_type, shots, baseline, "Yes", "synthetic, not a CORE task"])
    (tmp / SMOKE_MARKER).write_text("offline smoke bundle, not CORE: written by hf_nanochat.evaluate.core.write_smoke_bundle\n")
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.replace(tmp, out)  # atomic: a concurrent writer's complete bundle is as good as ours
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not (out / SMOKE_MARKER).exists():
            raise
    return out


__all__ = [
    "Bundle", "CoreTask", "EVAL_BUNDLE_URL", "Prepared", "centred", "common_length", "crop", "default_max_len",
    "download_bundle", "evaluate_core", "evaluate_task", "fewshot_examples", "load_bundle", "markdown_table",
    "prepare_example", "prepare_examples", "render_language_modeling", "render_multiple_choice", "render_schema", "resolve_bundle",
    "score", "scoring_spans", "write_results", "write_smoke_bundle",
]
