"""`hf-nanochat merge ADAPTER_DIR OUT`: fold LoRA adapters into their base model.

PEFT does the arithmetic (`merge_and_unload`: W += B @ A * alpha / r); this command loads the
base named in the adapter's config (or `--base`), merges, and writes a plain `save_pretrained`
folder (our model files + tokenizer) that loads without PEFT.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch


def merge_adapter(adapter_dir: str, out_dir: str, base: str | None = None):
    """Merge the adapter in `adapter_dir` into its base model and save the result to `out_dir`.
    Returns the merged model."""
    import hf_nanochat.modeling  # noqa: F401  (registers the model with the Auto classes)
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from hf_nanochat.data.tokenizer import load_tokenizer

    config_path = Path(adapter_dir) / "adapter_config.json"
    if not config_path.exists():
        raise FileNotFoundError(f"{adapter_dir} has no adapter_config.json: not a PEFT adapter folder")
    base = base or json.loads(config_path.read_text())["base_model_name_or_path"]
    if not base:
        raise ValueError(f"{config_path} names no base model; pass --base")
    from hf_nanochat.model_folder import check_model_source, match_permissions

    check_model_source(base, what="base model")
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    merged = PeftModel.from_pretrained(model, adapter_dir).merge_and_unload()
    merged.save_pretrained(out_dir)
    tok_source = adapter_dir if (Path(adapter_dir) / "tokenizer_config.json").exists() else base
    load_tokenizer(tok_source).save_pretrained(out_dir)
    match_permissions(out_dir)  # safetensors writes 0600; the rest is 0644
    print(f"merged {adapter_dir} into {base} -> {out_dir}")
    return merged


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("adapter_dir", help="folder written by a LoRA chat stage (adapter_config.json + weights)")
    parser.add_argument("out", help="where to write the merged save_pretrained folder")
    parser.add_argument("--base", default=None, help="base model folder or Hub id (default: the one in adapter_config.json)")


def run(args: argparse.Namespace) -> int:
    merge_adapter(args.adapter_dir, args.out, args.base)
    return 0
