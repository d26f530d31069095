"""Chat stages state their batch as nanochat does (tokens per mid step, conversations per SFT
step); gradient accumulation is derived from device batch x world size, so one GPU runs the
same recipe as eight."""
from pathlib import Path

import pytest
from sft_helpers import tiny_model, tiny_tokenizer

from hf_nanochat.data import chat_data
from hf_nanochat.train.sft import SFTStageConfig, accumulation_steps, describe_batch, run_sft_stage

CONFIGS = Path(__file__).parent.parent / "train_configs"


def _cfg(**over):
    raw = dict(stage="sft", model="unused", output_dir="unused", data={"train": [{"source": "arithmetic", "size": 8}]})
    raw.update(over)
    return SFTStageConfig.from_dict(raw)


def test_shipped_recipes_state_nanochats_targets():
    mid, sft = SFTStageConfig.from_yaml(CONFIGS / "mid.yaml"), SFTStageConfig.from_yaml(CONFIGS / "sft.yaml")
    assert mid.tokens_per_step == 524_288  # nanochat scripts/mid_train.py total_batch_size
    assert sft.conversations_per_step == 32  # nanochat scripts/chat_sft.py target_examples_per_step
    assert mid.gradient_accumulation_steps is None and sft.gradient_accumulation_steps is None
    # 8 GPUs and 1 GPU: the same tokens per step, 8x the accumulation
    assert accumulation_steps(mid, 8) == 2 and accumulation_steps(mid, 1) == 16
    assert accumulation_steps(sft, 8) == 1 and accumulation_steps(sft, 1) == 8
    assert describe_batch(mid, 1) == "524,288 tokens/step = 16 rows x 2048 x 1 x 16 grad-accumulation steps"


def test_accumulation_rules_and_errors():
    assert accumulation_steps(_cfg(packing=False, per_device_train_batch_size=4, conversations_per_step=32), 2) == 4
    assert accumulation_steps(_cfg(packing=True, max_length=128, per_device_train_batch_size=2, tokens_per_step=1024), 1) == 4
    assert accumulation_steps(_cfg(gradient_accumulation_steps=3), 4) == 3 and accumulation_steps(_cfg(), 4) == 1
    with pytest.raises(ValueError, match="conversations_per_step 32 is not a multiple of .* = 12; pick a per_device_train_batch_size"):
        accumulation_steps(_cfg(packing=False, per_device_train_batch_size=3, conversations_per_step=32), 4)
    with pytest.raises(ValueError, match="tokens_per_step 1,000 is not a multiple"):
        accumulation_steps(_cfg(packing=True, max_length=128, per_device_train_batch_size=2, tokens_per_step=1000), 1)
    with pytest.raises(ValueError, match="set one of"):
        _cfg(packing=False, conversations_per_step=32, gradient_accumulation_steps=2)
    with pytest.raises(ValueError, match="needs packing: true"):
        _cfg(packing=False, tokens_per_step=1024)
    with pytest.raises(ValueError, match="needs packing: false"):
        _cfg(packing=True, conversations_per_step=32)


def test_the_derived_accumulation_is_what_the_trainer_runs(tmp_path, capsys):
    """32 conversations, 8 per step at device batch 2: 4 optimizer steps (accumulation 4), not 16."""
    model, tok = tiny_model(), tiny_tokenizer()
    cfg = SFTStageConfig.from_dict(dict(
        stage="sft", model="unused", output_dir=str(tmp_path / "out"), max_length=128, packing=False,
        per_device_train_batch_size=2, conversations_per_step=8, num_epochs=1, logging_steps=1, save_steps=1000,
        precision="fp32", optimizer="adamw", data={"train": [{"source": "arithmetic", "size": 32}]},
    ))
    data = chat_data.build_mixture(cfg.train_data, seed=0)
    metrics = run_sft_stage(cfg, model=model, tokenizer=tok, train_dataset=data)
    assert metrics["global_step"] == 4
    assert "sft: batch 8 conversations/step = 2 x 1 x 4 grad-accumulation steps" in capsys.readouterr().out
