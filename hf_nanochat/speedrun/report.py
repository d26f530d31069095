"""The training report card of a speedrun folder: `report.md`, its JSON twin and a loss plot.

Every number is read back from what the stages wrote (speedrun_state.json, metrics.jsonl,
samples.jsonl, train_metrics.json, eval_*.json, data_used.json), never typed in; the data each
stage read comes from its own data_used.json, not from the recipe. Sections whose stage has not
run yet say so, so the report can be written after any stage.
"""
from __future__ import annotations

import json
import os
import platform
import subprocess
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

PACKAGES = ("torch", "transformers", "accelerate", "datasets", "tokenizers", "trl", "peft", "gradio", "hf-nanochat")
CHAT_STAGES = ("mid", "sft")
CHAT_PROMPTS = ("Why is the sky blue?", "What is 12 times 7?")


def _read_jsonl(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _read_json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.exists() else None


def environment() -> dict:
    import torch

    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                cwd=Path(__file__).parent, timeout=5).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "gpus": gpus,
        "versions": versions,
        "git_commit": commit,
    }


def tokenizer_section(out: Path, data_source: str | None) -> dict | None:
    tok_dir = out / "tokenizer"
    if not (tok_dir / "tokenizer.json").exists():
        return None
    from hf_nanochat.data.tokenizer import encode_plain, load_tokenizer
    from hf_nanochat.data.tokenizer_cli import eval_samples

    tokenizer = load_tokenizer(str(tok_dir))
    rows = {}
    if data_source:
        for name, text in eval_samples(data_source, max_docs=50).items():
            n_tokens = len(encode_plain(tokenizer, [text])[0])
            rows[name] = round(len(text.encode("utf-8")) / max(1, n_tokens), 3)
    return {"vocab_size": len(tokenizer), "bytes_per_token": rows}


def base_section(out: Path) -> dict | None:
    metrics = _read_jsonl(out / "base" / "metrics.jsonl")
    config = _read_json(out / "base" / "model" / "config.json")
    if not metrics or config is None:
        return None
    import torch

    from hf_nanochat.modeling.configuration_nanochat_gpt import NanoChatGPTConfig
    from hf_nanochat.modeling.modeling_nanochat_gpt import NanoChatGPTForCausalLM

    # the saved config itself (not a depth's default shape): either architecture, any overrides
    model_config = NanoChatGPTConfig.from_dict(config)
    with torch.device("meta"):
        shape = {"params": sum(p.numel() for p in NanoChatGPTForCausalLM(model_config).parameters())}
    bpbs = [m["val_bpb"] for m in metrics if m.get("val_bpb") is not None]
    tps = [m["tokens_per_s"] for m in metrics[1:]] or [metrics[-1]["tokens_per_s"]]  # step 1 includes warm-up
    mfus = [m["mfu"] for m in metrics[1:] if m.get("mfu") is not None]
    evaluation = _read_json(out / "eval_base.json") or {}
    core = _read_json(out / "base" / "model" / "core_eval.json")  # `eval --kind core` writes it into the model folder
    samples = _read_jsonl(out / "base" / "samples.jsonl")
    last_step = max((s["step"] for s in samples), default=None)
    return {
        "architecture": model_config.nanochat_architecture,
        "depth": config["num_hidden_layers"], "width": config["hidden_size"], "heads": config["num_attention_heads"],
        "vocab_size": config["vocab_size"], "seq_len": config["max_position_embeddings"], "params": shape["params"],
        "steps": metrics[-1]["step"], "tokens": metrics[-1]["tokens"], "tokens_per_param": metrics[-1]["tokens"] / shape["params"],
        "first_loss": metrics[0]["loss"], "final_loss": metrics[-1]["loss"],
        "val_bpb_during_training": bpbs[-1] if bpbs else None,
        "val_bpb": evaluation.get("val_bpb", evaluation.get("bpb")),
        "tokens_per_s": sum(tps) / len(tps), "mfu": sum(mfus) / len(mfus) if mfus else None,
        "core": core and {"score": core["core"], "smoke_bundle": core["smoke_bundle"], "complete": core["complete"],
                          "tasks": {k: v["centred"] for k, v in core["tasks"].items()}},
        "samples": [{"prompt": s["prompt"], "completion": s["completion"]} for s in samples if s["step"] == last_step],
    }


