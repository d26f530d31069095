"""Data: the BPE tokenizer (`tokenizer`), the pretraining stream (`stream`) and the chat-stage
mixtures (`chat_data`).

The stream's public names stay importable from `hf_nanochat.data`, where they lived when it was
one module. They load on first use so that importing the tokenizer does not import `datasets`.
"""
_STREAM_NAMES = (
    "DEFAULT_SOURCE", "OFFLINE_SOURCE", "HubSourceError", "PretrainStream", "load_documents", "offline_corpus",
    "resolve_source", "resolve_source_once",
)


def __getattr__(name: str):
    if name in _STREAM_NAMES:
        from hf_nanochat.data import stream

        return getattr(stream, name)
    raise AttributeError(f"module 'hf_nanochat.data' has no attribute {name!r}")


__all__ = list(_STREAM_NAMES)
