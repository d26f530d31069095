"""nanochat-2026 models through the chat stages: SFT and RL with `optimizer: muon_adamw_2026`
(nanochat master's groups x init_lr_frac), the serving Engine's cache (sliding windows, the
smear's previous-token state under repeat/select) and chat evaluation."""
import json
from pathlib import Path

import pytest
import torch
import yaml
from chat_helpers import tiny_model as random_chat_model
from rl_helpers import addition_conversations, warm_up_format
from sft_helpers import assistant_loss, tiny_model, tiny_tokenizer

from hf_nanochat.train.sft import NanochatSchedule, SFTStageConfig, build_stage_optimizer, run_sft_stage

RECIPES = Path(__file__).parent.parent / "train_configs"
CPU = torch.device("cpu")


def _tiny_recipe(tmp_path, **over) -> SFTStageConfig:
    raw = yaml.safe_load((RECIPES / "sft_2026_tiny_cpu.yaml").read_text())
    raw.update(model=str(tmp_path / "base"), output_dir=str(tmp_path / "out"), logging_steps=1, **over)
    return SFTStageConfig.from_dict(raw)


def _spec_lrs(width: int, f: float) -> dict[str, float]:
    """nanochat gpt.py setup_optimizer's LRs for the tiny recipe's base LRs (matrix 0.02,
    embedding 0.3, unembedding 0.008, scalar 0.5), every one times init_lr_frac as chat_sft.py does."""
    dm = (width / 768) ** -0.5
    return {"lm_head": 0.008 * dm * f, "wte": 0.3 * dm * f, "value_embeds": 0.15 * dm * f, "resid_lambdas": 0.005 * f,
            "x0_lambdas": 0.5 * f, "smear_backout": 0.2 * f, "muon": 0.02 * f}


def test_2026_groups_lrs_and_schedule(tmp_path):
    cfg = _tiny_recipe(tmp_path)
    model = tiny_model(depth=2, architecture="2026")
    opt = build_stage_optimizer(model, cfg, CPU)
    spec = _spec_lrs(model.config.hidden_size, 0.8)
    got = {g["name"]: g["lr"] for g in opt.param_groups}
    assert {k for k in got if not k.startswith("muon_")} == set(spec) - {"muon"}
    for name, lr in got.items():
        assert lr == pytest.approx(spec["muon" if name.startswith("muon_") else name], rel=1e-12), name
    # every parameter is in exactly one group; Muon decay 0, AdamW groups keep nanochat's own decays
    assert sum(len(g["params"]) for g in opt.param_groups) == len(list(model.parameters()))
    decay = {g["name"]: g["weight_decay"] for g in opt.param_groups}
    assert (decay["lm_head"], decay["wte"], decay["value_embeds"], decay["resid_lambdas"], decay["x0_lambdas"]) == (0.01, 0.001, 0.01, 0.05, 0.0)
    assert all(decay[n] == 0.0 for n in decay if n.startswith("muon_"))
    # NanochatSchedule on these groups: every LR = initial x (flat, then linear over the last half),
    # Muon momentum 0.85 -> 0.95 over 300 steps (chat_sft.py get_muon_momentum) on every Muon group
    from hf_nanochat.train.optim import lr_multiplier

    schedule = NanochatSchedule(opt, 10, cfg.warmdown_ratio, momentum_ramp=cfg.muon_momentum_ramp)
    for step in range(10):
        for g in opt.param_groups:
            assert g["lr"] == pytest.approx(g["initial_lr"] * lr_multiplier(step, 10, warmdown_ratio=0.5))
            if g["kind"] == "muon":
                assert g["momentum"] == pytest.approx(0.85 + 0.1 * step / 300)
        schedule.step()


def test_nov_2025_optimizers_are_refused_on_a_2026_model_and_auto_picks(tmp_path):
    from hf_nanochat.train.chat_optim import describe_optimizer

    model = tiny_model(architecture="2026")
    for name in ("muon", "adamw"):
        with pytest.raises(ValueError, match=f"optimizer: {name} builds .* use optimizer: muon_adamw_2026"):
            build_stage_optimizer(model, _tiny_recipe(tmp_path, optimizer=name), CPU)
    assert describe_optimizer("auto", model.config) == "muon_adamw_2026 (optimizer: auto, 2026 model)"
    assert describe_optimizer("auto", tiny_model().config) == "muon (optimizer: auto, 2025-11 model)"
    assert SFTStageConfig.from_dict({"stage": "sft", "model": "m", "output_dir": "o", "data": {"train": [{"source": "arithmetic"}]}}).optimizer == "auto"
    with pytest.raises(ValueError, match="LoRA adapters train with optimizer: adamw"):
        _tiny_recipe(tmp_path, peft={"r": 4})


