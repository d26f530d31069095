"""Mid-training and SFT stages on TRL's `SFTTrainer` (optionally PEFT LoRA).

What TRL does: batching, packing (best-fit-decreasing, padding-free with position_ids that
restart per document - the model turns those into per-document causal masks), the loss from our
mask, gradient accumulation, precision, DDP/FSDP through Accelerate, checkpoints.
nanochat's recipe, per stage: mid-training trains on every token of the rendered conversations
(scripts/mid_train.py: `ids, _ = tokenizer.render_conversation(conversation)` drops the mask),
SFT on assistant tokens only (scripts/chat_sft.py masks targets where mask == 0); Muon momentum
ramps 0.85 -> 0.95 over 300 steps in mid-training (mid_train.py `get_muon_momentum`) and stays at
its 0.95 default in SFT (chat_sft.py never sets it); neither stage clips gradients.
What this module adds: the data (a YAML mixture rendered by the one injection-safe
`render_conversation`, fed pre-tokenized as `input_ids` + `assistant_masks`), nanochat's
optimizer and schedule (its Nov 2025 or 2026 groups from `hf_nanochat.train.chat_optim`, LR flat then linear warmdown),
the precision rule shared with pretraining, and the stage contract: read the previous stage's
`save_pretrained` folder (or Hub id), write this stage's folder with the tokenizer.

With a `peft:` section only LoRA adapters train (AdamW on the adapters) and are saved on their
own (`adapter_model.safetensors` + `adapter_config.json` pointing at the base);
`hf-nanochat merge` folds them into a full model folder.
"""
from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml
from transformers import TrainerCallback

from hf_nanochat.train.chat_optim import CHAT_OPTIMIZERS as OPTIMIZERS
from hf_nanochat.train.chat_optim import CONSTANT_MUON_MOMENTUM  # nanochat SFT at 06677c3: never scheduled (scripts/chat_sft.py)

STAGES = ("mid", "sft")
LOSS_TOKENS = ("all", "assistant")
# nanochat's Linear names; PEFT matches a target by name suffix, so "c_proj" hits both the
# attention output and the MLP output projections ("attn.c_proj" / "mlp.c_proj" pick one).
LORA_TARGETS = ("c_q", "c_k", "c_v", "c_proj", "c_fc", "attn.c_proj", "mlp.c_proj")


@dataclass
class LoraSection:
    """The `peft:` section: a LoRA adapter on nanochat's linear layers."""

    r: int = 16
    alpha: int = 32
    dropout: float = 0.0
    target_modules: list[str] = field(default_factory=lambda: ["c_q", "c_k", "c_v", "c_proj", "c_fc"])

    def __post_init__(self):
        bad = [t for t in self.target_modules if t not in LORA_TARGETS]
        if bad or not self.target_modules:
            raise ValueError(f"peft.target_modules must be nanochat layer names from {LORA_TARGETS}, got {self.target_modules}")
        if self.r < 1:
            raise ValueError(f"peft.r must be >= 1, got {self.r}")


