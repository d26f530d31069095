"""RL stage (`stage: rl`): nanochat's chat_rl on TRL's `GRPOTrainer`, calculator tool in the rollouts.

nanochat (scripts/chat_rl.py, 06677c3) calls its algorithm "GRPO" in quotes: on-policy REINFORCE
with a group-mean baseline. Each step samples `num_samples` (16) completions for each of
`examples_per_step` (16) GSM8K questions, rewards a completion 1 when its `#### N` answer is right,
sets advantage = reward - mean reward of the question's group (no division by the std), and
minimises -sum(logp * advantage) over the sampled tokens, divided by the number of those tokens
in each device batch of 8 sequences (then averaged over the device batches). No KL to a
reference, no PPO ratio or clipping, LR = 0.05 x the base LRs decaying linearly to 0 over one
epoch, pass@k on the test split every 60 steps.

What TRL does here: batching of questions into groups (RepeatSampler), rewards and group-mean
advantages, the policy-gradient loss with its token normalisation, gradient accumulation, DDP
through Accelerate, checkpoints and `--resume`. The settings that make it nanochat's algorithm are
spelled out in `grpo_args` and in train_configs/rl.yaml. What this module adds: the rollouts (the
chat Engine, whose calculator-tool protocol is the same code the chat app runs, returned to TRL
through its `rollout_func` hook with the forced tool-output tokens masked out of the loss via
`env_mask`), the reward (a plain function, hf_nanochat/train/rewards.py), nanochat's optimizer
and schedule, and pass@k evaluation as a callback.
"""
from __future__ import annotations

import dataclasses
import json
import os
import random
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml

from hf_nanochat.train.chat_optim import CHAT_OPTIMIZERS as OPTIMIZERS

# TRL loss types whose normalisation is by sampled tokens; see `loss_type` below.
TOKEN_LEVEL_LOSSES = ("bnpo", "dapo")