def test_sft_on_a_2026_model_trains_every_group_and_reloads(tmp_path, capsys):
    from transformers import AutoModelForCausalLM

    from hf_nanochat.data.chat_data import build_mixture

    tok, model = tiny_tokenizer(), tiny_model(depth=2, architecture="2026")
    model.save_pretrained(tmp_path / "base")
    tok.save_pretrained(tmp_path / "base")
    cfg = _tiny_recipe(tmp_path)
    convs = build_mixture(cfg.train_data, seed=cfg.seed)["messages"][:48]
    before_loss = assistant_loss(model, tok, convs)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}

    metrics = run_sft_stage(cfg, model=model, tokenizer=tok)
    assert metrics["global_step"] == 20
    assert "optimizer muon_adamw_2026" in capsys.readouterr().out
    after_loss = assistant_loss(model, tok, convs)
    assert after_loss < before_loss - 1.0, (before_loss, after_loss)
    # every 2026 tensor moved: value embeddings, ve_gate, resid/x0 lambdas, smear gate/lambda, backout
    unchanged = [n for n, p in model.named_parameters() if torch.equal(p.detach(), before[n])]
    assert unchanged == []
    # the logged LR (group 0, lm_head) follows spec x 0.8 x nanochat's schedule
    from hf_nanochat.train.optim import lr_multiplier

    lrs = [h["learning_rate"] for h in metrics["log_history"] if "learning_rate" in h]
    base = _spec_lrs(model.config.hidden_size, 0.8)["lm_head"]
    assert lrs == pytest.approx([base * lr_multiplier(s, 20, warmdown_ratio=0.5) for s in range(20)], rel=1e-6)

    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    config = lambda m: {k: v for k, v in m.config.to_dict().items() if k != "_name_or_path"}  # noqa: E731
    assert reloaded.config.nanochat_architecture == "2026" and config(reloaded) == config(model)
    ids = torch.tensor([list(range(3, 200))])
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(input_ids=ids).logits, model(input_ids=ids).logits, atol=0, rtol=0)


def test_rl_step_on_a_2026_model(tmp_path):
    from hf_nanochat.train.rl import RLStageConfig, build_rl_optimizer, run_rl_stage

    raw = dict(model="unused", output_dir=str(tmp_path / "out"), num_samples=8, examples_per_step=8, device_batch_size=8,
               max_new_tokens=6, max_steps=1, eval_every=0, save_steps=1000, precision="fp32",
               data={"train": [{"source": "arithmetic", "size": 1}]})
    tok, model = tiny_tokenizer(), tiny_model(depth=2, architecture="2026")
    with pytest.raises(ValueError, match="use optimizer: muon_adamw_2026"):
        build_rl_optimizer(model, RLStageConfig.from_dict({**raw, "optimizer": "muon"}), CPU)
    cfg = RLStageConfig.from_dict(raw)  # optimizer: auto
    opt = build_rl_optimizer(model, cfg, CPU)
    assert {g["name"]: g["lr"] for g in opt.param_groups}["x0_lambdas"] == pytest.approx(0.5 * 0.05)  # chat_rl's init_lr_frac
    warm_up_format(model, tok)  # some samples right, some wrong: a non-zero advantage
    opt_before = {n: p.detach().clone() for n, p in model.named_parameters()}
    metrics = run_rl_stage(cfg, model=model, tokenizer=tok, train_dataset=addition_conversations(1))
    assert metrics["global_step"] == 1 and 0 < metrics["reward_first"] < 1
    # one policy-gradient step moved every parameter, the 2026 scalars and Muon matrices included
    assert [n for n, p in model.named_parameters() if torch.equal(p.detach(), opt_before[n])] == []


# --------------------------------------------------------------------------- serving and eval
@pytest.fixture(scope="module")
def chat_tok():
    from chat_helpers import tiny_tokenizer as chat_tokenizer

    return chat_tokenizer()


@pytest.fixture(scope="module")
def model_2026(chat_tok):
    model = random_chat_model(len(chat_tok), depth=2, architecture="2026")
    assert model.config.sliding_window == 129 and model.transformer.smear_lambda.item() != 0
    return model


