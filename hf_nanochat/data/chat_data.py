"""Chat data sources -> `messages` records, and the YAML-declared mixtures of them.

Every source is a function returning a `datasets.Dataset` with a `messages` column in one
Arrow schema: `[{"role": str, "content": [{"type": str, "text": str}, ...]}, ...]`. Content is
always a list of parts (a plain string is one text part) because Arrow cannot store "either a
string or a list" in one column; `render_conversation` accepts both forms.

Sources (nanochat's mid-training and SFT mixtures):
  synthetic: spelling_bee (count a letter, manual + python tool call), simple_spelling (both on a
      real English word list, test words held out from training words), arithmetic (calculator
      tool calls), identity (nanochat's identity_conversations.jsonl from `path:`, or a tiny
      synthetic set for offline recipes)
  Hub or local files: smoltalk, mmlu (multiple choice; `auxiliary_train` for mid-training),
      gsm8k (its <<expr=result>> calculator annotations become python/python_output parts),
      arc (ARC-Easy / ARC-Challenge), humaneval (evaluation only). Each is shuffled with seed 42
      when loaded, before `start`/`stop` slice it, as nanochat's tasks do (tasks/smoltalk.py,
      tasks/mmlu.py, ...: `load_dataset(...).shuffle(seed=42)`), so `stop: 10000` is a random
      10K and an evaluation's first N problems are a seeded random sample.
Evaluation tasks keep extra columns next to `messages` (`letters`/`answer` for multiple choice,
`test`/`entry_point` for HumanEval); a training mixture keeps only `messages`.

A mixture in YAML is a list of source specs, e.g.
    - {source: gsm8k, subset: main, split: train}
    - {source: identity, path: identity_conversations.jsonl, repeat: 2}   # repeat = oversample (nanochat passes it twice)
    - {source: smoltalk, split: train, stop: 10000, path: ./smoltalk.jsonl}   # local file instead of the Hub
"""
from __future__ import annotations

import functools
import hashlib
import inspect
import json
import operator
import random
import re
import string
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from datasets import Dataset, concatenate_datasets, load_dataset

WORDS_FILE = Path(__file__).parent.parent / "resources" / "words.txt"
# Test examples draw from seeds far above any train index (nanochat's SpellingBee,
# tasks/spellingbee.py TEST_RANDOM_SEED_OFFSET), and, unlike nanochat, from held-out words.
TEST_SEED_OFFSET = 10_000_000
TEST_WORDS_PER_MILLE = 100  # 10% of the words are test words, never seen in training
LETTERS = "ABCD"
TASK_SHUFFLE_SEED = 42  # nanochat's tasks shuffle every dataset with seed 42 when loading it
HUB_DATASETS = {
    "smoltalk": "HuggingFaceTB/smol-smoltalk",
    "mmlu": "cais/mmlu",
    "arc": "allenai/ai2_arc",
    "gsm8k": "openai/gsm8k",
    "humaneval": "openai/openai_humaneval",
}


# --------------------------------------------------------------------------- message helpers
def text_part(text: str) -> dict:
    return {"type": "text", "text": text}


def message(role: str, content: str | list[dict]) -> dict:
    """A message with content as a list of parts (the one schema every source uses)."""
    if isinstance(content, str):
        content = [text_part(content)]
    return {"role": role, "content": [{"type": p["type"], "text": p["text"]} for p in content]}


def messages_from_openai(rows: list[dict]) -> list[dict]:
    """OpenAI-style [{"role", "content": str}] (SmolTalk, local JSON) -> our schema."""
    return [message(m["role"], m["content"]) for m in rows]


# --------------------------------------------------------------------------- synthetic sources
class SmallWordListWarning(UserWarning):
    """The spelling tasks are using the small bundled word list (offline tests only)."""


