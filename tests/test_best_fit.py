"""nanochat's BOS-aligned best-fit rows (hf_nanochat.data.best_fit) and the named sources:
every row starts with BOS, every document is whole inside one row except the cropped one, the
dropped fraction is exact, nanochat's choice order, exact resume, and climbmix resolution."""
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from hf_nanochat.data import stream as stream_mod
from hf_nanochat.data.best_fit import BestFitPacker, BestFitStream, pack_rows, split_documents
from hf_nanochat.data.sources import NAMED_SOURCES, expand_source
from hf_nanochat.data.tokenizer import encode_plain, train_tokenizer

BOS = 0


def _docs(n, seed=0, max_len=30):
    rng = np.random.default_rng(seed)
    # document i: BOS then tokens 1000*i + j, so every token tells which document it came from
    return [np.array([BOS] + [1000 * i + j + 1 for j in range(rng.integers(1, max_len))], dtype=np.int64) for i in range(n)]


def test_rows_start_with_bos_and_only_the_cropped_document_is_cut():
    docs = _docs(400)
    cap = 33
    rows = list(pack_rows(docs, cap, buffer_size=20))
    assert len(rows) > 50
    seen: dict[int, int] = {}  # document -> number of its tokens placed
    cropped = 0
    for row, starts in rows:
        assert len(row) == cap and row[0] == BOS and starts[0] == 0
        assert [i for i in range(cap) if row[i] == BOS] == starts  # BOS exactly where documents start
        pieces = np.split(row, starts[1:])
        for k, piece in enumerate(pieces):
            d = (piece[1] - 1) // 1000 if len(piece) > 1 else None
            if d is None:  # a lone BOS: only possible as a crop to 1 token
                assert k == len(pieces) - 1
                cropped += 1
                continue
            assert d not in seen  # no document appears in two rows (or twice)
            seen[d] = len(piece)
            assert np.array_equal(piece, docs[d][: len(piece)])  # a document's own prefix, in order
            if len(piece) < len(docs[d]):
                assert k == len(pieces) - 1  # only the row's last piece may be cut
                cropped += 1
    assert cropped > 0


def test_best_fit_takes_the_largest_that_fits_then_crops_the_shortest():
    packer = BestFitPacker(capacity=10, buffer_size=10)
    lengths = [7, 4, 3, 6, 3, 12]
    for i, n in enumerate(lengths):
        packer.add(np.array([BOS] + [100 * (i + 1)] * (n - 1)))
    row, starts = packer.row()
    # remaining 10: largest fitting is 7 (doc 0); remaining 3: the first 3 (doc 2, not doc 4)
    assert starts == [0, 7] and row[1] == 100 and row[8] == 300
    row, starts = packer.row()
    # remaining 10: 6 (doc 3); remaining 4: 4 (doc 1)
    assert starts == [0, 6] and row[1] == 400 and row[7] == 200
    row, starts = packer.row()
    # 3 (doc 4) fits; remaining 7: only 12 left, nothing fits -> the shortest (12) cropped to 7
    assert starts == [0, 3] and row[4] == 600
    assert packer.used == 30 and packer.dropped == 12 - 7
    assert packer.dropped_fraction == pytest.approx(5 / 35)
    with pytest.raises(ValueError, match="no documents"):
        packer.row()


def test_packer_state_round_trips_and_keeps_tie_order():
    a = BestFitPacker(16, 8)
    for d in _docs(8, seed=3, max_len=10):
        a.add(d)
    a.row()
    b = BestFitPacker(16, 8)
    b.load_state_dict(json.loads(json.dumps(a.state_dict())))
    assert (b.used, b.dropped, len(b)) == (a.used, a.dropped, len(a))
    while a.buffered_tokens() >= 16:
        ra, sa = a.row()
        rb, sb = b.row()
        assert np.array_equal(ra, rb) and sa == sb


def test_split_documents_needs_bos_first():
    parts = split_documents(np.array([BOS, 5, 6, BOS, 7, BOS]), BOS)
    assert [p.tolist() for p in parts] == [[BOS, 5, 6], [BOS, 7], [BOS]]
    with pytest.raises(ValueError, match="BOS"):
        split_documents(np.array([5, BOS, 6]), BOS)


