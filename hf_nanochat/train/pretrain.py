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
from hf_nanochat.model_folder import match_permissions
from hf_nanochat.train.auto_batch import PROBE_STEPS, OutOfMemoryGuard, average_gradients, starting_device_batch
from hf_nanochat.train.checkpoints import newest_complete, pretrain_checkpoint_problems
from hf_nanochat.train.config import TrainConfig, config_to_yaml, load_config, parse_value
from hf_nanochat.train.memory import estimate_memory
from hf_nanochat.train.optim import apply_schedule, build_optimizer, lr_multiplier, muon_momentum
from hf_nanochat.train.optim_2026 import apply_schedule_2026, build_muon_adamw_2026, polar_express_dtype
from hf_nanochat.train.precision import LossScaledStep, PrecisionPlan, newton_schulz_dtype, resolve_precision
from hf_nanochat.train.recipe_2026 import (
    apply_recipe, lr_multiplier_2026, muon_momentum_2026, weight_decay_multiplier,
)
from hf_nanochat.train.run_lock import run_lock
from hf_nanochat.train.sharding import describe_sharding, export_skeleton, fsdp_plugin

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
    from hf_nanochat.data.best_fit import stream_class
    from hf_nanochat.data.stream import describe_source, load_documents, resolve_source_once
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
        return stream_class(config.packing)(tokenizer, files, seq_len, batch_size, split=split, rank=rank, world_size=world_size,
                                            text_column=config.text_column)

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
def evaluate_bpb(model, batches: Iterator, steps: int, token_bytes: torch.Tensor, autocast, accelerator, loss_chunk_tokens: int = 0) -> float:
    """nanochat's bits per byte: sum of per-token nats / (ln 2 * sum of the target tokens'
    UTF-8 byte lengths). Special tokens have 0 bytes and are left out of both sums, so the
    number does not depend on the vocabulary (unlike the loss).

    With `loss_chunk_tokens` (the training step's setting) the nats come from the model's
    chunked loss, so evaluation never holds whole-batch logits either: targets without bytes
    are set to -100 and `num_items_in_batch=1` turns the loss into the sum of the rest."""
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
        bytes_per_token = torch.where(y >= 0, token_bytes[y.clamp(min=0)], 0)
        if loss_chunk_tokens:
            counted = torch.where(bytes_per_token > 0, y, -100)
            with autocast():
                nats += model(input_ids=x, shift_labels=counted, loss_chunk_tokens=loss_chunk_tokens, num_items_in_batch=1).loss.double()
        else:
            with autocast():
                logits = model(input_ids=x).logits
            loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), y.reshape(-1), ignore_index=-100, reduction="none")
            nats += (loss * (bytes_per_token.reshape(-1) > 0)).sum().double()
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
# Build: the accelerator, the model and the plan printed before step 1


def make_accelerator(config: TrainConfig):
    """The Accelerator for this run and the precision it runs in."""
    from accelerate import Accelerator, PartialState
    from accelerate.utils import DistributedDataParallelKwargs, GradScalerKwargs, parse_flag_from_env

    # The device decides the precision, which Accelerator() needs: ask PartialState first, with
    # the CPU flag Accelerator() itself would read (without it gloo ranks start as world size 1).
    state = PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU"))
    precision = resolve_precision(config.precision, state.device, os.environ.get("ACCELERATE_MIXED_PRECISION"))
    accelerator = Accelerator(
        mixed_precision=precision.accelerate_mixed_precision,
        log_with=config.log_with or None,
        project_dir=str(config.output_dir),
        kwargs_handlers=[
            GradScalerKwargs(init_scale=config.fp16_init_scale),
            # The model's only buffers are the rotary frequencies, which every rank computes the
            # same: broadcasting them would add a collective to every forward, and one a rank
            # skips (an `auto` batch's out-of-memory probe) would deadlock the others.
            DistributedDataParallelKwargs(broadcast_buffers=False),
        ],
        fsdp_plugin=fsdp_plugin(precision.mode),  # None unless launched with an FSDP config
    )
    return accelerator, precision


