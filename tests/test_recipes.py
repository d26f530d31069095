"""The shipped mid-training and SFT recipes carry nanochat's numbers (sft_2026.yaml: master's).

Each expected value names where nanochat states it. Read from karpathy/nanochat at 6383d5d (the
store's copy of the Nov 2025 scripts, black-formatted, so statements are quoted rather than
line numbers given), tasks/*.py at the same commit (tasks/mmlu.py:84 and tasks/smoltalk.py:17:
`load_dataset(...).shuffle(seed=42)`), tasks/common.py (`TaskMixture`: `random.Random(42).shuffle`).
"""
from pathlib import Path

import pytest

from hf_nanochat.train.sft import SFTStageConfig, accumulation_steps

RECIPES = Path(__file__).parent.parent / "train_configs"


def _load(name: str) -> SFTStageConfig:
    return SFTStageConfig.from_yaml(RECIPES / name)


def _sources(specs):
    return [{k: v for k, v in s.items() if k != "words"} for s in specs]


def test_mid_recipe_is_nanochats_mid_train():
    cfg = _load("mid.yaml")
    assert cfg.stage == "mid"
    # scripts/mid_train.py, mid_data_generator: `ids, _ = tokenizer.render_conversation(conversation)`
    # (the mask is dropped: every token is a target)
    assert cfg.loss_tokens == "all"
    # scripts/mid_train.py, train_dataset = TaskMixture([...]) (in this order there):
    assert _sources(cfg.train_data) == [
        {"source": "smoltalk", "split": "train"},  # SmolTalk(split="train"), 460K rows
        {"source": "mmlu", "subset": "auxiliary_train", "split": "train"},  # MMLU(subset="auxiliary_train", split="train")
        {"source": "gsm8k", "subset": "main", "split": "train"},  # GSM8K(subset="main", split="train")
        {"source": "identity", "path": "identity_conversations.jsonl", "repeat": 2},  # CustomJSON(identity...) twice
        {"source": "simple_spelling", "size": 200_000},  # SimpleSpelling(size=200000, split="train")
        {"source": "spelling_bee", "size": 80_000},  # SpellingBee(size=80000, split="train")
    ]
    # scripts/mid_train.py, val_dataset = TaskMixture([...]):
    assert _sources(cfg.eval_data) == [
        {"source": "smoltalk", "split": "test"},  # SmolTalk(split="test"), 24K rows
        {"source": "mmlu", "subset": "all", "split": "test", "stop": 5200},  # MMLU(..., stop=5200)
        {"source": "gsm8k", "subset": "main", "split": "test", "stop": 420},  # GSM8K(..., stop=420)
    ]
    # scripts/mid_train.py hyperparameters: matrix_lr = 0.02, embedding_lr = 0.2,
    # unembedding_lr = 0.004, init_lr_frac = 1.0, weight_decay = 0.0, max_seq_len = 2048,
    # eval_every = 150; get_lr_multiplier: `1 if progress < 0.8 else 1 - (progress - 0.8) / 0.2`
    assert (cfg.matrix_lr, cfg.embedding_lr, cfg.unembedding_lr, cfg.init_lr_frac, cfg.weight_decay) == (0.02, 0.2, 0.004, 1.0, 0.0)
    assert (cfg.warmdown_ratio, cfg.max_length, cfg.eval_steps, cfg.num_epochs) == (0.2, 2048, 150, 1)
    # total_batch_size = 524288 tokens per step, whatever the GPU count: accumulation is derived
    # (8 GPUs x 16 rows x 2048 tokens x 2 steps, or 1 GPU x 16 rows x 2048 x 16 steps)
    assert cfg.tokens_per_step == 524_288
    assert [accumulation_steps(cfg, world) for world in (8, 1)] == [2, 16]
    # get_muon_momentum: 0.85 -> 0.95 over 300 steps; no clip_grad_norm anywhere in the script
    assert cfg.muon_momentum_ramp is True and cfg.max_grad_norm == 0.0
    assert cfg.seed == 42  # tasks/common.py TaskMixture: random.Random(42)


def test_sft_recipe_is_nanochats_chat_sft():
    cfg = _load("sft.yaml")
    assert cfg.stage == "sft" and cfg.loss_tokens == "assistant"  # chat_sft.py: row_targets[mask_tensor == 0] = -1
    # scripts/chat_sft.py, train_ds = TaskMixture([...]):
    assert _sources(cfg.train_data) == [
        {"source": "arc", "subset": "ARC-Easy", "split": "train"},  # ARC(subset="ARC-Easy", split="train"), 2.3K
        {"source": "arc", "subset": "ARC-Challenge", "split": "train"},  # 1.1K
        {"source": "gsm8k", "subset": "main", "split": "train"},  # 8K
        {"source": "smoltalk", "split": "train", "stop": 10_000},  # SmolTalk(split="train", stop=10_000), after its seed-42 shuffle
        {"source": "identity", "path": "identity_conversations.jsonl"},  # CustomJSON(identity...) once
        {"source": "simple_spelling", "size": 300},  # SimpleSpelling(size=300, split="train")
        {"source": "spelling_bee", "size": 300},  # SpellingBee(size=300, split="train")
    ]
    assert [s["source"] for s in cfg.eval_data] == ["smoltalk"] and cfg.eval_data[0]["split"] == "test"  # val_ds = SmolTalk(split="test")
    # scripts/chat_sft.py: init_lr_frac = 0.02, num_epochs = 1, device_batch_size = 4,
    # target_examples_per_step = 32, eval_every = 100; get_lr_multiplier: lrm = 1.0 - it / num_iterations
    assert (cfg.init_lr_frac, cfg.num_epochs, cfg.warmdown_ratio, cfg.eval_steps) == (0.02, 1, 1.0, 100)
    assert cfg.conversations_per_step == 32  # 8 GPUs x 4 x 1 step, or 1 GPU x 4 x 8 steps
    assert [accumulation_steps(cfg, world) for world in (8, 1)] == [1, 8]
    assert (cfg.matrix_lr, cfg.embedding_lr, cfg.unembedding_lr, cfg.weight_decay) == (0.02, 0.2, 0.004, 0.0)
    # chat_sft.py never schedules Muon momentum (stays at its 0.95) and never clips gradients
    assert cfg.muon_momentum_ramp is False and cfg.max_grad_norm == 0.0
    assert cfg.packing is False  # chat_sft.py pads one conversation per row


