"""`hf-nanochat speedrun RECIPE`: nanochat's whole pipeline, one command, crash-safe.

    tokenizer -> base pretraining -> base eval (bpb) -> CORE -> mid-training -> mid eval -> SFT -> chat eval
    (nanochat 2026 recipes: no mid-training, SFT starts from the base model)
    [-> RL -> RL eval, with --with-rl] -> report

Each training stage runs under `accelerate launch` with the recipe's accelerate config (or
`--launch-config`), in a child process, so a stage is exactly what a user would type by hand.
Progress lives in `OUT/speedrun_state.json` (written atomically): a stage whose output is
complete is skipped, and an interrupted training stage resumes from its last checkpoint (the
training entry points resume by themselves). Rerunning the same command after a crash or a
kill finishes the job without redoing work.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from hf_nanochat.speedrun.recipes import CONFIG_DIRS, RECIPES, REPO_ROOT, Recipe

STATE_FILE = "speedrun_state.json"
CPU_FLOPS_ASSUMED = 2e10  # effective fp32 FLOP/s of a 2-core CPU, for the time estimate only
GPU_MFU_ASSUMED = 0.4


@dataclass(frozen=True)
class Stage:
    name: str
    command: list[str]
    output: Path  # the stage is complete when this exists (and the state says done)
    training: bool = False


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "hf_nanochat.cli", *args]


def _launched(launch_config: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(launch_config), "-m", "hf_nanochat.cli", *args]


def build_stages(recipe: Recipe, out: Path, launch_config: Path, with_rl: bool = False) -> list[Stage]:
    train_dir = CONFIG_DIRS["train"]
    tok, base, mid, sft = out / "tokenizer", out / "base", out / "mid", out / "sft"
    eval_chat = ["--kind", "chat", "--tasks", ",".join(recipe.chat_tasks)]
    if recipe.chat_max_problems:
        eval_chat += ["--max-problems", str(recipe.chat_max_problems)]
    if "SpellingBee" in recipe.chat_tasks:
        eval_chat += ["--data", f"SpellingBee={recipe.spelling_words}"]
    base_eval = ["--kind", "base"]  # the val split of the data the base stage recorded reading
    if recipe.base_eval_batches:
        base_eval += ["--max-batches", str(recipe.base_eval_batches)]
    base_cfg = load_train_config(recipe.base)
    seq_len = str(base_cfg.max_seq_len)
    base_eval += ["--packing", base_cfg.packing]  # val rows cut as the base stage cut them
    core_eval = ["--kind", "core"] + (["--bundle", recipe.core_bundle] if recipe.core_bundle else [])
    if recipe.core_max_per_task:
        core_eval += ["--max-per-task", str(recipe.core_max_per_task)]
    rl = [
        Stage("rl", _launched(launch_config, "train", "--config", str(train_dir / recipe.rl), "--resume",
                              f"--model={sft}", f"--output_dir={out / 'rl'}"), out / "rl" / "config.json", True),
        Stage("rl_eval", _cli("eval", str(out / "rl"), *eval_chat, "--out", str(out / "eval_rl.json")), out / "eval_rl.json"),
    ] if with_rl else []
    mid_stages = [
        Stage("mid", _launched(launch_config, "train", "--config", str(train_dir / recipe.mid), "--resume",
                               f"--model={base / 'model'}", f"--output_dir={mid}", *_chat_args(recipe, "mid")),
              mid / "config.json", True),
        Stage("mid_eval", _cli("eval", str(mid), *eval_chat, "--out", str(out / "eval_mid.json")), out / "eval_mid.json"),
    ] if recipe.mid else []
    return [
        Stage("tokenizer", _cli("tokenizer", "train", "--data", recipe.tokenizer_data, "--vocab-size",
                                str(recipe.tokenizer_vocab_size), "--max-chars", str(recipe.tokenizer_max_chars),
                                "--output", str(tok)), tok / "tokenizer.json"),
        Stage("base", _launched(launch_config, "train", "--config", str(train_dir / recipe.base), "--resume",
                                f"--output_dir={base}", f"--tokenizer={tok}"), base / "model" / "config.json", True),
        Stage("base_eval", _cli("eval", str(base / "model"), *base_eval, "--seq-len", seq_len,
                                "--out", str(out / "eval_base.json")), out / "eval_base.json"),
        # CORE shares its examples over the recipe's processes; results land in the model folder.
        Stage("core_eval", _launched(launch_config, "eval", str(base / "model"), *core_eval),
              base / "model" / "core_eval.json"),
        *mid_stages,
        Stage("sft", _launched(launch_config, "train", "--config", str(train_dir / recipe.sft), "--resume",
                               f"--model={mid if recipe.mid else base / 'model'}", f"--output_dir={sft}",
                               *_chat_args(recipe, "sft")),
              sft / "config.json", True),
        Stage("sft_eval", _cli("eval", str(sft), *eval_chat, "--out", str(out / "eval_sft.json")), out / "eval_sft.json"),
        *rl,
    ]


def chat_overrides(recipe: Recipe, stage: str) -> dict:
    """The mid/SFT recipe keys this hardware recipe sets (its device batch, its SFT batch)."""
    values = {"per_device_train_batch_size": recipe.mid_device_batch if stage == "mid" else recipe.sft_device_batch,
              "tokens_per_step": recipe.sft_tokens_per_step if stage == "sft" else None}
    return {k: v for k, v in values.items() if v is not None}


def _chat_args(recipe: Recipe, stage: str) -> list[str]:
    return [f"--{k}={v}" for k, v in chat_overrides(recipe, stage).items()]


def chat_stage_config(recipe: Recipe, stage: str):
    """The mid/SFT recipe as this hardware runs it (chat_overrides applied)."""
    import dataclasses

    from hf_nanochat.train.sft import SFTStageConfig

    cfg = SFTStageConfig.from_yaml(CONFIG_DIRS["train"] / recipe.chat_config(stage))
    return dataclasses.replace(cfg, **chat_overrides(recipe, stage))


def stage_peaks(recipe: Recipe, launch_config: Path) -> list:
    """The planned per-device peak of every stage the speedrun runs (hf_nanochat.train.stage_plan)."""
    from hf_nanochat.train.memory_cli import launch_topology
    from hf_nanochat.train.recipe_2026 import apply_recipe
    from hf_nanochat.train.sft import accumulation_steps
    from hf_nanochat.train.stage_plan import base_eval_peak, base_stage_peaks, chat_eval_peak, chat_stage_peak, compute_dtype

    cfg = load_train_config(recipe.base)
    topology = launch_topology(str(launch_config))
    on_gpu = recipe.gpu is not None
    model = cfg.model_config(recipe.tokenizer_vocab_size)
    cfg, _ = apply_recipe(cfg, model)
    dtype = compute_dtype(cfg.precision, topology["mixed_precision"])
    peaks = base_stage_peaks(cfg, model, topology, on_gpu) + [base_eval_peak(model, cfg.max_seq_len, dtype, on_gpu)]
    for stage in recipe.chat_stages:
        chat = chat_stage_config(recipe, stage)
        accumulation_steps(chat, topology["world_size"])  # a device batch that does not divide the target fails here
        peaks.append(chat_stage_peak(chat, model, topology, on_gpu))
    return peaks + [chat_eval_peak(model, dtype, on_gpu)]


def memory_budget(recipe: Recipe) -> int:
    """Declared memory per device, else what this machine has (a CPU recipe: its RAM)."""
    from hf_nanochat.train.stage_plan import device_budget

    return int(recipe.gpu_memory_gib * 2**30) if recipe.gpu_memory_gib else device_budget("cpu", recipe.num_devices)


def load_train_config(name: str):
    from hf_nanochat.train.config import load_config

    return load_config(CONFIG_DIRS["train"] / name)


# --------------------------------------------------------------------------------------- state


def read_state(out: Path) -> dict:
    path = out / STATE_FILE
    return json.loads(path.read_text()) if path.exists() else {"stages": {}}


def write_state(out: Path, state: dict) -> None:
    from hf_nanochat.train.pretrain import atomic_write_text

    atomic_write_text(out / STATE_FILE, json.dumps(state, indent=1))


def is_complete(stage: Stage, state: dict) -> bool:
    return state["stages"].get(stage.name, {}).get("status") == "done" and stage.output.exists()


# ---------------------------------------------------------------------------------------- plan


def plan(recipe: Recipe, name: str, launch_config: Path) -> dict:
    """Model size, tokens, FLOPs, time and memory of the base stage, before anything runs."""
    import torch

    from hf_nanochat.info import model_shape
    from hf_nanochat.train.memory_cli import recipe_memory
    from hf_nanochat.train.stage_plan import misfits
    from hf_nanochat.train.pretrain import PEAK_FLOPS, resolve_horizon

    # recipe nanochat-2026: the config comes back with its batch and horizon derived from the depth
    cfg, model, _, memory_kwargs = recipe_memory(load_train_config(recipe.base), str(launch_config), on_gpu=recipe.gpu is not None)
    shape = model_shape(cfg.depth, vocab_size=model.vocab_size, seq_len=cfg.max_seq_len, architecture=cfg.architecture)
    steps, horizon = resolve_horizon(cfg, shape["params"], shape["flops_per_token"])
    if cfg.recipe != "none" and "num_iterations" not in cfg.recipe_fixed:
        horizon = f"recipe {cfg.recipe}: tokens:params {cfg.target_param_data_ratio:g} x scaling params // batch"
    tokens = steps * cfg.total_batch_size
    flops = shape["flops_per_token"] * tokens
    rate = PEAK_FLOPS[recipe.gpu] * GPU_MFU_ASSUMED * recipe.num_devices if recipe.gpu else CPU_FLOPS_ASSUMED
    peaks = stage_peaks(recipe, launch_config)
    budget = memory_budget(recipe)
    dtype = memory_kwargs["dtype"]
    hours = flops / rate / 3600
    return {
        "recipe": name, "description": recipe.description, "launch_config": str(launch_config),
        "architecture": cfg.architecture, "depth": cfg.depth, "params": shape["params"], "steps": steps, "horizon": horizon,
        "total_batch_size": cfg.total_batch_size,
        "tokens": tokens, "tokens_per_param": tokens / shape["params"], "flops": flops,
        "estimated_hours_base": hours, "estimated_cost_base": hours * recipe.dollars_per_hour,
        "memory_per_device_gib": peaks[0].gib, "dtype": dtype, "gpu": recipe.gpu,
        "stage_memory_gib": {p.stage: round(p.gib, 2) for p in peaks}, "memory_budget_gib": budget / 2**30,
        "memory_misfits": misfits(peaks, budget),
        "torch": torch.__version__,
    }


def _duration(hours: float) -> str:
    return f"{hours * 60:,.1f} min" if hours < 2 else f"{hours:,.1f} h"


def format_plan(p: dict, stages: list[Stage]) -> str:
    speed = f"{GPU_MFU_ASSUMED:.0%} MFU of {p['gpu']}s" if p["gpu"] else "an assumed 20 GFLOP/s CPU"
    return "\n".join([
        f"speedrun {p['recipe']}: {p['description']}",
        f"  stages: {' -> '.join(s.name for s in stages)} -> report",
        f"  model: nanochat {p['architecture']}, depth {p['depth']}, {p['params'] / 1e6:,.1f}M parameters, {p['dtype']}",
        f"  base: {p['steps']:,} steps of {p['total_batch_size']:,} tokens ({p['horizon']}), {p['tokens'] / 1e6:,.1f}M tokens, "
        f"{p['tokens_per_param']:.1f} tokens/param, {p['flops']:.2e} FLOPs",
        f"  estimated base pretraining time: {_duration(p['estimated_hours_base'])} at {speed}"
        + (f", ~${p['estimated_cost_base']:,.0f}" if p["estimated_cost_base"] else ""),
        f"  estimated memory per device: {p['memory_per_device_gib']:.2f} GiB (hf-nanochat memory for details)",
        f"  planned peak per device by stage (budget {p['memory_budget_gib']:.1f} GiB): "
        + ", ".join(f"{stage} {gib:.2f}" for stage, gib in p["stage_memory_gib"].items()) + " GiB",
        *(f"  does NOT fit: {line}" for line in p["memory_misfits"]),
        f"  launch config: {p['launch_config']}",
    ])


# ----------------------------------------------------------------------------------------- run


HEARTBEAT_SECONDS = 10.0  # how often a running attempt's time is written to the state file


def _attempt_log(entry: dict, log_path: Path) -> list[dict]:
    """The stage's attempts, each {started, seconds, status, exit}. An attempt still marked
    running belongs to a speedrun that was killed: it is closed as interrupted, its time taken
    from its last heartbeat or the stage log's last write, whichever is later."""
    attempts = entry.setdefault("attempt_log", [])
    if not attempts and entry.get("seconds"):  # a state file from before attempts were kept
        attempts.append({"started": None, "seconds": entry["seconds"], "status": "unknown", "exit": None})
    last = attempts[-1] if attempts else None
    if last and last["status"] == "running":
        if log_path.exists() and last.get("started"):
            last["seconds"] = max(last["seconds"], log_path.stat().st_mtime - last["started"])
        last["status"] = "interrupted"
    return attempts


