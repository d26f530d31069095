"""Pretraining stream: exact packing, resume, rank disjointness, splits, sources, errors."""
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from hf_nanochat.data import stream as data
from hf_nanochat.data.stream import PretrainStream, load_documents, offline_corpus, resolve_source
from hf_nanochat.data.tokenizer import encode_plain, train_tokenizer

SEQ, BATCH = 16, 2


def doc(i: int) -> str:
    return f"document {i}: " + "lorem ipsum dolor " * (i % 7) + f"end {i}."


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer([doc(i) for i in range(300)], vocab_size=300)


def write_jsonl(path, docs, column="text"):
    path.write_text("".join(json.dumps({column: d, "id": 0}) + "\n" for d in docs))


@pytest.fixture
def folder(tmp_path):
    """5 jsonl files of 20 documents: 4 train shards + the last as validation."""
    for f in range(5):
        write_jsonl(tmp_path / f"part_{f}.jsonl", [doc(f * 20 + i) for i in range(20)])
    return tmp_path


def stream_tokens(tok, docs):
    bos = tok.bos_token_id
    return [t for d in docs for t in [bos] + encode_plain(tok, [d])[0]]


def take(stream, n):
    it = iter(stream)
    out = [next(it) for _ in range(n)]
    it.close()
    return out


def test_batches_are_the_packed_token_stream(tok, folder):
    stream = PretrainStream(tok, str(folder), seq_len=SEQ, batch_size=BATCH, docs_per_chunk=7)
    batches = take(stream, 6)
    expected = stream_tokens(tok, [doc(i) for i in range(80)])  # train = first 4 files, in order
    got = []
    for inputs, targets in batches:
        assert inputs.shape == targets.shape == (BATCH, SEQ) and inputs.dtype == torch.int64
        assert torch.equal(inputs[:, 1:], targets[:, :-1])
        got += torch.cat([inputs, targets[:, -1:]], dim=1).flatten().tolist()  # rows of seq_len + 1
    assert got == expected[: len(got)]
    assert got[0] == tok.bos_token_id


@pytest.mark.parametrize("docs_per_chunk", [1, 5, 64])
def test_resume_yields_exactly_the_uninterrupted_batches(tok, folder, docs_per_chunk):
    kwargs = dict(seq_len=SEQ, batch_size=BATCH, docs_per_chunk=docs_per_chunk)
    straight = take(PretrainStream(tok, str(folder), **kwargs), 10)
    first = PretrainStream(tok, str(folder), **kwargs)
    take(first, 5)
    state = json.loads(json.dumps(first.state_dict()))  # what a checkpoint stores
    resumed = PretrainStream(tok, str(folder), **kwargs)
    resumed.load_state_dict(state)
    for (a, b), (c, d) in zip(take(resumed, 5), straight[5:10]):
        assert torch.equal(a, c) and torch.equal(b, d)


def test_resume_at_every_step_across_epochs(tok, tmp_path):
    for f in range(3):
        write_jsonl(tmp_path / f"p{f}.jsonl", [doc(f * 4 + i) for i in range(4)])
    kwargs = dict(seq_len=8, batch_size=2, docs_per_chunk=3)
    stream = PretrainStream(tok, str(tmp_path), **kwargs)
    straight, states = [], []
    for batch in stream:
        straight.append(batch)
        states.append(stream.state_dict())
        if len(straight) == 40:
            break
    assert states[-1]["epoch"] >= 2  # 8 training documents, so this crossed epochs
    for k in (0, 3, 11, 17, 25):
        resumed = PretrainStream(tok, str(tmp_path), **kwargs)
        resumed.load_state_dict(states[k])
        for (a, b), (c, d) in zip(take(resumed, 6), straight[k + 1 : k + 7]):
            assert torch.equal(a, c) and torch.equal(b, d)


def test_continuing_iteration_picks_up_where_it_stopped(tok, folder):
    straight = take(PretrainStream(tok, str(folder), seq_len=SEQ, batch_size=BATCH), 6)
    stream = PretrainStream(tok, str(folder), seq_len=SEQ, batch_size=BATCH)
    parts = take(stream, 2) + take(stream, 4)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(parts, straight))


