"""nanochat's BOS-aligned best-fit row packing (`packing: best_fit` in a train config).

karpathy/nanochat `nanochat/dataloader.py` (`tokenizing_distributed_data_loader_with_state_bos_bestfit`):
documents (each `<|bos|>` + its tokens) wait in a buffer of `buffer_size`; each row of seq_len + 1
tokens is filled by repeatedly taking the LARGEST buffered document that still fits whole; when
none fits, the SHORTEST buffered document is cropped to fill the row exactly and the rest of it
is dropped. So every row starts with BOS, no document continues into another row, and there
is no padding; the price is the dropped tails (nanochat measures ~35% of tokens at T=2048), which
`BestFitStream.dropped_fraction` reports. Ties go to the earliest buffered document, as nanochat's
linear scan; here a sorted list (bisect) finds it in O(log n) instead of a scan.

`BestFitStream` is a `PretrainStream` (same sources, rank split, prefetch thread and val/train
behaviour) that packs documents instead of a flat token stream. Resuming is exact: the state
holds the reader's position (chunk state + documents consumed from it) and the buffered
documents themselves (base64 int32, a few MB at buffer 1000), so a resumed run yields the same
rows an uninterrupted one would. Hand-written: neither datasets nor transformers packs this way.
"""
from __future__ import annotations

import base64
import bisect
import threading
from collections.abc import Iterable, Iterator

import numpy as np
import torch

from hf_nanochat.data.stream import PretrainStream

PACKINGS = ("stream", "best_fit")


class BestFitPacker:
    """The best-fit buffer: `add(doc)` documents, `row()` packs one row of `capacity` tokens.

    Counts `used` and `dropped` tokens over the documents that left the buffer."""

    def __init__(self, capacity: int, buffer_size: int = 1000):
        if capacity < 2 or buffer_size < 1:
            raise ValueError(f"capacity must be >= 2 and buffer_size >= 1, got {capacity}, {buffer_size}")
        self.capacity, self.buffer_size = capacity, buffer_size
        self._sorted: list[tuple[int, int]] = []  # (length, arrival number), ascending
        self._docs: dict[int, np.ndarray] = {}
        self._arrivals = 0
        self.used = self.dropped = 0

    def __len__(self) -> int:
        return len(self._docs)

    def needs_documents(self) -> bool:
        return len(self._docs) < self.buffer_size

    def add(self, doc: np.ndarray) -> None:
        if len(doc) == 0:
            return
        bisect.insort(self._sorted, (len(doc), self._arrivals))
        self._docs[self._arrivals] = doc
        self._arrivals += 1

    def _take(self, index: int) -> np.ndarray:
        _, arrival = self._sorted.pop(index)
        return self._docs.pop(arrival)

    def row(self) -> tuple[np.ndarray, list[int]]:
        """One packed row and the start offset of each document in it (the last may be cropped)."""
        if not self._docs:
            raise ValueError("best-fit packer has no documents")
        out = np.empty(self.capacity, dtype=np.int64)
        starts, pos = [], 0
        while pos < self.capacity and self._docs:
            remaining = self.capacity - pos
            fits = bisect.bisect_right(self._sorted, (remaining, float("inf")))
            if fits:  # the largest length that fits; of those, the earliest to arrive
                length = self._sorted[fits - 1][0]
                doc = self._take(bisect.bisect_left(self._sorted, (length, -1)))
                out[pos : pos + length] = doc
                self.used += length
            else:  # nothing fits whole: crop the shortest to fill the row exactly
                doc = self._take(0)
                length = remaining
                out[pos:] = doc[:remaining]
                self.used += remaining
                self.dropped += len(doc) - remaining
            starts.append(pos)
            pos += length
        if pos < self.capacity:
            raise ValueError("best-fit packer ran out of documents inside a row")
        return out, starts

    @property
    def dropped_fraction(self) -> float:
        total = self.used + self.dropped
        return self.dropped / total if total else 0.0

    # -- state

    def snapshot(self) -> "_Snapshot":
        """The buffer as it is now, cheaply (documents are never modified in place); encoded
        to JSON only when a checkpoint asks (`encode_buffer`)."""
        return _Snapshot([self._docs[a] for a in sorted(self._docs)], self.used, self.dropped)

    def buffered_tokens(self) -> int:
        return sum(length for length, _ in self._sorted)

    def state_dict(self) -> dict:
        return encode_buffer(self.snapshot())

    def load_state_dict(self, state) -> None:
        if isinstance(state, _Snapshot):
            state = encode_buffer(state)
        flat = np.frombuffer(base64.b64decode(state["tokens"]), dtype=np.int32).astype(np.int64)
        if sum(state["lengths"]) != len(flat):
            raise ValueError("best-fit state is corrupt: document lengths do not add up to its tokens")
        self._sorted, self._docs, self._arrivals = [], {}, 0
        for doc in np.split(flat, np.cumsum(state["lengths"])[:-1]) if state["lengths"] else []:
            self.add(doc)
        self.used, self.dropped = int(state["used"]), int(state["dropped"])


