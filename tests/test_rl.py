"""RL stage (nanochat's chat_rl on TRL's GRPOTrainer): reward, rollouts with the calculator,
the loss against nanochat's formula, learning on a synthetic task, exact resume."""
import shutil
from pathlib import Path

import pytest
import torch
from chat_helpers import ScriptedModel
from rl_helpers import addition_conversations, expected_reward, warm_up_format
from sft_helpers import tiny_model, tiny_tokenizer

from hf_nanochat.data.chat_data import message
from hf_nanochat.data.tokenizer import encode_plain, render_for_completion
from hf_nanochat.train.rewards import answer_match, extract_answer, load_reward
from hf_nanochat.train.rl import (
    EngineRollout,
    RLStageConfig,
    grpo_args,
    pass_at_k_counts,
    prompt_dataset,
    refuse_fsdp,
    run_rl_stage,
    steps_layout,
)

REPO = Path(__file__).resolve().parents[1]


def _cfg(tmp_path, **over) -> RLStageConfig:
    raw = dict(
        model="unused", output_dir=str(tmp_path / "out"), num_samples=8, examples_per_step=8, device_batch_size=8,
        max_new_tokens=6, optimizer="adamw", adamw_matrix_lr=0.003, embedding_lr=0.003, unembedding_lr=0.003,
        init_lr_frac=1.0, max_steps=30, eval_every=0, save_steps=1000, precision="fp32",
        data={"train": [{"source": "arithmetic", "size": 1}]},  # replaced by the datasets the tests pass in
    )
    raw.update(over)
    return RLStageConfig.from_dict(raw)


# --------------------------------------------------------------------------- reward
@pytest.mark.parametrize(
    "completion, answer, expected",
    [
        ("no answer here, just 42", "42", 0.0),  # no `####` at all
        ("#### ", "0", 0.0),  # a marker without a number
        ("#### 42", "42", 1.0),
        ("#### 5 then I changed my mind #### 7", "5", 1.0),  # several answers: the first counts (re.search)
        ("#### 5 then I changed my mind #### 7", "7", 0.0),
        ("#### 1,234", "1234", 1.0),  # commas removed from the prediction
        ("#### 1234", "1,234", 1.0),  # and from the reference
        ("#### -17", "-17", 1.0),  # negative numbers
        ("#### -17", "17", 0.0),
        ("#### 3.5", "3.5", 1.0),
        ("<|python_start|>2+3<|python_end|><|output_start|>5<|output_end|>\n#### 5<|assistant_end|>", "5", 1.0),
    ],
)
def test_answer_match_edge_cases(completion, answer, expected):
    assert answer_match(completion, answer) == expected


def test_reward_format_comes_from_the_recipe_and_functions_are_swappable():
    assert extract_answer("The answer is \\boxed{12}", r"\\boxed\{(-?[0-9.,]+)\}") == "12"
    assert answer_match("The answer is \\boxed{1,200}", "1200", pattern=r"\\boxed\{(-?[0-9.,]+)\}") == 1.0
    assert answer_match("#### 1200", "1200", pattern=r"\\boxed\{(-?[0-9.,]+)\}") == 0.0
    assert load_reward("hf_nanochat.train.rewards:answer_match") is answer_match
    assert load_reward("hf_nanochat.train.rewards.answer_match") is answer_match
    with pytest.raises(ValueError, match="cannot be imported"):
        load_reward("hf_nanochat.train.rewards:no_such_reward")
    with pytest.raises(ValueError, match="capturing group"):
        extract_answer("#### 1", r"#### \d+")


def test_prompt_dataset_splits_reference_answer():
    ds = prompt_dataset(addition_conversations(1))
    assert ds[0]["prompt"][-1]["role"] == "user" and len(ds[0]["prompt"]) == 1
    assert ds[0]["answer"] == "3"
    from datasets import Dataset

    bad = Dataset.from_dict({"messages": [[message("user", "hi"), message("assistant", "no number")]]})
    with pytest.raises(ValueError, match="no '#### N' answer"):
        prompt_dataset(bad)


def test_pass_at_k_counts_is_nanochats_formula():
    outcomes = [[False, True, False], [False, False, False], [True, True, True]]
    # nanochat: passk[k-1] = sum(any(o[:k]) for o in records)
    assert pass_at_k_counts(outcomes, 3) == [1, 2, 2]


