"""Pretraining data: a `datasets` stream of documents -> packed, resumable token batches.

- Source: a Hub dataset id (default nanochat's FineWeb-Edu shuffle), streamed so the corpus
  never has to fit on disk, or local parquet/jsonl/txt files and folders. Sorted data files,
  the LAST file is the validation split (nanochat's convention for its parquet shards); a
  single file holds out its last `VAL_FRACTION` of documents instead.
- Without Hub access the default source falls back (with a notice) to `offline_corpus()`,
  a few MB of documentation and code that ships with Python itself.
- Each document becomes `<|bos|>` + its tokens; the token stream is cut into rows of
  `seq_len + 1` tokens -> `(input_ids, targets)` of shape `(batch_size, seq_len)`.
  Tokenization runs in batches in the Rust tokenizer, in a prefetch thread.
- Ranks read disjoint documents (`datasets.distributed.split_dataset_by_node`).
- Resumable: the state is the datasets stream state at the start of the chunk of documents
  holding the next unread token, plus the token offset into that chunk. Documents are
  tokenized independently, so the token stream (and every batch) does not depend on where
  chunks start: resuming yields exactly the batches an uninterrupted run would.
"""
from __future__ import annotations

import ast
import hashlib
import os
import queue
import re
import sys
import sysconfig
import threading
from collections import deque
from collections.abc import Iterator
from pathlib import Path

import datasets
import numpy as np
import torch
from datasets.distributed import split_dataset_by_node

from hf_nanochat.data.sources import expand_source
from hf_nanochat.data.tokenizer import BOS, encode_plain

DEFAULT_SOURCE = "karpathy/fineweb-edu-100b-shuffle"
OFFLINE_SOURCE = "offline"  # ask for the stdlib corpus explicitly
DATA_EXTENSIONS = {".parquet": "parquet", ".jsonl": "json", ".json": "json", ".txt": "text"}
VAL_FRACTION = 0.01  # documents held out when a source is a single file
SPLITS = ("train", "val")
_NOTIFIED: list[bool] = []  # the offline-fallback notice was printed


# ---------------------------------------------------------------- offline corpus


def _stdlib_documents() -> Iterator[str]:
    """Documents from what ships with Python: pydoc's topic pages, each stdlib module's source,
    and each module's docstrings gathered into one text. Ordered by a hash of their names (prose
    and code interleaved, deterministic); texts are produced lazily, so a small corpus is quick."""
    import pydoc_data.topics

    root = Path(sysconfig.get_paths()["stdlib"])
    skip = {"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__"}
    modules = [p for p in sorted(root.rglob("*.py")) if not skip.intersection(p.relative_to(root).parts)]
    names = [("topic", name) for name in pydoc_data.topics.topics]
    names += [(kind, p) for p in modules for kind in ("source", "docstrings")]
    names.sort(key=lambda n: hashlib.sha256(f"{n[0]}:{n[1] if n[0] == 'topic' else n[1].relative_to(root)}".encode()).hexdigest())
    for kind, what in names:
        if kind == "topic":
            yield pydoc_data.topics.topics[what]
            continue
        source = what.read_text(encoding="utf-8", errors="replace")
        if kind == "source":
            yield source
            continue
        try:
            tree = ast.parse(source)
        except SyntaxError:
            continue
        module = what.relative_to(root).with_suffix("").as_posix().replace("/", ".")
        pieces = []
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node)
                if doc:
                    pieces.append(f"{module if isinstance(node, ast.Module) else node.name}\n\n{doc}")
        if pieces:
            yield "\n\n\n".join(pieces)


def offline_cache_dir() -> Path:
    return Path(os.environ.get("HF_NANOCHAT_CACHE", Path.home() / ".cache" / "hf_nanochat"))


