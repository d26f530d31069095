"""Chat stages on TRL's SFTTrainer: packing isolation, 10-step SFT with and without LoRA, merge."""
import json

import pytest
import torch
from sft_helpers import assistant_loss, tiny_model, tiny_tokenizer
from datasets import Dataset

from hf_nanochat.data import chat_data
from hf_nanochat.train.sft import SFTStageConfig, run_sft_stage, tokenize_conversations


def _train_convs(n=32):
    return chat_data.build_mixture([{"source": "arithmetic", "size": n}], seed=0)


def _cfg(tmp_path, **over):
    raw = dict(
        stage="sft", model=str(tmp_path / "base"), output_dir=str(tmp_path / "out"), max_length=128,
        per_device_train_batch_size=4, max_steps=10, logging_steps=1, save_steps=1000, precision="fp32",
        optimizer="adamw", adamw_matrix_lr=0.01, init_lr_frac=1.0, warmdown_ratio=0.2,
        data={"train": [{"source": "arithmetic", "size": 32}]},
    )
    raw.update(over)
    return SFTStageConfig.from_dict(raw)


@pytest.fixture
def base_dir(tmp_path):
    model, tok = tiny_model(), tiny_tokenizer()
    model.save_pretrained(tmp_path / "base")
    tok.save_pretrained(tmp_path / "base")
    return tmp_path / "base"


def test_packed_batch_logits_equal_separate_forwards(tmp_path):
    """TRL's bfd packing puts several conversations in one row with position_ids restarting at 0;
    each document must see only itself (the model derives per-document masks from position_ids)."""
    from trl import SFTConfig, SFTTrainer

    tok, model = tiny_tokenizer(), tiny_model()
    data = tokenize_conversations(_train_convs(8), tok)
    args = SFTConfig(output_dir=str(tmp_path), use_cpu=True, bf16=False, activation_checkpointing=False, packing=True,
                     max_length=256, per_device_train_batch_size=1, report_to=[], shuffle_dataset=False)
    trainer = SFTTrainer(model=model, args=args, train_dataset=data, processing_class=tok)
    batch = next(iter(trainer.get_train_dataloader()))
    pos = batch["position_ids"][0]
    starts = (pos == 0).nonzero().flatten().tolist() + [len(pos)]
    assert len(starts) - 1 >= 3, "expected several documents in one packed row"
    model.eval()
    with torch.no_grad():
        packed = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"]).logits[0]
        for a, b in zip(starts[:-1], starts[1:]):
            alone = model(input_ids=batch["input_ids"][:, a:b]).logits[0]
            torch.testing.assert_close(packed[a:b], alone, atol=1e-5, rtol=1e-5)
        # and the check has teeth: without position_ids the later documents see the earlier ones
        leaky = model(input_ids=batch["input_ids"]).logits[0]
        assert (leaky[starts[1]:starts[2]] - packed[starts[1]:starts[2]]).abs().max() > 1e-3


@pytest.mark.parametrize("packing", [True, False])
def test_ten_step_sft_lowers_assistant_loss_and_saves_stage(tmp_path, base_dir, packing):
    from transformers import AutoModelForCausalLM

    from hf_nanochat.data.tokenizer import load_tokenizer

    from hf_nanochat.data.provenance import read_stage_records, write_stage_record

    tok = tiny_tokenizer()
    convs = _train_convs()["messages"]
    before = assistant_loss(AutoModelForCausalLM.from_pretrained(base_dir), tok, convs)
    write_stage_record(base_dir, "base", {"source": "offline", "files": 10})
    metrics = run_sft_stage(_cfg(tmp_path, packing=packing))
    assert metrics["global_step"] == 10
    out = tmp_path / "out"
    after_model = AutoModelForCausalLM.from_pretrained(out)
    after = assistant_loss(after_model, load_tokenizer(str(out)), convs)
    assert after < before - 0.5, (before, after)
    assert (out / "model.safetensors").exists() and (out / "modeling_nanochat_gpt.py").exists()
    assert after_model.config.use_cache  # TRL switches the cache off for training, not for the saved model
    assert json.loads((out / "train_metrics.json").read_text())["global_step"] == 10
    assert SFTStageConfig.from_yaml(out / "stage_config.yaml").packing == packing
    stages = read_stage_records(out)  # what each stage read, the base's record carried along
    assert list(stages) == ["base", "sft"] and stages["base"]["source"] == "offline"
    assert stages["sft"]["loss_tokens"] == "assistant" and stages["sft"]["train_conversations"] == 32
    assert [(r["source"], r["rows"], r["size"]) for r in stages["sft"]["train"]] == [("arithmetic", 32, 32)]


