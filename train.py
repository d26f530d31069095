"""Training entry point for every stage (thin: see hf_nanochat/train/entry.py).

    accelerate launch --config_file accelerate_configs/single_gpu.yaml train.py --config train_configs/d20.yaml
    python train.py --config train_configs/tiny_cpu.yaml --output_dir runs/tiny [--key=value ...] [--resume]
    accelerate launch --config_file accelerate_configs/multi_gpu.yaml train.py --config train_configs/sft.yaml
"""
import sys

from hf_nanochat.errors import run_main
from hf_nanochat.train.entry import main

if __name__ == "__main__":
    sys.exit(run_main(main, sys.argv[1:]))