def run_stage(stage: Stage, out: Path, state: dict) -> None:
    entry = state["stages"].setdefault(stage.name, {})
    resumed = entry.get("status") in ("running", "failed")
    log_path = out / "logs" / f"{stage.name}.log"
    attempts = _attempt_log(entry, log_path)
    attempt = {"started": time.time(), "seconds": 0.0, "status": "running", "exit": None}
    attempts.append(attempt)
    entry.update(status="running", command=shlex.join(stage.command), attempts=len(attempts),
                 seconds=sum(a["seconds"] for a in attempts))
    write_state(out, state)
    print(f"\n=== {stage.name}{' (resuming)' if resumed else ''}: {shlex.join(stage.command)}", flush=True)
    t0 = time.time()
    # Line-buffered log and an unbuffered child: each line reaches the log (and the console)
    # as it is printed, also under nohup or CI; the child sees a pipe, so it prints progress
    # as lines (hf_nanochat.train.progress) rather than tqdm refreshes.
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    heartbeat = t0
    with open(log_path, "a", buffering=1) as log:
        proc = subprocess.Popen(stage.command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO_ROOT, env=env)
        for line in proc.stdout:  # show progress live and keep it
            sys.stdout.write(line)
            sys.stdout.flush()
            log.write(line)
            if time.time() - heartbeat > HEARTBEAT_SECONDS:  # a kill of the speedrun keeps this attempt's time
                heartbeat = time.time()
                attempt["seconds"] = heartbeat - t0
                entry["seconds"] = sum(a["seconds"] for a in attempts)
                write_state(out, state)
        code = proc.wait()
    attempt.update(seconds=time.time() - t0, exit=code, status="done" if code == 0 and stage.output.exists() else "failed")
    entry["seconds"] = sum(a["seconds"] for a in attempts)  # every attempt's time, failed ones too
    if attempt["status"] == "failed":
        entry["status"] = "failed"
        write_state(out, state)
        from hf_nanochat.errors import UserError

        # One line: the stage's own output (above, and in its log) has the details.
        raise UserError(f"stage {stage.name} failed (exit {code}); log: {log_path}. Rerun the same command to resume.")
    entry["status"] = "done"
    write_state(out, state)