def doc(i: int) -> str:
    return f"document {i}: " + "lorem ipsum dolor " * (i % 9) + f"end {i}."


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer([doc(i) for i in range(300)], vocab_size=300)


@pytest.fixture
def shards(tmp_path):
    """ClimbMix's layout: parquet shards with a `text` column, the last one validation."""
    for f in range(4):
        pq.write_table(pa.table({"text": [doc(f * 40 + i) for i in range(40)]}), tmp_path / f"shard_{f:05d}.parquet")
    return tmp_path


def _take(stream, n):
    it = iter(stream)
    out = [next(it) for _ in range(n)]
    it.close()
    return out


def test_stream_rows_are_whole_documents_from_bos_and_report_drops(tok, shards):
    seq, batch = 24, 3
    stream = BestFitStream(tok, str(shards), seq_len=seq, batch_size=batch, buffer_size=16, docs_per_chunk=10)
    docs = {tuple([tok.bos_token_id] + ids) for ids in encode_plain(tok, [doc(i) for i in range(120)])}
    prefixes = 0
    for inputs, targets in _take(stream, 8):
        assert inputs.shape == targets.shape == (batch, seq) and torch.equal(inputs[:, 1:], targets[:, :-1])
        rows = torch.cat([inputs, targets[:, -1:]], dim=1)
        for row in rows.tolist():
            assert row[0] == tok.bos_token_id
            starts = [i for i, t in enumerate(row) if t == tok.bos_token_id]
            pieces = [tuple(row[a:b]) for a, b in zip(starts, starts[1:] + [len(row)])]
            for piece in pieces[:-1]:
                assert piece in docs  # whole documents
            if pieces[-1] not in docs:  # the last may be a crop: a document's prefix
                assert any(d[: len(pieces[-1])] == pieces[-1] for d in docs)
                prefixes += 1
    assert prefixes > 0
    assert 0 < stream.dropped_fraction < 1
    state = stream.state_dict()
    assert state["buffer"]["dropped"] / (state["buffer"]["used"] + state["buffer"]["dropped"]) == pytest.approx(stream.dropped_fraction)


def test_stream_resume_is_exact(tok, shards):
    make = lambda: BestFitStream(tok, str(shards), seq_len=20, batch_size=2, buffer_size=12, docs_per_chunk=7)
    full = _take(make(), 12)
    first = make()
    _take(first, 5)
    saved = json.loads(json.dumps(first.state_dict()))  # what a checkpoint writes
    resumed = make()
    resumed.load_state_dict(saved)
    rest = _take(resumed, 7)
    for (a, b), (c, d) in zip(full[5:], rest):
        assert torch.equal(a, c) and torch.equal(b, d)
    with pytest.raises(ValueError, match="best-fit"):
        make().load_state_dict({k: v for k, v in saved.items() if k != "packing"})


def test_validation_split_is_the_last_shard_and_one_pass(tok, shards):
    val = BestFitStream(tok, str(shards), seq_len=20, batch_size=2, split="val", buffer_size=8)
    first, second = list(val), list(val)
    assert len(first) == len(second) > 0
    val_docs = {tuple([tok.bos_token_id] + ids) for ids in encode_plain(tok, [doc(120 + i) for i in range(40)])}
    row = torch.cat([first[0][0], first[0][1][:, -1:]], dim=1)[0].tolist()
    end = row.index(tok.bos_token_id, 1) if tok.bos_token_id in row[1:] else len(row)
    assert tuple(row[:end]) in val_docs or any(d[:end] == tuple(row[:end]) for d in val_docs)


def test_climbmix_is_a_named_source_resolved_on_the_hub(monkeypatch):
    assert NAMED_SOURCES["climbmix"] == "karpathy/climbmix-400b-shuffle"
    assert expand_source("climbmix") == "karpathy/climbmix-400b-shuffle" and expand_source("some/other") == "some/other"
    asked = []

    def fake_hub_files(repo_id):
        asked.append(repo_id)
        return [f"hf://datasets/{repo_id}/shard_{i:05d}.parquet" for i in range(3)]

    monkeypatch.setattr(stream_mod, "_hub_files", fake_hub_files)
    files = stream_mod.resolve_source("climbmix")
    assert asked == ["karpathy/climbmix-400b-shuffle"] and files[-1].endswith("shard_00002.parquet")
