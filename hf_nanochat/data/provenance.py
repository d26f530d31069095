"""What data each stage actually read, written next to its outputs and read back by the report
and the model card (`data_used.json`), so neither states a dataset from a recipe or a default.

The file maps stage name -> record (`{"stages": {"base": {...}, "mid": {...}}}`). A chat stage
starts from the record in the folder of the model it loads, so the final model folder carries
the whole chain (base -> mid -> sft).
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

DATA_RECORD = "data_used.json"


def read_stage_records(folder: str | os.PathLike) -> dict[str, dict]:
    """stage -> record from `folder/data_used.json`; {} when the folder has none."""
    path = Path(folder) / DATA_RECORD
    if not path.is_file():
        return {}
    return dict(json.loads(path.read_text(encoding="utf-8")).get("stages", {}))


def write_stage_record(folder: str | os.PathLike, stage: str, record: dict, previous: str | os.PathLike | None = None) -> Path:
    """Add `stage`'s record to `folder/data_used.json`, after the stages recorded in `previous`
    (the input model's folder), atomically."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    stages = read_stage_records(previous) if previous is not None and Path(previous).is_dir() else {}
    stages.update({k: v for k, v in read_stage_records(folder).items() if k not in stages and k != stage})
    stages[stage] = record
    path = folder / DATA_RECORD
    tmp = path.with_name(f".{DATA_RECORD}.tmp")
    tmp.write_text(json.dumps({"stages": stages}, indent=1, default=str), encoding="utf-8")
    os.replace(tmp, path)
    return path


def copy_stage_record(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    if (Path(src) / DATA_RECORD).is_file():
        shutil.copy2(Path(src) / DATA_RECORD, Path(dst) / DATA_RECORD)


def hub_datasets(stages: dict[str, dict]) -> list[str]:
    """The Hub dataset ids the recorded stages read (model card metadata), in stage order."""
    found: list[str] = []
    for record in stages.values():
        ids = [record.get("hub_dataset")] + [part.get("hub_dataset") for part in record.get("train", [])]
        found += [i for i in ids if i and i not in found]
    return found


def describe_stage(stage: str, record: dict) -> list[str]:
    """Markdown bullet lines for one stage's record (report card)."""
    if "train" not in record:  # pretraining
        where = record.get("hub_dataset") or record.get("source")
        note = " (the small offline corpus of Python's own docs and source)" if record.get("offline_corpus") else ""
        return [f"- {stage}: `{where}`{note}, {record.get('files', '?')} files (the last is the val split), column `{record.get('text_column', 'text')}`"]
    lines = [f"- {stage} ({'loss on every token' if record.get('loss_tokens') == 'all' else 'loss on assistant tokens'}):"]
    for split in ("train", "eval"):
        for part in record.get(split, []):
            origin = part.get("path") or part.get("hub_dataset") or "synthetic"
            extra = f", words: {part['words']}" if part.get("words") else ""
            lines.append(f"  - {split}: {part['source']} from `{origin}`: {part['rows']:,} rows{extra}")
    return lines