def data_section(out: Path) -> dict:
    """stage -> what it read, from the stages' own data_used.json (the last stage's holds the chain)."""
    from hf_nanochat.data.provenance import read_stage_records

    stages: dict = {}
    for folder in (out / "base", out / "base" / "model", out / "mid", out / "sft"):
        stages.update(read_stage_records(folder))
    return stages


def stage_losses(out: Path, stage: str) -> list[dict]:
    """A chat stage's logged losses over all its steps, resumed attempts included: its
    metrics.jsonl (hf_nanochat.train.sft.MetricsLog), else the log history TRL restored."""
    rows = _read_jsonl(out / stage / "metrics.jsonl")
    if not rows:
        rows = (_read_json(out / stage / "train_metrics.json") or {}).get("log_history") or []
    return [r for r in rows if "loss" in r and "step" in r]


def chat_section(out: Path) -> dict:
    stages = {}
    for stage in CHAT_STAGES:
        evaluation = _read_json(out / f"eval_{stage}.json")
        train = _read_json(out / stage / "train_metrics.json")
        if evaluation is None and train is None:
            continue
        losses = stage_losses(out, stage)
        stages[stage] = {
            "tasks": {k: v["accuracy"] for k, v in (evaluation or {}).get("tasks", {}).items()},
            "samples": {k: v.get("sample") for k, v in (evaluation or {}).get("tasks", {}).items()},
            "chatcore": (evaluation or {}).get("chatcore"),
            # Mean over every logged step of the stage; TRL's train_loss is only the last attempt's.
            "train_loss": sum(r["loss"] for r in losses) / len(losses) if losses else None,
            "final_loss": losses[-1]["loss"] if losses else None,
            "logged_steps": len(losses),
            "steps": (train or {}).get("global_step"),
        }
    return stages


def rl_section(out: Path) -> dict | None:
    """The optional RL stage: GSM8K before (SFT eval) and after (RL eval), and the stage's own
    reward and pass@1 (on its eval questions) at its first and last evaluation."""
    train = _read_json(out / "rl" / "train_metrics.json")
    if train is None:
        return None

    def gsm8k(stage: str):
        return (((_read_json(out / f"eval_{stage}.json") or {}).get("tasks") or {}).get("GSM8K") or {}).get("accuracy")

    passk = train.get("pass_at_k") or []
    return {
        "steps": train.get("global_step"), "reward_first": train.get("reward_first"), "reward_last": train.get("reward_last"),
        "gsm8k_before": gsm8k("sft"), "gsm8k_after": gsm8k("rl"),
        "pass1_before": passk[0]["pass@1"] if passk else None, "pass1_after": passk[-1]["pass@1"] if passk else None,
        "pass1_steps": [passk[0]["step"], passk[-1]["step"]] if passk else None,
    }


def chat_samples(out: Path) -> list[dict]:
    model_dir = out / "sft"
    if not (model_dir / "config.json").exists():
        return []
    from hf_nanochat.serve.engine import Engine, load_chat_model

    model, tokenizer = load_chat_model(str(model_dir))
    engine = Engine(model, tokenizer)
    return [
        {"prompt": p, "reply": "".join(engine.chat([{"role": "user", "content": p}], max_tokens=64, temperature=0.0))}
        for p in CHAT_PROMPTS
    ]