def load_words(words: str = "english") -> tuple[str, ...]:
    """The spelling tasks' word list, lower-case a-z words, sorted:
    "english": the `english-words` package's web2 + GCIDE lists (~260K words; nanochat uses
        dwyl's 370K-word words_alpha.txt, tasks/spellingbee.py WORD_LIST_URL);
    "bundled": ~350 common words shipped here, for offline tests (warns: a score on it says little);
    a path: a file with one word a line (e.g. nanochat's words_alpha.txt)."""
    found = _read_words(str(words))
    if words == "bundled":
        warnings.warn(
            f"spelling tasks use the bundled list of {len(found)} words: fine for tests, but a model trained "
            "or scored on it learns little; use `words: english` (pip install english-words)",
            SmallWordListWarning,
            stacklevel=2,
        )
    return found


@functools.lru_cache(maxsize=8)
def _read_words(words: str) -> tuple[str, ...]:
    if words == "english":
        try:
            from english_words import get_english_words_set
        except ImportError as err:
            raise ImportError(
                "the spelling tasks' word list comes from the `english-words` package: `pip install english-words`; "
                "or set `words:` to a file with one word a line (nanochat's words_alpha.txt), or `words: bundled` "
                "for the small offline list (tests only)"
            ) from err
        found = get_english_words_set(["web2", "gcide"], alpha=True, lower=True)
    elif words == "bundled":
        found = WORDS_FILE.read_text(encoding="utf-8").split()
    else:
        path = Path(words).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"word list {words!r} not found: use english, bundled or a file with one word a line")
        found = path.read_text(encoding="utf-8").split()
    found = sorted({w.strip().lower() for w in found if w.strip().isascii() and w.strip().isalpha()})
    if len(found) < 2:
        raise ValueError(f"word list {words!r} has {len(found)} usable (a-z) words; it needs at least 2")
    return tuple(found)


def is_test_word(word: str) -> bool:
    """10% of all words, chosen by a hash of the word (not its position, so any list agrees)."""
    return int(hashlib.sha256(word.encode()).hexdigest()[:8], 16) % 1000 < TEST_WORDS_PER_MILLE


def split_words(words: tuple[str, ...] | list[str], split: str) -> list[str]:
    """The split's words: test words are held out of training, so SpellingBee measures spelling,
    not memorised (word, letter) pairs."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    picked = [w for w in words if is_test_word(w) == (split == "test")]
    if not picked:
        raise ValueError(f"the word list has no {split} words ({len(words)} words in all); use a longer list")
    return picked


def _rng(index: int, split: str, salt: int = 0) -> random.Random:
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    return random.Random((index if split == "train" else TEST_SEED_OFFSET + index) * 7919 + salt)


SPELLING_QUESTIONS = [
    "How many {letter} are in the word {word}",
    "How many {letter} are in {word}",
    "Count the number of {letter} in {word}",
    "How many times does {letter} appear in {word}",
    "In the word {word}, how many {letter} are there",
    "What is the count of {letter} in {word}",
    "How many {letter}s does {word} have",
    "Number of {letter} in {word}",
]


def spelling_bee_example(index: int, split: str = "train", words: list[str] | None = None) -> list[dict]:
    """'How many r in strawberry?': spell it out, count by hand, check with a python tool call,
    end with nanochat's `#### N` answer line (what GSM8K-style grading extracts)."""
    rng = _rng(index, split, salt=1)
    word = rng.choice(words or split_words(load_words(), split))
    letter = rng.choice(word) if rng.random() < 0.9 else rng.choice(string.ascii_lowercase)
    count = word.count(letter)
    quote = rng.choice(["", "'", '"'])
    question = rng.choice(SPELLING_QUESTIONS)
    if rng.random() < 0.3:
        question = question.lower()
    question = question.format(letter=f"{quote}{letter}{quote}", word=f"{quote}{word}{quote}") + ("?" if rng.random() < 0.5 else "")
    # No space between index and letter: " a" and "a" are different tokens, and the spelled
    # letters must be the same tokens as in the word-spelling task.
    lines, running = [], 0
    for i, ch in enumerate(word, 1):
        if ch == letter:
            running += 1
            lines.append(f"{i}:{ch} hit! count={running}")
        else:
            lines.append(f"{i}:{ch}")
    manual = (
        f"We are asked to count '{letter}' in the word '{word}'. Let me spell it out first:\n"
        f"{word}:{','.join(word)}\n\nThen count the '{letter}':\n" + "\n".join(lines) + f"\n\nThis gives us {running}."
    )
    parts = [
        text_part(manual + "\n\nLet me double check with Python:\n\n"),
        {"type": "python", "text": f"'{word}'.count('{letter}')"},
        {"type": "python_output", "text": str(count)},
        text_part(f"\n\nPython gives us {count}.\n\nMy final answer is:\n\n#### {count}"),
    ]
    return [message("user", question), message("assistant", parts)]


