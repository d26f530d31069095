"""nanochat's base pretraining as an Accelerate program.

    accelerate launch --config_file accelerate_configs/p100.yaml train.py --config train_configs/d12_p100.yaml
    python train.py --config train_configs/tiny_cpu.yaml --output_dir runs/tiny --depth=2

Accelerate owns devices, processes (DDP), mixed precision on GPUs and the training-state
files; `precision.py` picks the dtype (and does fp16 itself on CPU); `optim.py` is nanochat's
Muon + AdamW. The loop below is nanochat's base_train: gradient accumulation to a fixed token
batch, LR/momentum schedules as functions of the step, val bits-per-byte and samples every
`eval_every` steps, atomic checkpoints that `--resume` continues exactly.

Output directory:
    metrics.jsonl                   one JSON object per optimizer step
    samples.jsonl                   completions sampled at each evaluation
    checkpoints/step_NNNNNN/model   save_pretrained folder (model + tokenizer)
    checkpoints/step_NNNNNN/state   Accelerate state + trainer_state.json + data_rank{r}.json
    model/                          the final model (hard links into the last checkpoint)
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from hf_nanochat.data.provenance import copy_stage_record
from hf_nanochat.train.memory import estimate_memory
from hf_nanochat.train.optim import apply_schedule, build_optimizer, lr_multiplier, muon_momentum
from hf_nanochat.train.optim_2026 import apply_schedule_2026, build_muon_adamw_2026, polar_express_dtype
from hf_nanochat.train.recipe_2026 import (
    REF_DEPTH, derive_recipe, format_recipe, lr_multiplier_2026, model_scaling_params, muon_momentum_2026, weight_decay_multiplier,
)
from hf_nanochat.train.auto_batch import PROBE_STEPS, halve, initial_device_batch
from hf_nanochat.train.sharding import describe_sharding, export_skeleton, fsdp_plugin
from hf_nanochat.train.precision import LossScaledStep, PrecisionPlan, newton_schulz_dtype, resolve_precision
from hf_nanochat.train.config import TrainConfig, config_to_yaml, load_config, parse_value
from hf_nanochat.train.checkpoints import newest_complete, pretrain_checkpoint_problems
from hf_nanochat.train.run_lock import run_lock
from hf_nanochat.model_folder import match_permissions

CHECKPOINT_PREFIX = "step_"
TMP_PREFIX = ".tmp_"

# Dense half-precision peak FLOP/s per device, for MFU (vendor datasheets, no sparsity).
PEAK_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L4": 121e12, "V100": 125e12, "T4": 65e12, "P100": 18.7e12}


# ----------------------------------------------------------------------------------------------
# Data plumbing: what the loop needs from the tokenizer/data modules


@dataclass
class DataPipeline:
    """The tokenizer, a stream factory and per-token byte lengths (for bits-per-byte).

    `make_stream(split, rank, world_size, batch_size, seq_len)` returns an iterable of
    (input_ids, targets) LongTensors of shape (batch, seq_len) with JSON-serialisable
    `state_dict()` / `load_state_dict()` (hf_nanochat.data.PretrainStream's interface).
    """

    tokenizer: object
    make_stream: Callable
    token_bytes: torch.Tensor


def default_pipeline(config: TrainConfig, accelerator) -> DataPipeline:
    """The real pieces: hf_nanochat.data.tokenizer and hf_nanochat.data.PretrainStream.

    With `tokenizer: null` the main process trains nanochat's BPE on the train split once and
    saves it to output_dir/tokenizer (reused on --resume); the other ranks then load it."""
    from hf_nanochat.data.provenance import write_stage_record
    from hf_nanochat.data.stream import PretrainStream, describe_source, load_documents, resolve_source_once
    from hf_nanochat.data.best_fit import BestFitStream
    from hf_nanochat.data.tokenizer import load_tokenizer, token_byte_lengths, train_tokenizer

    # Decided once, on the main process, for every rank and both splits; recorded in the run folder.
    files = resolve_source_once(config.dataset, accelerator)
    if accelerator.is_main_process:
        write_stage_record(config.output_dir, "base", {**describe_source(config.dataset, files), "text_column": config.text_column})
    path = Path(config.tokenizer) if config.tokenizer else Path(config.output_dir) / "tokenizer"
    if config.tokenizer is None and not (path / "tokenizer.json").exists():
        if accelerator.is_main_process:
            accelerator.print(f"training a {config.tokenizer_vocab_size}-token BPE on {config.dataset} (train split) -> {path}")
            texts = (row[config.text_column] for row in load_documents(files, "train", config.text_column))
            tmp = path.with_name(TMP_PREFIX + path.name)
            train_tokenizer(texts, config.tokenizer_vocab_size, config.tokenizer_max_chars).save_pretrained(tmp)
            os.replace(tmp, path)
        accelerator.wait_for_everyone()
    if not path.exists():
        raise FileNotFoundError(f"tokenizer folder {path} does not exist (set `tokenizer:` or null to train one)")
    tokenizer = load_tokenizer(str(path))

    def make_stream(split, rank, world_size, batch_size, seq_len):
        stream_class = BestFitStream if config.packing == "best_fit" else PretrainStream
        return stream_class(tokenizer, files, seq_len, batch_size, split=split, rank=rank, world_size=world_size, text_column=config.text_column)

    return DataPipeline(tokenizer, make_stream, token_byte_lengths(tokenizer))


# ----------------------------------------------------------------------------------------------
# The plan: horizon, accumulation, FLOPs, memory


def grad_accumulation_steps(total_batch_size: int, device_batch_size: int, seq_len: int, world_size: int) -> int:
    per_pass = device_batch_size * seq_len * world_size
    if total_batch_size % per_pass:
        raise ValueError(
            f"total_batch_size {total_batch_size} is not a multiple of device_batch_size x max_seq_len x "
            f"world_size = {device_batch_size} x {seq_len} x {world_size} = {per_pass} tokens; "
            f"pick e.g. total_batch_size={per_pass * max(1, round(total_batch_size / per_pass))}"
        )
    return total_batch_size // per_pass


def resolve_horizon(config: TrainConfig, num_params: int, flops_per_token: int) -> tuple[int, str]:
    """nanochat's precedence: explicit iterations, else a FLOPs budget, else tokens:params."""
    if config.num_iterations > 0:
        return config.num_iterations, "num_iterations"
    if config.target_flops > 0:
        steps = round(config.target_flops / (flops_per_token * config.total_batch_size))
        return max(1, steps), f"target_flops={config.target_flops:.3e}"
    steps = int(config.target_param_data_ratio * num_params) // config.total_batch_size
    return max(1, steps), f"target_param_data_ratio={config.target_param_data_ratio:g}"


def schedules_at(config: TrainConfig, step: int, num_iterations: int) -> tuple[float, float, float]:
    """(LR multiplier, Muon momentum, weight-decay multiplier) at optimizer step `step`:
    nanochat's Nov 2025 schedules, or its 2026 ones (warmup in steps, momentum back down over the
    warmdown, cosine decay) where the config asks for them (recipe nanochat-2026 does)."""
    if config.warmup_steps > 0:
        lr_mult = lr_multiplier_2026(step, num_iterations, config.warmup_steps, config.warmdown_ratio, config.final_lr_frac)
    else:
        lr_mult = lr_multiplier(step, num_iterations, config.warmup_ratio, config.warmdown_ratio, config.final_lr_frac)
    if config.muon_momentum_warmdown is not None:
        momentum = muon_momentum_2026(
            step, num_iterations, config.muon_momentum_start, config.muon_momentum_end, config.muon_momentum_ramp_steps,
            config.muon_momentum_warmdown, config.warmdown_ratio,
        )
    else:
        momentum = muon_momentum(step, config.muon_momentum_start, config.muon_momentum_end, config.muon_momentum_ramp_steps)
    return lr_mult, momentum, weight_decay_multiplier(step, num_iterations, config.weight_decay_schedule)


def peak_flops_per_device(config: TrainConfig, device: torch.device, mode: str) -> float | None:
    if config.peak_flops:
        return config.peak_flops
    if device.type != "cuda" or mode == "fp32":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_FLOPS.items() if k in name), None)


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _human(n: float, unit: str = "") -> str:
    for div, suffix in ((1e12, "T"), (1e9, "B" if not unit else "G"), (1e6, "M"), (1e3, "K")):
        if abs(n) >= div:
            return f"{n / div:.2f}{suffix}{unit}"
    return f"{n:.0f}{unit}"


