"""Check a model source (local folder or Hub id) before transformers sees it.

transformers treats a path that does not exist as a Hub id and answers with a repo-id error
after a long traceback; an empty tokenizer folder yields "You need to have sentencepiece or
tiktoken installed"; a truncated safetensors file fails without its name. These checks turn
each into a `UserError` that names the folder or file and the fix.
"""
from __future__ import annotations

import json
import os
import re
import struct
from pathlib import Path

from hf_nanochat.errors import UserError

# Hub ids: `name` or `owner/name` (huggingface_hub's validate_repo_id: letters, digits, - _ .).
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "adapter_model.safetensors")


def is_local(name_or_path: str) -> bool:
    """A path that exists, or one that cannot be a Hub id (absolute, ./, ~, two or more slashes)."""
    return Path(name_or_path).expanduser().exists() or not _HUB_ID.match(name_or_path) or ".." in name_or_path


def safetensors_problem(path: Path) -> str | None:
    """Why `path` is not a complete safetensors file (None when it is): the format is an 8-byte
    little-endian header length, a JSON header with each tensor's data offsets, then the data,
    so a truncated file is detected from its size without reading the tensors."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                return f"{path} is truncated ({size} bytes, not even a header)"
            (header_len,) = struct.unpack("<Q", head)
            if header_len > size - 8:
                return f"{path} is truncated ({size:,} bytes; its header alone claims {header_len:,})"
            header = json.loads(f.read(header_len))
    except FileNotFoundError:
        return f"{path} is missing"
    except OSError as err:
        return f"{path} cannot be read ({err.strerror})"
    except (ValueError, UnicodeDecodeError):
        return f"{path} is not a safetensors file (its header is not JSON)"
    ends = [t["data_offsets"][1] for k, t in header.items() if k != "__metadata__" and isinstance(t, dict) and "data_offsets" in t]
    expected = 8 + header_len + max(ends, default=0)
    if size < expected:
        return f"{path} is truncated ({size:,} of {expected:,} bytes)"
    return None


def check_weights(folder: Path) -> None:
    """Raise a UserError naming the first damaged safetensors file in `folder`."""
    for file in sorted(folder.glob("*.safetensors")):
        problem = safetensors_problem(file)
        if problem:
            raise UserError(f"{problem}; re-save or re-download the model")


def check_model_source(name_or_path: str, what: str = "model", need_tokenizer: bool = False) -> None:
    """A local `save_pretrained` folder must exist and hold config.json, weights that are not
    truncated and (with need_tokenizer) tokenizer.json; Hub ids pass through to transformers."""
    if not is_local(name_or_path):
        return
    folder = Path(name_or_path).expanduser()
    if not folder.exists():
        raise UserError(f"{what} folder {name_or_path} does not exist; pass a save_pretrained folder or a Hub id (owner/name)")
    if not folder.is_dir():
        raise UserError(f"{what} {name_or_path} is a file; pass the save_pretrained folder that holds it")
    if not (folder / "config.json").is_file() and not (folder / "adapter_config.json").is_file():
        raise UserError(f"{what} folder {name_or_path} has no config.json: not a save_pretrained folder")
    if not any((folder / name).is_file() for name in WEIGHT_FILES):
        raise UserError(f"{what} folder {name_or_path} has no weights ({' or '.join(WEIGHT_FILES[:2])})")
    check_weights(folder)
    if need_tokenizer:
        check_tokenizer_source(name_or_path)


def check_tokenizer_source(name_or_path: str) -> None:
    """Our tokenizers are `tokenizers` JSON files: a local folder without tokenizer.json is an error
    here (transformers would look for sentencepiece or tiktoken files and say to install those)."""
    if not is_local(name_or_path):
        return
    folder = Path(name_or_path).expanduser()
    if not folder.is_dir():
        raise UserError(f"tokenizer folder {name_or_path} does not exist; pass the folder that holds tokenizer.json")
    if not (folder / "tokenizer.json").is_file():
        raise UserError(
            f"tokenizer folder {name_or_path} has no tokenizer.json; pass the folder `hf-nanochat tokenizer train` "
            "or save_pretrained wrote"
        )


def match_permissions(folder: str | os.PathLike) -> None:
    """Give the safetensors files below `folder` the mode of the other files there.

    safetensors (0.8) writes through a private temp file and renames it, so weights end up 0600
    while config.json and the tokenizer files get the umask's 0644: another user (a serving
    account, a shared team folder) could read everything but the weights."""
    folder = Path(folder)
    for path in folder.rglob("*.safetensors"):
        siblings = [p for p in path.parent.iterdir() if p.is_file() and p.suffix != ".safetensors"]
        if siblings:
            path.chmod(siblings[0].stat().st_mode & 0o777)
        else:  # no sibling to copy from: what a plain open() would give under this umask
            umask = os.umask(0)
            os.umask(umask)
            path.chmod(0o666 & ~umask)


__all__ = ["match_permissions", "is_local", "safetensors_problem", "check_weights", "check_model_source", "check_tokenizer_source"]