def test_sft_2026_recipe_is_nanochat_masters_chat_sft():
    """nanochat master's SFT (no mid stage since 2026), read from scripts/chat_sft.py at 00255c1;
    line numbers are that file's."""
    cfg = _load("sft_2026.yaml")
    assert cfg.stage == "sft" and cfg.loss_tokens == "assistant"  # ~297: targets[mask_targets == 0] = -1
    assert cfg.optimizer == "muon_adamw_2026"  # model.setup_optimizer of the 2026 GPT (line 134)
    # lines 165-173, train_tasks in this order; --mmlu-epochs 3 (67), --gsm8k-epochs 4 (68)
    assert _sources(cfg.train_data) == [
        {"source": "smoltalk", "split": "train"},  # SmolTalk(split="train")
        {"source": "identity", "path": "identity_conversations.jsonl", "repeat": 2},  # CustomJSON(identity) twice
        {"source": "mmlu", "subset": "all", "split": "auxiliary_train", "repeat": 3},  # MMLU(subset="all", split="auxiliary_train") x3
        {"source": "gsm8k", "subset": "main", "split": "train", "repeat": 4},  # GSM8K(subset="main", split="train") x4
        {"source": "simple_spelling", "size": 200_000},  # SimpleSpelling(size=200000, split="train")
        {"source": "spelling_bee", "size": 80_000},  # SpellingBee(size=80000, split="train")
    ]
    assert _sources(cfg.eval_data) == [  # lines 176-180
        {"source": "smoltalk", "split": "test"},
        {"source": "mmlu", "subset": "all", "split": "test", "stop": 5200},
        {"source": "gsm8k", "subset": "main", "split": "test", "stop": 420},
    ]
    # --init-lr-frac 0.8 (56) on every group (160); warmup 0.0 (57), --warmdown-ratio 0.5 (58) to
    # --final-lr-frac 0.0 (59): our schedule is flat then linear to 0; one epoch (--num-iterations -1)
    assert (cfg.init_lr_frac, cfg.warmdown_ratio, cfg.num_epochs) == (0.8, 0.5, 1)
    # LRs inherited from the base run's user_config (100-106): base_train.py defaults matrix 0.02,
    # embedding 0.3, unembedding 0.008; scalar_lr not passed (setup_optimizer's 0.5); Muon weight_decay=0.0 (134)
    assert (cfg.matrix_lr, cfg.embedding_lr, cfg.unembedding_lr, cfg.scalar_lr, cfg.weight_decay) == (0.02, 0.3, 0.008, 0.5, 0.0)
    # max_seq_len 2048 (101) in packed best-fit rows; the base run's total batch (103): 2**20 at d24
    assert (cfg.max_length, cfg.packing, cfg.tokens_per_step) == (2048, True, 2**20)
    assert [accumulation_steps(cfg, world) for world in (8, 1)] == [4, 32]
    # get_muon_momentum: 0.85 -> 0.95 over 300 steps, set every step; no clipping; --eval-every 200 (61)
    assert cfg.muon_momentum_ramp is True and cfg.max_grad_norm == 0.0 and cfg.eval_steps == 200


def test_sft_2026_tiny_recipe_is_the_full_one_at_toy_scale():
    full, tiny = _load("sft_2026.yaml"), _load("sft_2026_tiny_cpu.yaml")
    keys = ("optimizer", "matrix_lr", "embedding_lr", "unembedding_lr", "scalar_lr", "weight_decay", "init_lr_frac",
            "warmdown_ratio", "muon_momentum_ramp", "loss_tokens", "packing", "max_grad_norm")
    assert [getattr(tiny, k) for k in keys] == [getattr(full, k) for k in keys]


@pytest.mark.parametrize("name", ["mid.yaml", "sft.yaml", "sft_2026.yaml"])
def test_full_recipes_use_the_real_word_list(name):
    spelling = [s for s in _load(name).train_data if s["source"] in ("spelling_bee", "simple_spelling")]
    assert spelling and all(s.get("words", "english") == "english" for s in spelling)


@pytest.mark.parametrize("name", ["mid_tiny_cpu.yaml", "sft_tiny_cpu.yaml", "sft_2026_tiny_cpu.yaml"])
def test_offline_recipes_keep_the_synthetic_identity_and_small_word_list(name):
    cfg = _load(name)
    for spec in cfg.train_data + cfg.eval_data:
        if spec["source"] == "identity":
            assert "path" not in spec and spec["size"] > 0
        if spec["source"] in ("spelling_bee", "simple_spelling"):
            assert spec["words"] == "bundled"