@dataclass
class SFTStageConfig:
    """One chat stage (`stage: mid` or `stage: sft`), read 1:1 from its YAML recipe."""

    stage: str
    model: str  # the previous stage's save_pretrained folder, or a Hub id
    output_dir: str  # this stage's save_pretrained folder (checkpoints go in output_dir/checkpoints)
    train_data: list[dict[str, Any]]  # mixture of chat_data sources
    eval_data: list[dict[str, Any]] = field(default_factory=list)
    tokenizer: str | None = None  # default: the tokenizer saved next to `model`
    max_length: int = 2048  # tokens per packed row / longest conversation (longer ones are cut)
    packing: bool = True  # pack conversations into rows (padding-free, per-document attention)
    packing_strategy: str = "bfd"  # TRL: "bfd" truncates over-long conversations, "bfd_split" splits them
    per_device_train_batch_size: int = 8
    # The batch of one optimizer step, as nanochat states it; accumulation is derived from it and
    # device batch x world size (exactly one of the two, or neither and gradient_accumulation_steps):
    tokens_per_step: int | None = None  # packed stages: rows x max_length x world x accumulation (mid: 524,288)
    conversations_per_step: int | None = None  # one conversation per row: rows x world x accumulation (SFT: 32)
    gradient_accumulation_steps: int | None = None  # explicit accumulation instead of a target (default 1)
    num_epochs: float = 1.0
    max_steps: int = -1  # > 0 overrides num_epochs
    # auto (muon for a Nov 2025 model, muon_adamw_2026 for a 2026 one) | muon | adamw |
    # muon_adamw_2026 (hf_nanochat.train.chat_optim); with peft: AdamW on the adapters
    optimizer: str = "auto"
    matrix_lr: float = 0.02
    embedding_lr: float = 0.2  # muon_adamw_2026: wte; value_embeds get half
    unembedding_lr: float = 0.004
    adamw_matrix_lr: float = 0.004  # block matrices when optimizer is adamw
    scalar_lr: float = 0.5  # muon_adamw_2026 only: x0_lambdas (resid_lambdas get 1%)
    learning_rate: float = 1e-3  # LoRA adapters' AdamW LR
    init_lr_frac: float = 1.0  # every LR above times this (nanochat: 1.0 mid, 0.02 SFT)
    warmdown_ratio: float = 0.2  # LR flat, then linear to 0 over this last fraction (1.0 = linear decay, nanochat SFT)
    weight_decay: float = 0.0  # muon/adamw: every group; muon_adamw_2026: Muon's (its AdamW groups have their own)
    max_grad_norm: float = 0.0  # 0 = no clipping (nanochat's mid_train.py and chat_sft.py clip neither)
    loss_tokens: str | None = None  # "all" | "assistant"; default per stage: mid all (nanochat), sft assistant
    muon_momentum_ramp: bool | None = None  # 0.85 -> 0.95 over 300 steps; default per stage: mid yes, sft no (constant 0.95)
    precision: str = "auto"  # auto | fp32 | bf16 | fp16, resolved as in pretraining
    activation_checkpointing: bool = False  # recompute blocks in backward (less memory)
    torch_compile: bool = False
    logging_steps: int = 10
    eval_steps: int | None = None  # default: evaluate once at the end when eval_data is given
    save_steps: int = 500
    save_total_limit: int | None = 2
    resume: bool = False  # continue from the newest checkpoint in output_dir/checkpoints (train.py --resume)
    seed: int = 42
    dataset_num_proc: int | None = None
    peft: LoraSection | None = None

    def __post_init__(self):
        if self.stage not in STAGES:
            raise ValueError(f"stage must be one of {STAGES}, got {self.stage!r}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if isinstance(self.peft, dict):
            self.peft = LoraSection(**self.peft)
        if self.peft is not None and self.optimizer in ("muon", "muon_adamw_2026"):
            raise ValueError(f"optimizer: {self.optimizer} orthogonalises full weight matrices; LoRA adapters train with optimizer: adamw")
        if not self.train_data:
            raise ValueError("data.train must list at least one source")
        if not 0.0 <= self.warmdown_ratio <= 1.0:
            raise ValueError(f"warmdown_ratio must be in [0, 1], got {self.warmdown_ratio}")
        if self.loss_tokens is None:
            self.loss_tokens = "all" if self.stage == "mid" else "assistant"
        if self.loss_tokens not in LOSS_TOKENS:
            raise ValueError(f"loss_tokens must be one of {LOSS_TOKENS}, got {self.loss_tokens!r}")
        if self.muon_momentum_ramp is None:
            self.muon_momentum_ramp = self.stage == "mid"
        targets = [k for k in ("tokens_per_step", "conversations_per_step", "gradient_accumulation_steps") if getattr(self, k) is not None]
        if len(targets) > 1:
            raise ValueError(f"set one of {targets}: accumulation is derived from tokens_per_step or conversations_per_step")
        if self.tokens_per_step is not None and not self.packing:
            raise ValueError("tokens_per_step counts packed rows of max_length tokens: it needs packing: true (without packing use conversations_per_step)")
        if self.conversations_per_step is not None and self.packing:
            raise ValueError("conversations_per_step counts one conversation per row: it needs packing: false (with packing use tokens_per_step)")
        for key in targets:
            if getattr(self, key) < 1:
                raise ValueError(f"{key} must be >= 1, got {getattr(self, key)}")

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> SFTStageConfig:
        raw = dict(raw)
        data = raw.pop("data", None) or {}
        if not isinstance(data, dict) or set(data) - {"train", "eval"}:
            raise ValueError("data must be a mapping with 'train' (and optionally 'eval') source lists")
        raw["train_data"] = data.get("train") or []
        raw["eval_data"] = data.get("eval") or []
        names = {f.name for f in dataclasses.fields(cls)} - {"train_data", "eval_data"} | {"data"}
        unknown = sorted(set(raw) - names - {"train_data", "eval_data"})
        if unknown:
            from hf_nanochat.errors import did_you_mean

            listed = ", ".join(f"{k!r}{did_you_mean(k, names)}" for k in unknown)
            raise ValueError(f"unknown keys in the {raw.get('stage', 'chat')} stage config: {listed}")
        return cls(**raw)

    @classmethod
    def from_yaml(cls, path: str | os.PathLike) -> SFTStageConfig:
        with open(path, encoding="utf-8") as f:
            return cls.from_dict(yaml.safe_load(f) or {})

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["data"] = {"train": out.pop("train_data"), "eval": out.pop("eval_data")}
        return out


def accumulation_steps(cfg: SFTStageConfig, world_size: int) -> int:
    """Gradient accumulation from the stage's target batch, as nanochat derives it:
    scripts/mid_train.py `total_batch_size // (device_batch_size * max_seq_len * world_size)`,
    scripts/chat_sft.py `target_examples_per_step // (device_batch_size * world_size)`. So one
    GPU runs the same recipe as eight, with 8x the accumulation."""
    rows = cfg.per_device_train_batch_size * world_size
    if cfg.tokens_per_step is not None:
        target, per_pass, what = cfg.tokens_per_step, rows * cfg.max_length, f"per_device_train_batch_size x max_length x world size = {cfg.per_device_train_batch_size} x {cfg.max_length} x {world_size}"
    elif cfg.conversations_per_step is not None:
        target, per_pass, what = cfg.conversations_per_step, rows, f"per_device_train_batch_size x world size = {cfg.per_device_train_batch_size} x {world_size}"
    else:
        return cfg.gradient_accumulation_steps or 1
    if target % per_pass:
        name = "tokens_per_step" if cfg.tokens_per_step is not None else "conversations_per_step"
        raise ValueError(f"{name} {target:,} is not a multiple of {what} = {per_pass:,}; pick a per_device_train_batch_size that divides it")
    return target // per_pass


def describe_batch(cfg: SFTStageConfig, world_size: int) -> str:
    accum = accumulation_steps(cfg, world_size)
    b = cfg.per_device_train_batch_size
    if cfg.tokens_per_step is not None:
        return f"{cfg.tokens_per_step:,} tokens/step = {b} rows x {cfg.max_length} x {world_size} x {accum} grad-accumulation steps"
    if cfg.conversations_per_step is not None:
        return f"{cfg.conversations_per_step} conversations/step = {b} x {world_size} x {accum} grad-accumulation steps"
    return f"device batch {b} x {world_size} x {accum} grad-accumulation steps"


# --------------------------------------------------------------------------- data
def tokenize_conversations(dataset, tokenizer, max_length: int | None = None, num_proc: int | None = None, loss_tokens: str = "assistant"):
    """`messages` -> `input_ids` + `assistant_masks` (the tokens with a loss) through
    `render_conversation` (never the template-string path, so user text can never become a
    special token). `loss_tokens="all"` trains on every token (nanochat's mid-training).
    Conversations cut off before the assistant speaks are dropped."""
    from hf_nanochat.data.tokenizer import render_conversation

    if loss_tokens not in LOSS_TOKENS:
        raise ValueError(f"loss_tokens must be one of {LOSS_TOKENS}, got {loss_tokens!r}")

    def render(row):
        ids, mask = render_conversation(tokenizer, row["messages"], max_tokens=max_length)
        if loss_tokens == "all" and any(mask):
            mask = [1] * len(ids)
        return {"input_ids": ids, "assistant_masks": mask}

    out = dataset.map(render, remove_columns=dataset.column_names, num_proc=num_proc, desc="render_conversation")
    return out.filter(lambda row: any(row["assistant_masks"]), num_proc=num_proc)


# --------------------------------------------------------------------------- optimizer
class NanochatSchedule(torch.optim.lr_scheduler.LambdaLR):
    """nanochat's LR multiplier (flat, then linear warmdown) and, with `momentum_ramp`, the Muon
    momentum ramp 0.85 -> 0.95 over 300 steps (mid_train.py); without it Muon keeps its 0.95
    (chat_sft.py). One scheduler object so Trainer steps both together."""

    def __init__(self, optimizer, num_training_steps: int, warmdown_ratio: float, momentum_ramp: bool = True):
        from hf_nanochat.train.optim import lr_multiplier

        self.num_training_steps = max(int(num_training_steps), 1)
        self.momentum_ramp = momentum_ramp
        super().__init__(optimizer, lambda step: lr_multiplier(step, self.num_training_steps, warmdown_ratio=warmdown_ratio))
        self._set_momentum()

    def step(self, epoch=None):
        super().step() if epoch is None else super().step(epoch)
        self._set_momentum()

    def _set_momentum(self):
        from hf_nanochat.train.optim import muon_momentum

        for group in self.optimizer.param_groups:
            if group.get("kind") == "muon":
                group["momentum"] = muon_momentum(self.last_epoch) if self.momentum_ramp else CONSTANT_MUON_MOMENTUM


def build_stage_optimizer(model, cfg: SFTStageConfig, device: torch.device) -> torch.optim.Optimizer:
    """Full fine-tuning: nanochat's groups for `cfg.optimizer` (hf_nanochat.train.chat_optim). LoRA:
    AdamW over the trainable adapter weights. Every LR is scaled by `init_lr_frac`."""
    if cfg.peft is not None:
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=cfg.learning_rate * cfg.init_lr_frac, betas=(0.8, 0.95), eps=1e-10, weight_decay=cfg.weight_decay)
        for group in opt.param_groups:
            group["kind"] = "adamw"
        return opt
    from hf_nanochat.train.chat_optim import build_chat_optimizer

    return build_chat_optimizer(
        model, cfg.optimizer, init_lr_frac=cfg.init_lr_frac, matrix_lr=cfg.matrix_lr, embedding_lr=cfg.embedding_lr,
        unembedding_lr=cfg.unembedding_lr, adamw_matrix_lr=cfg.adamw_matrix_lr, scalar_lr=cfg.scalar_lr,
        weight_decay=cfg.weight_decay, precision=cfg.precision, device=device,
    )