def _documents_seen(tok, stream, max_batches=500):
    """Texts of the complete documents one rank reads in its first epoch."""
    tokens = []
    for inputs, targets in stream:
        if stream.epoch > 0 or max_batches == 0:
            break
        tokens += torch.cat([inputs, targets[:, -1:]], dim=1).flatten().tolist()
        max_batches -= 1
    text = tok.decode(tokens)
    return {d for d in text.split("<|bos|>")[1:-1]}


@pytest.mark.parametrize("files", [5, 4])  # 4 train shards (split by shard) and 3 (split by example)
def test_ranks_read_disjoint_documents(tok, tmp_path, files):
    for f in range(files):
        write_jsonl(tmp_path / f"part_{f}.jsonl", [doc(f * 20 + i) for i in range(20)])
    seen = [
        _documents_seen(tok, PretrainStream(tok, str(tmp_path), seq_len=SEQ, batch_size=1, rank=r, world_size=2))
        for r in range(2)
    ]
    train_docs = {doc(i) for i in range((files - 1) * 20)}
    assert seen[0] and seen[1]
    assert not seen[0] & seen[1]
    assert seen[0] | seen[1] <= train_docs
    assert len(seen[0] | seen[1]) >= len(train_docs) - 4  # all but the few cut at epoch ends


def test_validation_split_is_the_last_file_finite_and_repeatable(tok, folder):
    val = PretrainStream(tok, str(folder), seq_len=SEQ, batch_size=BATCH, split="val")
    first = list(val)
    second = list(val)  # an evaluator reads the same batches each time
    assert len(first) == len(second) > 0
    assert all(torch.equal(a[0], b[0]) for a, b in zip(first, second))
    expected = stream_tokens(tok, [doc(80 + i) for i in range(20)])
    n = BATCH * (SEQ + 1)
    assert len(first) == len(expected) // n
    got = [t for x, y in first for t in torch.cat([x, y[:, -1:]], 1).flatten().tolist()]
    assert got == expected[: len(got)]


def test_single_file_holds_out_its_last_documents(tok, tmp_path):
    path = tmp_path / "one.parquet"
    pq.write_table(pa.table({"content": [doc(i) for i in range(300)]}), path)
    train = [ex["content"] for ex in load_documents(str(path), "train", text_column="content")]
    val = [ex["content"] for ex in load_documents(str(path), "val", text_column="content")]
    assert train == [doc(i) for i in range(297)] and val == [doc(i) for i in range(297, 300)]


def test_text_files_are_split_into_paragraphs(tmp_path):
    (tmp_path / "a.txt").write_text("first para\nline two\n\nsecond para\n")
    (tmp_path / "b.txt").write_text("held out\n")
    assert [ex["text"].strip() for ex in load_documents(str(tmp_path))] == ["first para\nline two", "second para"]


def test_errors_are_clear(tok, tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file or folder"):
        resolve_source(str(tmp_path / "missing"))
    with pytest.raises(FileNotFoundError, match="no such file"):
        resolve_source("./data/missing.parquet")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="no data files"):
        resolve_source(str(empty))
    write_jsonl(tmp_path / "cols.jsonl", ["a", "b"], column="body")
    with pytest.raises(ValueError, match=r"no column 'text'; columns are \['body', 'id'\]"):
        load_documents(str(tmp_path / "cols.jsonl"))
    nodocs = tmp_path / "nodocs"
    nodocs.mkdir()
    for f in range(2):
        (nodocs / f"{f}.jsonl").write_text("")
    with pytest.raises(ValueError, match="has no documents"):
        resolve_source(str(nodocs))
    lonely = tmp_path / "lonely"  # one training document: rank 1 of 2 gets none
    lonely.mkdir()
    for f in range(2):
        write_jsonl(lonely / f"{f}.jsonl", [doc(f)])
    with pytest.raises(ValueError, match="has no documents in split 'train' for this rank"):
        take(PretrainStream(tok, str(lonely), seq_len=SEQ, batch_size=BATCH, rank=1, world_size=2), 1)
    small = tmp_path / "small"
    small.mkdir()
    for f in range(2):
        write_jsonl(small / f"{f}.jsonl", ["tiny"])
    with pytest.raises(ValueError, match="fewer tokens than one batch"):
        list(PretrainStream(tok, str(small), seq_len=SEQ, batch_size=BATCH, split="val"))
    with pytest.raises(ValueError, match="split must be one of"):
        load_documents(str(small), split="test")
    with pytest.raises(ValueError, match="rank must be in"):
        PretrainStream(tok, str(small), rank=2, world_size=2)