def build_model(config: TrainConfig, tokenizer):
    """A freshly initialised model of the recipe's depth and architecture (call set_seed first: same weights on every rank)."""
    from hf_nanochat.modeling.modeling_nanochat_gpt import NanoChatGPTForCausalLM

    return NanoChatGPTForCausalLM(config.model_config(
        len(tokenizer), bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    ))


@dataclass
class RunPlan:
    """Everything decided before step 1; `describe()` is what base_train prints."""

    config: TrainConfig  # with device_batch_size resolved (`auto` -> a number)
    model_config: object
    num_params: int
    flops_per_token: int
    num_iterations: int
    horizon_why: str
    grad_accum: int
    ns_dtype: torch.dtype
    memory: dict
    precision: PrecisionPlan
    world_size: int
    device: torch.device

    def describe(self) -> str:
        c, m, world = self.config, self.model_config, self.world_size
        total_tokens = self.num_iterations * c.total_batch_size
        ns = str(self.ns_dtype).removeprefix("torch.")
        return "\n".join([
            f"model      nanochat {m.nanochat_architecture}, depth {c.depth}: width {m.hidden_size}, {_count(m.num_attention_heads, 'head')} "
            f"({m.num_key_value_heads} kv) x {m.head_dim}, vocab {m.vocab_size}, "
            f"context {c.max_seq_len}; {self.num_params:,} params ({_human(self.num_params)})",
            f"precision  {self.precision.mode}: {self.precision.reason}",
            f"devices    world size {world} on {self.device.type}; device batch {c.device_batch_size} x {c.max_seq_len} tokens",
            f"batch      {c.total_batch_size:,} tokens/step = {c.device_batch_size} x {c.max_seq_len} x {world} x "
            f"{self.grad_accum} grad-accumulation steps",
            f"horizon    {self.num_iterations:,} steps (from {self.horizon_why}) -> {total_tokens:,} tokens ({_human(total_tokens)}), "
            f"tokens:params {total_tokens / self.num_params:.1f}",
            f"compute    {self.flops_per_token:.3e} FLOPs/token -> {self.flops_per_token * total_tokens:.3e} FLOPs total",
            f"optimizer  {c.optimizer}"
            + (f" (Muon on block matrices, Newton-Schulz in {ns}; AdamW on wte/lm_head)" if c.optimizer == "muon" else "")
            + (
                f" (NorMuon + Polar Express in {ns} on block matrices, cautious wd {c.weight_decay:.4g} "
                f"{c.weight_decay_schedule}; AdamW on lm_head/wte/value_embeds/scalars)"
                if c.optimizer == "muon_adamw_2026" else ""
            ),
            f"memory     ~{_human(self.memory['total'], 'B')} per device (hf_nanochat.train.memory estimate: "
            + ", ".join(f"{k} {_human(v, 'B')}" for k, v in self.memory.items() if k != "total")
            + ")"
            + (f"; loss in chunks of {c.loss_chunk_tokens:,} tokens" if c.loss_chunk_tokens else ""),
        ])