@dataclass
class RLStageConfig:
    """The RL stage, read 1:1 from its YAML recipe. Defaults are nanochat's chat_rl.py."""

    model: str  # the SFT stage's save_pretrained folder, or a Hub id
    output_dir: str  # this stage's save_pretrained folder (checkpoints go in output_dir/checkpoints)
    train_data: list[dict[str, Any]]  # chat_data sources whose last message is the reference answer
    eval_data: list[dict[str, Any]] = field(default_factory=list)  # pass@k questions
    stage: str = "rl"
    tokenizer: str | None = None  # default: the tokenizer saved next to `model`
    # --- rollouts
    num_samples: int = 16  # completions per question (TRL num_generations)
    examples_per_step: int = 16  # questions per optimizer step, across all processes
    device_batch_size: int = 8  # sequences per forward/backward (TRL per_device_train_batch_size)
    rollout_batch_size: int | None = None  # samples per Engine call (nanochat: device_batch_size); None: same
    max_new_tokens: int = 256
    temperature: float = 1.0
    top_k: int | None = 50
    # --- reward
    reward: str = "hf_nanochat.train.rewards:answer_match"  # module:function(completion, answer, **reward_kwargs)
    reward_kwargs: dict[str, Any] = field(default_factory=dict)  # e.g. {pattern: '#### (\-?[0-9\.\,]+)'}
    # --- loss (TRL)
    loss_type: str = "bnpo"  # nanochat normalises by the sampled tokens of each device batch
    # --- optimizer and schedule
    optimizer: str = "auto"  # auto | muon | adamw | muon_adamw_2026, as in the SFT stage (hf_nanochat.train.chat_optim)
    matrix_lr: float = 0.02
    embedding_lr: float = 0.2
    unembedding_lr: float = 0.004
    adamw_matrix_lr: float = 0.004
    scalar_lr: float = 0.5  # muon_adamw_2026 only: x0_lambdas (resid_lambdas get 1%)
    init_lr_frac: float = 0.05  # every LR above times this (nanochat chat_rl)
    weight_decay: float = 0.0
    max_grad_norm: float = 0.0  # nanochat's chat_rl does not clip; > 0 clips
    num_epochs: float = 1.0
    max_steps: int = -1  # > 0 overrides num_epochs
    # --- evaluation, checkpoints
    eval_every: int = 60  # pass@k every this many steps (and at the end); <= 0: only at the end
    eval_examples: int = 400
    eval_num_samples: int = 8  # k of pass@1..k (nanochat: device_batch_size)
    eval_temperature: float = 1.0
    save_steps: int = 60
    save_total_limit: int | None = 2
    logging_steps: int = 1
    precision: str = "auto"
    activation_checkpointing: bool = False
    resume: bool = False
    seed: int = 42

    def __post_init__(self):
        if self.stage != "rl":
            raise ValueError(f"stage must be 'rl' for this config, got {self.stage!r}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if self.loss_type not in TOKEN_LEVEL_LOSSES:
            raise ValueError(
                f"loss_type must be one of {TOKEN_LEVEL_LOSSES} (token-level normalisation, as nanochat); got {self.loss_type!r}"
            )
        if not self.train_data:
            raise ValueError("data.train must list at least one source")
        if self.num_samples < 2:
            raise ValueError("num_samples must be >= 2: the advantage is the reward minus its group's mean")
        for name in ("examples_per_step", "device_batch_size", "max_new_tokens", "eval_num_samples", "eval_examples"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.rollout_batch_size is not None and self.rollout_batch_size < 1:
            raise ValueError(f"rollout_batch_size must be >= 1 or null, got {self.rollout_batch_size}")
        if self.temperature <= 0:
            raise ValueError("temperature must be > 0: the policy gradient needs sampled completions")

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> RLStageConfig:
        raw = dict(raw)
        data = raw.pop("data", None) or {}
        if not isinstance(data, dict) or set(data) - {"train", "eval"}:
            raise ValueError("data must be a mapping with 'train' (and optionally 'eval') source lists")
        raw["train_data"] = data.get("train") or []
        raw["eval_data"] = data.get("eval") or []
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(raw) - names)
        if unknown:
            raise ValueError(f"unknown keys in the rl stage config: {unknown}")
        return cls(**raw)

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["data"] = {"train": out.pop("train_data"), "eval": out.pop("eval_data")}
        return out


# --------------------------------------------------------------------------- data
def prompt_dataset(conversations, tokenizer=None):
    """`messages` records (the last message the reference assistant reply) -> TRL's prompt dataset:
    `prompt` (the conversation without the reply) and `answer` (the reference's `#### N`)."""
    from hf_nanochat.evaluate.chat_eval import reference_text
    from hf_nanochat.train.rewards import extract_answer

    def split(row):
        messages = row["messages"]
        if messages[-1]["role"] != "assistant":
            raise ValueError("RL data: every conversation must end with the reference assistant reply")
        answer = extract_answer(reference_text(row))
        if answer is None:
            raise ValueError(f"RL data: a reference reply has no '#### N' answer: {reference_text(row)[-200:]!r}")
        return {"prompt": messages[:-1], "answer": answer}

    return conversations.map(split, remove_columns=conversations.column_names, desc="rl prompts")


# --------------------------------------------------------------------------- rollouts
def rollout_seed(seed: int, step: int, rank: int, group: int, chunk: int) -> int:
    """A sampling seed per (run seed, optimizer step, process, prompt group, Engine call), as
    nanochat seeds each call by hash((step, example, sampling_step)); deterministic across
    processes and restarts, so a resumed run draws the same samples."""
    return random.Random(f"{seed}/{step}/{rank}/{group}/{chunk}").randrange(2**31)


class EngineRollout:
    """TRL `rollout_func`: completions from the chat Engine, calculator tool included.

    TRL hands over the process's prompts, each repeated `num_samples` times in a row; each run of
    equal prompts is prefilled once and sampled `rollout_batch_size` at a time (nanochat's
    `generate_batch`). Completions keep the sampled `<|assistant_end|>`; `env_mask` is 0 on the tool
    output the protocol forced in, so TRL leaves those tokens out of the loss.
    """

    def __init__(self, tokenizer, max_new_tokens: int, temperature: float, top_k: int | None, batch_size: int, seed: int):
        self.tokenizer = tokenizer
        self.max_new_tokens = max_new_tokens
        self.temperature = temperature
        self.top_k = top_k
        self.batch_size = batch_size
        self.seed = seed

    def __call__(self, prompts: list, trainer) -> dict[str, list]:
        model = trainer.accelerator.unwrap_model(trainer.model)
        return self.rollout(model, prompts, step=trainer.state.global_step, rank=trainer.accelerator.process_index,
                            autocast=trainer.accelerator.autocast())

    def rollout(self, model, prompts: list, step: int = 0, rank: int = 0, autocast=None) -> dict[str, list]:
        from hf_nanochat.data.tokenizer import render_for_completion
        from hf_nanochat.serve.engine import Engine

        engine = Engine(model, self.tokenizer)
        groups: list[tuple[Any, int]] = []  # (prompt, how many samples) for each run of equal prompts
        for prompt in prompts:
            if groups and groups[-1][0] == prompt:
                groups[-1] = (prompt, groups[-1][1] + 1)
            else:
                groups.append((prompt, 1))
        out = {"prompt_ids": [], "completion_ids": [], "logprobs": None, "env_mask": []}
        was_training = model.training
        model.eval()  # the Engine's KV cache is off in training mode under activation checkpointing
        try:
            with autocast or nullcontext():
                for g, (prompt, count) in enumerate(groups):
                    prompt_ids = render_for_completion(self.tokenizer, prompt)
                    for c, start in enumerate(range(0, count, self.batch_size)):
                        n = min(self.batch_size, count - start)
                        completions, masks = engine.generate_with_masks(
                            prompt_ids, num_samples=n, max_tokens=self.max_new_tokens, temperature=self.temperature,
                            top_k=self.top_k, seed=rollout_seed(self.seed, step, rank, g, c), include_stop=True,
                        )
                        for ids, mask in zip(completions, masks):
                            out["prompt_ids"].append(list(prompt_ids))
                            out["completion_ids"].append(ids)
                            out["env_mask"].append(mask)
        finally:
            model.train(was_training)
        return out


def trl_reward(fn, tokenizer, kwargs: dict[str, Any]):
    """The plain `fn(completion_text, answer, **kwargs)` as a TRL reward function. Completions are
    decoded with special tokens kept, as nanochat's `tokenizer.decode` does."""

    def reward(prompts, completions, completion_ids, answer, **_):
        texts = tokenizer.batch_decode(completion_ids, skip_special_tokens=False)
        return [float(fn(text, ref, **kwargs)) for text, ref in zip(texts, answer)]

    reward.__name__ = getattr(fn, "__name__", "reward")
    return reward


# --------------------------------------------------------------------------- pass@k
def pass_at_k_counts(outcomes: list[list[bool]], k_max: int) -> list[int]:
    """nanochat's pass@k numerators for k = 1..k_max: how many questions have a correct answer
    among their first k samples."""
    return [sum(any(o[:k]) for o in outcomes) for k in range(1, k_max + 1)]


def evaluate_pass_at_k(model, tokenizer, records, reward_fn, reward_kwargs, num_samples: int, max_tokens: int,
                       temperature: float, top_k: int | None, seed: int, rank: int = 0, world: int = 1) -> tuple[list[int], int]:
    """Correct-count per k (summed over this process's share of the questions) and the number of
    questions; the caller reduces both across processes. Sampled with the Engine, tool included."""
    from hf_nanochat.data.tokenizer import render_for_completion
    from hf_nanochat.serve.engine import Engine

    engine = Engine(model, tokenizer)
    outcomes = []
    for i in range(rank, len(records), world):
        record = records[i]
        completions = engine.generate(render_for_completion(tokenizer, record["prompt"]), num_samples=num_samples,
                                      max_tokens=max_tokens, temperature=temperature, top_k=top_k, seed=seed + i)
        outcomes.append([reward_fn(tokenizer.decode(c, skip_special_tokens=False), record["answer"], **reward_kwargs) > 0
                         for c in completions])
    return pass_at_k_counts(outcomes, num_samples), len(outcomes)


def pass_at_k_callback(trainer_ref: dict, records, cfg: RLStageConfig, reward_fn):
    """A TrainerCallback that logs pass@1..k on `records` before step 0, every `eval_every` steps
    (before that step's rollouts and update, as nanochat) and after the last step.
    `trainer_ref["trainer"]` is filled in once the trainer exists: callbacks are passed to its
    constructor, and the evaluation needs its accelerator (process rank, reductions, autocast)."""
    from transformers import TrainerCallback

    class PassAtK(TrainerCallback):
        def __init__(self):
            self.done: set[int] = set()
            self.history: list[dict] = []

        def _evaluate(self, step: int):
            if step in self.done:
                return
            self.done.add(step)
            trainer = trainer_ref["trainer"]
            acc = trainer.accelerator
            model = acc.unwrap_model(trainer.model)
            was_training = model.training
            model.eval()
            try:
                with acc.autocast():
                    counts, n = evaluate_pass_at_k(model, trainer.processing_class, records, reward_fn, cfg.reward_kwargs,
                                                   cfg.eval_num_samples, cfg.max_new_tokens, cfg.eval_temperature, cfg.top_k,
                                                   seed=cfg.seed, rank=acc.process_index, world=acc.num_processes)
            finally:
                model.train(was_training)
            totals = acc.reduce(torch.tensor([*counts, n], dtype=torch.float64, device=acc.device), reduction="sum").tolist()
            n_all = max(totals[-1], 1.0)
            metrics = {f"pass@{k}": totals[k - 1] / n_all for k in range(1, cfg.eval_num_samples + 1)}
            self.history.append({"step": step, **metrics})
            if acc.is_main_process:
                print(f"step {step} | " + ", ".join(f"{k}: {v:.4f}" for k, v in metrics.items()), flush=True)
            trainer.state.log_history.append({"step": step, **metrics})

        def on_step_begin(self, args, state, control, **kwargs):
            if cfg.eval_every > 0 and state.global_step % cfg.eval_every == 0:
                self._evaluate(state.global_step)

        def on_train_end(self, args, state, control, **kwargs):
            self._evaluate(state.global_step)

    return PassAtK()


# --------------------------------------------------------------------------- the stage
def steps_layout(cfg: RLStageConfig, world_size: int) -> int:
    """Gradient accumulation so one optimizer step covers `examples_per_step` questions x
    `num_samples` completions across all processes in device batches of `device_batch_size`."""
    if cfg.examples_per_step % world_size:
        raise ValueError(f"examples_per_step ({cfg.examples_per_step}) must be divisible by the {world_size} processes (nanochat asserts the same)")
    sequences = cfg.examples_per_step * cfg.num_samples // world_size
    if sequences % cfg.device_batch_size:
        raise ValueError(f"each process samples {sequences} sequences per step (examples_per_step x num_samples / processes); "
                         f"device_batch_size {cfg.device_batch_size} must divide it")
    return sequences // cfg.device_batch_size


def grpo_args(cfg: RLStageConfig, world_size: int, precision_args: dict[str, Any]):
    """The GRPOConfig that makes TRL's GRPO nanochat's REINFORCE (each setting says which choice)."""
    from trl import GRPOConfig

    return GRPOConfig(
        output_dir=str(Path(cfg.output_dir) / "checkpoints"),
        # 16 samples per question; 16 questions x 16 samples per optimizer step, device batches of 8
        num_generations=cfg.num_samples,
        per_device_train_batch_size=cfg.device_batch_size,
        gradient_accumulation_steps=steps_layout(cfg, world_size),  # steps_per_generation follows it: one rollout per step
        max_completion_length=cfg.max_new_tokens,
        temperature=cfg.temperature,
        top_k=cfg.top_k or 0,
        # no KL to a reference model (and so no reference model in memory)
        beta=0.0,
        # on-policy: one update per rollout batch, so TRL's ratio pi/pi_old is exactly 1 (it uses
        # logp.detach() as old logp) and the PPO clip never binds: the gradient is REINFORCE's
        num_iterations=1,
        # advantage = reward - group mean, no division by the std
        scale_rewards="none",
        # token-level: bnpo = sum over a device batch's sampled tokens / their number, averaged
        # over the device batches of the step (nanochat's pg_obj / (num_valid * num_passes * examples_per_rank))
        loss_type=cfg.loss_type,
        mask_truncated_completions=False,  # nanochat trains on completions cut at max_new_tokens too
        max_grad_norm=cfg.max_grad_norm,
        num_train_epochs=cfg.num_epochs,
        max_steps=cfg.max_steps,
        activation_checkpointing=cfg.activation_checkpointing,
        cast_lm_head_to_fp32=precision_args["bf16"] or precision_args["fp16"],  # our model's logits are fp32
        remove_unused_columns=False,  # the reward reads the `answer` column
        logging_steps=cfg.logging_steps,
        save_strategy="steps",
        save_steps=cfg.save_steps,
        save_total_limit=cfg.save_total_limit,
        seed=cfg.seed,
        report_to=[],
        **precision_args,
    )


def build_rl_optimizer(model, cfg: RLStageConfig, device: torch.device):
    """nanochat's groups for `cfg.optimizer` (hf_nanochat.train.chat_optim) at `init_lr_frac` of the
    base LRs; Muon momentum stays 0.95 (chat_rl has no momentum ramp)."""
    from hf_nanochat.train.chat_optim import build_chat_optimizer

    return build_chat_optimizer(
        model, cfg.optimizer, init_lr_frac=cfg.init_lr_frac, matrix_lr=cfg.matrix_lr, embedding_lr=cfg.embedding_lr,
        unembedding_lr=cfg.unembedding_lr, adamw_matrix_lr=cfg.adamw_matrix_lr, scalar_lr=cfg.scalar_lr,
        weight_decay=cfg.weight_decay, precision=cfg.precision, device=device,
    )


def linear_decay(optimizer, num_steps: int):
    """nanochat chat_rl's LR multiplier 1 - step / num_steps."""
    from hf_nanochat.train.optim import lr_multiplier

    num_steps = max(int(num_steps), 1)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_multiplier(step, num_steps, warmdown_ratio=1.0))