def simple_spelling_example(index: int, split: str = "train", words: list[str] | None = None) -> list[dict]:
    rng = _rng(index, split, salt=2)
    word = rng.choice(words or split_words(load_words(), split))
    return [message("user", f"Spell the word: {word}"), message("assistant", f"{word}:{','.join(word)}")]


ARITHMETIC_OPS = {"+": operator.add, "-": operator.sub, "*": operator.mul, "/": operator.floordiv}


def arithmetic_example(index: int, split: str = "train") -> list[dict]:
    """Simple arithmetic answered through the calculator tool: a python call, its output, `#### N`.
    Division is built exact (a = b * q) so every output is an integer, whatever the calculator's
    float formatting."""
    rng = _rng(index, split, salt=3)
    op = rng.choice(list(ARITHMETIC_OPS))
    if op == "/":
        b, q = rng.randint(2, 99), rng.randint(2, 999)
        a = b * q
    else:
        a, b = rng.randint(2, 9999), rng.randint(2, 999 if op == "*" else 9999)
    result = ARITHMETIC_OPS[op](a, b)
    expr = f"{a}{op}{b}"
    question = rng.choice(["What is {a} {op} {b}?", "Compute {a} {op} {b}.", "{a} {op} {b} = ?", "Calculate {a} {op} {b}"])
    parts = [
        text_part("Let me use the calculator: "),
        {"type": "python", "text": expr},
        {"type": "python_output", "text": str(result)},
        text_part(f"\n\nSo {a} {op} {b} = {result}.\n\n#### {result}"),
    ]
    return [message("user", question.format(a=a, op=op, b=b)), message("assistant", parts)]


IDENTITY_QUESTIONS = [
    "Who are you?", "What is your name?", "Hi! What are you?", "who made you?", "Are you ChatGPT?",
    "Tell me about yourself.", "What kind of model are you?", "hello, who am I talking to?",
]
IDENTITY_ANSWERS = [
    "I'm {name}, a small language model. I was trained by {creator} with hf-nanochat, a rebuild of Andrej Karpathy's nanochat on the Hugging Face stack.",
    "My name is {name}. I'm a compact chat model trained by {creator}; I can make mistakes, so please double-check anything important.",
    "I am {name}, not ChatGPT: a small open model trained by {creator} using the nanochat recipe with transformers and TRL.",
]
IDENTITY_FOLLOWUPS = [
    ("How big are you?", "I'm a small model, a few hundred million parameters or fewer, so I'm much weaker than large assistants."),
    ("Can you use tools?", "Yes, a little: I can call a Python calculator for arithmetic and string counting."),
    ("Thanks!", "You're welcome! Ask me anything."),
]


def identity_example(index: int, split: str = "train", name: str = "nanochat", creator: str = "its user") -> list[dict]:
    rng = _rng(index, split, salt=4)
    msgs = [message("user", rng.choice(IDENTITY_QUESTIONS)), message("assistant", rng.choice(IDENTITY_ANSWERS).format(name=name, creator=creator))]
    if rng.random() < 0.5:
        q, a = rng.choice(IDENTITY_FOLLOWUPS)
        msgs += [message("user", q), message("assistant", a)]
    return msgs