def test_mid_trains_on_every_token_and_sft_on_assistant_tokens(tmp_path):
    """nanochat's mid_train.py renders conversations and drops the mask (`ids, _ =
    tokenizer.render_conversation(conversation)`); chat_sft.py masks non-assistant targets."""
    from trl import SFTConfig, SFTTrainer

    assert SFTStageConfig.from_dict(dict(stage="mid", model="m", output_dir="o", data={"train": [{"source": "arithmetic"}]})).loss_tokens == "all"
    assert _cfg(tmp_path).loss_tokens == "assistant"
    tok, convs = tiny_tokenizer(), _train_convs(4)
    mid, sft = tokenize_conversations(convs, tok, loss_tokens="all"), tokenize_conversations(convs, tok)
    assert all(all(m) for m in mid["assistant_masks"]) and mid["input_ids"] == sft["input_ids"]
    assert all(0 < sum(m) < len(m) for m in sft["assistant_masks"])
    args = SFTConfig(output_dir=str(tmp_path), use_cpu=True, bf16=False, packing=False, max_length=256,
                     per_device_train_batch_size=4, report_to=[], shuffle_dataset=False)
    for data, every in ((mid, True), (sft, False)):
        batch = next(iter(SFTTrainer(model=tiny_model(), args=args, train_dataset=data, processing_class=tok).get_train_dataloader()))
        real = batch["attention_mask"].bool() if "attention_mask" in batch else torch.ones_like(batch["labels"], dtype=torch.bool)
        supervised = (batch["labels"] != -100) & real
        assert bool((supervised == real).all()) == every  # TRL takes the loss where our mask says


def test_sft_keeps_muon_momentum_constant_mid_ramps_it_and_neither_clips(tmp_path):
    from hf_nanochat.train.sft import NanochatSchedule, build_stage_optimizer

    mid = SFTStageConfig.from_dict(dict(stage="mid", model="m", output_dir="o", data={"train": [{"source": "arithmetic"}]}))
    sft = _cfg(tmp_path, optimizer="muon")
    assert (mid.muon_momentum_ramp, sft.muon_momentum_ramp) == (True, False)
    assert mid.max_grad_norm == sft.max_grad_norm == 0.0  # Trainer clips only when > 0
    for cfg, expected in ((mid, [0.85, 0.85 + 0.1 / 300, 0.85 + 0.2 / 300]), (sft, [0.95, 0.95, 0.95])):
        opt = build_stage_optimizer(tiny_model(), cfg, torch.device("cpu"))
        schedule = NanochatSchedule(opt, 100, 0.2, momentum_ramp=cfg.muon_momentum_ramp)
        seen = []
        for _ in range(3):
            seen.append(next(g["momentum"] for g in opt.param_groups if g["kind"] == "muon"))
            opt.step()
            schedule.step()
        assert seen == pytest.approx(expected)


def test_muon_stage_follows_nanochat_schedule(tmp_path, base_dir):
    from hf_nanochat.train.optim import lr_multiplier

    metrics = run_sft_stage(_cfg(tmp_path, optimizer="muon", matrix_lr=0.02, max_steps=10, warmdown_ratio=0.5, init_lr_frac=0.5))
    lrs = [h["learning_rate"] for h in metrics["log_history"] if "learning_rate" in h]
    # logged LR is group 0's: unembedding 0.004 * (64/768)**-0.5 * init_lr_frac, flat then linear warmdown
    base = 0.004 * (64 / 768) ** -0.5 * 0.5
    assert lrs == pytest.approx([base * lr_multiplier(s, 10, warmdown_ratio=0.5) for s in range(10)], rel=1e-4)
    losses = [h["loss"] for h in metrics["log_history"] if "loss" in h]
    assert losses[-1] < losses[0] - 1.0