# --------------------------------------------------------------------------- rollouts
def test_rollouts_insert_the_calculator_output_and_mask_it():
    tok = tiny_tokenizer()
    ids = {t: tok.convert_tokens_to_ids(t) for t in ("<|python_start|>", "<|python_end|>", "<|output_start|>", "<|output_end|>", "<|assistant_end|>")}
    expr, result, answer = encode_plain(tok, ["12*7"])[0], encode_plain(tok, ["84"])[0], encode_plain(tok, ["#### 84"])[0]
    forced = [ids["<|output_start|>"], *result, ids["<|output_end|>"]]
    # the script's entries at the forced positions are never used: the protocol overrides them
    script = [ids["<|python_start|>"], *expr, ids["<|python_end|>"], *[0] * len(forced), *answer]
    model = ScriptedModel(tiny_model(), script, ids["<|assistant_end|>"])
    prompt_a = [message("user", "What is 12*7?")]
    prompt_b = [message("user", "And 12*7 again?")]
    out = EngineRollout(tok, max_new_tokens=64, temperature=1.0, top_k=50, batch_size=2, seed=0).rollout(model, [prompt_a] * 3 + [prompt_b] * 2)

    expected = [ids["<|python_start|>"], *expr, ids["<|python_end|>"], *forced, *answer, ids["<|assistant_end|>"]]
    expected_mask = [1] * (len(expr) + 2) + [0] * len(forced) + [1] * (len(answer) + 1)
    assert len(out["completion_ids"]) == 5 and out["logprobs"] is None
    for completion, mask in zip(out["completion_ids"], out["env_mask"]):
        assert completion == expected  # the tool output is in the completion, the stop token kept
        assert mask == expected_mask  # ... and carries no loss (TRL multiplies it into the loss mask)
    assert out["prompt_ids"][0] == render_for_completion(tok, prompt_a)
    assert out["prompt_ids"][4] == render_for_completion(tok, prompt_b)


def test_rollouts_are_seeded_per_step_and_differ_within_a_group():
    tok, model = tiny_tokenizer(), tiny_model()
    rollout = EngineRollout(tok, max_new_tokens=8, temperature=1.0, top_k=None, batch_size=4, seed=7)
    prompts = [[message("user", "What is 2 + 2?")]] * 8
    a = rollout.rollout(model, prompts, step=3)["completion_ids"]
    assert a == rollout.rollout(model, prompts, step=3)["completion_ids"]  # a resumed run draws the same samples
    assert a != rollout.rollout(model, prompts, step=4)["completion_ids"]
    assert len({tuple(c) for c in a}) > 1  # the two Engine calls of one group are seeded apart


# --------------------------------------------------------------------------- TRL settings and loss
def test_settings_map_to_nanochats_algorithm(tmp_path):
    cfg = _cfg(tmp_path, num_samples=16, examples_per_step=16, device_batch_size=8)
    assert steps_layout(cfg, 1) == 32 and steps_layout(cfg, 8) == 4  # 16 x 16 sequences in device batches of 8
    with pytest.raises(ValueError, match="divisible"):
        steps_layout(cfg, 3)
    args = grpo_args(cfg, 1, {"bf16": False, "fp16": False, "use_cpu": True})
    assert (args.beta, args.num_iterations, args.scale_rewards, args.loss_type) == (0.0, 1, "none", "bnpo")
    assert args.num_generations == 16 and args.per_device_train_batch_size == 8 and args.gradient_accumulation_steps == 32
    # one rollout of 16 questions x 16 samples per optimizer step
    assert args.steps_per_generation == 32 and args.generation_batch_size == 16 * 16 and args.max_grad_norm == 0.0
    with pytest.raises(ValueError, match="token-level"):
        _cfg(tmp_path, loss_type="grpo")
    with pytest.raises(ValueError, match="unknown keys"):
        RLStageConfig.from_dict({**_cfg(tmp_path).to_dict(), "num_sample": 4})


def test_fsdp_is_refused_with_the_fix_in_the_message():
    from accelerate import DistributedType, PartialState

    state = PartialState()
    saved = state.distributed_type
    try:
        state.distributed_type = DistributedType.FSDP
        with pytest.raises(ValueError, match="multi_gpu.yaml"):
            refuse_fsdp()
    finally:
        state.distributed_type = saved