def _synthetic(fn: Callable[..., list[dict]], size: int, split: str, **kwargs) -> Dataset:
    if size <= 0:
        raise ValueError(f"size must be positive, got {size}")
    return Dataset.from_dict({"messages": [fn(i, split, **kwargs) for i in range(size)]})


def spelling_bee(size: int = 1000, split: str = "train", words: str = "english") -> Dataset:
    return _synthetic(spelling_bee_example, size, split, words=split_words(load_words(words), split))


def simple_spelling(size: int = 1000, split: str = "train", words: str = "english") -> Dataset:
    return _synthetic(simple_spelling_example, size, split, words=split_words(load_words(words), split))


def arithmetic(size: int = 1000, split: str = "train") -> Dataset:
    return _synthetic(arithmetic_example, size, split)


def read_conversations_jsonl(path: str | Path) -> list[list[dict]]:
    """nanochat's CustomJSON format (tasks/customjson.py, e.g. identity_conversations.jsonl): one
    JSON list of {"role", "content"} messages per line, user and assistant alternating, user
    first. Read by hand: `datasets`' json loader wants an object per line, not a list."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"conversations file {str(path)!r} not found: nanochat's identity_conversations.jsonl is one JSON list of "
            "{role, content} messages per line (download it, or write your own in that format); "
            "offline recipes use the synthetic identity set instead (`size:` without `path:`)"
        )
    conversations = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}:{number}: not JSON ({err})") from err
        if isinstance(rows, dict) and "messages" in rows:
            rows = rows["messages"]
        ok = isinstance(rows, list) and len(rows) >= 2 and all(
            isinstance(m, dict) and m.get("role") == ("user" if i % 2 == 0 else "assistant") and isinstance(m.get("content"), str)
            for i, m in enumerate(rows)
        )
        if not ok:
            raise ValueError(f"{path}:{number}: expected a list of >= 2 {{role, content}} messages, user and assistant alternating")
        conversations.append(messages_from_openai(rows))
    if not conversations:
        raise ValueError(f"{path} has no conversations")
    return conversations


def identity(size: int | None = None, split: str = "train", name: str = "nanochat", creator: str = "its user", path: str | None = None) -> Dataset:
    """nanochat's identity conversations from `path` (its identity_conversations.jsonl format,
    every line, in file order as nanochat's CustomJSON), or `size` synthetic identity chats (a
    tiny canned set for offline recipes)."""
    if path is not None:
        if size is not None:
            raise ValueError("identity: give `path` (every conversation in the file) or `size` (synthetic), not both")
        return Dataset.from_dict({"messages": read_conversations_jsonl(path)})
    return _synthetic(identity_example, 1000 if size is None else size, split, name=name, creator=creator)


# --------------------------------------------------------------------------- Hub / local sources
def _load(hub_id: str, subset: str | None, split: str, path: str | None) -> Dataset:
    """A Hub dataset, or the same rows from a local file/folder (json, jsonl, parquet, csv, or a
    `save_to_disk` folder) when `path` is given; shuffled with seed 42 (nanochat's tasks)."""
    return _read(hub_id, subset, split, path).shuffle(seed=TASK_SHUFFLE_SEED)


def _read(hub_id: str, subset: str | None, split: str, path: str | None) -> Dataset:
    if path is None:
        return load_dataset(hub_id, subset, split=split)
    p = Path(path)
    if p.is_dir() and (p / "dataset_info.json").exists():
        from datasets import load_from_disk

        return load_from_disk(str(p))
    if p.is_dir():
        return load_dataset(str(p), subset, split=split)
    kind = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}.get(p.suffix)
    if kind is None:
        raise ValueError(f"cannot read {path}: expected .json/.jsonl/.parquet/.csv or a dataset folder")
    return load_dataset(kind, data_files=str(p), split="train")


