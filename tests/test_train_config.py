"""Train configs: YAML <-> dataclass 1:1, command-line overrides, clear errors before any work."""
import argparse
from pathlib import Path

import pytest
import yaml

from hf_nanochat.train.pretrain import add_arguments, grad_accumulation_steps, resolve_horizon, train
from hf_nanochat.train.config import TrainConfig, config_from_dict, load_config, parse_overrides

CONFIGS = Path(__file__).resolve().parent.parent / "train_configs"
# stage: mid|sft recipes are SFTStageConfig files, checked in tests/test_sft.py
BASE_RECIPES = [p for p in sorted(CONFIGS.glob("*.yaml")) if (yaml.safe_load(p.read_text()) or {}).get("stage", "base") == "base"]


@pytest.mark.parametrize("path", BASE_RECIPES, ids=lambda p: p.stem)
def test_every_shipped_recipe_loads(path):
    config = load_config(path)
    assert config.stage == "base"
    assert config.total_batch_size % (config.device_batch_size * config.max_seq_len) == 0


def test_guide_batch_sizes_for_3b_and_7b():
    c3, c7 = load_config(CONFIGS / "3b.yaml"), load_config(CONFIGS / "7b.yaml")
    assert (c3.depth, c3.device_batch_size, c3.total_batch_size) == (38, 48, 786432)
    assert (c7.depth, c7.device_batch_size, c7.total_batch_size) == (52, 24, 393216)
    assert grad_accumulation_steps(786432, 48, 2048, 8) == 1 and grad_accumulation_steps(393216, 24, 2048, 8) == 1


def test_overrides_take_both_forms_and_yaml_scalars(tmp_path):
    yml = tmp_path / "c.yaml"
    yml.write_text("depth: 4\nmatrix_lr: 0.01\n")
    config = load_config(yml, ["--depth=6", "--compile", "true", "--embedding_lr=1e-3", "--log_with=tensorboard", "--tokenizer=null", "--total_batch_size=5e5"])
    assert config.depth == 6 and config.compile is True and config.embedding_lr == 1e-3
    assert config.matrix_lr == 0.01 and config.log_with == ["tensorboard"] and config.tokenizer is None
    assert config.total_batch_size == 500000 and isinstance(config.total_batch_size, int)
    assert load_config(None, {"device_batch_size": "auto"}).device_batch_size == "auto"
    assert load_config(None, {"matrix_lr": 1}).matrix_lr == 1.0


@pytest.mark.parametrize(
    "values,message",
    [
        ({"detph": 4}, r"unknown key\(s\) 'detph' \(did you mean 'depth'\?\)"),
        ({"depth": "twelve"}, "depth: expected an integer, got 'twelve'"),
        ({"depth": 4.5}, "depth: expected an integer"),
        ({"compile": "yes"}, "compile: expected true/false"),
        ({"precision": "fp8"}, r"precision: 'fp8' is not one of"),
        ({"device_batch_size": "big"}, "device_batch_size"),
        ({"stage": "rl"}, "stage"),
        ({"depth": 0}, "depth must be >= 1"),
        ({"warmdown_ratio": 1.5}, r"warmdown_ratio must be in \[0, 1\]"),
        ({"num_iterations": -1, "target_flops": -1, "target_param_data_ratio": 0}, "set a horizon"),
        ({"log_with": ["mlflowx"]}, "unknown trackers"),
        ({"loss_chunk_tokens": -1}, r"loss_chunk_tokens must be >= 0 \(0: off\)"),
        ({"architecture": 2027}, r"architecture: 2027 is not one of \['2025-11', '2026'\]"),
        ({"architecture": 2026}, "set optimizer: muon_adamw_2026 \\(or recipe: nanochat-2026, which picks it\\)"),
        ({"architecture": "2026", "recipe": "nanochat-2026", "optimizer": "muon"}, "optimizer 'muon' has no groups"),
        ({"sample_prompts": "hi"}, None),  # a single string on the command line becomes a list
    ],
)
def test_bad_values_are_clear_errors(values, message):
    if message is None:
        assert config_from_dict(values).sample_prompts == ["hi"]
        return
    with pytest.raises(ValueError, match=message):
        config_from_dict(values)


def test_yaml_errors_name_the_file(tmp_path):
    yml = tmp_path / "bad.yaml"
    yml.write_text("depth: 4\nlearning_rate: 0.1\n")
    with pytest.raises(ValueError, match="bad.yaml: unknown key"):
        load_config(yml)
    with pytest.raises(FileNotFoundError):
        load_config(tmp_path / "missing.yaml")
    with pytest.raises(ValueError, match="expected --key=value"):
        parse_overrides(["depth=4"])


def test_command_line_parser_knows_every_key():
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--config", "x.yaml", "--depth=4", "--output_dir", "runs/x", "--resume"])
    assert args.config == "x.yaml" and args.resume and args.override__depth == "4" and args.override__output_dir == "runs/x"
    with pytest.raises(SystemExit):
        parser.parse_args(["--dept=4"])  # argparse: unrecognized arguments
    assert {a.dest.removeprefix("override__") for a in parser._actions if a.dest.startswith("override__")} == set(TrainConfig.__dataclass_fields__)


def test_stages_not_built_here_say_so_before_any_work():
    for stage in ("mid", "sft"):
        with pytest.raises(NotImplementedError, match="TRL"):
            train(config_from_dict({"stage": stage}))


def test_accumulation_and_horizon():
    assert grad_accumulation_steps(524288, 32, 2048, 8) == 1
    assert grad_accumulation_steps(524288, 16, 2048, 1) == 16
    with pytest.raises(ValueError, match=r"not a multiple of .* 3 x 2048 x 8 = 49152"):
        grad_accumulation_steps(524288, 3, 2048, 8)
    params, fpt = 560_988_160, 3_491_758_080
    assert resolve_horizon(config_from_dict({"num_iterations": 7}), params, fpt) == (7, "num_iterations")
    steps, why = resolve_horizon(config_from_dict({"target_flops": 1e18}), params, fpt)
    assert steps == round(1e18 / (fpt * 524288)) and "target_flops" in why
    # nanochat's d20: 20 tokens per param at 524,288 tokens per step -> 21,400 steps.
    assert resolve_horizon(config_from_dict({}), params, fpt)[0] == 20 * params // 524288 == 21400


def test_architecture_reaches_the_model_config():
    # YAML and the command line read `2026` as a number; it is the architecture's name
    cfg = config_from_dict({"architecture": 2026, "optimizer": "muon_adamw_2026", "depth": 12, "max_seq_len": 1024})
    model = cfg.model_config(32768)
    assert cfg.architecture == "2026" and model.nanochat_architecture == "2026"
    assert (model.hidden_size, model.rope_theta, model.max_position_embeddings) == (768, 100000.0, 1024)
    assert config_from_dict({"architecture": "2026", "recipe": "nanochat-2026"}).architecture == "2026"  # the recipe picks the optimizer
    assert config_from_dict({}).model_config(65536).nanochat_architecture == "2025-11"
