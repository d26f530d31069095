"""One training entry point for every stage: `train.py` and `hf-nanochat train`.

    accelerate launch --config_file accelerate_configs/X.yaml train.py --config train_configs/Y.yaml [--key=value ...] [--resume]

The recipe's `stage` decides the loop: `base` is pretraining (hf_nanochat/train/pretrain.py),
`mid` and `sft` are the chat stages on TRL's SFTTrainer (hf_nanochat/train/sft.py), `rl` is
nanochat's chat_rl on TRL's GRPOTrainer (hf_nanochat/train/rl.py). Everything
after the stage choice (argument checking, overrides) belongs to that loop.
"""
from __future__ import annotations

import argparse
import sys

import yaml


def recipe_stage(argv: list[str]) -> str:
    """The stage named by `--stage=...`, else by the `--config` YAML, else base."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--config")
    parser.add_argument("--stage")
    known, _ = parser.parse_known_args(argv)
    if known.stage:
        return known.stage
    if not known.config:
        return "base"
    with open(known.config, encoding="utf-8") as f:
        return (yaml.safe_load(f) or {}).get("stage", "base")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    stage = recipe_stage(argv)
    if stage in ("mid", "sft"):
        from hf_nanochat.train.sft import main as stage_main
    elif stage == "rl":
        from hf_nanochat.train.rl import main as stage_main
    else:
        from hf_nanochat.train.pretrain import main as stage_main
    return stage_main(argv)