def nanochat_trainer_class(base, cfg: SFTStageConfig, device: torch.device):
    """`base` (TRL's SFTTrainer) building nanochat's optimizer and schedule at the moment Trainer
    builds its own, on `self.model` as Trainer holds it then, instead of taking an optimizer
    instance: Trainer refuses `optimizers=` under FSDP, and one built before sharding would step
    tensors that are no longer the model's. Under FSDP2 Trainer creates it before
    `accelerator.prepare`, which moves it onto the sharded parameters (as pretraining does), and
    Muon orthogonalises those sharded matrices (hf_nanochat.train.sharding).

    Under an FSDP launch the Accelerator gets pretraining's FSDP plugin (fp32 gradient reductions
    under bf16/fp16): left alone, Trainer lets Accelerate build one from the launcher's settings,
    which reduces in the compute dtype."""

    class NanochatTrainer(base):
        def _build_accelerator_args(self, **kwargs):
            from hf_nanochat.train.sharding import fsdp_plugin

            args = super()._build_accelerator_args(**kwargs)
            if args.get("fsdp_plugin") is None:  # None unless Trainer's own `fsdp=` arguments were given
                args["fsdp_plugin"] = fsdp_plugin("bf16" if self.args.bf16 else "fp16" if self.args.fp16 else "fp32")
            return args

        def compute_loss(self, model, inputs, *args, **kwargs):
            from torch.distributed.fsdp import FSDPModule

            head = self.model.get_output_embeddings()
            if isinstance(head, FSDPModule):
                # TRL's fused LM head reads lm_head.weight without calling lm_head, so FSDP2 (where
                # Accelerate makes the head its own unit) never unshards it; TRL then gathers the
                # DTensor with full_tensor(), whose backward hands each rank its own, unreduced rows
                # of the gradient (measured: lm_head's step differs from one process, all else
                # equal). Unsharded here, the head's gradient is reduce-scattered like every other
                # (FSDP2's final backward callback runs post_backward for every unsharded group).
                head.unshard()
            counted = self._total_train_tokens
            out = super().compute_loss(model, inputs, *args, **kwargs)
            if self.model.training and isinstance(self.data_collator, PackedRowsCollator):
                # TRL counts a batch without attention_mask as ONE padding-free row of
                # position_ids.size(1) tokens; packed rows are B rows with padding.
                local = PackedRowsCollator.real_tokens(inputs["position_ids"])
                self._total_train_tokens = counted + self.accelerator.gather_for_metrics(local).sum().item()
                self._metrics["train"]["num_tokens"] = [self._total_train_tokens]
            return out

        def create_optimizer(self, model=None):
            if self.optimizer is None:
                self.optimizer = build_stage_optimizer(self.model if model is None else model, cfg, device)
            return self.optimizer

        def create_scheduler(self, num_training_steps: int, optimizer=None):
            if self.lr_scheduler is None:
                self.lr_scheduler = NanochatSchedule(optimizer or self.optimizer, num_training_steps, cfg.warmdown_ratio,
                                                     momentum_ramp=cfg.muon_momentum_ramp)
                self._created_lr_scheduler = True
            return self.lr_scheduler

    return NanochatTrainer