def plot_losses(out: Path, path: Path) -> bool:
    """Base loss (and val bpb) per step, and the chat stages' losses, side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    base = _read_jsonl(out / "base" / "metrics.jsonl")
    chat = {s: stage_losses(out, s) for s in CHAT_STAGES}
    if not base and not any(chat.values()):
        return False
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    if base:
        ax1.plot([m["step"] for m in base], [m["loss"] for m in base], label="train loss")
        val = [m for m in base if m.get("val_bpb") is not None]
        if val:
            twin = ax1.twinx()
            twin.plot([m["step"] for m in val], [m["val_bpb"] for m in val], "o-", color="tab:orange", label="val bpb")
            twin.set_ylabel("val bits per byte")
            twin.legend(loc="upper center")
    ax1.set(title="base pretraining", xlabel="step", ylabel="loss (nats/token)")
    ax1.legend(loc="upper right")
    for stage, history in chat.items():
        if history:
            ax2.plot([h["step"] for h in history], [h["loss"] for h in history], label=stage)
    ax2.set(title="mid-training and SFT", xlabel="step", ylabel="loss (nats/token)")
    ax2.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def _fmt(x, spec: str = ".4f") -> str:
    return "-" if x is None else format(x, spec)


def _core_line(core: dict | None) -> str:
    if core is None:
        return "- CORE: not evaluated"
    if core["smoke_bundle"]:
        return f"- offline smoke score (synthetic bundle, NOT CORE): {core['score']:.4f} over {len(core['tasks'])} tasks"
    scope = "all 22 tasks" if core["complete"] else f"partial: {len(core['tasks'])} tasks or capped examples"
    return f"- CORE: {core['score']:.4f} ({scope}; GPT-2 XL 0.2565, nanochat d20 Nov 2025 0.2219)"


def render_markdown(report: dict) -> str:
    env, plan, stages = report["environment"], report.get("plan") or {}, report["stages"]
    lines = [f"# nanochat training report: {report.get('recipe', '?')}", "", f"Generated {env['date']}."]
    if plan.get("description"):
        lines.append(f"Recipe: {plan['description']}.")
    lines += ["", "## Environment", "", f"- machine: {env['platform']}, {env['cpus']} CPUs, {env['memory_gib']} GiB RAM",
              f"- GPUs: {', '.join(env['gpus']) if env['gpus'] else 'none (CPU)'}",
              f"- python {env['python']}; " + ", ".join(f"{k} {v}" for k, v in env["versions"].items() if v),
              f"- hf-nanochat commit: {env['git_commit'] or 'unknown'}", ""]
    lines += ["## Stages", "", "Time and cost count every attempt, failed and interrupted ones too.", "",
              "| stage | status | attempts | time | est. cost |", "|---|---|---:|---:|---:|"]
    for name, s in stages.items():
        failed = sum(1 for a in s.get("attempt_log", []) if a.get("status") in ("failed", "interrupted"))
        attempts = f"{s.get('attempts', 0)}" + (f" ({failed} failed or interrupted)" if failed else "")
        lines.append(f"| {name} | {s.get('status', '-')} | {attempts} | {s.get('seconds', 0):.0f} s | ${s.get('cost', 0):.2f} |")
    total = report.get("total") or {}
    lines.append(f"| **total** | | {total.get('attempts', 0)} | {total.get('seconds', 0):.0f} s | ${total.get('cost', 0):.2f} |")
    lines.append("")
    data = report.get("data") or {}
    if data:
        from hf_nanochat.data.provenance import describe_stage

        lines += ["## Data (what each stage read)", ""]
        for stage, record in data.items():
            lines += describe_stage(stage, record)
        lines.append("")
    tok = report.get("tokenizer")
    if tok:
        lines += ["## Tokenizer", "", f"Vocabulary: {tok['vocab_size']:,} tokens.", "", "| text | bytes/token |", "|---|---:|"]
        lines += [f"| {k} | {v:.2f} |" for k, v in tok["bytes_per_token"].items()]
        lines.append("")
    base = report.get("base")
    if base:
        lines += ["## Base model", "",
                  f"- architecture: nanochat {base.get('architecture', '2025-11')}",
                  f"- shape: depth {base['depth']}, width {base['width']}, {base['heads']} head{'s' if base['heads'] != 1 else ''}, vocab {base['vocab_size']:,}, context {base['seq_len']}",
                  f"- parameters: {base['params']:,}",
                  f"- trained: {base['steps']:,} steps, {base['tokens']:,} tokens ({base['tokens_per_param']:.2f} tokens/param)",
                  f"- loss: {base['first_loss']:.4f} -> {base['final_loss']:.4f}",
                  f"- validation bpb: {_fmt(base['val_bpb'])} (at the last training eval: {_fmt(base['val_bpb_during_training'])})",
                  f"- throughput: {base['tokens_per_s']:,.0f} tokens/s" + (f", MFU {base['mfu']:.1%}" if base["mfu"] else "")]
        lines += [_core_line(base.get("core")), ""]
        if base["samples"]:
            lines += ["Samples from the base model:", ""]
            lines += [f"- *{s['prompt']}* -> {s['completion']!r}" for s in base["samples"]]
            lines.append("")
    chat = report.get("chat") or {}
    if chat:
        tasks = sorted({t for s in chat.values() for t in s["tasks"]})
        header = "| | " + " | ".join(chat) + " |"
        lines += ["## Chat evaluation", "", header, "|---|" + "---:|" * len(chat)]
        for t in tasks:
            lines.append(f"| {t} | " + " | ".join(_fmt(s["tasks"].get(t)) for s in chat.values()) + " |")
        lines.append("| ChatCORE | " + " | ".join(_fmt(s["chatcore"]) for s in chat.values()) + " |")
        lines.append("| train loss (mean, all steps) | " + " | ".join(_fmt(s["train_loss"]) for s in chat.values()) + " |")
        lines.append("| final train loss | " + " | ".join(_fmt(s.get("final_loss")) for s in chat.values()) + " |")
        lines.append("")
        from hf_nanochat.evaluate.chat_eval import describe_sample

        scored = {t: smp for s in chat.values() for t, smp in (s.get("samples") or {}).items() if smp}
        if scored:
            lines += ["Problems scored: " + "; ".join(f"{t}: {describe_sample(smp)}" for t, smp in sorted(scored.items())), ""]
    rl = report.get("rl")
    if rl:
        steps = rl["pass1_steps"] or ["-", "-"]
        lines += ["## RL", "", f"- {rl['steps']} steps; mean reward {_fmt(rl['reward_first'])} (first step) -> "
                  f"{_fmt(rl['reward_last'])} (last step)", "", "| | before (SFT) | after RL |", "|---|---:|---:|",
                  f"| GSM8K accuracy (eval) | {_fmt(rl['gsm8k_before'])} | {_fmt(rl['gsm8k_after'])} |",
                  f"| pass@1 on the RL eval questions (step {steps[0]} / {steps[1]}) | {_fmt(rl['pass1_before'])} | {_fmt(rl['pass1_after'])} |", ""]
    if report.get("chat_samples"):
        lines += ["## Chat samples (SFT model, greedy)", ""]
        lines += [f"- **{s['prompt']}** {s['reply']!r}" for s in report["chat_samples"]]
        lines.append("")
    if report.get("plot"):
        lines += [f"![loss curves]({report['plot']})", ""]
    return "\n".join(lines)


def write_report(out: Path) -> tuple[Path, Path]:
    out = Path(out)
    state = _read_json(out / "speedrun_state.json") or {"stages": {}}
    recipe = None
    if state.get("recipe"):
        from hf_nanochat.speedrun.recipes import RECIPES

        recipe = RECIPES[state["recipe"]]
    dollars_per_hour = recipe.dollars_per_hour if recipe else 0.0
    stages = {n: {**s, "cost": s.get("seconds", 0) / 3600 * dollars_per_hour} for n, s in state["stages"].items()}
    total = {
        "seconds": sum(s.get("seconds", 0) for s in stages.values()),
        "cost": sum(s["cost"] for s in stages.values()),
        "attempts": sum(s.get("attempts", 0) for s in stages.values()),
    }
    data = data_section(out)
    data_source = (data.get("base") or {}).get("source")  # what pretraining read, not what the recipe names
    report = {
        "recipe": state.get("recipe"), "plan": state.get("plan") or {}, "environment": environment(), "stages": stages, "total": total,
        "tokenizer": tokenizer_section(out, data_source), "base": base_section(out), "chat": chat_section(out), "rl": rl_section(out),
        "chat_samples": chat_samples(out), "data": data,
    }
    report["plot"] = "report_loss.png" if plot_losses(out, out / "report_loss.png") else None
    md, js = out / "report.md", out / "report.json"
    md.write_text(render_markdown(report))
    js.write_text(json.dumps(report, indent=2, default=str))
    return md, js