def refuse_fsdp() -> None:
    from accelerate import DistributedType

    from hf_nanochat.train.sft import _launch_state

    if _launch_state().distributed_type == DistributedType.FSDP:
        raise ValueError(
            "stage rl does not run under FSDP: its rollouts run the chat Engine (KV cache, calculator tool) on each "
            "process's own model, and under FSDP2 every forward is a collective that all processes must enter in step, "
            "which independent rollouts of different lengths do not. Launch with DDP (accelerate_configs/multi_gpu.yaml) "
            "or one process; models too large for that (3B/7B) are not supported by the RL stage."
        )


def run_rl_stage(cfg: RLStageConfig, *, model=None, tokenizer=None, train_dataset=None, eval_dataset=None) -> dict[str, Any]:
    """Run the RL stage and write `cfg.output_dir`; returns the final metrics. `model`,
    `tokenizer` and the (messages) datasets may be passed in (tests); by default they come from
    `cfg.model`, `cfg.tokenizer` and the data mixtures."""
    import hf_nanochat  # noqa: F401  (registers the model with the Auto classes)
    from transformers import AutoModelForCausalLM

    from hf_nanochat.data.chat_data import build_mixture
    from hf_nanochat.data.tokenizer import load_tokenizer
    from hf_nanochat.train.chat_optim import describe_optimizer
    from hf_nanochat.train.rewards import load_reward
    from hf_nanochat.train.sft import _latest_checkpoint, _launch_state, _resolve_local, save_final_model, trainer_precision_args

    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")  # rollout_func is TRL-experimental; pinned trl 1.16
    from trl import GRPOTrainer

    refuse_fsdp()
    state = _launch_state()
    precision_args = trainer_precision_args(cfg.precision, state.device)
    reward_fn = load_reward(cfg.reward)
    if tokenizer is None:
        tokenizer = load_tokenizer(_resolve_local(cfg.tokenizer or cfg.model))
    if model is None:
        model = AutoModelForCausalLM.from_pretrained(_resolve_local(cfg.model), dtype=torch.float32)
    if len(tokenizer) > model.config.vocab_size:
        raise ValueError(f"tokenizer has {len(tokenizer)} tokens but the model's vocabulary is {model.config.vocab_size}")

    if train_dataset is None:
        train_dataset = build_mixture(cfg.train_data, seed=cfg.seed)
    if eval_dataset is None and cfg.eval_data:
        eval_dataset = build_mixture(cfg.eval_data, seed=cfg.seed, shuffle=False)
    train_prompts = prompt_dataset(train_dataset)
    eval_records = list(prompt_dataset(eval_dataset).select(range(min(cfg.eval_examples, len(eval_dataset))))) if eval_dataset is not None else []

    args = grpo_args(cfg, state.num_processes, precision_args)
    rollout = EngineRollout(tokenizer, cfg.max_new_tokens, cfg.temperature, cfg.top_k,
                            cfg.rollout_batch_size or cfg.device_batch_size, cfg.seed)
    optimizer = build_rl_optimizer(model, cfg, state.device)
    trainer_ref: dict = {}
    callbacks = [pass_at_k_callback(trainer_ref, eval_records, cfg, reward_fn)] if eval_records else []
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=[trl_reward(reward_fn, tokenizer, cfg.reward_kwargs)],
        args=args,
        train_dataset=train_prompts,
        processing_class=tokenizer,
        rollout_func=rollout,
        optimizers=(optimizer, None),
        callbacks=callbacks,
    )
    trainer_ref["trainer"] = trainer
    num_steps = trainer.set_initial_training_values(args, trainer.get_train_dataloader())[-1]
    trainer.lr_scheduler = linear_decay(optimizer, num_steps)
    print(f"rl: {len(train_prompts):,} questions, {num_steps} steps of {cfg.examples_per_step} questions x "
          f"{cfg.num_samples} samples, {args.gradient_accumulation_steps} device batches of {cfg.device_batch_size} per process, "
          f"optimizer {describe_optimizer(cfg.optimizer, model.config)}"
          + (f", pass@1..{cfg.eval_num_samples} on {len(eval_records)} questions" if eval_records else ""), flush=True)

    last = _latest_checkpoint(Path(args.output_dir)) if cfg.resume else None
    if last is not None:
        print(f"resuming from {last}")
    result = trainer.train(resume_from_checkpoint=str(last) if last else None)
    history = trainer.state.log_history
    rewards = [h["reward"] for h in history if "reward" in h]
    metrics = {
        "stage": "rl", "num_processes": state.num_processes, "global_step": result.global_step, "train_loss": result.training_loss,
        "reward_first": rewards[0] if rewards else None, "reward_last": rewards[-1] if rewards else None,
        "pass_at_k": callbacks[0].history if callbacks else [], "log_history": history,
    }

    out = Path(cfg.output_dir)
    if trainer.is_world_process_zero():
        out.mkdir(parents=True, exist_ok=True)
    save_final_model(trainer, out)  # FSDP is refused above: save_pretrained with use_cache on
    if trainer.is_world_process_zero():
        tokenizer.save_pretrained(str(out))
        with open(out / "stage_config.yaml", "w", encoding="utf-8") as f:
            yaml.safe_dump(cfg.to_dict(), f, sort_keys=False)
        with open(out / "train_metrics.json", "w", encoding="utf-8") as f:
            json.dump(metrics, f, indent=2, default=float)
    return metrics


def main(argv: list[str] | None = None) -> int:
    """`train.py --config train_configs/rl.yaml [--key=value ...] [--resume]`."""
    from hf_nanochat.train.run_lock import run_lock
    from hf_nanochat.train.sft import read_stage_recipe

    raw = read_stage_recipe(argv, "RL stage (nanochat's chat_rl) on TRL's GRPOTrainer", "a train_configs/*.yaml with stage: rl")
    cfg = RLStageConfig.from_dict(raw)
    with run_lock(cfg.output_dir):  # a second run on this folder fails here, naming the first
        metrics = run_rl_stage(cfg)
    print(f"rl: done, {metrics['global_step']} steps, reward {metrics['reward_first']} -> {metrics['reward_last']} -> {raw['output_dir']}")
    return 0


__all__ = ["EngineRollout", "RLStageConfig", "evaluate_pass_at_k", "grpo_args", "main", "pass_at_k_counts", "prompt_dataset", "run_rl_stage", "trl_reward"]