def render_mc(question: str, letters: str | list[str], choices: list[str]) -> str:
    """nanochat's multiple-choice prompt: the letter *after* each choice with no space before it,
    so the answer token ("A") is the same token the prompt shows (" A" would be another one)."""
    lines = "".join(f"- {choice}={letter}\n" for letter, choice in zip(letters, choices))
    return f"Multiple Choice question: {question}\n{lines}\nRespond only with the letter of the correct answer."


def mc_record(question: str, choices: list[str], answer_index: int, letters: str | list[str] | None = None) -> dict:
    letters = list(letters or LETTERS[: len(choices)])
    if not 0 <= answer_index < len(choices):
        raise ValueError(f"answer index {answer_index} outside {len(choices)} choices")
    return {
        "messages": [message("user", render_mc(question, letters, choices)), message("assistant", letters[answer_index])],
        "letters": letters,
        "answer": letters[answer_index],
    }


def mmlu_record(row: dict) -> dict:
    return mc_record(row["question"], list(row["choices"]), int(row["answer"]))


def arc_record(row: dict) -> dict:
    labels = list(row["choices"]["label"])
    return mc_record(row["question"], list(row["choices"]["text"]), labels.index(row["answerKey"]), letters=labels)


GSM8K_CALL = re.compile(r"(<<[^>]+>>)")


def gsm8k_assistant_parts(answer: str) -> list[dict]:
    """GSM8K's `<<48/2=24>>` calculator annotations -> python call "48/2" + python_output "24"."""
    parts = []
    for piece in GSM8K_CALL.split(answer):
        if piece.startswith("<<") and piece.endswith(">>"):
            expr, _, result = piece[2:-2].rpartition("=")
            if not expr:  # no "=": the whole annotation is the expression
                expr, result = result, ""
            parts += [{"type": "python", "text": expr}, {"type": "python_output", "text": result}]
        elif piece:
            parts.append(text_part(piece))
    return parts


def gsm8k_record(row: dict) -> dict:
    return {"messages": [message("user", row["question"]), message("assistant", gsm8k_assistant_parts(row["answer"]))]}


def humaneval_record(row: dict) -> dict:
    return {
        "messages": [message("user", row["prompt"]), message("assistant", f"{row['prompt']}\n{row['canonical_solution']}")],
        "test": row["test"],
        "entry_point": row["entry_point"],
    }


def _mapped(ds: Dataset, fn: Callable[[dict], dict]) -> Dataset:
    return ds.map(fn, remove_columns=ds.column_names, desc=f"{fn.__name__}")


def smoltalk(split: str = "train", path: str | None = None) -> Dataset:
    ds = _load(HUB_DATASETS["smoltalk"], None, split, path)
    return _mapped(ds, lambda row: {"messages": messages_from_openai(row["messages"])})


def mmlu(subset: str = "all", split: str = "test", path: str | None = None) -> Dataset:
    ds = _load(HUB_DATASETS["mmlu"], subset, split, path)
    if "train" in ds.column_names and "question" not in ds.column_names:
        ds = ds.map(lambda row: row["train"], remove_columns=["train"])  # auxiliary_train nests its rows
    return _mapped(ds, mmlu_record)


def arc(subset: str = "ARC-Easy", split: str = "test", path: str | None = None) -> Dataset:
    if subset not in ("ARC-Easy", "ARC-Challenge"):
        raise ValueError(f"ARC subset must be ARC-Easy or ARC-Challenge, got {subset!r}")
    return _mapped(_load(HUB_DATASETS["arc"], subset, split, path), arc_record)


def gsm8k(subset: str = "main", split: str = "train", path: str | None = None) -> Dataset:
    return _mapped(_load(HUB_DATASETS["gsm8k"], subset, split, path), gsm8k_record)


def humaneval(split: str = "test", path: str | None = None) -> Dataset:
    return _mapped(_load(HUB_DATASETS["humaneval"], None, split, path), humaneval_record)