def _trainer(tmp_path, model, tok, **over):
    from trl import GRPOTrainer

    from hf_nanochat.train.rl import build_rl_optimizer

    cfg = _cfg(tmp_path, **over)
    return GRPOTrainer(
        model=model, reward_funcs=[lambda completions, **_: [0.0] * len(completions)],
        args=grpo_args(cfg, 1, {"bf16": False, "fp16": False, "use_cpu": True}),
        train_dataset=prompt_dataset(addition_conversations(1)), processing_class=tok,
        optimizers=(build_rl_optimizer(model, cfg, torch.device("cpu")), None),
    )


@pytest.mark.parametrize("path", ["rl.yaml", "rl_tiny_cpu.yaml"])
def test_recipes_load_and_dispatch_to_the_rl_stage(path):
    import yaml

    from hf_nanochat.train.entry import recipe_stage

    recipe = REPO / "train_configs" / path
    assert recipe_stage(["--config", str(recipe)]) == "rl"
    cfg = RLStageConfig.from_dict(yaml.safe_load(recipe.read_text()))
    assert cfg.loss_type == "bnpo" and cfg.examples_per_step % 1 == 0
    steps_layout(cfg, 1)


def test_trl_loss_gradient_equals_nanochats_formula_on_a_hand_built_batch(tmp_path):
    """Two device batches ("passes") of one question's samples: TRL's bnpo loss with beta 0, ratio 1
    and tool output masked gives the same gradient as nanochat's
    -sum(logp * A) / (num_valid * num_passes * examples_per_rank) with targets -1 on prompt, tool
    output and padding (scripts/chat_rl.py, 06677c3)."""
    tok = tiny_tokenizer()
    model = tiny_model(depth=2)
    trainer = _trainer(tmp_path, model, tok, num_samples=4, examples_per_step=2, device_batch_size=4)
    g = torch.Generator().manual_seed(0)
    prompts = [render_for_completion(tok, [message("user", "What is 3 + 4?")]), render_for_completion(tok, [message("user", "Hi")])]
    passes = []
    for p, prompt in enumerate(prompts):  # one pass per question, 4 samples each, ragged lengths
        lengths = [5, 9, 3, 7] if p == 0 else [6, 2, 8, 4]
        completions = [torch.randint(0, 400, (n,), generator=g).tolist() for n in lengths]
        tool = [[1] * n for n in lengths]
        tool[1][2:5] = [0, 0, 0]  # forced calculator output inside sample 1
        rewards = torch.tensor([1.0, 0.0, 1.0, 0.0] if p == 0 else [0.0, 0.0, 1.0, 0.0])
        passes.append((prompt, completions, tool, rewards - rewards.mean()))

    # TRL: left-padded prompts (two pad tokens in front to check the padding), right-padded completions
    model.train()
    trainer.current_gradient_accumulation_steps = len(passes)
    trl_values = []
    for prompt, completions, tool, adv in passes:
        width = max(map(len, completions))
        pad = tok.pad_token_id
        inputs = {
            "prompt_ids": torch.tensor([[pad, pad] + prompt] * 4),
            "prompt_mask": torch.tensor([[0, 0] + [1] * len(prompt)] * 4),
            "completion_ids": torch.tensor([c + [pad] * (width - len(c)) for c in completions]),
            "completion_mask": torch.tensor([[1] * len(c) + [0] * (width - len(c)) for c in completions]),
            "tool_mask": torch.tensor([t + [1] * (width - len(t)) for t in tool]),
            "advantages": adv,
        }
        inputs["num_items_in_batch"] = (inputs["completion_mask"] * inputs["tool_mask"]).sum()
        loss = trainer.compute_loss(model, inputs)
        loss.backward()
        trl_values.append(loss.item())
        mask = (inputs["completion_mask"] * inputs["tool_mask"]).float()
        # with ratio 1 the loss value is the surrogate -sum(A * mask) / tokens / passes
        assert loss.item() == pytest.approx(-(adv[:, None] * mask).sum().item() / mask.sum().item() / len(passes), abs=1e-6)
    trl_grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)

    # nanochat: sequences = prompt + completion, right-padded; targets -1 outside sampled tokens
    examples_per_rank, num_passes = 1, len(passes)
    for prompt, completions, tool, adv in passes:
        seqs = [prompt + c for c in completions]
        masks = [[0] * len(prompt) + t for t in tool]
        width = max(map(len, seqs))
        ids = torch.tensor([s + [0] * (width - len(s)) for s in seqs])
        mask_ids = torch.tensor([m + [0] * (width - len(m)) for m in masks])
        inputs, targets = ids[:, :-1], ids[:, 1:].clone()
        targets[mask_ids[:, 1:] == 0] = -1
        logits = model(input_ids=inputs).logits
        nll = torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-1, reduction="none")
        logp = -nll.view_as(inputs)
        pg_obj = (logp * adv.unsqueeze(-1)).sum()
        num_valid = (targets >= 0).sum().clamp(min=1)
        loss = -pg_obj / (num_valid * num_passes * examples_per_rank)
        loss.backward()
    for name, p in model.named_parameters():
        torch.testing.assert_close(trl_grads[name], p.grad, atol=1e-6, rtol=1e-4, msg=name)
    assert any(v.abs().sum() > 0 for v in trl_grads.values())


