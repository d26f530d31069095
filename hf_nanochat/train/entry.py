"""One training entry point for every stage: `train.py` and `hf-nanochat train`.

    accelerate launch --config_file accelerate_configs/X.yaml train.py --config train_configs/Y.yaml [--key=value ...] [--resume]

The recipe's `stage` decides the loop: `base` is pretraining (hf_nanochat/train/pretrain.py),
`mid` and `sft` are the chat stages on TRL's SFTTrainer (hf_nanochat/train/sft.py), `rl` is
nanochat's chat_rl on TRL's GRPOTrainer (hf_nanochat/train/rl.py). Everything
after the stage choice (argument checking, overrides) belongs to that loop.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
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
    if not os.path.isfile(known.config):
        raise FileNotFoundError(f"train config {known.config} does not exist")
    with open(known.config, encoding="utf-8") as f:
        return (yaml.safe_load(f) or {}).get("stage", "base")


def full_help() -> str:
    """Options of every stage: base pretraining's parser, then the chat stages' recipe keys."""
    from hf_nanochat.train.pretrain import add_arguments
    from hf_nanochat.train.sft import SFTStageConfig
    from hf_nanochat.errors import CliParser

    parser = CliParser(prog="train.py", description=__doc__.splitlines()[0])
    add_arguments(parser)
    keys = []
    for f in dataclasses.fields(SFTStageConfig):
        name = {"train_data": "data.train", "eval_data": "data.eval"}.get(f.name, f.name)
        default = f.default if f.default is not dataclasses.MISSING else ("[]" if f.default_factory is not dataclasses.MISSING else "required")
        keys.append(f"  --{name}={default}")
    return (
        parser.format_help()
        + "\nchat stages (stage: mid | sft, trained with TRL): the recipe's keys, each also a --key=value override:\n"
        + "\n".join(keys)
        + "\n"
    )


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if "-h" in argv or "--help" in argv:
        print(full_help())
        return 0
    stage = recipe_stage(argv)
    if stage in ("mid", "sft"):
        from hf_nanochat.train.sft import main as stage_main
    elif stage == "rl":
        from hf_nanochat.train.rl import main as stage_main
    else:
        from hf_nanochat.train.pretrain import main as stage_main
    return stage_main(argv)
