"""The hardware recipes of `hf-nanochat speedrun`: which configs each stage runs, on what machine.

Kept apart from the pipeline so the report (which reads a run's recipe back) and the
pipeline (which runs it) both import it without importing each other.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
CONFIG_DIRS = {"train": REPO_ROOT / "train_configs", "launch": REPO_ROOT / "accelerate_configs"}


@dataclass(frozen=True)
class Recipe:
    description: str
    launch_config: str  # accelerate_configs/<name>
    base: str  # train_configs/<name>
    mid: str | None  # None: no mid-training (nanochat 2026 goes base -> SFT), SFT starts from the base model
    sft: str
    rl: str = "rl.yaml"  # the optional RL stage (`--with-rl`)
    tokenizer_data: str = "karpathy/fineweb-edu-100b-shuffle"
    tokenizer_vocab_size: int = 65536
    tokenizer_max_chars: int = 2_000_000_000
    base_eval_batches: int | None = None  # None: the whole val split
    core_bundle: str | None = None  # `eval --bundle`: None = nanochat's eval_bundle (downloaded once, cached)
    core_max_per_task: int | None = None  # None: every example of every CORE task
    chat_tasks: tuple[str, ...] = ("ARC-Easy", "ARC-Challenge", "MMLU", "GSM8K", "HumanEval", "SpellingBee")
    chat_max_problems: int | None = None
    spelling_words: str = "english"  # SpellingBee's word list (hf_nanochat.data.chat_data.load_words)
    gpu: str | None = None  # name for the time estimate (peak FLOP/s table); None: CPU
    num_devices: int = 1
    dollars_per_hour: float = 0.0  # whole machine
    gpu_memory_gib: float | None = None  # declared memory per device; None: what the device has (CPU: RAM)
    # per_device_train_batch_size of the chat stages on this hardware: the largest that divides
    # the stage's target (tokens/conversations per step) and fits gpu_memory_gib by the planner
    # (hf_nanochat.train.stage_plan; tests/test_stage_plan.py checks each is the planner's pick).
    mid_device_batch: int | None = None  # None: the mid recipe's own
    sft_device_batch: int | None = None
    # nanochat 2026's SFT takes the base run's total batch (scripts/chat_sft.py reads it from the
    # checkpoint): set where it differs from the SFT recipe's tokens_per_step. None: the recipe's own.
    sft_tokens_per_step: int | None = None
    # `train.py` launched with this recipe's accelerate config and no --config trains this recipe's
    # base config; False where another recipe shares the launch config and keeps it (the 2026 ones)
    bare_launch_default: bool = True

    @property
    def chat_stages(self) -> tuple[str, ...]:
        return ("mid", "sft") if self.mid else ("sft",)

    def chat_config(self, stage: str) -> str:
        """The train_configs/ file of a chat stage this recipe runs."""
        if stage not in self.chat_stages:
            raise ValueError(f"this recipe has no {stage} stage (it runs {', '.join(self.chat_stages)})")
        return self.mid if stage == "mid" else self.sft


RECIPES: dict[str, Recipe] = {
    "tiny_cpu": Recipe(
        "a tiny model on 2 CPU cores, offline, in minutes: checks the whole pipeline",
        "cpu.yaml", "tiny_cpu.yaml", "mid_tiny_cpu.yaml", "sft_tiny_cpu.yaml", rl="rl_tiny_cpu.yaml",
        tokenizer_data="offline", tokenizer_vocab_size=4096, tokenizer_max_chars=3_000_000,
        base_eval_batches=16, chat_tasks=("SpellingBee",), chat_max_problems=16, spelling_words="bundled",
        # offline: the synthetic smoke bundle (NOT CORE, labelled so) exercises the CORE stage
        core_bundle="offline-smoke", core_max_per_task=16,
    ),
    "tiny_cpu_2026": Recipe(
        "tiny_cpu on nanochat's 2026 model, recipe and SFT (no mid-training), offline, in minutes",
        "cpu.yaml", "tiny_cpu_2026.yaml", None, "sft_2026_tiny_cpu.yaml", rl="rl_tiny_cpu.yaml",
        tokenizer_data="offline", tokenizer_vocab_size=4096, tokenizer_max_chars=3_000_000,
        base_eval_batches=16, chat_tasks=("SpellingBee",), chat_max_problems=16, spelling_words="bundled",
        core_bundle="offline-smoke", core_max_per_task=16,
        bare_launch_default=False,
    ),
    "p100": Recipe(
        "d12 in fp16 on one 16 GB P100 (the seed guide's speedrun_p100.sh)",
        "p100.yaml", "d12_p100.yaml", "mid.yaml", "sft.yaml", gpu="P100", dollars_per_hour=1.5,
        core_max_per_task=500,  # full CORE is ~3.5 h on a P100 (FLOPs estimate); 500/task (nanochat's -x) ~1/8 of it
        gpu_memory_gib=16, mid_device_batch=4, sft_device_batch=4,
    ),
    "single_gpu": Recipe(
        "d20 (561M) in bf16 on one A100/H100 80 GB", "single_gpu.yaml", "d20.yaml", "mid.yaml", "sft.yaml",
        gpu="H100", dollars_per_hour=3.0, gpu_memory_gib=80, mid_device_batch=16, sft_device_batch=16,
    ),
    "h100x8": Recipe(
        "the d20 speedrun in bf16 on 8x H100 with DDP", "multi_gpu.yaml", "d20.yaml", "mid.yaml", "sft.yaml",
        gpu="H100", num_devices=8, dollars_per_hour=24.0, gpu_memory_gib=80, mid_device_batch=8, sft_device_batch=4,
    ),
    "3b": Recipe(
        "d38 (3.02B) in bf16 with FSDP on 8 GPUs (the seed guide's run3b.sh)", "fsdp.yaml", "3b.yaml", "mid.yaml",
        "sft.yaml", gpu="H100", num_devices=8, dollars_per_hour=24.0, gpu_memory_gib=80, mid_device_batch=32, sft_device_batch=4,
    ),
    "7b": Recipe(
        "d52 (7.35B) in bf16 with FSDP on 8 GPUs (the seed guide's run7b.sh)", "fsdp.yaml", "7b.yaml", "mid.yaml",
        "sft.yaml", gpu="H100", num_devices=8, dollars_per_hour=24.0, gpu_memory_gib=80, mid_device_batch=16, sft_device_batch=4,
    ),
    # nanochat 2026 (architecture, MuonAdamW, recipe derived from depth, ClimbMix, best-fit rows;
    # base -> SFT, no mid-training). The SFT batch is the base run's, as chat_sft.py inherits it.
    "gpt2_speedrun": Recipe(
        "nanochat's 2026 GPT-2 speedrun: d24 at tokens:params 8 in bf16 on 8x H100 (runs/speedrun.sh)",
        "multi_gpu.yaml", "gpt2_speedrun_d24.yaml", None, "sft_2026.yaml", tokenizer_data="climbmix", tokenizer_vocab_size=32768,
        gpu="H100", num_devices=8, dollars_per_hour=24.0, gpu_memory_gib=80, sft_device_batch=8,
        bare_launch_default=False,
    ),
    "d12_2026": Recipe(
        "nanochat's 2026 d12 at tokens:params 12 in bf16 on one 80 GB GPU", "single_gpu.yaml", "d12_2026.yaml", None,
        "sft_2026.yaml", tokenizer_data="climbmix", tokenizer_vocab_size=32768, gpu="H100", dollars_per_hour=3.0,
        gpu_memory_gib=80, sft_device_batch=32, sft_tokens_per_step=2**19,
        bare_launch_default=False,
    ),
    "p100_2026": Recipe(
        "nanochat's 2026 d12 in fp16 on one 16 GB P100", "p100.yaml", "d12_2026_p100.yaml", None, "sft_2026.yaml",
        tokenizer_data="climbmix", tokenizer_vocab_size=32768, gpu="P100", dollars_per_hour=1.5, core_max_per_task=500,
        gpu_memory_gib=16, sft_device_batch=4, sft_tokens_per_step=2**19,
        bare_launch_default=False,
    ),
}