# ----------------------------------------------------------------------------------------------
# Evaluation


@torch.no_grad()
def evaluate_bpb(model, batches: Iterator, steps: int, token_bytes: torch.Tensor, autocast, accelerator) -> float:
    """nanochat's bits per byte: sum of per-token nats / (ln 2 * sum of the target tokens'
    UTF-8 byte lengths). Special tokens have 0 bytes and are left out of both sums, so the
    number does not depend on the vocabulary (unlike the loss)."""
    was_training = model.training
    model.eval()
    token_bytes = token_bytes.to(accelerator.device)
    nats = torch.zeros((), dtype=torch.float64, device=accelerator.device)
    n_bytes = torch.zeros((), dtype=torch.float64, device=accelerator.device)
    for _ in range(steps):
        batch = next(batches, None)
        if batch is None:  # the val split is shorter than eval_tokens: use all of it
            break
        x, y = batch[0].to(accelerator.device), batch[1].to(accelerator.device)
        with autocast():
            logits = model(input_ids=x).logits
        y = y.reshape(-1)
        loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), y, ignore_index=-100, reduction="none")
        valid = y >= 0
        bytes_per_token = torch.where(valid, token_bytes[y.clamp(min=0)], 0)
        nats += (loss * (bytes_per_token > 0)).sum().double()
        n_bytes += bytes_per_token.sum().double()
    nats = accelerator.reduce(nats, "sum")
    n_bytes = accelerator.reduce(n_bytes, "sum")
    model.train(was_training)
    return float(nats / (math.log(2) * n_bytes.clamp(min=1)))


