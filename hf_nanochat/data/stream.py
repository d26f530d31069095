"""Pretraining data: a `datasets` stream of documents -> packed, resumable token batches.

- Source: a Hub dataset id (default nanochat's FineWeb-Edu shuffle), streamed so the corpus
  never has to fit on disk, or local parquet/jsonl/txt files and folders. Sorted data files,
  the LAST file is the validation split (nanochat's convention for its parquet shards); a
  single file holds out its last `VAL_FRACTION` of documents instead.
- Never a silent substitute: a Hub failure is an error that says what failed and how to fix it.
  The offline corpus (`offline_corpus()`, a few MB of documentation and code that ships with
  Python itself) is used only when asked for by name: `dataset: offline`.
- A training run resolves its source once, on the main process, and shares the file list with
  every rank (`resolve_source_once`), so ranks and splits always read the same corpus.
- Each document becomes `<|bos|>` + its tokens; the token stream is cut into rows of
  `seq_len + 1` tokens -> `(input_ids, targets)` of shape `(batch_size, seq_len)`.
  Tokenization runs in batches in the Rust tokenizer, in a prefetch thread.
- Each rank reads only its own share (`rank_share`): every world_size-th file when there are at
  least as many files as ranks; otherwise every world_size-th parquet row group (nanochat's
  `rank::world` striding, nanochat/dataloader.py `_document_batches`); a jsonl/txt split with
  fewer files than ranks is split by document.
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

    try:
        listing = HfApi().list_repo_files(repo_id, repo_type="dataset")
    except Exception as err:  # offline mode, HTTP 429/5xx, DNS, unknown repo...: say so, never substitute
        raise _hub_error(repo_id, err) from err
    files = sorted(f for f in listing if Path(f).suffix in DATA_EXTENSIONS)
    if not files:
        raise ValueError(f"Hub dataset {repo_id!r} has no parquet/jsonl/txt data files")
    return [f"hf://datasets/{repo_id}/{f}" for f in files]


class HubSourceError(RuntimeError):
    """The Hub could not list a dataset's files (offline mode, rate limit, server error, DNS...)."""


def _hub_error(source: str, err: Exception) -> HubSourceError:
    from huggingface_hub import constants

    fixes = [
        "retry (the Hub answers 429 when rate-limited and 5xx when it is down)",
        "or download the files once (`hf download --repo-type dataset ...`) and pass the folder as the dataset",
    ]
    if constants.HF_HUB_OFFLINE:
        fixes.insert(0, "HF_HUB_OFFLINE is set: unset it to reach the Hub")
    fixes.append(f"or ask for the small offline corpus of Python docs with `dataset: {OFFLINE_SOURCE}` (smoke tests only)")
    return HubSourceError(f"could not list the files of Hub dataset {source!r} ({type(err).__name__}: {err}); " + "; ".join(fixes))


def resolve_source(source: str = DEFAULT_SOURCE) -> list[str]:
    """Sorted data files (local paths or hf:// URLs) of a source.

    `source` is a local file or folder, a Hub dataset id, or "offline" (the stdlib corpus). A Hub
    failure raises `HubSourceError`; nothing is ever substituted for the named data.
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
    return _hub_files(source)


def resolve_source_once(source: str, accelerator=None) -> list[str]:
    """`resolve_source` on the main process only, its file list shared with every rank
    (accelerate's `broadcast_object_list`), so all ranks and both splits read the same files and
    the Hub is asked once. An error on the main process is raised on every rank (no rank hangs)."""
    if accelerator is None or accelerator.num_processes == 1:
        return resolve_source(source)
    from accelerate.utils import broadcast_object_list

    payload: list = [None]
    failure = None
    if accelerator.is_main_process:
        try:
            payload = [{"files": resolve_source(source)}]
        except Exception as err:
            failure, payload = err, [{"error": f"{type(err).__name__}: {err}"}]
    payload = broadcast_object_list(payload, from_process=0)
    if failure is not None:
        raise failure
    if "error" in payload[0]:
        raise RuntimeError(f"resolving data source {source!r} on the main process failed: {payload[0]['error']}")
    return payload[0]["files"]


def split_files(files: list[str], split: str) -> list[str]:
    """The split's files: all but the last for train, the last for val (a single file is split
    by documents in `load_documents`)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if len(files) < 2:
        return list(files)
    return files[:-1] if split == "train" else files[-1:]


def describe_source(source, files: list[str]) -> dict:
    """What a run read, for its output folder (`hf_nanochat.data.provenance`)."""
    source = source if isinstance(source, str) else None
    hub = None
    if files and files[0].startswith("hf://datasets/"):
        hub = "/".join(files[0].removeprefix("hf://datasets/").split("/")[:2])
    return {
        "source": source if source is not None else "files",
        "hub_dataset": hub,
        "offline_corpus": source == OFFLINE_SOURCE,
        "files": len(files),  # the last is the val split (a single file: its last documents)
        "first_file": files[0] if files else None,
        "val_file": files[-1] if files else None,
    }