def lora_config(section: LoraSection):
    from peft import LoraConfig

    return LoraConfig(
        r=section.r,
        lora_alpha=section.alpha,
        lora_dropout=section.dropout,
        target_modules=list(section.target_modules),
        bias="none",
        task_type="CAUSAL_LM",
    )


# --------------------------------------------------------------------------- the stage
def _launch_state():
    """The process state `accelerate launch` set up. On CPU it must be asked for with cpu=True
    (ACCELERATE_USE_CPU), as pretraining does: a bare PartialState() on a CPU-only machine is
    one process, and accumulation would be derived for world size 1 while 2 ranks train."""
    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env

    return PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU"))


class PackedRowsCollator:
    """Packed rows stay rows: a device batch of B packed rows is B rows, each with position_ids
    that restart at every document and no attention_mask, so the model builds a (B, 1, L, L)
    per-document causal mask (transformers' find_packed_sequence_indices works per row).

    TRL's bfd packing is always padding-free, which concatenates the batch into ONE row of B x L
    tokens: its dense block-diagonal mask (and SDPA's per-layer bias) is (B x L)^2, quadratic in
    the device batch. TRL refuses a custom collator with padding-free because FlashAttention
    would read a padding attention_mask instead of position_ids; this collator passes no
    attention_mask, so it is set on the trainer after construction. The labels are TRL's own
    collator's (assistant tokens only); as in TRL's padding-free path, the first token of each
    document is not a target of the document before it."""

    def __init__(self, pad_token_id: int):
        from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

        self.pad_token_id = pad_token_id
        self._rows = DataCollatorForLanguageModeling(pad_token_id=pad_token_id, padding_free=False, return_position_ids=True)

    def __call__(self, examples: list[dict]) -> dict:
        batch = self._rows(examples)
        batch.pop("attention_mask")  # padding gets position 0 each: one-token documents, labels -100
        batch["labels"][batch["position_ids"] == 0] = -100
        return batch

    @staticmethod
    def real_tokens(position_ids: torch.Tensor) -> torch.Tensor:
        """The batch's tokens that are not padding: every position > 0 plus each document's first
        token (a 0 followed by a 1). Padding is a run of one-token documents (0, 0, ...); no
        conversation is one token long."""
        starts = (position_ids[:, :-1] == 0) & (position_ids[:, 1:] == 1)
        return (position_ids > 0).sum() + starts.sum()