def plan_run(config: TrainConfig, model, accelerator, precision: PrecisionPlan, resume_from: Path | None) -> RunPlan:
    """Horizon, device batch (`auto` resolved), accumulation, FLOPs and the memory estimate."""
    device, world = accelerator.device, accelerator.num_processes
    num_params = sum(p.numel() for p in model.parameters())
    flops_per_token = model.num_flops_per_token()
    num_iterations, horizon_why = resolve_horizon(config, num_params, flops_per_token)
    fsdp = accelerator.distributed_type.value == "FSDP"
    layout = dict(
        dtype=precision.mode, world_size=world, fsdp=fsdp, optimizer=config.optimizer, on_gpu=device.type == "cuda",
        loss_chunk_tokens=config.loss_chunk_tokens,
        activation_checkpointing=bool(fsdp and accelerator.state.fsdp_plugin.activation_checkpointing),
    )

    def peak_bytes(device_batch: int) -> int:
        return estimate_memory(model.config, device_batch, config.max_seq_len, **layout).total

    if config.device_batch_size == "auto":
        if fsdp and world > 1:
            # FSDP reduce-scatters inside backward: a rank that runs out of memory there would leave
            # the others waiting, so the ranks could not roll back together.
            raise ValueError("device_batch_size: auto is not supported under FSDP with several processes; set device_batch_size "
                             "(`hf-nanochat memory --config ... --accelerate-config ... --gpu-memory 80GB` prints the largest that fits)")
        saved = _read_trainer_state(resume_from) if resume_from else {}
        chosen = starting_device_batch(config.total_batch_size, config.max_seq_len, world, device, peak_bytes, saved)
        accelerator.print(f"device_batch_size: auto -> {chosen} (halved on out-of-memory during the first {PROBE_STEPS} steps)")
        config = dataclasses.replace(config, device_batch_size=chosen)
    return RunPlan(
        config=config,
        model_config=model.config,
        num_params=num_params,
        flops_per_token=flops_per_token,
        num_iterations=num_iterations,
        horizon_why=horizon_why,
        grad_accum=grad_accumulation_steps(config.total_batch_size, config.device_batch_size, config.max_seq_len, world),
        ns_dtype={
            "auto": polar_express_dtype(precision.mode) if config.optimizer == "muon_adamw_2026" else newton_schulz_dtype(device),
            "bf16": torch.bfloat16, "fp32": torch.float32,
        }[config.ns_dtype],
        memory=estimate_memory(model.config, config.device_batch_size, config.max_seq_len, **layout).as_dict(),
        precision=precision,
        world_size=world,
        device=device,
    )


def _read_trainer_state(checkpoint: Path) -> dict:
    return json.loads((checkpoint / "state" / "trainer_state.json").read_text())


def _to_device(batch, device):
    x, y = batch
    return x.to(device, non_blocking=True), y.to(device, non_blocking=True)


def _truncate_log(path: Path, last_step: int) -> None:
    """On resume, drop log lines of steps after the checkpoint (they will be redone)."""
    if not path.exists():
        return
    kept = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= last_step]
    atomic_write_text(path, "".join(line + "\n" for line in kept))


def _close(iterator) -> None:
    if hasattr(iterator, "close"):
        iterator.close()  # stops a stream's prefetch thread


def _due(step: int, every: int) -> bool:
    return every > 0 and step % every == 0


# ----------------------------------------------------------------------------------------------
# The run: built once, then stepped by train()'s loop


