"""Named pretraining sources: a short name in `dataset:` for a Hub dataset nanochat trains on.

Both are parquet shards with a `text` column whose LAST shard is the validation split, which is
`hf_nanochat.data.stream`'s convention for any multi-file source, so a name only has to expand
to its Hub id:
- fineweb-edu: `karpathy/fineweb-edu-100b-shuffle`, the Nov 2025 recipes' data.
- climbmix: `karpathy/climbmix-400b-shuffle` (shard_00000..06542), the 2026 recipes' data
  (nanochat master nanochat/dataset.py; NANOCHAT_2026.md "Recipe derived from depth").
"""
from __future__ import annotations

NAMED_SOURCES = {
    "fineweb-edu": "karpathy/fineweb-edu-100b-shuffle",
    "climbmix": "karpathy/climbmix-400b-shuffle",
}


def expand_source(source: str) -> str:
    """The Hub id behind a named source; anything else unchanged."""
    return NAMED_SOURCES.get(str(source), str(source))


__all__ = ["NAMED_SOURCES", "expand_source"]