def trainer_precision_args(precision: str, device: torch.device) -> dict[str, Any]:
    """The shared precision rule (hf_nanochat.train.precision) as TrainingArguments flags."""
    from hf_nanochat.train.precision import resolve_precision

    plan = resolve_precision(precision, device, os.environ.get("ACCELERATE_MIXED_PRECISION"))
    if plan.explicit_fp16:
        raise ValueError(
            "fp16 on CPU is not available in the chat stages (Trainer has no CPU GradScaler path); "
            "use precision: fp32 on CPU, fp16 on P100/V100/T4 GPUs"
        )
    print(f"precision: {plan.mode} ({plan.reason})")
    return {"bf16": plan.mode == "bf16", "fp16": plan.mode == "fp16", "use_cpu": device.type == "cpu"}


def refuse_if_stage_too_big(cfg: SFTStageConfig, model_config, device: torch.device, world_size: int, precision_args: dict) -> None:
    """The planned peak of one step (hf_nanochat.train.stage_plan) must fit this device, or the
    stage stops here, before tokenizing or training, naming the knob."""
    from hf_nanochat.modeling.configuration_nanochat_gpt import NanoChatGPTConfig
    from hf_nanochat.train.sharding import fsdp_launch_requested
    from hf_nanochat.train.stage_plan import chat_stage_peak, device_budget, refuse_if_too_big

    if getattr(model_config, "model_type", None) != NanoChatGPTConfig.model_type:
        return  # the planner knows nanochat's shapes only
    fsdp = fsdp_launch_requested()
    mixed = "bf16" if precision_args["bf16"] else "fp16" if precision_args["fp16"] else None
    topology = {"world_size": world_size, "fsdp": fsdp, "activation_checkpointing": False, "mixed_precision": mixed}
    peak = chat_stage_peak(cfg, model_config, topology, on_gpu=device.type == "cuda")
    print(f"{cfg.stage}: planned peak ~{peak.gib:.2f} GiB per device")
    budget = device_budget(device, world_size if device.type == "cpu" else 1)
    refuse_if_too_big([peak], budget, f"{cfg.stage} (device batch {cfg.per_device_train_batch_size} x {cfg.max_length}, packing {cfg.packing})")


