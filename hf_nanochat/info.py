"""`hf-nanochat info`: nanochat's model table for any depths, counted on the meta device, for the
Nov 2025 architecture or nanochat 2026's (`--architecture 2026`)."""
from __future__ import annotations

import argparse

import torch

from hf_nanochat.modeling.configuration_nanochat_gpt import ARCHITECTURES, NanoChatGPTConfig
from hf_nanochat.modeling.modeling_nanochat_gpt import NanoChatGPTForCausalLM

DEFAULT_DEPTHS = (4, 8, 12, 16, 20, 26, 32, 38, 52)


def model_shape(depth: int, vocab_size: int | None = None, seq_len: int = 2048, architecture: str = "2025-11") -> dict:
    """Shape, parameter count and training FLOPs/token of a depth, without allocating weights."""
    config = NanoChatGPTConfig.from_depth(
        depth, vocab_size=vocab_size, max_position_embeddings=seq_len, architecture=architecture
    )
    with torch.device("meta"):
        model = NanoChatGPTForCausalLM(config)
    sliding = (config.layer_types or []).count("sliding_attention")
    return {
        "architecture": config.nanochat_architecture,
        "windows": f"{sliding}x{config.sliding_window}" if sliding else "full",
        "depth": depth,
        "width": config.hidden_size,
        "heads": config.num_attention_heads,
        "kv_heads": config.num_key_value_heads,
        "head_dim": config.head_dim,
        "params": sum(p.numel() for p in model.parameters()),
        "flops_per_token": model.num_flops_per_token(),
    }


def format_table(rows: list[dict]) -> str:
    header = (
        f"{'arch':>7} {'depth':>5} {'width':>6} {'heads':>5} {'kv':>3} {'head_dim':>8} {'windows':>8} "
        f"{'params':>15} {'':>7} {'train FLOPs/token':>18}"
    )
    lines = [header, "-" * len(header)]
    for r in rows:
        human = f"{r['params'] / 1e9:.2f}B" if r["params"] >= 1e9 else f"{r['params'] / 1e6:.0f}M"
        lines.append(
            f"{r['architecture']:>7} {r['depth']:>5} {r['width']:>6} {r['heads']:>5} {r['kv_heads']:>3} {r['head_dim']:>8} "
            f"{r['windows']:>8} "
            f"{r['params']:>15,} {human:>7} {r['flops_per_token']:>18.3e}"
        )
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--depth", type=int, nargs="+", default=list(DEFAULT_DEPTHS), help="depths to list")
    parser.add_argument("--vocab-size", type=int, help="default: 65536 (2025-11) or 32768 (2026)")
    parser.add_argument(
        "--architecture", choices=ARCHITECTURES, default="2025-11",
        help="nanochat's Nov 2025 model or its 2026 one (value embeddings, sliding windows, smear, backout)",
    )
    parser.add_argument("--seq-len", type=int, default=2048, help="context length (enters the attention FLOPs)")


def run(args: argparse.Namespace) -> int:
    rows = []
    for depth in args.depth:
        try:
            rows.append(model_shape(depth, args.vocab_size, args.seq_len, args.architecture))
        except ValueError as err:
            print(f"depth {depth}: {err}")
    print(format_table(rows))
    return 0