# --------------------------------------------------------------------------- training
@pytest.mark.slow
def test_reward_rises_on_a_synthetic_arithmetic_task(tmp_path):
    """A tiny model taught only the reply format (random digits) learns eight one-digit sums by RL:
    30 steps of 8 questions x 8 samples, rollouts through the Engine, seeded."""
    tok, model = tiny_tokenizer(), tiny_model(depth=1)
    warm_up_format(model, tok)
    before = expected_reward(model, tok)
    metrics = run_rl_stage(_cfg(tmp_path), model=model, tokenizer=tok, train_dataset=addition_conversations())
    after = expected_reward(model, tok)
    rewards = [h["reward"] for h in metrics["log_history"] if "reward" in h]
    assert len(rewards) == 30 and metrics["global_step"] == 30
    first, last = sum(rewards[:10]) / 10, sum(rewards[-10:]) / 10
    assert 0.05 < before < 0.15, before  # about 1 in 10 right to start with
    assert after > 2 * before, (before, after)  # the policy's expected reward more than doubles
    assert last > first + 0.05, rewards  # and so does the sampled reward the trainer logs
    out = tmp_path / "out"
    assert (out / "model.safetensors").exists() and (out / "train_metrics.json").exists()


@pytest.mark.slow
def test_pass_at_k_is_logged_and_resume_is_exact(tmp_path):
    """4 steps straight vs 2 steps, a fresh process state, and --resume for the last 2: same weights."""
    tok = tiny_tokenizer()
    over = dict(num_samples=8, examples_per_step=4, device_batch_size=8, max_steps=4, save_steps=2, save_total_limit=None,
                optimizer="muon", matrix_lr=0.02, init_lr_frac=0.5, eval_every=2, eval_examples=4, eval_num_samples=2,
                data={"train": [{"source": "arithmetic", "size": 1}], "eval": [{"source": "arithmetic", "size": 1}]})

    def model():
        m = tiny_model(depth=1)
        warm_up_format(m, tok)
        return m

    ref = model()
    full = run_rl_stage(_cfg(tmp_path / "a", **over), model=ref, tokenizer=tok,
                        train_dataset=addition_conversations(), eval_dataset=addition_conversations(1))
    assert [h["step"] for h in full["pass_at_k"]] == [0, 2, 4]
    assert all(set(h) == {"step", "pass@1", "pass@2"} for h in full["pass_at_k"])

    # the interrupted run: only the step-2 checkpoint survives
    resumed_dir = tmp_path / "b" / "out" / "checkpoints"
    resumed_dir.mkdir(parents=True)
    shutil.copytree(tmp_path / "a" / "out" / "checkpoints" / "checkpoint-2", resumed_dir / "checkpoint-2")
    other = tiny_model(depth=1, seed=123)  # its weights are replaced by the checkpoint's
    resumed = run_rl_stage(_cfg(tmp_path / "b", resume=True, **over), model=other, tokenizer=tok,
                           train_dataset=addition_conversations(), eval_dataset=addition_conversations(1))
    assert resumed["global_step"] == 4
    for (name, a), b in zip(ref.state_dict().items(), other.state_dict().values()):
        assert torch.equal(a, b), name
    from safetensors.torch import load_file

    at_step_2 = load_file(tmp_path / "a" / "out" / "checkpoints" / "checkpoint-2" / "model.safetensors")
    assert any(not torch.equal(at_step_2[n], p) for n, p in ref.state_dict().items() if n in at_step_2)  # steps 3-4 did move
    rewards = lambda m: [h["reward"] for h in m["log_history"] if "reward" in h]  # noqa: E731
    assert rewards(resumed)[-2:] == rewards(full)[-2:]