def offline_corpus(output_dir: str | os.PathLike | None = None, max_bytes: int = 6_000_000, num_shards: int = 10) -> Path:
    """Write (once) a folder of parquet shards built from Python's own docs and source; return it.

    No download: the text comes from the running interpreter, so it is deterministic for a given
    Python version; documents are added until `max_bytes` of UTF-8 text. Like any folder source, the last shard is
    the validation split.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    if num_shards < 2:
        raise ValueError("offline_corpus needs num_shards >= 2 (the last shard is the validation split)")
    version = f"py{sys.version_info.major}.{sys.version_info.minor}.{sys.version_info.micro}"
    out = Path(output_dir) if output_dir is not None else offline_cache_dir() / f"offline_corpus-{version}-{max_bytes}-{num_shards}"
    if (out / "COMPLETE").exists():
        return out
    texts, total = [], 0
    for text in _stdlib_documents():
        if total >= max_bytes:
            break
        texts.append(text)
        total += len(text.encode("utf-8"))
    if len(texts) < num_shards:
        raise ValueError(f"offline corpus has {len(texts)} documents, fewer than {num_shards} shards")
    out.mkdir(parents=True, exist_ok=True)
    bounds = np.linspace(0, len(texts), num_shards + 1).astype(int)
    for i in range(num_shards):
        tmp = out / f".shard_{i:05d}.parquet.tmp"
        pq.write_table(pa.table({"text": texts[bounds[i] : bounds[i + 1]]}), tmp)
        tmp.replace(out / f"shard_{i:05d}.parquet")  # atomic: never a half-written shard
    (out / "COMPLETE").write_text(f"{len(texts)} documents, {total} bytes\n")
    return out


# ---------------------------------------------------------------- sources


def _data_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix in DATA_EXTENSIONS and not p.name.startswith("."))


def _looks_like_hub_id(source: str) -> bool:
    return re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+", source) is not None and Path(source).suffix not in DATA_EXTENSIONS


def _hub_files(repo_id: str) -> list[str]:
    from huggingface_hub import HfApi

    files = sorted(f for f in HfApi().list_repo_files(repo_id, repo_type="dataset") if Path(f).suffix in DATA_EXTENSIONS)
    if not files:
        raise ValueError(f"Hub dataset {repo_id!r} has no parquet/jsonl/txt data files")
    return [f"hf://datasets/{repo_id}/{f}" for f in files]


def resolve_source(source: str = DEFAULT_SOURCE) -> list[str]:
    """Sorted data files (local paths or hf:// URLs) of a source.

    `source` is a local file or folder, a Hub dataset id, or "offline". The default Hub dataset
    falls back to `offline_corpus()` with a printed notice when the Hub cannot be reached.
    """
    source = expand_source(source)  # "climbmix" -> karpathy/climbmix-400b-shuffle (hf_nanochat.data.sources)
    if source == OFFLINE_SOURCE:
        return [str(p) for p in _data_files(offline_corpus())]
    path = Path(source).expanduser()
    if path.exists():
        files = [path] if path.is_file() else _data_files(path)
        if not files:
            raise ValueError(f"no data files ({', '.join(sorted(DATA_EXTENSIONS))}) in {source!r}")
        bad = [f for f in files if f.suffix not in DATA_EXTENSIONS]
        if bad:
            raise ValueError(f"unsupported data file {str(bad[0])!r}: use one of {', '.join(sorted(DATA_EXTENSIONS))}")
        files = [f for f in files if f.stat().st_size > 0]  # datasets cannot read an empty jsonl/txt file
        if not files:
            raise ValueError(f"data source {source!r} has no documents (its files are empty)")
        return [str(f) for f in files]
    if not _looks_like_hub_id(source):
        raise FileNotFoundError(f"data source {source!r}: no such file or folder (and not a Hub dataset id 'owner/name')")
    try:
        return _hub_files(source)
    except Exception as err:  # offline mode, no network, DNS...: the Hub is unreachable
        if source != DEFAULT_SOURCE:
            raise ValueError(f"could not read Hub dataset {source!r} ({type(err).__name__}: {err})") from err
        folder = offline_corpus()
        if not _NOTIFIED:  # once per process, not once per split or rank
            print(
                f"notice: Hub dataset {source!r} is unreachable ({type(err).__name__}); using the offline corpus "
                f"built from Python's own docs and source at {folder}",
                flush=True,
            )
            _NOTIFIED.append(True)
        return [str(p) for p in _data_files(folder)]


def load_documents(source: str = DEFAULT_SOURCE, split: str = "train", text_column: str = "text") -> datasets.IterableDataset:
    """The split's documents as a streaming `datasets.IterableDataset` with the single column `text_column`."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    files = resolve_source(source)
    builders = {DATA_EXTENSIONS[Path(f).suffix] for f in files}
    if len(builders) > 1:
        raise ValueError(f"data source {source!r} mixes file types {sorted(builders)}; use one")
    builder = builders.pop()
    if builder == "text":
        # a .txt file is one document per paragraph (blank-line separated), not per line
        kwargs = {"sample_by": "paragraph"}
        if text_column != "text":
            raise ValueError(f"text files have a single column 'text', not {text_column!r}")
    else:
        kwargs = {}
    if len(files) >= 2:
        chosen = files[:-1] if split == "train" else files[-1:]
        ds = datasets.load_dataset(builder, data_files={split: chosen}, split=split, streaming=True, **kwargs)
    else:
        # One file: hold out its last documents. Loading it (memory-mapped Arrow) gives the count.
        full = datasets.load_dataset(builder, data_files={"train": files}, split="train", **kwargs)
        n_val = max(1, int(len(full) * VAL_FRACTION)) if len(full) >= 2 else 0
        picked = range(len(full) - n_val) if split == "train" else range(len(full) - n_val, len(full))
        ds = full.select(picked).to_iterable_dataset(num_shards=min(64, max(1, len(picked))))
    if ds.column_names is not None and text_column not in ds.column_names:
        raise ValueError(f"data source {source!r} has no column {text_column!r}; columns are {ds.column_names}")
    return ds.select_columns([text_column])


# ---------------------------------------------------------------- the stream

_END = object()


class PretrainStream:
    """Infinite (train) or one-pass (val) stream of `(input_ids, targets)` int64 batches.

    Iterating continues from the current state (train) and updates it batch by batch, so
    `state_dict()` after the k-th batch resumes at batch k+1. The val split starts from its
    beginning on every `iter()` (an evaluator reads the same batches each time) and ends after
    the last full batch. `reset()` rewinds either split.
    """

    def __init__(
        self,
        tokenizer,
        source: str = DEFAULT_SOURCE,
        seq_len: int = 2048,
        batch_size: int = 32,
        split: str = "train",
        rank: int = 0,
        world_size: int = 1,
        text_column: str = "text",
        docs_per_chunk: int = 256,
        prefetch: int = 4,
    ):
        if seq_len < 1 or batch_size < 1:
            raise ValueError(f"seq_len and batch_size must be positive, got {seq_len}, {batch_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, {world_size}), got {rank}")
        self.tokenizer = tokenizer
        self.bos_id = tokenizer.convert_tokens_to_ids(BOS)
        self.seq_len, self.batch_size, self.split = seq_len, batch_size, split
        self.text_column, self.docs_per_chunk, self.prefetch = text_column, docs_per_chunk, prefetch
        self.source = source
        self.dataset = split_dataset_by_node(load_documents(source, split, text_column), rank=rank, world_size=world_size)
        self._initial = {"epoch": 0, "dataset": self.dataset.state_dict(), "offset": 0}
        self._state = self._initial

    # -- state

    def state_dict(self) -> dict:
        """JSON-serialisable position: epoch, the datasets state of the current chunk, token offset."""
        return {"epoch": self._state["epoch"], "dataset": self._state["dataset"], "offset": self._state["offset"], "split": self.split}

    def load_state_dict(self, state: dict) -> None:
        if state.get("split", self.split) != self.split:
            raise ValueError(f"state is for split {state['split']!r}, this stream is {self.split!r}")
        self._state = {"epoch": int(state["epoch"]), "dataset": state["dataset"], "offset": int(state["offset"])}

    def reset(self) -> None:
        self._state = self._initial

    @property
    def epoch(self) -> int:
        return self._state["epoch"]

    # -- iteration

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        start = self._initial if self.split != "train" else self._state
        items: queue.Queue = queue.Queue(maxsize=self.prefetch)
        stop = threading.Event()
        producer = threading.Thread(target=self._produce_into, args=(start, items, stop), daemon=True)
        producer.start()
        try:
            while True:
                item = items.get()
                if item is _END:
                    return
                if isinstance(item, BaseException):
                    raise item
                inputs, targets, state = item
                self._state = state
                yield inputs, targets
        finally:
            stop.set()
            while producer.is_alive():  # unblock a producer waiting on a full queue
                try:
                    items.get(timeout=0.05)
                except queue.Empty:
                    pass
            producer.join()

    def _produce_into(self, start: dict, items: queue.Queue, stop: threading.Event) -> None:
        def put(item) -> bool:
            while not stop.is_set():
                try:
                    items.put(item, timeout=0.1)
                    return True
                except queue.Full:
                    pass
            return False

        batches = self._batches(start, stop)
        try:
            for batch in batches:
                if not put(batch):
                    return
            put(_END)
        except BaseException as err:  # surfaced in the consumer thread
            put(err)
        finally:
            batches.close()  # closes the datasets readers now, not at interpreter exit

    def _chunks(self, start: dict, stop: threading.Event):
        """(epoch, datasets state before the chunk, tokens of the chunk's documents), forever for train."""
        epoch, ds_state = start["epoch"], start["dataset"]
        while not stop.is_set():
            self.dataset.load_state_dict(ds_state)
            documents = iter(self.dataset)
            read_any = False
            try:
                while not stop.is_set():
                    state_before = self.dataset.state_dict()
                    texts = []
                    for example in documents:
                        texts.append(example[self.text_column])
                        if len(texts) == self.docs_per_chunk:
                            break
                    if not texts:
                        break
                    read_any = True
                    bad = next((t for t in texts if not isinstance(t, str)), None)
                    if bad is not None:
                        raise ValueError(f"column {self.text_column!r} must hold strings, got {type(bad).__name__}")
                    tokens = np.fromiter(
                        (t for ids in encode_plain(self.tokenizer, texts) for t in (self.bos_id, *ids)), dtype=np.int64
                    )
                    yield epoch, state_before, tokens
            finally:
                documents.close()
            if self.split != "train":
                return
            if not read_any and ds_state == self._initial["dataset"]:
                raise ValueError(f"data source {self.source!r} has no documents in split {self.split!r} for this rank")
            epoch, ds_state = epoch + 1, self._initial["dataset"]

    def _batches(self, start: dict, stop: threading.Event):
        chunks = self._chunks(start, stop)
        try:
            yield from self._pack(chunks, start["offset"])
        finally:
            chunks.close()

    def _pack(self, chunks, offset: int):
        """Cut the chunks' token stream into batches, each with the state just after it."""
        need = self.batch_size * (self.seq_len + 1)
        buffer = np.empty(0, dtype=np.int64)
        # chunks with tokens in the buffer, as (epoch, state, length); buffer[0] is at `offset` in the first
        held: deque = deque()
        skip = offset  # tokens of the first chunk consumed before the saved state
        produced = False
        for epoch, state, tokens in chunks:
            held.append((epoch, state, len(tokens)))
            if skip:
                if skip > len(tokens):
                    raise ValueError("stream state does not match the data (offset beyond its chunk); was the source changed?")
                tokens, skip = tokens[skip:], 0
            buffer = np.concatenate([buffer, tokens]) if len(buffer) else tokens
            while len(buffer) >= need:
                rows = torch.from_numpy(buffer[:need].copy()).view(self.batch_size, self.seq_len + 1)
                buffer = buffer[need:]
                # advance the saved position by `need` tokens across the held chunks
                consumed = need
                while held and offset + consumed >= held[0][2]:
                    consumed -= held[0][2] - offset
                    held.popleft()
                    offset = 0
                offset += consumed if held else 0
                if held:
                    state_after = {"epoch": held[0][0], "dataset": held[0][1], "offset": offset}
                else:  # exactly at a chunk boundary: the next chunk starts where the reader is now
                    state_after = {"epoch": epoch, "dataset": self.dataset.state_dict(), "offset": 0}
                produced = True
                yield rows[:, :-1].contiguous(), rows[:, 1:].contiguous(), state_after
        if not produced and self.split != "train":
            raise ValueError(
                f"split {self.split!r} of {self.source!r} has fewer tokens than one batch "
                f"({self.batch_size} x {self.seq_len + 1}); lower batch_size or seq_len"
            )