@torch.no_grad()
def sample_completions(model, tokenizer, prompts: list[str], max_new_tokens: int, autocast, device) -> list[str]:
    """Greedy completions. Every rank runs this (sharded models need all ranks in a forward)."""
    was_training = model.training
    model.eval()
    outputs = []
    for prompt in prompts:
        # User text is never allowed to become special tokens.
        ids = tokenizer(prompt, add_special_tokens=False, split_special_tokens=True)["input_ids"]
        if tokenizer.bos_token_id is not None:
            ids = [tokenizer.bos_token_id] + ids
        input_ids = torch.tensor([ids], device=device)
        with autocast():
            out = model.generate(
                input_ids,
                attention_mask=torch.ones_like(input_ids),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0,
            )
        outputs.append(tokenizer.decode(out[0, input_ids.shape[1] :], skip_special_tokens=False))
    model.train(was_training)
    return outputs


# ----------------------------------------------------------------------------------------------
# Checkpoints: written to a temp dir, fsynced, then renamed (atomic on POSIX)


def list_checkpoints(output_dir: Path) -> list[Path]:
    root = output_dir / "checkpoints"
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and p.name.startswith(CHECKPOINT_PREFIX)]
    return sorted(found, key=lambda p: int(p.name[len(CHECKPOINT_PREFIX) :]))


def _fsync_tree(path: Path) -> None:
    for dirpath, _, filenames in os.walk(path):
        for name in filenames:
            with open(os.path.join(dirpath, name), "rb") as f:
                os.fsync(f.fileno())
        _fsync_dir(Path(dirpath))


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_text(path: Path, text: str) -> None:
    """Write, fsync, rename: a kill at any moment leaves the old or the new file, never half."""
    tmp = path.with_name(f"{TMP_PREFIX}{path.name}.{os.getpid()}")  # unique: never shared with another writer
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _link_or_copy_tree(src: Path, dst: Path) -> None:
    """Hard links where the filesystem allows (no extra disk), copies elsewhere."""
    for dirpath, _, filenames in os.walk(src):
        target = dst / Path(dirpath).relative_to(src)
        target.mkdir(parents=True, exist_ok=True)
        for name in filenames:
            try:
                os.link(os.path.join(dirpath, name), target / name)
            except OSError:
                shutil.copy2(os.path.join(dirpath, name), target / name)


def _run_tag(accelerator) -> str:
    """One id per run, the same on every rank: temp checkpoint folders carry it, so two runs
    (which the run lock already keeps apart) could never write into one."""
    import uuid

    from accelerate.utils import broadcast_object_list

    tag = [f"{os.getpid()}-{uuid.uuid4().hex[:8]}"]
    return broadcast_object_list(tag)[0] if accelerator.num_processes > 1 else tag[0]