def _resolve_local(path_or_id: str) -> str:
    """Local folders become absolute paths, so the adapter config's base_model_name_or_path (and
    the merge that reads it) works from any working directory."""
    return str(Path(path_or_id).resolve()) if Path(path_or_id).exists() else path_or_id


def run_sft_stage(cfg: SFTStageConfig, *, model=None, tokenizer=None, train_dataset=None, eval_dataset=None) -> dict[str, Any]:
    """Run one chat stage and write `cfg.output_dir`; returns the final metrics.

    `model`, `tokenizer` and the (messages) datasets may be passed in (tests, notebooks); by
    default they come from `cfg.model`, `cfg.tokenizer` and the data mixtures.
    """
    import hf_nanochat.modeling  # noqa: F401  (registers the model with the Auto classes)
    from transformers import AutoModelForCausalLM
    from trl import SFTConfig, SFTTrainer

    from hf_nanochat.data.chat_data import build_mixture
    from hf_nanochat.data.provenance import write_stage_record
    from hf_nanochat.data.tokenizer import load_tokenizer

    from hf_nanochat.model_folder import check_model_source, check_tokenizer_source
    from hf_nanochat.train.chat_optim import describe_optimizer
    from hf_nanochat.train.progress import interactive, quiet_library_progress_bars
    from hf_nanochat.train.sharding import fsdp_launch_requested

    bars = interactive()  # not a terminal: Trainer prints its logs as lines, no tqdm refreshes
    if not bars:
        quiet_library_progress_bars()

    if model is None:  # a missing local folder is named as one, not looked up as a Hub id
        check_model_source(cfg.model)
    if tokenizer is None:
        check_tokenizer_source(cfg.tokenizer or cfg.model)
    if cfg.peft is not None and fsdp_launch_requested():
        raise ValueError(
            "peft: LoRA under FSDP is not supported (its adapter export from gathered weights is untested); "
            "launch LoRA with DDP (accelerate_configs/multi_gpu.yaml): the frozen base is only read, the adapters are small"
        )
    launched = _launch_state()
    device, world_size = launched.device, launched.num_processes
    grad_accum = accumulation_steps(cfg, world_size)  # a bad target fails here, before any loading
    print(f"{cfg.stage}: batch {describe_batch(cfg, world_size)}")
    precision_args = trainer_precision_args(cfg.precision, device)
    base = _resolve_local(cfg.model)
    if tokenizer is None:
        tokenizer = load_tokenizer(_resolve_local(cfg.tokenizer or cfg.model))
    if model is None:
        # Master weights stay fp32; autocast does the half-precision compute.
        model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    if len(tokenizer) > model.config.vocab_size:
        raise ValueError(f"tokenizer has {len(tokenizer)} tokens but the model's vocabulary is {model.config.vocab_size}")
    refuse_if_stage_too_big(cfg, model.config, device, world_size, precision_args)
    optimizer_plan = "lora-adamw" if cfg.peft else describe_optimizer(cfg.optimizer, model.config)  # a wrong choice fails here

    record: dict[str, Any] = {"loss_tokens": cfg.loss_tokens, "train": [], "eval": []}
    if train_dataset is None:
        train_dataset = build_mixture(cfg.train_data, seed=cfg.seed, record=record["train"])
    else:
        record["train"].append({"source": "passed in", "rows": len(train_dataset)})
    if eval_dataset is None and cfg.eval_data:
        eval_dataset = build_mixture(cfg.eval_data, seed=cfg.seed, shuffle=False, record=record["eval"])
    elif eval_dataset is not None:
        record["eval"].append({"source": "passed in", "rows": len(eval_dataset)})
    train_tok = tokenize_conversations(train_dataset, tokenizer, cfg.max_length, cfg.dataset_num_proc, cfg.loss_tokens)
    eval_tok = (
        tokenize_conversations(eval_dataset, tokenizer, cfg.max_length, cfg.dataset_num_proc, cfg.loss_tokens)
        if eval_dataset is not None else None
    )
    record["train_conversations"] = len(train_tok)
    print(f"{cfg.stage}: {len(train_tok):,} training conversations" + (f", {len(eval_tok):,} eval" if eval_tok is not None else ""))

    if cfg.peft is not None:
        from peft import get_peft_model

        if not model.get_output_embeddings().weight.any():
            # nanochat zero-initialises lm_head: on an untrained model no gradient reaches the adapters.
            raise ValueError(f"{cfg.model} has an all-zero lm_head (an untrained model); LoRA needs a pretrained base")

        model = get_peft_model(model, lora_config(cfg.peft))
        model.print_trainable_parameters()
    out = Path(cfg.output_dir)
    args = SFTConfig(
        output_dir=str(out / "checkpoints"),
        max_length=cfg.max_length,
        packing=cfg.packing,
        packing_strategy=cfg.packing_strategy,
        # labels come from our assistant_masks column; TRL's own chat-template masking is off
        assistant_only_loss=False,
        per_device_train_batch_size=cfg.per_device_train_batch_size,
        per_device_eval_batch_size=cfg.per_device_train_batch_size,
        gradient_accumulation_steps=grad_accum,
        num_train_epochs=cfg.num_epochs,
        max_steps=cfg.max_steps,
        max_grad_norm=cfg.max_grad_norm,
        activation_checkpointing=cfg.activation_checkpointing,
        torch_compile=cfg.torch_compile,
        logging_steps=cfg.logging_steps,
        eval_strategy="steps" if eval_tok is not None and cfg.eval_steps else "no",
        eval_steps=cfg.eval_steps,
        save_strategy="steps",
        save_steps=cfg.save_steps,
        save_total_limit=cfg.save_total_limit,
        seed=cfg.seed,
        dataset_num_proc=cfg.dataset_num_proc,
        report_to=[],
        disable_tqdm=not bars,
        **precision_args,
    )
    trainer = nanochat_trainer_class(SFTTrainer, cfg, device)(
        callbacks=[MetricsLog(out / "metrics.jsonl"), ShardingLog()],
        model=model,
        args=args,
        train_dataset=train_tok,
        eval_dataset=eval_tok,
        processing_class=tokenizer,
    )
    if cfg.packing:
        trainer.data_collator = PackedRowsCollator(trainer.data_collator.pad_token_id)
    # The schedule's horizon depends on how many packed rows TRL made; Trainer passes the same
    # number to create_scheduler when training starts.
    num_steps = trainer.set_initial_training_values(args, trainer.get_train_dataloader())[-1]
    print(f"{cfg.stage}: {num_steps} optimizer steps, optimizer {optimizer_plan}")

    if trainer.is_world_process_zero():  # before training, so even a crashed run's folder says what it read
        write_stage_record(out, cfg.stage, record, previous=base if Path(base).is_dir() else None)
    last = _latest_checkpoint(Path(args.output_dir)) if cfg.resume else None
    if last is not None:
        print(f"resuming from {last}")
    result = trainer.train(resume_from_checkpoint=str(last) if last else None)
    metrics = {"stage": cfg.stage, "train_loss": result.training_loss, "global_step": result.global_step}
    if eval_tok is not None:
        metrics.update(trainer.evaluate())
    metrics["log_history"] = trainer.state.log_history

    if trainer.is_world_process_zero():
        out.mkdir(parents=True, exist_ok=True)
    save_final_model(trainer, out)
    if trainer.is_world_process_zero():
        tokenizer.save_pretrained(str(out))
        from hf_nanochat.model_folder import match_permissions

        match_permissions(out)  # safetensors writes 0600; the rest of the folder is 0644
        with open(out / "stage_config.yaml", "w", encoding="utf-8") as f:
            yaml.safe_dump(cfg.to_dict(), f, sort_keys=False)
        with open(out / "train_metrics.json", "w", encoding="utf-8") as f:
            json.dump(metrics, f, indent=2, default=float)

    return metrics