def test_lora_stage_trains_adapters_only_and_merge_matches(tmp_path, base_dir):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from hf_nanochat.share.merge import merge_adapter

    tok = tiny_tokenizer()
    convs = _train_convs()["messages"]
    base = AutoModelForCausalLM.from_pretrained(base_dir)
    before = assistant_loss(base, tok, convs)
    run_sft_stage(_cfg(tmp_path, peft={"r": 8, "alpha": 16, "target_modules": ["c_q", "c_v", "c_proj", "c_fc"]}, learning_rate=2e-2))
    out = tmp_path / "out"
    assert (out / "adapter_model.safetensors").exists() and not (out / "model.safetensors").exists()
    adapter_cfg = json.loads((out / "adapter_config.json").read_text())
    assert set(adapter_cfg["target_modules"]) == {"c_q", "c_v", "c_proj", "c_fc"}

    adapted = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir), out)
    after = assistant_loss(adapted, tok, convs)
    assert after < before - 0.3, (before, after)

    merged = merge_adapter(str(out), str(tmp_path / "merged"))
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    x = torch.tensor([tok.encode("What is 12 + 30? Let me use the calculator")])
    with torch.no_grad():
        ref = adapted.eval()(input_ids=x).logits
        torch.testing.assert_close(merged.eval()(input_ids=x).logits, ref, atol=1e-5, rtol=0)
        torch.testing.assert_close(reloaded.eval()(input_ids=x).logits, ref, atol=1e-5, rtol=0)
        # the base is untouched by training: the adapter is what changed the outputs
        assert (base.eval()(input_ids=x).logits - ref).abs().max() > 1e-3


def test_stage_config_rejects_bad_recipes(tmp_path):
    with pytest.raises(ValueError, match="unknown keys"):
        _cfg(tmp_path, learning_rat=1)
    with pytest.raises(ValueError, match="LoRA adapters train with optimizer: adamw"):
        _cfg(tmp_path, optimizer="muon", peft={"r": 4})
    with pytest.raises(ValueError, match="nanochat layer names"):
        _cfg(tmp_path, peft={"target_modules": ["q_proj"]})
    with pytest.raises(ValueError, match="stage must be"):
        _cfg(tmp_path, stage="rl")


def test_lora_on_untrained_base_is_refused(tmp_path):
    model, tok = tiny_model(pretrained_like=False), tiny_tokenizer()
    with pytest.raises(ValueError, match="all-zero lm_head"):
        run_sft_stage(_cfg(tmp_path, peft={"r": 4}), model=model, tokenizer=tok, train_dataset=Dataset.from_dict({"messages": _train_convs(4)["messages"]}))


@pytest.mark.parametrize("name", ["mid.yaml", "sft.yaml", "mid_tiny_cpu.yaml", "sft_tiny_cpu.yaml", "sft_2026.yaml", "sft_2026_tiny_cpu.yaml"])
def test_recipes_parse(name):
    from pathlib import Path

    cfg = SFTStageConfig.from_yaml(Path(__file__).parent.parent / "train_configs" / name)
    assert cfg.stage in ("mid", "sft") and cfg.train_data
    if "tiny" in name:  # CI recipes must run offline: synthetic sources only
        assert {s["source"] for s in cfg.train_data + cfg.eval_data} <= {"arithmetic", "identity", "spelling_bee", "simple_spelling"}


def test_tiny_recipe_runs_through_main_with_overrides(tmp_path, base_dir):
    from pathlib import Path

    from hf_nanochat.train.sft import main

    recipe = Path(__file__).parent.parent / "train_configs" / "sft_tiny_cpu.yaml"
    assert main(["--config", str(recipe), f"--model={base_dir}", f"--output_dir={tmp_path / 'sft'}", "--max_steps=3"]) == 0
    assert json.loads((tmp_path / "sft" / "train_metrics.json").read_text())["global_step"] == 3


def test_train_py_dispatches_chat_stages(tmp_path, base_dir):
    """`train.py --config <stage: sft recipe>` runs the TRL stage (same entry point as pretraining)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).parent.parent
    out = tmp_path / "sft"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, str(root / "train.py"), "--config", str(root / "train_configs" / "sft_tiny_cpu.yaml"), f"--model={base_dir}", f"--output_dir={out}", "--max_steps=2"],
        capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((out / "train_metrics.json").read_text())["global_step"] == 2
    assert "sft: done, 2 steps" in proc.stdout