def test_offline_corpus_is_deterministic(tmp_path):
    a = offline_corpus(tmp_path / "a", max_bytes=200_000, num_shards=3)
    b = offline_corpus(tmp_path / "b", max_bytes=200_000, num_shards=3)
    shards = sorted(p.name for p in a.glob("*.parquet"))
    assert shards == ["shard_00000.parquet", "shard_00001.parquet", "shard_00002.parquet"]
    texts = [pq.read_table(a / s)["text"].to_pylist() for s in shards]
    assert texts == [pq.read_table(b / s)["text"].to_pylist() for s in shards]
    assert sum(len(t.encode()) for shard in texts for t in shard) >= 200_000


def _no_offline_corpus(*args, **kwargs):
    raise AssertionError("the offline corpus must never stand in for a named dataset")


@pytest.mark.parametrize("status", [429, pytest.param(503, marks=pytest.mark.slow)])  # ~10 s each: the library retries
def test_hub_failure_is_a_clear_error_never_the_offline_corpus(monkeypatch, status):
    from huggingface_hub import constants

    from hub_standin import ErroringHub

    monkeypatch.setattr(data, "offline_corpus", _no_offline_corpus)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    with ErroringHub(status) as hub:
        monkeypatch.setattr(constants, "ENDPOINT", hub.url)
        for source in (data.DEFAULT_SOURCE, "someone/other"):
            with pytest.raises(data.HubSourceError) as info:
                resolve_source(source)
            message = str(info.value)
            assert f"Hub dataset {source!r}" in message and str(status) in message
            assert "retry" in message and "pass the folder" in message and "dataset: offline" in message
    asked = [p for p in hub.requests if p.startswith("/api/datasets/karpathy/fineweb-edu-100b-shuffle")]
    # The Hub was really asked. Whether it is asked again is huggingface_hub's choice and varies by
    # release (2.x retries a 429, 1.31 - our floor - does not); the error above is ours either way.
    assert len(asked) >= 1


def test_offline_mode_says_so_and_offline_corpus_only_when_asked(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "offline_corpus", _no_offline_corpus)
    with pytest.raises(data.HubSourceError, match="HF_HUB_OFFLINE is set: unset it"):
        resolve_source(data.DEFAULT_SOURCE)  # conftest switches the Hub off
    monkeypatch.setattr(data, "offline_corpus", lambda: offline_corpus(tmp_path / "c", max_bytes=50_000, num_shards=2))
    assert [Path(f).name for f in resolve_source("offline")] == ["shard_00000.parquet", "shard_00001.parquet"]


class FakeAccelerator:
    """Two processes sharing one broadcast channel (what accelerate's broadcast_object_list does)."""

    channel: list = []

    def __init__(self, main: bool):
        self.num_processes, self.is_main_process = 2, main


def test_source_is_resolved_once_on_the_main_process_and_shared(tmp_path, monkeypatch):
    import accelerate.utils

    def broadcast(payload, from_process=0):
        if FakeAccelerator.channel:  # the other rank receives what the main process sent
            return FakeAccelerator.channel.pop()
        FakeAccelerator.channel.append(list(payload))
        return payload

    monkeypatch.setattr(accelerate.utils, "broadcast_object_list", broadcast)
    for f in range(3):
        write_jsonl(tmp_path / f"p{f}.jsonl", [doc(f)])
    calls = []
    real = data.resolve_source
    monkeypatch.setattr(data, "resolve_source", lambda s: calls.append(s) or real(s))
    main = data.resolve_source_once(str(tmp_path), FakeAccelerator(main=True))
    other = data.resolve_source_once("ignored: only the main process resolves", FakeAccelerator(main=False))
    assert main == other == [str(tmp_path / f"p{f}.jsonl") for f in range(3)] and calls == [str(tmp_path)]
    with pytest.raises(data.HubSourceError):  # fails on the main process...
        data.resolve_source_once("someone/other", FakeAccelerator(main=True))
    with pytest.raises(RuntimeError, match="on the main process failed: HubSourceError"):
        data.resolve_source_once("someone/other", FakeAccelerator(main=False))  # ...and on every rank


