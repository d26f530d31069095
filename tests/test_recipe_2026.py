"""nanochat's 2026 recipe derived from depth (hf_nanochat.train.recipe_2026): the shape-derived
parameter counts, the speedrun's and the d12's numbers, overrides, schedules and the config
wiring. Reference numbers: nanochat runs/speedrun.sh (d24, --target-param-data-ratio=8) and
scripts/base_train.py (d12 at the default ratio 12)."""
import math

import pytest

from hf_nanochat.train.config import load_config
from hf_nanochat.train.recipe_2026 import (
    DERIVED_KEYS, architecture_2026_counts, derive_recipe, format_recipe, lr_multiplier_2026, model_scaling_params,
    muon_momentum_2026, scaling_params, weight_decay_multiplier,
)


def test_counts_from_the_2026_shapes():
    d12, d24 = architecture_2026_counts(12), architecture_2026_counts(24)
    assert d12["width"] == 768 and d24["width"] == 1536
    # 12 layers x 12 C^2 + 6 ve_gates (6 kv heads x 12): nanochat logs 84,935,088 at d12
    assert d12["transformer_matrices"] == 12 * 12 * 768**2 + 6 * 6 * 12 == 84_935_088
    assert d12["lm_head"] == 32768 * 768 == 25_165_824
    assert scaling_params(d12) == 110_100_912
    assert d24["transformer_matrices"] == 24 * 12 * 1536**2 + 12 * 12 * 12 == 679_478_976
    assert d24["lm_head"] == 32768 * 1536
    assert scaling_params(d24) == 729_810_624
    assert architecture_2026_counts(8)["transformer_matrices"] == 25_166_016  # d8, 4 ve layers x 4 heads x 12
    assert architecture_2026_counts(4, vocab_size=100)["lm_head"] == 128 * 256  # rows padded to 64
    # value embeddings / wte / scalars are outside N
    assert d12["value_embeds"] == 6 * 32768 * 768 and d12["wte"] == 32768 * 768


def _values(derived):
    return {k: d.value for k, d in derived.items()}


def test_speedrun_d24_ratio_8_gives_2_pow_20_tokens_and_5568_steps():
    ref = scaling_params(architecture_2026_counts(12))
    v = _values(derive_recipe(scaling_params(architecture_2026_counts(24)), ref, {"target_param_data_ratio": 8.0}))
    assert v["total_batch_size"] == 2**20
    assert v["num_iterations"] == 5568
    bs = math.sqrt(2)
    assert v["_batch_lr_scale"] == pytest.approx(bs)
    assert v["matrix_lr"] == pytest.approx(0.02 * bs) and v["embedding_lr"] == pytest.approx(0.3 * bs)
    assert v["unembedding_lr"] == pytest.approx(0.008 * bs) and v["scalar_lr"] == pytest.approx(0.5 * bs)
    assert v["weight_decay"] == pytest.approx(0.28 * bs * 110_100_912 / 729_810_624)
    assert (v["warmup_steps"], v["warmdown_ratio"], v["final_lr_frac"], v["grad_clip"]) == (40, 0.65, 0.05, 0.0)
    assert (v["muon_momentum_start"], v["muon_momentum_end"], v["muon_momentum_ramp_steps"], v["muon_momentum_warmdown"]) == (0.85, 0.97, 400, 0.90)
    assert v["optimizer"] == "muon_adamw_2026" and v["weight_decay_schedule"] == "cosine"


def test_d12_default_ratio_gives_2_pow_19_and_2520_steps():
    n = scaling_params(architecture_2026_counts(12))
    derived = derive_recipe(n, n)
    v = _values(derived)
    assert v["target_param_data_ratio"] == 12.0
    assert v["total_batch_size"] == 2**19 and v["num_iterations"] == 2520
    assert v["matrix_lr"] == 0.02 and v["weight_decay"] == pytest.approx(0.28)
    # every number says where it came from
    assert derived["total_batch_size"].source.startswith("2**round(log2(2**19")
    lines = format_recipe(derived)
    assert any("total_batch_size" in l and "524,288" in l for l in lines)
    assert any("num_iterations" in l and "2,520" in l and "D // batch" in l for l in lines)


