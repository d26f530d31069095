"""Training entry point for every stage (thin: the loops live in hf_nanochat).

    accelerate launch --config_file accelerate_configs/single_gpu.yaml train.py --config train_configs/d20.yaml
    python train.py --config train_configs/tiny_cpu.yaml --output_dir runs/tiny [--key=value ...] [--resume]
    accelerate launch --config_file accelerate_configs/multi_gpu.yaml train.py --config train_configs/sft.yaml

`stage: base` runs pretraining (hf_nanochat/pretrain.py); `stage: mid|sft` runs the chat stages
on TRL's SFTTrainer (hf_nanochat/sft.py).
"""
import argparse
import sys

import yaml


def recipe_stage(argv: list[str]) -> str:
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


if __name__ == "__main__":
    argv = sys.argv[1:]
    if recipe_stage(argv) in ("mid", "sft"):
        from hf_nanochat.sft import main
    else:
        from hf_nanochat.pretrain import main
    sys.exit(main(argv))
