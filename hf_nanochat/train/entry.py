"""One training entry point for every stage: `train.py` and `hf-nanochat train`.

    accelerate launch --config_file accelerate_configs/X.yaml train.py --config train_configs/Y.yaml [--key=value ...] [--resume]

The recipe's `stage` decides the loop: `base` is pretraining (hf_nanochat/train/pretrain.py),
`mid` and `sft` are the chat stages on TRL's SFTTrainer (hf_nanochat/train/sft.py), `rl` is
nanochat's chat_rl on TRL's GRPOTrainer (hf_nanochat/train/rl.py). Everything
after the stage choice (argument checking, overrides) belongs to that loop.

Without `--config` (and without other overrides than --output_dir/--resume), the base recipe is the one the speedrun runs on the hardware this process
was launched for: `accelerate launch` exports the launch config's precision, FSDP flag, CPU flag
and (through torchrun) world size, and the one accelerate_configs/*.yaml with that signature
names the speedrun recipe (p100.yaml -> d12_p100.yaml); several or none stop with the list.
`train.py --key=value ...` without --config keeps TrainConfig's defaults plus the overrides.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from pathlib import Path

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


def _signature(mixed_precision: str | None, fsdp: bool, world_size: int, cpu: bool) -> tuple:
    return (mixed_precision if mixed_precision in ("fp16", "bf16") else "no", fsdp, world_size, cpu)


def launch_signature(env: dict) -> tuple | None:
    """What `accelerate launch` told this process about its launch config; None when it was not
    started by accelerate (no ACCELERATE_MIXED_PRECISION)."""
    if "ACCELERATE_MIXED_PRECISION" not in env:
        return None
    return _signature(env["ACCELERATE_MIXED_PRECISION"], env.get("ACCELERATE_USE_FSDP", "false").lower() == "true",
                      int(env.get("WORLD_SIZE", "1")), env.get("ACCELERATE_USE_CPU", "false").lower() == "true")


def config_signature(path: Path) -> tuple:
    raw = yaml.safe_load(path.read_text()) or {}
    return _signature(raw.get("mixed_precision"), raw.get("distributed_type") == "FSDP", int(raw.get("num_processes", 1)), bool(raw.get("use_cpu", False)))


def _recipe_list() -> str:
    from hf_nanochat.speedrun.recipes import RECIPES

    return "\n".join(
        f"  accelerate launch --config_file accelerate_configs/{r.launch_config} train.py --config train_configs/{r.base}   ({name}: {r.description})"
        for name, r in RECIPES.items()
    )


def default_base_config(env: dict | None = None) -> tuple[Path, str] | None:
    """(train config, why) for a run launched by `accelerate launch` without --config; SystemExit
    listing the recipes when the launch does not name exactly one. None when not started by
    accelerate: plain `python train.py --key=value ...` trains TrainConfig's defaults with the
    overrides (and, like every run, is refused when its memory plan does not fit the device)."""
    from hf_nanochat.speedrun.recipes import CONFIG_DIRS, RECIPES

    env = os.environ if env is None else env
    signature = launch_signature(env)
    if signature is None:
        return None
    launch = [p.name for p in sorted(CONFIG_DIRS["launch"].glob("*.yaml")) if config_signature(p) == signature]
    matches = {r.base: (name, r.launch_config) for name, r in RECIPES.items() if r.launch_config in launch and r.bare_launch_default}
    others = [r.base for r in RECIPES.values() if r.launch_config in launch and not r.bare_launch_default]
    precision, fsdp, world, cpu = signature
    seen = f"{world} process{'es' if world > 1 else ''}, mixed precision {precision}" + (", FSDP" if fsdp else "") + (", CPU" if cpu else "")
    if len(matches) != 1:
        found = f"several recipes ({', '.join(sorted(matches))})" if matches else "no speedrun recipe"
        raise SystemExit(f"train.py without --config: this launch ({seen}) matches {found}; pass --config. The recipes:\n" + _recipe_list())
    base, (name, launch_config) = next(iter(matches.items()))
    also = f" (also for this launch: {', '.join(f'--config train_configs/{b}' for b in others)})" if others else ""
    return CONFIG_DIRS["train"] / base, (f"no --config: launched like accelerate_configs/{launch_config} ({seen}), "
                                         f"so the speedrun {name!r} recipe train_configs/{base}{also}")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if "-h" in argv or "--help" in argv:
        print(full_help())
        return 0
    # Only a bare launch picks a recipe: `--key=value` overrides without --config compose a run
    # from TrainConfig's defaults, as they always have (the FSDP and kill-9 tests launch that way).
    options = {a.split("=")[0] for a in argv if a.startswith("-")}
    if not options - {"--resume", "--output_dir"}:
        picked = default_base_config()
        if picked is not None:
            config, why = picked
            print(why, flush=True)
            argv = ["--config", str(config), *argv]
    stage = recipe_stage(argv)
    if stage in ("mid", "sft"):
        from hf_nanochat.train.sft import main as stage_main
    elif stage == "rl":
        from hf_nanochat.train.rl import main as stage_main
    else:
        from hf_nanochat.train.pretrain import main as stage_main
    return stage_main(argv)