def ready_for_inference(model) -> None:
    """TRL turns the KV cache off in the config for training; the saved model is for generating."""
    if getattr(model, "config", None) is not None:
        model.config.use_cache = True


class MetricsLog(TrainerCallback):
    """`output_dir/metrics.jsonl`: one JSON line per logging step, across resumed attempts (lines
    after the checkpoint a run resumes from are dropped, those steps are redone), so the stage's
    loss can be read over all its steps; TRL's `train_loss` covers only the last attempt's."""

    def __init__(self, path: Path):
        self.path = path

    def on_train_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            rows = self.path.read_text().splitlines() if self.path.exists() else []
            kept = [r for r in rows if r.strip() and json.loads(r)["step"] <= state.global_step]
            self.path.write_text("".join(r + "\n" for r in kept))

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and logs and "loss" in logs:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(json.dumps({"step": state.global_step, **logs}) + "\n")


class ShardingLog(TrainerCallback):
    """Under FSDP every rank prints what it really holds (describe_sharding), as pretraining does."""

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        import torch.distributed as dist
        from torch.distributed.fsdp import FSDPModule

        from hf_nanochat.train.sharding import describe_sharding

        if isinstance(model, FSDPModule):
            print(describe_sharding(model, dist.get_rank(), dist.get_world_size()), flush=True)