def speedrun(name: str, out: Path, launch_config: str | None = None, dry_run: bool = False, with_rl: bool = False) -> int:
    if name not in RECIPES:
        raise SystemExit(f"unknown recipe {name!r}; choose from {', '.join(RECIPES)}")
    recipe = RECIPES[name]
    launch = Path(launch_config) if launch_config else CONFIG_DIRS["launch"] / recipe.launch_config
    if not launch.exists():
        raise SystemExit(f"accelerate config not found: {launch}")
    out = out.resolve()
    stages = build_stages(recipe, out, launch.resolve(), with_rl)
    p = plan(recipe, name, launch)
    print(format_plan(p, stages), flush=True)
    if p["memory_misfits"]:
        # Refused before the tokenizer: a stage that cannot fit would fail only after the stages before it.
        raise SystemExit(f"speedrun {name}: refusing to start, the memory plan says a stage would run out of memory:\n  "
                         + "\n  ".join(p["memory_misfits"]))
    missing = missing_data_files(recipe, with_rl)
    if missing:
        message = ("a chat stage's data is missing (put the file there, or point the recipe's `path:` at it):\n  "
                   + "\n  ".join(missing))
        if dry_run:
            print(f"warning: {message}", flush=True)
        else:
            raise SystemExit(f"speedrun {name}: refusing to start, {message}")
    if dry_run:
        return 0
    from hf_nanochat.train.run_lock import folder_lock

    (out / "logs").mkdir(parents=True, exist_ok=True)
    with folder_lock(out):  # a second speedrun on this folder fails here, naming the first
        return _run_stages(name, out, stages, p, launch, with_rl)