@pytest.mark.slow
def test_two_process_ddp_run_through_train_py(tmp_path):
    """`accelerate launch` (2 CPU processes, gloo) of train.py with the tiny recipe: the
    arithmetic task's replies call the calculator, so the rollouts run the tool."""
    import json
    import os
    import socket
    import subprocess
    import sys

    tok, model = tiny_tokenizer(), tiny_model(depth=1)
    warm_up_format(model, tok, steps=10)
    model.save_pretrained(tmp_path / "base")
    tok.save_pretrained(tmp_path / "base")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(REPO / "accelerate_configs/cpu_ddp.yaml"),
           "--main_process_port", str(port), str(REPO / "train.py"), "--config", str(REPO / "train_configs/rl_tiny_cpu.yaml"),
           f"--model={tmp_path / 'base'}", f"--output_dir={tmp_path / 'out'}", "--max_steps=2", "--max_new_tokens=16",
           "--eval_every=0", "--eval_examples=4"]
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600, cwd=tmp_path)
    metrics_file = tmp_path / "out" / "train_metrics.json"
    assert metrics_file.exists(), done.stdout[-3000:] + done.stderr[-3000:]
    metrics = json.loads(metrics_file.read_text())
    assert metrics["num_processes"] == 2 and metrics["global_step"] == 2
    assert [h["step"] for h in metrics["pass_at_k"]] == [2]  # eval_every 0: at the end only
    assert (tmp_path / "out" / "model.safetensors").exists()


# --------------------------------------------------------------------------- speedrun and report
def test_speedrun_with_rl_appends_the_rl_stages(tmp_path):
    import yaml

    from hf_nanochat.speedrun.pipeline import build_stages
    from hf_nanochat.speedrun.recipes import CONFIG_DIRS, RECIPES

    for name, recipe in RECIPES.items():
        launch = CONFIG_DIRS["launch"] / recipe.launch_config
        assert [s.name for s in build_stages(recipe, tmp_path / name, launch)][-1] == "sft_eval"  # RL stays optional
        stages = build_stages(recipe, tmp_path / name, launch, with_rl=True)
        assert [s.name for s in stages][-3:] == ["sft_eval", "rl", "rl_eval"]
        rl = stages[-2]
        assert rl.training and "--resume" in rl.command and f"--model={tmp_path / name / 'sft'}" in rl.command
        assert str(CONFIG_DIRS["train"] / recipe.rl) in rl.command
        RLStageConfig.from_dict(yaml.safe_load((CONFIG_DIRS["train"] / recipe.rl).read_text()))
        assert stages[-1].output == tmp_path / name / "eval_rl.json"


def test_report_shows_gsm8k_before_and_after_rl(tmp_path):
    import json

    from hf_nanochat.speedrun.report import environment, render_markdown, rl_section

    assert rl_section(tmp_path) is None  # no RL stage: no section
    (tmp_path / "rl").mkdir()
    for stage, acc in (("sft", 0.125), ("rl", 0.25)):
        (tmp_path / f"eval_{stage}.json").write_text(json.dumps({"tasks": {"GSM8K": {"accuracy": acc}}}))
    (tmp_path / "rl" / "train_metrics.json").write_text(json.dumps({
        "global_step": 467, "reward_first": 0.1, "reward_last": 0.3,
        "pass_at_k": [{"step": 0, "pass@1": 0.11}, {"step": 467, "pass@1": 0.22}]}))
    section = rl_section(tmp_path)
    assert (section["gsm8k_before"], section["gsm8k_after"], section["pass1_before"], section["pass1_after"]) == (0.125, 0.25, 0.11, 0.22)
    md = render_markdown({"environment": environment(), "stages": {}, "chat": {}, "rl": section})
    assert "| GSM8K accuracy (eval) | 0.1250 | 0.2500 |" in md
    assert "| pass@1 on the RL eval questions (step 0 / 467) | 0.1100 | 0.2200 |" in md