def save_final_model(trainer, out: Path) -> None:
    """The stage's model folder: save_pretrained + code files (LoRA: the adapter only). Under FSDP
    Trainer.save_model writes nothing with fsdp.yaml's sharded state dicts (and with full ones
    would record FSDP's generated class in auto_map), so the weights are gathered whole (a
    collective: every rank calls it) and written from an empty model of our class, as
    pretraining exports them."""
    ready_for_inference(trainer.model)
    if not trainer.is_fsdp_enabled:
        trainer.save_model(str(out))
        return
    from hf_nanochat.train.sharding import export_skeleton

    state_dict = trainer.accelerator.get_state_dict(trainer.model)
    if trainer.is_world_process_zero():
        export_skeleton(trainer.accelerator.unwrap_model(trainer.model)).save_pretrained(out, state_dict=state_dict)


def _latest_checkpoint(folder: Path) -> Path | None:
    """The newest complete Trainer checkpoint; damaged newer ones are named, and moved aside by
    the main process (hf_nanochat.train.checkpoints)."""
    from hf_nanochat.train.checkpoints import newest_complete, trl_checkpoint_problems
    from hf_nanochat.train.run_lock import launcher_rank

    found = [p for p in folder.glob("checkpoint-*") if p.name.split("-")[-1].isdigit()] if folder.exists() else []
    found.sort(key=lambda p: int(p.name.split("-")[-1]))
    main = launcher_rank() == 0
    complete = newest_complete(found, trl_checkpoint_problems, warn=None if main else (lambda _: None), move_damaged=main)
    return complete[-1] if complete else None





def read_stage_recipe(argv: list[str] | None, description: str, config_help: str) -> dict:
    """A chat or RL stage's recipe: `--config FILE [--key=value ...] [--resume]`, the values YAML
    scalars (`--max_steps=100`, `--packing=false`), merged over the file's keys."""
    import sys

    from hf_nanochat.errors import CliParser

    parser = CliParser(prog="train.py", description=description)
    parser.add_argument("--config", required=True, help=config_help)
    parser.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in output_dir/checkpoints")
    args, rest = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
    if not Path(args.config).is_file():
        raise FileNotFoundError(f"train config {args.config} does not exist")
    with open(args.config, encoding="utf-8") as f:
        raw = yaml.safe_load(f) or {}
    for item in rest:
        key, sep, value = item.removeprefix("--").partition("=")
        if not item.startswith("--") or not sep:
            raise SystemExit(f"overrides look like --key=value, got {item!r}")
        raw[key.replace("-", "_")] = yaml.safe_load(value)
    if args.resume:
        raw["resume"] = True
    return raw


def main(argv: list[str] | None = None) -> int:
    """`train.py --config train_configs/sft.yaml [--key=value ...]` for `stage: mid|sft`."""
    from hf_nanochat.train.run_lock import run_lock

    raw = read_stage_recipe(argv, "chat stage (mid/sft) on TRL's SFTTrainer", "a train_configs/*.yaml with stage: mid or sft")
    cfg = SFTStageConfig.from_dict(raw)
    with run_lock(cfg.output_dir):  # a second run on this folder fails here, naming the first
        metrics = run_sft_stage(cfg)
    print(f"{metrics['stage']}: done, {metrics['global_step']} steps, train loss {metrics['train_loss']:.4f} -> {raw['output_dir']}")
    return 0
__all__ = ["LoraSection", "NanochatSchedule", "PackedRowsCollator", "SFTStageConfig", "accumulation_steps", "build_stage_optimizer", "describe_batch", "nanochat_trainer_class", "main", "read_stage_recipe", "run_sft_stage", "tokenize_conversations"]