def _long_prompt(tok) -> list[int]:
    """Longer than the 128-token short window, so prefill and decoding both need it."""
    t = tok.convert_tokens_to_ids
    text = tok("The sky is blue because air scatters blue light. " * 8, add_special_tokens=False)["input_ids"]
    return [t("<|bos|>"), t("<|user_start|>"), *text, t("<|user_end|>"), t("<|assistant_start|>")]


def _stops(tok) -> list[int]:
    return [tok.convert_tokens_to_ids("<|assistant_end|>"), tok.convert_tokens_to_ids("<|bos|>")]


@torch.no_grad()
def _full_forward_greedy(model, ids: list[int], max_tokens: int, stops: list[int]) -> list[int]:
    """The reference: each token the argmax of a full, cache-free forward over everything so far."""
    out = []
    for _ in range(max_tokens):
        token = int(model(input_ids=torch.tensor([ids + out])).logits[0, -1].argmax())
        if token in stops:
            break
        out.append(token)
    return out


def test_engine_greedy_on_2026_equals_full_forward_argmax(model_2026, chat_tok):
    from hf_nanochat.serve.engine import Engine

    ids = _long_prompt(chat_tok)
    assert len(ids) > 129
    reference = _full_forward_greedy(model_2026, ids, 40, _stops(chat_tok))
    assert len(reference) >= 20 and chat_tok.convert_tokens_to_ids("<|python_start|>") not in reference
    engine = Engine(model_2026, chat_tok)
    assert engine.generate(ids, temperature=0.0, max_tokens=40) == [reference]
    # two samples share one prefill: batch_repeat_interleave must copy the smear state too
    assert engine.generate(ids, num_samples=2, temperature=0.0, max_tokens=40) == [reference, reference]


def test_engine_samples_on_2026_equal_independent_runs(model_2026, chat_tok):
    """Rows that finish are dropped with batch_select_indices; the rows left must keep their own
    smear state and windows: each of 4 samples equals the same seed's sample run alone."""
    from hf_nanochat.serve.engine import Engine

    engine, ids = Engine(model_2026, chat_tok), _long_prompt(chat_tok)
    batch = engine.generate(ids, num_samples=4, max_tokens=30, temperature=1.0, top_k=50, seed=5)
    assert len({len(s) for s in batch}) > 1  # some stopped early, so rows were selected away
    assert batch == [engine.generate(ids, max_tokens=30, temperature=1.0, top_k=50, seed=5 + i)[0] for i in range(4)]


def test_chat_eval_on_2026(model_2026, chat_tok, tmp_path):
    from hf_nanochat.evaluate import chat_eval

    rows = [{"question": f"Is the sky blue {i}?", "choices": {"text": ["yes", "no", "red light", "air"], "label": list("ABCD")},
             "answerKey": "ABCD"[i % 4]} for i in range(6)]
    path = tmp_path / "arc.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    res = chat_eval.evaluate_chat(model_2026, chat_tok, ["ARC-Easy"], {"ARC-Easy": str(path)}, batch_size=4, progress=False)
    # the padded batched forward scores like one unpadded forward per question
    records = list(chat_eval.TASKS["ARC-Easy"].load(str(path)))
    alone = [chat_eval.predict_letters(model_2026, chat_tok, [r], batch_size=1)[0] for r in records]
    assert chat_eval.predict_letters(model_2026, chat_tok, records, batch_size=4) == alone
    assert res["tasks"]["ARC-Easy"]["correct"] == sum(a == r["answer"] for a, r in zip(alone, records))
    assert res["tasks"]["ARC-Easy"]["total"] == 6
    # a generative task runs through the Engine: scored like the full-forward greedy replies
    engine = chat_eval.engine_generator(model_2026, chat_tok, max_tokens=64)
    gen = chat_eval.evaluate_chat(model_2026, chat_tok, ["SpellingBee"], {"SpellingBee": "bundled"}, max_problems=3, generate=engine, progress=False)
    spelled = list(chat_eval.TASKS["SpellingBee"].load("bundled").select(range(3)))
    replies = [chat_tok.decode(_full_forward_greedy(model_2026, chat_eval._prompt(chat_tok, r), 64, _stops(chat_tok)), skip_special_tokens=True)
               for r in spelled]
    assert gen["tasks"]["SpellingBee"]["total"] == 3
    assert gen["tasks"]["SpellingBee"]["correct"] == sum(chat_eval.TASKS["SpellingBee"].check(r, t) for r, t in zip(spelled, replies))