def missing_data_files(recipe: Recipe, with_rl: bool) -> list[str]:
    """Local files the chat recipes read (`path:` entries, e.g. nanochat's
    identity_conversations.jsonl) that do not exist: found now, not after hours of pretraining.
    Stages run from the repository root, so relative paths are resolved there."""
    import yaml

    missing = []
    for name in (*(recipe.chat_config(stage) for stage in recipe.chat_stages), *((recipe.rl,) if with_rl and recipe.rl else ())):
        raw = yaml.safe_load((CONFIG_DIRS["train"] / name).read_text()) or {}
        data = raw.get("data") or {}
        for entry in [*(data.get("train") or []), *(data.get("eval") or [])]:
            path = entry.get("path") if isinstance(entry, dict) else None
            if path and not (REPO_ROOT / path).exists() and not Path(path).exists():
                missing.append(f"train_configs/{name}: {entry.get('source', 'data')} file {path!r} not found")
    return missing


def _run_stages(name: str, out: Path, stages: list[Stage], p: dict, launch: Path, with_rl: bool) -> int:
    state = read_state(out)
    if state.get("recipe", name) != name:
        raise SystemExit(f"{out} holds a {state['recipe']!r} speedrun; use another --output")
    state.update(recipe=name, plan=p, launch_config=str(launch))
    write_state(out, state)
    for stage in stages:
        if is_complete(stage, state):
            print(f"=== {stage.name}: complete, skipped", flush=True)
            continue
        run_stage(stage, out, state)

    from hf_nanochat.speedrun.report import write_report

    md, _ = write_report(out)
    final = out / ("rl" if with_rl else "sft")
    # The final model carries its report card, so `hf-nanochat push OUT/sft` (or OUT/rl) puts it on the Hub.
    for report_file in (md.name, "report_loss.png"):
        if (out / report_file).exists():
            shutil.copy2(out / report_file, final / report_file)
    print(f"\nreport: {md}\nchat with it:  python -m hf_nanochat.serve.app --model {final}"
          f"\nshare it:      hf-nanochat push {final} YOUR_NAME/nanochat-{name}", flush=True)
    return 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("recipe", choices=sorted(RECIPES), help="hardware recipe")
    parser.add_argument("--output", default=None, help="run folder (default: runs/RECIPE)")
    parser.add_argument("--launch-config", default=None, help="accelerate config to use instead of the recipe's")
    parser.add_argument("--dry-run", action="store_true", help="print the plan and stop")
    parser.add_argument("--with-rl", action="store_true", help="add nanochat's RL stage on GSM8K after SFT (train_configs/rl.yaml)")


def run(args: argparse.Namespace) -> int:
    return speedrun(args.recipe, Path(args.output or f"runs/{args.recipe}"), args.launch_config, args.dry_run, args.with_rl)