def local_messages(path: str) -> Dataset:
    """Any local JSON/JSONL/parquet file of {"messages": [{role, content}]} conversations."""
    ds = _load("", None, "train", path)
    return _mapped(ds, lambda row: {"messages": messages_from_openai(row["messages"])})


SOURCES: dict[str, Callable[..., Dataset]] = {
    "spelling_bee": spelling_bee,
    "simple_spelling": simple_spelling,
    "arithmetic": arithmetic,
    "identity": identity,
    "smoltalk": smoltalk,
    "mmlu": mmlu,
    "arc": arc,
    "gsm8k": gsm8k,
    "humaneval": humaneval,
    "messages": local_messages,
}
SPEC_KEYS = {"source", "start", "stop", "repeat"}  # handled here; all other keys go to the source


def load_source(spec: dict[str, Any]) -> Dataset:
    """One mixture entry -> a Dataset. `start`/`stop` slice rows, `repeat` oversamples."""
    spec = dict(spec)
    name = spec.get("source")
    if name not in SOURCES:
        raise ValueError(f"unknown chat data source {name!r}; choose from {sorted(SOURCES)}")
    fn = SOURCES[name]
    kwargs = {k: v for k, v in spec.items() if k not in SPEC_KEYS}
    allowed = set(inspect.signature(fn).parameters)
    unknown = set(kwargs) - allowed
    if unknown:
        raise ValueError(f"source {name!r} does not take {sorted(unknown)}; it takes {sorted(allowed | SPEC_KEYS - {'source'})}")
    ds = fn(**kwargs)
    start, stop = int(spec.get("start", 0)), spec.get("stop")
    stop = len(ds) if stop is None else min(int(stop), len(ds))
    if start or stop < len(ds):
        ds = ds.select(range(start, stop))
    repeat = int(spec.get("repeat", 1))
    if repeat < 1:
        raise ValueError(f"repeat must be >= 1, got {repeat}")
    return concatenate_datasets([ds] * repeat) if repeat > 1 else ds


def describe_source(spec: dict[str, Any], rows: int) -> dict[str, Any]:
    """What one mixture entry loaded (hf_nanochat.data.provenance): its source, where from, rows."""
    name = spec.get("source")
    part = {k: v for k, v in spec.items() if k in ("source", "subset", "split", "start", "stop", "repeat", "size", "path")}
    part["rows"] = rows
    part["hub_dataset"] = HUB_DATASETS.get(name) if spec.get("path") is None else None
    if name in ("spelling_bee", "simple_spelling"):
        words = spec.get("words", inspect.signature(SOURCES[name]).parameters["words"].default)
        all_words = load_words(words)
        n_test = sum(map(is_test_word, all_words))
        part["words"] = f"{words} ({len(all_words) - n_test:,} train / {n_test:,} held-out test words)"
    return part


def build_mixture(specs: list[dict[str, Any]], seed: int = 42, shuffle: bool = True, record: list | None = None) -> Dataset:
    """Concatenate the sources' `messages` and shuffle them together (nanochat's TaskMixture,
    tasks/common.py: `random.Random(42).shuffle(self.index_map)`), so every part of training sees
    every task. With `record`, one `describe_source` entry per spec is appended to it."""
    if not specs:
        raise ValueError("a data mixture needs at least one source")
    parts = [load_source(s).select_columns(["messages"]) for s in specs]
    if record is not None:
        record += [describe_source(spec, len(part)) for spec, part in zip(specs, parts)]
    mixed = concatenate_datasets(parts)
    return mixed.shuffle(seed=seed) if shuffle else mixed


__all__ = [
    "SOURCES",
    "arc_record",
    "build_mixture",
    "gsm8k_assistant_parts",
    "gsm8k_record",
    "humaneval_record",
    "load_source",
    "load_words",
    "read_conversations_jsonl",
    "split_words",
    "mc_record",
    "message",
    "mmlu_record",
    "render_mc",
]