class Checkpointer:
    def __init__(self, accelerator, output_dir: Path, keep: int):
        self.accelerator = accelerator
        self.root = output_dir / "checkpoints"
        self.output_dir = output_dir
        self.keep = keep
        self.run_tag = _run_tag(accelerator)

    def clean_partial(self) -> None:
        """Temp dirs are checkpoints a crash interrupted: never complete, so never loaded."""
        if self.accelerator.is_main_process and self.root.is_dir():
            for p in self.root.iterdir():
                if p.name.startswith(TMP_PREFIX):
                    shutil.rmtree(p)
        self.accelerator.wait_for_everyone()

    def save(self, step: int, model, tokenizer, trainer_state: dict, stream) -> Path:
        acc = self.accelerator
        final = self.root / f"{CHECKPOINT_PREFIX}{step:06d}"
        tmp = self.root / f"{TMP_PREFIX}{final.name}.{self.run_tag}"
        if acc.is_main_process:
            if tmp.exists():
                shutil.rmtree(tmp)
            tmp.mkdir(parents=True)
        acc.wait_for_everyone()
        acc.save_state(str(tmp / "state"))  # model, optimizer, scaler, RNG of every rank, custom objects
        # Each rank reads its own slice of the data, so each saves its own stream position.
        (tmp / "state" / f"data_rank{acc.process_index}.json").write_text(json.dumps(stream.state_dict()))
        state_dict = acc.get_state_dict(model)  # collective under FSDP: every rank calls it
        if acc.is_main_process:
            export_skeleton(acc.unwrap_model(model)).save_pretrained(tmp / "model", state_dict=state_dict, safe_serialization=True)
            tokenizer.save_pretrained(tmp / "model")
            copy_stage_record(self.output_dir, tmp / "model")  # the model folder says what it was trained on
            (tmp / "state" / "trainer_state.json").write_text(json.dumps(trainer_state, indent=1))
        acc.wait_for_everyone()
        if acc.is_main_process:
            match_permissions(tmp)  # safetensors writes 0600; the rest of the folder is 0644
            _fsync_tree(tmp)
            os.rename(tmp, final)  # the commit point: before it the previous checkpoint is the latest
            _fsync_dir(self.root)
            for old in list_checkpoints(self.output_dir)[: -self.keep]:
                shutil.rmtree(old)
        acc.wait_for_everyone()
        return final

    def publish_final_model(self, checkpoint: Path) -> Path:
        """`output_dir/model`: the final save_pretrained folder, swapped in atomically."""
        target = self.output_dir / "model"
        if self.accelerator.is_main_process:
            tmp = self.output_dir / (TMP_PREFIX + "model")
            if tmp.exists():
                shutil.rmtree(tmp)
            _link_or_copy_tree(checkpoint / "model", tmp)
            _fsync_tree(tmp)
            old = self.output_dir / (TMP_PREFIX + "model_old")
            if target.exists():
                os.rename(target, old)
            os.rename(tmp, target)
            _fsync_dir(self.output_dir)
            if old.exists():
                shutil.rmtree(old)
        self.accelerator.wait_for_everyone()
        return target


# ----------------------------------------------------------------------------------------------
# The training run


def _to_device(batch, device):
    x, y = batch
    return x.to(device, non_blocking=True), y.to(device, non_blocking=True)


def _truncate_log(path: Path, last_step: int) -> None:
    """On resume, drop log lines of steps after the checkpoint (they will be redone)."""
    if not path.exists():
        return
    kept = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= last_step]
    atomic_write_text(path, "".join(line + "\n" for line in kept))


