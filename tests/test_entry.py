"""train.py without --config: the recipe of the launch config it was started with, or a clear stop."""
import pytest

from hf_nanochat.train import entry


def _env(mixed, world=None, fsdp=False, cpu=False):
    env = {"ACCELERATE_MIXED_PRECISION": mixed, "ACCELERATE_USE_CPU": str(cpu), "ACCELERATE_USE_FSDP": str(fsdp).lower()}
    return {**env, "WORLD_SIZE": str(world)} if world else env


@pytest.mark.parametrize("env,recipe,launch", [
    (_env("fp16"), "d12_p100.yaml", "p100.yaml"),  # the design card's command
    (_env("bf16"), "d20.yaml", "single_gpu.yaml"),
    (_env("bf16", world=8), "d20.yaml", "multi_gpu.yaml"),
    (_env("no", cpu=True), "tiny_cpu.yaml", "cpu.yaml"),
])
def test_the_launch_config_names_the_recipe(env, recipe, launch):
    path, why = entry.default_base_config(env)
    assert path.name == recipe and path.exists()
    assert f"launched like accelerate_configs/{launch}" in why and f"train_configs/{recipe}" in why


def test_a_launch_shared_with_a_2026_recipe_keeps_its_recipe_and_names_the_other():
    _, why = entry.default_base_config(_env("fp16"))
    assert why.endswith("train_configs/d12_p100.yaml (also for this launch: --config train_configs/d12_2026_p100.yaml)")


@pytest.mark.parametrize("env,message", [
    (_env("bf16", world=8, fsdp=True), r"matches several recipes \(3b.yaml, 7b.yaml\); pass --config"),
    (_env("no", world=2), "matches no speedrun recipe; pass --config"),  # cpu_ddp.yaml: no speedrun recipe uses it
])
def test_anything_else_stops_with_the_list_of_recipes(env, message):
    with pytest.raises(SystemExit, match=message) as err:
        entry.default_base_config(env)
    assert "accelerate launch --config_file accelerate_configs/p100.yaml train.py --config train_configs/d12_p100.yaml" in str(err.value)


def test_plain_python_keeps_the_defaults_and_overrides():
    assert entry.default_base_config({}) is None  # `python train.py --depth=2 ...` as before


def test_overrides_without_config_compose_a_run_from_the_defaults(monkeypatch):
    seen = []
    monkeypatch.setattr("os.environ", {**_env("no", world=2)})  # would match no recipe
    import hf_nanochat.train.pretrain as pretrain

    monkeypatch.setattr(pretrain, "main", lambda argv: seen.append(argv) or 0)
    assert entry.main(["--depth=2", "--output_dir=runs/x"]) == 0 and seen == [["--depth=2", "--output_dir=runs/x"]]


def test_main_runs_the_picked_recipe_and_says_so(monkeypatch, capsys):
    seen = []
    monkeypatch.setattr("os.environ", {**_env("fp16")})
    import hf_nanochat.train.pretrain as pretrain

    monkeypatch.setattr(pretrain, "main", lambda argv: seen.append(argv) or 0)
    assert entry.main(["--output_dir=runs/x"]) == 0
    assert seen[0][0] == "--config" and seen[0][1].endswith("train_configs/d12_p100.yaml") and seen[0][2:] == ["--output_dir=runs/x"]
    assert "no --config: launched like accelerate_configs/p100.yaml (1 process, mixed precision fp16)" in capsys.readouterr().out