def test_overrides_are_taken_as_given_and_dependents_follow():
    ref = scaling_params(architecture_2026_counts(12))
    n24 = scaling_params(architecture_2026_counts(24))
    derived = derive_recipe(n24, ref, {"target_param_data_ratio": 8.0, "total_batch_size": 2**19, "matrix_lr": 0.05})
    v = _values(derived)
    assert v["total_batch_size"] == 2**19 and derived["total_batch_size"].source == "set in the train config"
    assert v["num_iterations"] == int(8 * n24) // 2**19  # steps follow the given batch
    assert v["_batch_lr_scale"] == 1.0 and v["embedding_lr"] == pytest.approx(0.3)  # bs from the given batch
    assert v["matrix_lr"] == 0.05
    assert v["weight_decay"] == pytest.approx(0.28 * ref / n24)
    assert _values(derive_recipe(n24, ref, {"num_iterations": 10}))["num_iterations"] == 10
    with pytest.raises(ValueError, match="does not derive"):
        derive_recipe(n24, ref, {"depth": 3})
    with pytest.raises(ValueError, match="steps"):
        derive_recipe(1000, ref, {"target_param_data_ratio": 1.0, "total_batch_size": 2**20})


def test_schedules_are_base_trains():
    T = 1000  # warmdown = 650 steps, from step 350
    assert lr_multiplier_2026(0, T) == pytest.approx(1 / 40)
    assert lr_multiplier_2026(39, T) == 1.0 and lr_multiplier_2026(350, T) == 1.0
    assert lr_multiplier_2026(675, T) == pytest.approx(0.5 + 0.5 * 0.05)
    assert lr_multiplier_2026(1000, T) == pytest.approx(0.05)
    assert muon_momentum_2026(0, T) == pytest.approx(0.85)
    assert muon_momentum_2026(200, T) == pytest.approx(0.91)
    assert muon_momentum_2026(400, T) == pytest.approx(0.97 - 0.07 * 50 / 650)  # already in the warmdown
    assert muon_momentum_2026(400, 10_000) == 0.97
    assert muon_momentum_2026(1000, T) == pytest.approx(0.90)
    assert weight_decay_multiplier(0, T) == 1.0 and weight_decay_multiplier(500, T) == pytest.approx(0.5)
    assert weight_decay_multiplier(1000, T) == pytest.approx(0.0, abs=1e-12)
    assert weight_decay_multiplier(500, T, "constant") == 1.0


def test_config_records_what_it_set_and_rejects_stray_fixed_keys(tmp_path):
    yml = tmp_path / "r.yaml"
    yml.write_text("recipe: nanochat-2026\ndepth: 24\ntarget_param_data_ratio: 8\n")
    cfg = load_config(yml, ["--total_batch_size=262144"])
    assert cfg.recipe_fixed == ["target_param_data_ratio", "total_batch_size"]
    assert set(cfg.recipe_fixed) <= set(DERIVED_KEYS) and "depth" not in DERIVED_KEYS
    with pytest.raises(ValueError, match="recipe_fixed"):
        load_config(yml, ["--recipe_fixed=depth"])
    with pytest.raises(ValueError, match="not both"):
        load_config(None, {"warmup_steps": 10, "warmup_ratio": 0.1})
    assert load_config(None, {"optimizer": "muon_adamw_2026"}).optimizer == "muon_adamw_2026"


def test_scaling_params_of_a_built_model_match_the_count_rule():
    import torch

    from hf_nanochat import NanoChatGPTConfig, NanoChatGPTForCausalLM

    with torch.device("meta"):
        model = NanoChatGPTForCausalLM(NanoChatGPTConfig.from_depth(4, vocab_size=256, max_position_embeddings=64))
    blocks = sum(p.numel() for p in model.transformer.h.parameters())
    assert model_scaling_params(model) == blocks + model.lm_head.weight.numel()


@pytest.mark.parametrize("name, batch, steps", [("gpt2_speedrun_d24.yaml", 2**20, 5568), ("d12_2026.yaml", 2**19, 2520)])
def test_shipped_2026_recipes_give_nanochats_numbers(name, batch, steps):
    from pathlib import Path

    cfg = load_config(Path(__file__).resolve().parents[1] / "train_configs" / name)
    assert cfg.recipe == "nanochat-2026" and cfg.dataset == "climbmix" and cfg.packing == "best_fit"
    counts = architecture_2026_counts(cfg.depth, cfg.tokenizer_vocab_size)
    ref = scaling_params(architecture_2026_counts(12, cfg.tokenizer_vocab_size))
    v = _values(derive_recipe(scaling_params(counts), ref, {k: getattr(cfg, k) for k in cfg.recipe_fixed}))
    assert (v["total_batch_size"], v["num_iterations"]) == (batch, steps)
    assert batch % (cfg.device_batch_size * cfg.max_seq_len) == 0