def train(config: TrainConfig, pipeline: DataPipeline | None = None, resume: bool = False) -> dict:
    """Run base pretraining; returns a summary (steps, final loss/bpb, skipped steps, paths)."""
    if config.stage != "base":
        raise NotImplementedError(
            f"stage {config.stage!r} (mid-training / SFT) is trained with TRL by hf_nanochat.sft.run_sft_stage; "
            "train.py dispatches recipes with stage: mid|sft there (train_configs/mid.yaml, sft.yaml)"
        )

    from accelerate import Accelerator, PartialState
    from accelerate.utils import GradScalerKwargs, parse_flag_from_env, set_seed
    from hf_nanochat.train.progress import progress_bar  # a bar on a terminal, lines in a log

    from hf_nanochat.modeling.configuration_nanochat_gpt import NanoChatGPTConfig
    from hf_nanochat.modeling.modeling_nanochat_gpt import NanoChatGPTForCausalLM

    output_dir = Path(config.output_dir)
    # The device decides the precision, which Accelerator() needs: ask PartialState first, with
    # the CPU flag Accelerator() itself would read (without it gloo ranks start as world size 1).
    state = PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU"))
    plan: PrecisionPlan = resolve_precision(config.precision, state.device, os.environ.get("ACCELERATE_MIXED_PRECISION"))
    accelerator = Accelerator(
        mixed_precision=plan.accelerate_mixed_precision,
        log_with=config.log_with or None,
        project_dir=str(output_dir),
        kwargs_handlers=[GradScalerKwargs(init_scale=config.fp16_init_scale)],
        fsdp_plugin=fsdp_plugin(plan.mode),  # None unless launched with an FSDP config
    )
    device, world, rank = accelerator.device, accelerator.num_processes, accelerator.process_index
    checkpointer = Checkpointer(accelerator, output_dir, config.keep_checkpoints)
    existing = list_checkpoints(output_dir)
    if resume and existing:  # the newest complete one; damaged newer ones are named and moved aside
        existing = newest_complete(existing, pretrain_checkpoint_problems, accelerator.print, move_damaged=accelerator.is_main_process)
    if existing and not resume:
        raise FileExistsError(f"{output_dir} already has checkpoints ({existing[-1].name}); pass --resume or use another --output_dir")
    if resume and not existing:
        accelerator.print(f"--resume: no checkpoint in {output_dir}/checkpoints, starting from scratch")

    pipeline = pipeline or default_pipeline(config, accelerator)
    tokenizer = pipeline.tokenizer
    set_seed(config.seed)  # same initial weights on every rank
    model_config = NanoChatGPTConfig.from_depth(
        config.depth,
        vocab_size=len(tokenizer),
        max_position_embeddings=config.max_seq_len,
        num_key_value_heads=config.num_kv_heads,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = NanoChatGPTForCausalLM(model_config)
    recipe_lines: list[str] = []
    if config.recipe == "nanochat-2026":
        # nanochat base_train.py: the d12 reference is the same model class at depth 12, on meta.
        with torch.device("meta"):
            reference = NanoChatGPTForCausalLM(NanoChatGPTConfig.from_depth(REF_DEPTH, vocab_size=len(tokenizer), max_position_embeddings=config.max_seq_len))
        derived = derive_recipe(model_scaling_params(model), model_scaling_params(reference), {k: getattr(config, k) for k in config.recipe_fixed})
        config = dataclasses.replace(config, **{k: d.value for k, d in derived.items() if not k.startswith("_")}).validate()
        recipe_lines = format_recipe(derived)
    num_params = sum(p.numel() for p in model.parameters())
    flops_per_token = model.num_flops_per_token()
    num_iterations, horizon_why = resolve_horizon(config, num_params, flops_per_token)
    fsdp = accelerator.distributed_type.value == "FSDP"
    memory_layout = dict(
        dtype=plan.mode, world_size=world, fsdp=fsdp, optimizer=config.optimizer, on_gpu=device.type == "cuda",
        loss_chunk_tokens=config.loss_chunk_tokens,
        activation_checkpointing=bool(fsdp and accelerator.state.fsdp_plugin.activation_checkpointing),
    )
    auto_batch = config.device_batch_size == "auto"
    if auto_batch:
        saved = json.loads((existing[-1] / "state" / "trainer_state.json").read_text()) if resume and existing else {}
        if saved.get("world_size") == world and saved.get("device_batch_size"):
            chosen = saved["device_batch_size"]  # what the interrupted run settled on
        else:
            budget = torch.cuda.mem_get_info(device)[1] if device.type == "cuda" else None
            fits = (lambda b: estimate_memory(model_config, b, config.max_seq_len, **memory_layout).total <= budget) if budget else None
            chosen = initial_device_batch(config.total_batch_size, config.max_seq_len, world, fits)
        accelerator.print(f"device_batch_size: auto -> {chosen} (halved on out-of-memory during the first {PROBE_STEPS} steps)")
        config = dataclasses.replace(config, device_batch_size=chosen)
    grad_accum = grad_accumulation_steps(config.total_batch_size, config.device_batch_size, config.max_seq_len, world)
    auto_ns = polar_express_dtype(plan.mode) if config.optimizer == "muon_adamw_2026" else newton_schulz_dtype(device)
    ns_dtype = {"auto": auto_ns, "bf16": torch.bfloat16, "fp32": torch.float32}[config.ns_dtype]
    memory = estimate_memory(model_config, config.device_batch_size, config.max_seq_len, **memory_layout).as_dict()
    total_tokens = num_iterations * config.total_batch_size

    plan_lines = [
        f"model      depth {config.depth}: width {model_config.hidden_size}, {_count(model_config.num_attention_heads, 'head')} "
        f"({model_config.num_key_value_heads} kv) x {model_config.head_dim}, vocab {model_config.vocab_size}, "
        f"context {config.max_seq_len}; {num_params:,} params ({_human(num_params)})",
        f"precision  {plan.mode}: {plan.reason}",
        f"devices    world size {world} on {device.type}; device batch {config.device_batch_size} x {config.max_seq_len} tokens",
        f"batch      {config.total_batch_size:,} tokens/step = {config.device_batch_size} x {config.max_seq_len} x {world} x "
        f"{grad_accum} grad-accumulation steps",
        f"horizon    {num_iterations:,} steps (from {horizon_why}) -> {total_tokens:,} tokens ({_human(total_tokens)}), "
        f"tokens:params {total_tokens / num_params:.1f}",
        f"compute    {flops_per_token:.3e} FLOPs/token -> {flops_per_token * total_tokens:.3e} FLOPs total",
        f"optimizer  {config.optimizer}"
        + (f" (Muon on block matrices, Newton-Schulz in {str(ns_dtype).removeprefix('torch.')}; AdamW on wte/lm_head)" if config.optimizer == "muon" else "")
        + (
            f" (NorMuon + Polar Express in {str(ns_dtype).removeprefix('torch.')} on block matrices, cautious wd {config.weight_decay:.4g} "
            f"{config.weight_decay_schedule}; AdamW on lm_head/wte/value_embeds/scalars)"
            if config.optimizer == "muon_adamw_2026" else ""
        ),
        f"memory     ~{_human(memory['total'], 'B')} per device (hf_nanochat.train.memory estimate: "
        + ", ".join(f"{k} {_human(v, 'B')}" for k, v in memory.items() if k != "total")
        + ")"
        + (f"; loss in chunks of {config.loss_chunk_tokens:,} tokens" if config.loss_chunk_tokens else ""),
    ]
    accelerator.print("\n".join(recipe_lines + plan_lines), flush=True)

    if config.optimizer == "muon_adamw_2026":
        optimizer = build_muon_adamw_2026(
            model,
            matrix_lr=config.matrix_lr,
            embedding_lr=config.embedding_lr,
            unembedding_lr=config.unembedding_lr,
            scalar_lr=config.scalar_lr,
            weight_decay=config.weight_decay,
            momentum=config.muon_momentum_start,
            ns_steps=config.ns_steps,
            ns_dtype=ns_dtype,
        )
    else:
        optimizer = build_optimizer(
            model,
            config.optimizer,
            matrix_lr=config.matrix_lr,
            embedding_lr=config.embedding_lr,
            unembedding_lr=config.unembedding_lr,
            adamw_matrix_lr=config.adamw_matrix_lr,
            weight_decay=config.weight_decay,
            ns_steps=config.ns_steps,
            ns_dtype=ns_dtype,
        )
    if config.compile:
        model = torch.compile(model)
    model, optimizer = accelerator.prepare(model, optimizer)
    if accelerator.distributed_type.value == "FSDP":
        print(describe_sharding(model, rank, world), flush=True)  # every rank: what it holds
    stepper = LossScaledStep(accelerator, plan, init_scale=config.fp16_init_scale)

    train_stream = pipeline.make_stream("train", rank, world, config.device_batch_size, config.max_seq_len)
    val_stream = pipeline.make_stream("val", rank, world, config.device_batch_size, config.max_seq_len)
    step, skipped_steps = 0, 0
    metrics_path, samples_path = output_dir / "metrics.jsonl", output_dir / "samples.jsonl"
    if resume and existing:
        checkpointer.clean_partial()
        latest = existing[-1]
        accelerator.load_state(str(latest / "state"))
        trainer_state = json.loads((latest / "state" / "trainer_state.json").read_text())
        step, skipped_steps = trainer_state["step"], trainer_state["skipped_steps"]
        stepper.skipped_steps = skipped_steps
        if trainer_state["world_size"] == world:
            train_stream.load_state_dict(json.loads((latest / "state" / f"data_rank{rank}.json").read_text()))
        else:
            # Weights and optimizer state are re-sharded on load (DCP / full state dicts); a data
            # stream's position belongs to its rank's slice of the documents and has no meaning
            # for another split of them.
            accelerator.print(
                f"resuming on {world} processes from a checkpoint saved by {trainer_state['world_size']}: model, optimizer, "
                "step and schedules continue exactly; the data streams are re-split and restart at the beginning of the train split"
            )
        accelerator.print(f"resumed from {latest} at step {step}")
    if accelerator.is_main_process:  # rows of steps after the checkpoint (or of a run with none) are redone
        _truncate_log(metrics_path, step)
        _truncate_log(samples_path, step)
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / "train_config.yaml").write_text(config_to_yaml(config))
    if config.log_with:
        accelerator.init_trackers(config.run_name, config=dataclasses.asdict(config))

    peak = peak_flops_per_device(config, device, plan.mode)
    eval_steps = max(1, config.eval_tokens // (config.device_batch_size * config.max_seq_len * world))
    train_iter = iter(train_stream)
    progress = progress_bar(total=num_iterations, initial=step, disable=not accelerator.is_local_main_process, desc="pretrain", dynamic_ncols=True)
    model.train()
    record: dict = {}
    last_checkpoint = existing[-1] if resume and existing else None
    first_step = step
    while step < num_iterations:
        t0 = time.perf_counter()
        probing = auto_batch and step < first_step + PROBE_STEPS
        stream_position = train_stream.state_dict() if probing else None
        out_of_memory = False
        lr_mult, momentum, wd_mult = schedules_at(config, step, num_iterations)
        if config.optimizer == "muon_adamw_2026":
            apply_schedule_2026(optimizer, lr_mult, momentum, wd_mult)
        else:
            apply_schedule(optimizer, step, lr_mult, momentum)
        loss_sum = torch.zeros((), device=device)
        try:
            for micro in range(grad_accum):
                x, y = _to_device(next(train_iter), device)
                # Gradients are all-reduced once per optimizer step, on the last micro-batch.
                sync = contextlib.nullcontext() if micro == grad_accum - 1 else accelerator.no_sync(model)
                with sync:
                    with stepper.autocast():
                        loss = model(input_ids=x, shift_labels=y, loss_chunk_tokens=config.loss_chunk_tokens).loss
                    loss_sum += loss.detach()
                    stepper.backward(loss / grad_accum)
        except torch.OutOfMemoryError:
            if not probing or config.device_batch_size == 1:
                raise
            out_of_memory = True  # handled below, once the exception no longer pins the activations
        if out_of_memory:
            x = y = loss = None
            optimizer.zero_grad(set_to_none=True)
            if device.type == "cuda":
                torch.cuda.empty_cache()
            old_batch, old_accum = config.device_batch_size, grad_accum
            new_batch, grad_accum = halve(old_batch, grad_accum)
            config = dataclasses.replace(config, device_batch_size=new_batch)
            # The step is redone from the same data: a new stream at the step's start position.
            if hasattr(train_iter, "close"):
                train_iter.close()
            train_stream = pipeline.make_stream("train", rank, world, new_batch, config.max_seq_len)
            train_stream.load_state_dict(stream_position)
            train_iter = iter(train_stream)
            val_stream = pipeline.make_stream("val", rank, world, new_batch, config.max_seq_len)
            eval_steps = max(1, config.eval_tokens // (new_batch * config.max_seq_len * world))
            message = (
                f"out of memory at step {step + 1} with device batch {old_batch}: device batch {old_batch} -> {new_batch}, "
                f"gradient accumulation {old_accum} -> {grad_accum}, total batch unchanged ({config.total_batch_size:,} tokens)"
            )
            if accelerator.is_local_main_process:
                progress.write(message)
            continue
        grad_norm, applied = stepper.clip_and_step(optimizer, model.parameters(), config.grad_clip)
        optimizer.zero_grad(set_to_none=True)
        step += 1
        loss_value = accelerator.reduce(loss_sum / grad_accum, "mean").item()  # also syncs the device
        dt = time.perf_counter() - t0
        tokens_per_s = config.total_batch_size / dt
        record = {
            "step": step,
            "loss": loss_value,
            "lr": optimizer.param_groups[-1]["lr"],
            "lr_mult": lr_mult,
            "grad_norm": grad_norm,
            "tokens_per_s": tokens_per_s,
            "mfu": flops_per_token * tokens_per_s / (peak * world) if peak else None,
            "tokens": step * config.total_batch_size,
            "dt": dt,
        }
        if hasattr(train_stream, "dropped_fraction"):  # best-fit packing: share of read tokens cropped away
            record["data_dropped_frac"] = train_stream.dropped_fraction
        if plan.mode == "fp16":
            record.update(loss_scale=stepper.loss_scale(), skipped=not applied, skipped_steps=stepper.skipped_steps)
        if device.type == "cuda":
            record["max_memory_gb"] = torch.cuda.max_memory_allocated(device) / 1e9

        last = step == num_iterations
        if last or (config.eval_every > 0 and step % config.eval_every == 0):
            val_batches = iter(val_stream)  # starts from the beginning of the val split every time
            record["val_bpb"] = evaluate_bpb(model, val_batches, eval_steps, pipeline.token_bytes, stepper.autocast, accelerator)
            if hasattr(val_batches, "close"):
                val_batches.close()  # stops the stream's prefetch thread
            completions = sample_completions(accelerator.unwrap_model(model), tokenizer, config.sample_prompts, config.sample_max_tokens, stepper.autocast, device)
            if accelerator.is_main_process:
                with open(samples_path, "a") as f:
                    for prompt, completion in zip(config.sample_prompts, completions):
                        f.write(json.dumps({"step": step, "prompt": prompt, "completion": completion}) + "\n")
                progress.write(f"step {step}: val bpb {record['val_bpb']:.4f}")
                for prompt, completion in zip(config.sample_prompts, completions):
                    progress.write(f"  {prompt!r} -> {completion!r}")
        if accelerator.is_main_process:
            with open(metrics_path, "a") as f:
                f.write(json.dumps(record) + "\n")
        if config.log_with:
            accelerator.log({k: v for k, v in record.items() if isinstance(v, (int, float))}, step=step)
        if step % config.log_every == 0 or last:
            progress.set_postfix(loss=f"{loss_value:.4f}", lr=f"{lr_mult:.2f}x", tok_s=f"{tokens_per_s:,.0f}", refresh=False)
            progress.update(step - progress.n)

        if last or (config.save_every > 0 and step % config.save_every == 0):
            trainer_state = {
                "step": step,
                "num_iterations": num_iterations,
                "skipped_steps": stepper.skipped_steps,
                "world_size": world,
                "device_batch_size": config.device_batch_size,
                "tokens": step * config.total_batch_size,
                "loss": loss_value,
                "val_bpb": record.get("val_bpb"),
            }
            last_checkpoint = checkpointer.save(step, model, tokenizer, trainer_state, train_stream)
    progress.close()
    if hasattr(train_iter, "close"):
        train_iter.close()

    final_model = checkpointer.publish_final_model(last_checkpoint) if last_checkpoint is not None else None
    if config.log_with:
        accelerator.end_training()
    summary = {
        "steps": step,
        "loss": record.get("loss"),
        "val_bpb": record.get("val_bpb"),
        "skipped_steps": stepper.skipped_steps,
        "world_size": world,
        "model_dir": str(final_model) if final_model else None,
        "checkpoint": str(last_checkpoint) if last_checkpoint else None,
    }
    accelerator.print(json.dumps(summary))
    return summary


# ----------------------------------------------------------------------------------------------
# Command line (train.py and `hf-nanochat train`)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.allow_abbrev = False  # `--dept=4` must be an error, not silently `--depth=4`
    parser.add_argument("--config", help="train config YAML (train_configs/*.yaml)")
    parser.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in output_dir")
    group = parser.add_argument_group("config overrides (any TrainConfig key, --key=value)")
    for f in dataclasses.fields(TrainConfig):
        group.add_argument(f"--{f.name}", dest=f"override__{f.name}", metavar="VALUE", default=argparse.SUPPRESS)


def run(args: argparse.Namespace) -> int:
    overrides = {k.removeprefix("override__"): parse_value(v) for k, v in vars(args).items() if k.startswith("override__")}
    try:
        config = load_config(args.config, overrides)  # every error about the config surfaces here
    except (ValueError, FileNotFoundError) as err:
        from hf_nanochat.errors import UserError

        raise UserError(f"train config: {err}") from None
    with run_lock(config.output_dir):  # a second run on this folder fails here, naming the first
        summary = train(config, resume=args.resume)
    rc = 0 if summary["steps"] > 0 else 1
    if torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1:
        # gloo can abort in interpreter teardown after a clean run; leave deliberately instead.
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
        import sys

        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(rc)
    return rc


def main(argv: list[str] | None = None) -> int:
    from hf_nanochat.errors import CliParser  # short errors with did-you-mean for a mistyped key

    parser = CliParser(prog="train.py", description="nanochat base pretraining with Accelerate")
    add_arguments(parser)
    return run(parser.parse_args(argv))


__all__ = [
    "DataPipeline",
    "default_pipeline",
    "grad_accumulation_steps",
    "resolve_horizon",
    "evaluate_bpb",
    "sample_completions",
    "list_checkpoints",
    "Checkpointer",
    "train",
    "main",
]