def _parquet_row_groups(path: str) -> int:
    import fsspec
    import pyarrow.parquet as pq

    with fsspec.open(path, "rb") as f:
        return pq.ParquetFile(f).metadata.num_row_groups


def rank_share(files: list[str], rank: int, world_size: int) -> tuple[str, list]:
    """This rank's disjoint share of the split's files, whatever the counts:
    ("files", files[rank::world]) when every rank gets at least one file;
    ("row_groups", [(file, row_group), ...][rank::world]) for parquet with fewer files than ranks
    (nanochat strides row groups `rank::world`, nanochat/dataloader.py `_document_batches`);
    ("documents", files) for jsonl/txt with fewer files than ranks (split by document)."""
    if len(files) >= world_size:
        return "files", files[rank::world_size]
    if all(Path(f).suffix == ".parquet" for f in files):
        units = [(f, g) for f in files for g in range(_parquet_row_groups(f))]
        if len(units) < world_size:
            raise ValueError(
                f"{len(files)} parquet file(s) with {len(units)} row groups in all cannot give each of {world_size} "
                "ranks its own share; write the data in more files or smaller row groups"
            )
        return "row_groups", units[rank::world_size]
    return "documents", files


def _row_group_documents(units: list[str], text_column: str):
    """Generator for `IterableDataset.from_generator`: the documents of (file, row group) units.
    Hand-written because `datasets` shards parquet by whole files only; each unit is one
    generator shard, so the datasets stream state (and exact resume) works as for files."""
    import fsspec
    import pyarrow.parquet as pq

    for unit in units:
        path, group = unit
        with fsspec.open(path, "rb") as f:
            pf = pq.ParquetFile(f)
            names = pf.schema_arrow.names
            if text_column not in names:
                raise ValueError(f"{path} has no column {text_column!r}; columns are {names}")
            for text in pf.read_row_group(group, columns=[text_column]).column(text_column).to_pylist():
                yield {text_column: text}


def load_documents(
    source=DEFAULT_SOURCE, split: str = "train", text_column: str = "text", rank: int = 0, world_size: int = 1
) -> datasets.IterableDataset:
    """This rank's share of the split's documents as a streaming `datasets.IterableDataset` with
    the single column `text_column`. `source` is anything `resolve_source` takes, or the file
    list it returned (what a run resolved once and shared)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, {world_size}), got {rank}")
    files = resolve_source(source) if isinstance(source, (str, os.PathLike)) else [str(f) for f in source]
    if not files:
        raise ValueError("no data files given")
    name = source if isinstance(source, (str, os.PathLike)) else f"{len(files)} files"
    builders = {DATA_EXTENSIONS[Path(f).suffix] for f in files}
    if len(builders) > 1:
        raise ValueError(f"data source {name!r} mixes file types {sorted(builders)}; use one")
    builder = builders.pop()
    if builder == "text":
        # a .txt file is one document per paragraph (blank-line separated), not per line
        kwargs = {"sample_by": "paragraph"}
        if text_column != "text":
            raise ValueError(f"text files have a single column 'text', not {text_column!r}")
    else:
        kwargs = {}
    if len(files) >= 2:
        kind, share = rank_share(split_files(files, split), rank, world_size)
        if kind == "row_groups":
            features = datasets.Features({text_column: datasets.Value("string")})
            ds = datasets.IterableDataset.from_generator(
                _row_group_documents, features=features, gen_kwargs={"units": share, "text_column": text_column}
            )
        else:
            ds = datasets.load_dataset(builder, data_files={split: share}, split=split, streaming=True, **kwargs)
            if kind == "documents":
                ds = split_dataset_by_node(ds, rank=rank, world_size=world_size)
    else:
        # One file: hold out its last documents. Loading it (memory-mapped Arrow) gives the count.
        full = datasets.load_dataset(builder, data_files={"train": files}, split="train", **kwargs)
        n_val = max(1, int(len(full) * VAL_FRACTION)) if len(full) >= 2 else 0
        picked = range(len(full) - n_val) if split == "train" else range(len(full) - n_val, len(full))
        ds = full.select(picked).to_iterable_dataset(num_shards=min(64, max(1, len(picked))))
        ds = split_dataset_by_node(ds, rank=rank, world_size=world_size)
    if ds.column_names is not None and text_column not in ds.column_names:
        raise ValueError(f"data source {name!r} has no column {text_column!r}; columns are {ds.column_names}")
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
        source: str | list[str] = DEFAULT_SOURCE,  # a source, or the files resolve_source_once returned
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
        self.source = source if isinstance(source, (str, os.PathLike)) else f"{len(source)} files"
        self.dataset = load_documents(source, split, text_column, rank=rank, world_size=world_size)
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