class PretrainRun:
    """One base-training run's state: accelerator, model, optimizer, streams, step and logs.

    The constructor builds (nanochat base_train's top half); `train_step`, `evaluate_and_sample`,
    `log` and `save` are the loop's parts; `finish` publishes the final model."""

    def __init__(self, config: TrainConfig, pipeline: DataPipeline | None, resume: bool):
        from accelerate.utils import set_seed

        self.accelerator, precision = make_accelerator(config)
        acc = self.accelerator
        self.device, self.world, self.rank = acc.device, acc.num_processes, acc.process_index
        self.output_dir = Path(config.output_dir)
        self.metrics_path, self.samples_path = self.output_dir / "metrics.jsonl", self.output_dir / "samples.jsonl"
        self.checkpointer = Checkpointer(acc, self.output_dir, config.keep_checkpoints)
        resume_from = self._checkpoint_to_resume(resume)

        self.pipeline = pipeline or default_pipeline(config, acc)
        set_seed(config.seed)  # same initial weights on every rank
        model = build_model(config, self.pipeline.tokenizer)
        config, recipe_lines = apply_recipe(config, model.config)
        self.plan = plan_run(config, model, acc, precision, resume_from)
        self.config, self.grad_accum = self.plan.config, self.plan.grad_accum
        acc.print("\n".join(recipe_lines + [self.plan.describe()]), flush=True)
        self._refuse_if_too_big()

        self.model, self.optimizer = self._prepare(model)
        self.stepper = LossScaledStep(acc, precision, init_scale=config.fp16_init_scale)
        self._open_streams(self.config.device_batch_size)
        self.step, self.last_checkpoint, self.record = 0, None, {}
        if resume_from is not None:
            self._restore(resume_from)
        self._start_outputs()
        self.auto_batch = OutOfMemoryGuard(enabled=config.device_batch_size == "auto", first_step=self.step)
        self.peak_flops = peak_flops_per_device(self.config, self.device, precision.mode)
        self.train_iter = iter(self.train_stream)
        self.progress = self._progress_bar()
        self.model.train()

    @property
    def num_iterations(self) -> int:
        return self.plan.num_iterations

    # --- build -------------------------------------------------------------------------------

    def _checkpoint_to_resume(self, resume: bool) -> Path | None:
        existing = list_checkpoints(self.output_dir)
        if resume and existing:  # the newest complete one; damaged newer ones are named and moved aside
            existing = newest_complete(existing, pretrain_checkpoint_problems, self.accelerator.print,
                                       move_damaged=self.accelerator.is_main_process)
        if existing and not resume:
            raise FileExistsError(f"{self.output_dir} already has checkpoints ({existing[-1].name}); pass --resume or use another --output_dir")
        if resume and not existing:
            self.accelerator.print(f"--resume: no checkpoint in {self.output_dir}/checkpoints, starting from scratch")
        return existing[-1] if resume and existing else None

    def _refuse_if_too_big(self) -> None:
        """The step and the evaluation must fit what this device has (stage_plan), or nothing starts."""
        from hf_nanochat.train.stage_plan import base_stage_peaks, device_budget, refuse_if_too_big

        acc, mode = self.accelerator, self.plan.precision.mode
        topology = {
            "world_size": self.world, "fsdp": acc.distributed_type.value == "FSDP",
            "activation_checkpointing": bool(acc.distributed_type.value == "FSDP" and acc.state.fsdp_plugin.activation_checkpointing),
            "mixed_precision": None if mode == "fp32" else mode,
        }
        peaks = base_stage_peaks(self.config, self.plan.model_config, topology, on_gpu=self.device.type == "cuda")
        budget = device_budget(self.device, acc.num_processes if self.device.type == "cpu" else 1)
        where = f"base training (depth {self.config.depth}, device batch {self.config.device_batch_size}, {self.world} x {self.device.type})"
        refuse_if_too_big(peaks, budget, where)

    def _prepare(self, model):
        c = self.config
        optimizer = build_muon_adamw_2026(
            model, matrix_lr=c.matrix_lr, embedding_lr=c.embedding_lr, unembedding_lr=c.unembedding_lr, scalar_lr=c.scalar_lr,
            weight_decay=c.weight_decay, momentum=c.muon_momentum_start, ns_steps=c.ns_steps, ns_dtype=self.plan.ns_dtype,
        ) if c.optimizer == "muon_adamw_2026" else build_optimizer(
            model,
            c.optimizer,
            matrix_lr=c.matrix_lr,
            embedding_lr=c.embedding_lr,
            unembedding_lr=c.unembedding_lr,
            adamw_matrix_lr=c.adamw_matrix_lr,
            weight_decay=c.weight_decay,
            ns_steps=c.ns_steps,
            ns_dtype=self.plan.ns_dtype,
        )
        if c.compile:
            model = torch.compile(model)
        model, optimizer = self.accelerator.prepare(model, optimizer)
        if self.accelerator.distributed_type.value == "FSDP":
            print(describe_sharding(model, self.rank, self.world), flush=True)  # every rank: what it holds
        return model, optimizer

    def _open_streams(self, device_batch: int, train_position: dict | None = None) -> None:
        make = self.pipeline.make_stream
        self.train_stream = make("train", self.rank, self.world, device_batch, self.config.max_seq_len)
        if train_position is not None:
            self.train_stream.load_state_dict(train_position)
        self.val_stream = make("val", self.rank, self.world, device_batch, self.config.max_seq_len)

    def _restore(self, checkpoint: Path) -> None:
        acc = self.accelerator
        self.checkpointer.clean_partial()
        acc.load_state(str(checkpoint / "state"))
        trainer_state = _read_trainer_state(checkpoint)
        self.step = trainer_state["step"]
        self.stepper.skipped_steps = trainer_state["skipped_steps"]
        if trainer_state["world_size"] == self.world:
            self.train_stream.load_state_dict(json.loads((checkpoint / "state" / f"data_rank{self.rank}.json").read_text()))
        else:
            # Weights and optimizer state are re-sharded on load (DCP / full state dicts); a data
            # stream's position belongs to its rank's slice of the documents and has no meaning
            # for another split of them.
            acc.print(
                f"resuming on {self.world} processes from a checkpoint saved by {trainer_state['world_size']}: model, optimizer, "
                "step and schedules continue exactly; the data streams are re-split and restart at the beginning of the train split"
            )
        acc.print(f"resumed from {checkpoint} at step {self.step}")
        self.last_checkpoint = checkpoint

    def _start_outputs(self) -> None:
        if self.accelerator.is_main_process:  # rows of steps after the checkpoint (or of a run with none) are redone
            _truncate_log(self.metrics_path, self.step)
            _truncate_log(self.samples_path, self.step)
            self.output_dir.mkdir(parents=True, exist_ok=True)
            (self.output_dir / "train_config.yaml").write_text(config_to_yaml(self.config))
        if self.config.log_with:
            self.accelerator.init_trackers(self.config.run_name, config=dataclasses.asdict(self.config))

    def _progress_bar(self):
        from hf_nanochat.train.progress import progress_bar  # a bar on a terminal, lines in a log

        return progress_bar(total=self.num_iterations, initial=self.step, disable=not self.accelerator.is_local_main_process, desc="pretrain", dynamic_ncols=True)

    # --- the loop's parts --------------------------------------------------------------------

    def train_step(self) -> dict | None:
        """One optimizer step over `grad_accum` micro-batches; its metrics record, or None when
        `auto` halved the device batch after an out-of-memory and the step must be redone."""
        t0 = time.perf_counter()
        c = self.config
        position = self.train_stream.state_dict() if self.auto_batch.probing(self.step) else None
        lr_mult, momentum, wd_mult = schedules_at(c, self.step, self.num_iterations)
        if c.optimizer == "muon_adamw_2026":
            apply_schedule_2026(self.optimizer, lr_mult, momentum, wd_mult)
        else:
            apply_schedule(self.optimizer, self.step, lr_mult, momentum)
        with self.auto_batch.watch(self.step, c.device_batch_size) as oom:
            loss_sum = self._accumulate_gradients()
        if oom.hit:
            self._shrink_device_batch(position)
            return None
        grad_norm, applied = self.stepper.clip_and_step(self.optimizer, self.model.parameters(), c.grad_clip)
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        loss = self.accelerator.reduce(loss_sum / self.grad_accum, "mean").item()  # also syncs the device
        return self._step_record(loss, lr_mult, grad_norm, applied, time.perf_counter() - t0)

    def _accumulate_gradients(self) -> torch.Tensor:
        if self.world > 1 and self.auto_batch.probing(self.step):
            return self._accumulate_gradients_agreeing_on_oom()
        loss_sum = torch.zeros((), device=self.device)
        for micro in range(self.grad_accum):
            # Gradients are all-reduced once per optimizer step, on the last micro-batch.
            sync = contextlib.nullcontext() if micro == self.grad_accum - 1 else self.accelerator.no_sync(self.model)
            with sync:
                loss_sum += self._micro_batch()
        return loss_sum

    def _micro_batch(self) -> torch.Tensor:
        x, y = _to_device(next(self.train_iter), self.device)
        with self.stepper.autocast():
            loss = self.model(input_ids=x, shift_labels=y, loss_chunk_tokens=self.config.loss_chunk_tokens).loss
        self.stepper.backward(loss / self.grad_accum)
        return loss.detach()

    def _accumulate_gradients_agreeing_on_oom(self) -> torch.Tensor:
        """A probe step of an `auto` run on several processes: after every micro-batch all ranks
        agree whether one ran out of memory (auto_batch.any_rank), so they roll back together.
        Backward runs without DDP's all-reduce (no rank may wait in it for one that failed);
        the gradients are averaged once at the end instead, as DDP would have."""
        loss_sum = torch.zeros((), device=self.device)
        for _ in range(self.grad_accum):
            failed = False
            try:
                with self.accelerator.no_sync(self.model):
                    loss_sum += self._micro_batch()
            except torch.OutOfMemoryError:
                failed = True  # the frames holding the activations go with the except block
            if self.auto_batch.any_rank(failed, self.device):
                raise torch.OutOfMemoryError(f"out of memory on {'this' if failed else 'another'} rank at device batch {self.config.device_batch_size}")
        average_gradients(self.model.parameters(), self.world)
        return loss_sum

    def _shrink_device_batch(self, train_position: dict) -> None:
        """auto_batch's roll-back, then new streams: the step is redone from the same data."""
        c = self.config
        new_batch, self.grad_accum, message = self.auto_batch.roll_back(
            self.optimizer, self.device, self.step, c.device_batch_size, self.grad_accum, c.total_batch_size
        )
        self.config = dataclasses.replace(c, device_batch_size=new_batch)
        _close(self.train_iter)
        self._open_streams(new_batch, train_position)
        self.train_iter = iter(self.train_stream)
        if self.accelerator.is_local_main_process:
            self.progress.write(message)

    def _step_record(self, loss: float, lr_mult: float, grad_norm: float, applied: bool, dt: float) -> dict:
        c = self.config
        tokens_per_s = c.total_batch_size / dt
        record = {
            "step": self.step,
            "loss": loss,
            "lr": self.optimizer.param_groups[-1]["lr"],
            "lr_mult": lr_mult,
            "grad_norm": grad_norm,
            "tokens_per_s": tokens_per_s,
            "mfu": self.plan.flops_per_token * tokens_per_s / (self.peak_flops * self.world) if self.peak_flops else None,
            "tokens": self.step * c.total_batch_size,
            "dt": dt,
        }
        if hasattr(self.train_stream, "dropped_fraction"):  # best-fit packing: share of read tokens cropped away
            record["data_dropped_frac"] = self.train_stream.dropped_fraction
        if self.plan.precision.mode == "fp16":
            record.update(loss_scale=self.stepper.loss_scale(), skipped=not applied, skipped_steps=self.stepper.skipped_steps)
        if self.device.type == "cuda":
            record["max_memory_gb"] = torch.cuda.max_memory_allocated(self.device) / 1e9
        return record

    def evaluate_and_sample(self) -> dict:
        """Validation bits per byte, then greedy samples of the recipe's prompts (written to samples.jsonl)."""
        c = self.config
        eval_steps = max(1, c.eval_tokens // (c.device_batch_size * c.max_seq_len * self.world))
        val_batches = iter(self.val_stream)  # starts from the beginning of the val split every time
        val_bpb = evaluate_bpb(
            self.model, val_batches, eval_steps, self.pipeline.token_bytes, self.stepper.autocast, self.accelerator, c.loss_chunk_tokens
        )
        _close(val_batches)
        unwrapped = self.accelerator.unwrap_model(self.model)
        completions = sample_completions(unwrapped, self.pipeline.tokenizer, c.sample_prompts, c.sample_max_tokens, self.stepper.autocast, self.device)
        if self.accelerator.is_main_process:
            with open(self.samples_path, "a") as f:
                for prompt, completion in zip(c.sample_prompts, completions):
                    f.write(json.dumps({"step": self.step, "prompt": prompt, "completion": completion}) + "\n")
            self.progress.write(f"step {self.step}: val bpb {val_bpb:.4f}")
            for prompt, completion in zip(c.sample_prompts, completions):
                self.progress.write(f"  {prompt!r} -> {completion!r}")
        return {"val_bpb": val_bpb}

    def log(self, record: dict) -> None:
        """metrics.jsonl (every step), the trackers and the progress bar."""
        self.record = record
        if self.accelerator.is_main_process:
            with open(self.metrics_path, "a") as f:
                f.write(json.dumps(record) + "\n")
        if self.config.log_with:
            self.accelerator.log({k: v for k, v in record.items() if isinstance(v, (int, float))}, step=self.step)
        if self.step % self.config.log_every == 0 or self.step == self.num_iterations:
            tokens_per_s = record["tokens_per_s"]
            self.progress.set_postfix(loss=f"{record['loss']:.4f}", lr=f"{record['lr_mult']:.2f}x", tok_s=f"{tokens_per_s:,.0f}", refresh=False)
            self.progress.update(self.step - self.progress.n)

    def save(self, record: dict) -> None:
        trainer_state = {
            "step": self.step,
            "num_iterations": self.num_iterations,
            "skipped_steps": self.stepper.skipped_steps,
            "world_size": self.world,
            "device_batch_size": self.config.device_batch_size,
            "tokens": self.step * self.config.total_batch_size,
            "loss": record["loss"],
            "val_bpb": record.get("val_bpb"),
        }
        self.last_checkpoint = self.checkpointer.save(self.step, self.model, self.pipeline.tokenizer, trainer_state, self.train_stream)

    def finish(self) -> dict:
        """Close the streams, publish output_dir/model, return (and print) the summary."""
        self.progress.close()
        _close(self.train_iter)
        final_model = self.checkpointer.publish_final_model(self.last_checkpoint) if self.last_checkpoint is not None else None
        if self.config.log_with:
            self.accelerator.end_training()
        summary = {
            "steps": self.step,
            "loss": self.record.get("loss"),
            "val_bpb": self.record.get("val_bpb"),
            "skipped_steps": self.stepper.skipped_steps,
            "world_size": self.world,
            "model_dir": str(final_model) if final_model else None,
            "checkpoint": str(self.last_checkpoint) if self.last_checkpoint else None,
        }
        self.accelerator.print(json.dumps(summary))
        return summary


def train(config: TrainConfig, pipeline: DataPipeline | None = None, resume: bool = False) -> dict:
    """Run base pretraining; returns a summary (steps, final loss/bpb, skipped steps, paths).

    nanochat's scripts/base_train.py in outline: build and plan, then per optimizer step: step,
    evaluate and sample (every eval_every and at the end), log, save (every save_every and at the end)."""
    if config.stage != "base":
        raise NotImplementedError(
            f"stage {config.stage!r} (mid-training / SFT) is trained with TRL by hf_nanochat.sft.run_sft_stage; "
            "train.py dispatches recipes with stage: mid|sft there (train_configs/mid.yaml, sft.yaml)"
        )
    run = PretrainRun(config, pipeline, resume)
    while run.step < run.num_iterations:
        record = run.train_step()
        if record is None:  # out of memory while probing an `auto` device batch: redo the step, halved
            continue
        last = run.step == run.num_iterations
        if last or _due(run.step, run.config.eval_every):
            record.update(run.evaluate_and_sample())
        run.log(record)
        if last or _due(run.step, run.config.save_every):
            run.save(record)
    return run.finish()


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
