"""Base pretraining entry point (thin: the loop lives in hf_nanochat/pretrain.py).

    accelerate launch --config_file accelerate_configs/single_gpu.yaml train.py --config train_configs/d20.yaml
    python train.py --config train_configs/tiny_cpu.yaml --output_dir runs/tiny [--key=value ...] [--resume]
"""
import sys

from hf_nanochat.pretrain import main

if __name__ == "__main__":
    sys.exit(main())