def _epoch_documents(ds) -> list[str]:
    return [ex["text"] for ex in ds]


def test_three_ranks_over_seven_shards_read_disjoint_shares_covering_every_document(tmp_path):
    """7 train shards + 1 val over 3 ranks: each rank opens only its shards, every training
    document is read by exactly one rank once per epoch."""
    for f in range(8):
        write_jsonl(tmp_path / f"part_{f}.jsonl", [doc(f * 10 + i) for i in range(10)])
    files = resolve_source(str(tmp_path))
    seen = []
    for rank in range(3):
        kind, share = data.rank_share(data.split_files(files, "train"), rank, 3)
        assert kind == "files"
        for other in set(files[:-1]) - set(share):  # a rank that opened another rank's shard would fail
            Path(other).write_text("not json\n")
        seen.append(_epoch_documents(load_documents(files, "train", rank=rank, world_size=3)))
        for f in range(7):  # restore for the next rank
            write_jsonl(tmp_path / f"part_{f}.jsonl", [doc(f * 10 + i) for i in range(10)])
    everything = [d for docs in seen for d in docs]
    assert sorted(everything) == sorted(doc(i) for i in range(70))  # each document once, none missing
    assert [len(d) for d in seen] == [30, 20, 20]


def test_parquet_with_fewer_files_than_ranks_strides_row_groups(tok, tmp_path):
    """nanochat's rank::world row-group striding when there are fewer files than ranks."""
    pq.write_table(pa.table({"text": [doc(i) for i in range(70)]}), tmp_path / "a_train.parquet", row_group_size=10)
    pq.write_table(pa.table({"text": [doc(100 + i) for i in range(30)]}), tmp_path / "b_val.parquet", row_group_size=10)
    files = resolve_source(str(tmp_path))
    assert data.rank_share(data.split_files(files, "train"), 1, 3) == ("row_groups", [(files[0], 1), (files[0], 4)])
    for split, expected in (("train", range(70)), ("val", range(100, 130))):
        seen = [_epoch_documents(load_documents(files, split, rank=r, world_size=3)) for r in range(3)]
        assert sorted(d for docs in seen for d in docs) == sorted(doc(i) for i in expected)
        assert all(seen)
    with pytest.raises(ValueError, match="cannot give each of 40 ranks its own share"):
        load_documents(files, "val", rank=0, world_size=40)


def test_row_group_shares_resume_exactly(tok, tmp_path):
    pq.write_table(pa.table({"text": [doc(i) for i in range(120)]}), tmp_path / "a.parquet", row_group_size=8)
    pq.write_table(pa.table({"text": [doc(i) for i in range(10)]}), tmp_path / "b.parquet")
    files = resolve_source(str(tmp_path))
    kwargs = dict(seq_len=8, batch_size=2, docs_per_chunk=3, rank=1, world_size=3)
    straight = take(PretrainStream(tok, files, **kwargs), 30)
    first = PretrainStream(tok, files, **kwargs)
    take(first, 13)
    resumed = PretrainStream(tok, files, **kwargs)
    resumed.load_state_dict(json.loads(json.dumps(first.state_dict())))
    for (a, b), (c, d) in zip(take(resumed, 17), straight[13:30]):
        assert torch.equal(a, c) and torch.equal(b, d)
    texts = tok.decode([t for x, y in straight for t in torch.cat([x, y[:, -1:]], 1).flatten().tolist()])
    ours = {doc(g * 8 + i) for g in (1, 4, 7, 10, 13) for i in range(8) if g * 8 + i < 120}
    assert {d for d in texts.split("<|bos|>")[1:-1]} <= ours  # only rank 1's row groups