class _Snapshot:
    __slots__ = ("docs", "used", "dropped")

    def __init__(self, docs, used, dropped):
        self.docs, self.used, self.dropped = docs, used, dropped


def encode_buffer(snap) -> dict:
    """JSON form of a buffer: documents in arrival order (keeps tie-breaking after a resume)."""
    if isinstance(snap, dict):
        return snap
    flat = np.concatenate(snap.docs).astype(np.int32) if snap.docs else np.empty(0, np.int32)
    return {"lengths": [len(d) for d in snap.docs], "tokens": base64.b64encode(flat.tobytes()).decode(), "used": snap.used, "dropped": snap.dropped}


def split_documents(tokens: np.ndarray, bos_id: int) -> list[np.ndarray]:
    """A chunk's token stream (each document `bos + tokens`) back into its documents."""
    starts = np.flatnonzero(tokens == bos_id)
    if len(tokens) and (len(starts) == 0 or starts[0] != 0):
        raise ValueError("token chunk does not start with BOS")
    return np.split(tokens, starts[1:])


def pack_rows(documents: Iterable[np.ndarray], capacity: int, buffer_size: int = 1000) -> Iterator[tuple[np.ndarray, list[int]]]:
    """Best-fit rows from a finite iterable of documents, until the documents run out."""
    packer = BestFitPacker(capacity, buffer_size)
    docs = iter(documents)
    exhausted = False
    while True:
        while not exhausted and packer.needs_documents():
            doc = next(docs, None)
            if doc is None:
                exhausted = True
            else:
                packer.add(doc)
        if exhausted and packer.buffered_tokens() < capacity:
            return
        yield packer.row()


class BestFitStream(PretrainStream):
    """`PretrainStream` with BOS-aligned best-fit rows. State: the reader's position (epoch,
    datasets state of the current chunk, documents of it already buffered) + the buffer."""

    def __init__(self, *args, buffer_size: int = 1000, **kwargs):
        super().__init__(*args, **kwargs)
        self.buffer_size = buffer_size
        self._initial = {**self._initial, "buffer": BestFitPacker(2, 1).state_dict()}
        self._state = self._initial

    def state_dict(self) -> dict:
        return {**super().state_dict(), "packing": "best_fit", "buffer": encode_buffer(self._state["buffer"])}

    def load_state_dict(self, state: dict) -> None:
        if state.get("packing") != "best_fit":
            raise ValueError("stream state was saved without best-fit packing; resume with the packing it was saved with")
        super().load_state_dict(state)
        self._state = {**self._state, "buffer": state["buffer"]}

    @property
    def dropped_fraction(self) -> float:
        """Fraction of the tokens read so far (this rank) that cropping dropped."""
        buffer = self._state["buffer"]  # as of the last batch handed out (the producer runs ahead)
        used, dropped = (buffer["used"], buffer["dropped"]) if isinstance(buffer, dict) else (buffer.used, buffer.dropped)
        return dropped / (used + dropped) if used + dropped else 0.0

    def _batches(self, start: dict, stop: threading.Event):
        packer = BestFitPacker(self.seq_len + 1, self.buffer_size)
        packer.load_state_dict(start["buffer"])
        chunks = self._chunks(start, stop)
        skip = start["offset"]  # documents of the first chunk already in the buffer
        pending: list[np.ndarray] = []
        position = {"epoch": start["epoch"], "dataset": start["dataset"], "offset": skip}
        exhausted, produced = False, False
        try:
            while True:
                rows = []
                while len(rows) < self.batch_size:
                    while packer.needs_documents() and not exhausted:
                        if not pending:
                            item = next(chunks, None)
                            if item is None:
                                exhausted = True
                                break
                            epoch, chunk_state, tokens = item
                            pending = split_documents(tokens, self.bos_id)[skip:]
                            position = {"epoch": epoch, "dataset": chunk_state, "offset": skip}
                            skip = 0
                        packer.add(pending.pop(0))
                        position = {**position, "offset": position["offset"] + 1}
                    if exhausted and packer.buffered_tokens() < packer.capacity:
                        if not produced:
                            raise ValueError(
                                f"split {self.split!r} of {self.source!r} has too few tokens for one best-fit batch "
                                f"({self.batch_size} x {self.seq_len + 1}); lower batch_size or seq_len"
                            )
                        return  # a partial batch at the end of a one-pass split is dropped
                    rows.append(packer.row()[0])
                batch = torch.from_numpy(np.stack(rows))
                # Documents still pending from the current chunk are re-read on resume (offset).
                state = {**position, "buffer": packer.snapshot()}
                produced = True
                yield batch[:, :-1].contiguous(), batch[:, 1:].contiguous(), state
        finally:
            chunks.close()


def stream_class(packing: str) -> type[PretrainStream]:
    """The pretraining stream that cuts rows as `packing` (a train config's `packing`) says."""
    if packing not in PACKINGS:
        raise ValueError(f"packing must be one of {PACKINGS}, got {packing!r}")
    return BestFitStream if packing == "best_fit" else PretrainStream


__all__ = ["PACKINGS", "stream_class", "BestFitPacker", "encode_buffer", "split_documents", "pack_rows", "BestFitStream"]
