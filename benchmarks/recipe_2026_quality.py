"""nanochat's Nov 2025 pretraining recipe vs its 2026 recipe: same data, steps and tokens.

  nov2025      architecture 2025-11, optimizer muon, TrainConfig's schedule (no warmup, linear
               warmdown over the last 20% to 0, grad clip 1.0, Muon momentum 0.85 -> 0.95 over 300 steps)
  2026         recipe nanochat-2026, architecture 2026, best-fit rows; batch and horizon fixed to
               nov2025's, LRs, weight decay and warmup as train_configs/tiny_cpu_2026.yaml fixes them
               (nanochat's bs = 1 defaults); the rest derived (muon_adamw_2026, 65% warmdown to 0.05,
               Muon momentum and cosine weight-decay schedules, no clipping)
  2026-stream  2026 on stream packing (separates the effect of best-fit rows)

Every run is the production loop (hf_nanochat.train.pretrain.train via train_quality.our_train).
All final models are scored the same way, by `hf-nanochat eval --kind base`'s evaluate_base, twice:
on the same stream-packed val rows and on the same best-fit val rows (the runs' own end-of-run
val bpb would each use their own packing). tokens/s: median step time after warm-up (the step
time of the optimizer alone is benchmarks/optim_2026_speed.py's). --reuse re-scores the final
models a previous run left in --work_dir (its per-step metrics give loss and tokens/s).

    OMP_NUM_THREADS=2 python benchmarks/recipe_2026_quality.py [--steps 200] [--depth 4] [--total_batch 4096] [--seeds 42,43]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

from train_quality import our_train, shared_tokenizer  # noqa: E402  (also puts ROOT on sys.path)

from hf_nanochat.evaluate.chat_eval import evaluate_base  # noqa: E402
from hf_nanochat.serve.engine import load_chat_model  # noqa: E402

SEQ, DEVICE_BATCH, EVAL_TOKENS = 256, 8, 65536
TINY_2026 = yaml.safe_load((ROOT / "train_configs" / "tiny_cpu_2026.yaml").read_text())
FIXED_2026 = ("matrix_lr", "embedding_lr", "unembedding_lr", "scalar_lr", "weight_decay", "warmup_steps")
RUNS = {
    "nov2025": dict(architecture="2025-11", optimizer="muon"),
    "2026": dict(recipe="nanochat-2026", architecture="2026", packing="best_fit", **{k: TINY_2026[k] for k in FIXED_2026}),
}
RUNS["2026-stream"] = dict(RUNS["2026"], packing="stream")


def one_run(name: str, seed: int, args, tok_dir: Path, tokenizer, work: Path) -> dict:
    run_dir = work / f"{name}_seed{seed}"
    load_before = os.getloadavg()[0]
    if not (args.reuse and (run_dir / "model").is_dir()):
        shutil.rmtree(run_dir, ignore_errors=True)  # a fresh run, not a resume
        # The run's own end-of-run evaluation is one batch: the common ones below are what is compared.
        our_train(
            tok_dir, "offline", args.steps, seed, run_dir, depth=args.depth, max_seq_len=SEQ, device_batch_size=DEVICE_BATCH,
            total_batch_size=args.total_batch, eval_tokens=DEVICE_BATCH * SEQ, **RUNS[name],
        )
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    times = [m["dt"] for m in metrics]
    model, _ = load_chat_model(str(run_dir / "model"), device="cpu", dtype=torch.float32)
    val = {p: evaluate_base(model, tokenizer, "offline", SEQ, DEVICE_BATCH, EVAL_TOKENS // (DEVICE_BATCH * SEQ), p)["val_bpb"] for p in ("stream", "best_fit")}
    warm = min(5, args.steps // 4)
    return {
        "val_bpb": val["stream"], "val_bpb_best_fit": val["best_fit"], "final_loss": metrics[-1]["loss"],
        "tokens_per_s": args.total_batch / statistics.median(times[warm:]),
        "params": sum(p.numel() for p in model.parameters()), "flops_per_token": model.num_flops_per_token(),
        "dropped": metrics[-1].get("data_dropped_frac"), "train_s": sum(times), "load": (load_before, os.getloadavg()[0]),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--total_batch", type=int, default=4096, help=f"tokens per step (a multiple of {DEVICE_BATCH} x {SEQ})")
    parser.add_argument("--seeds", default="42,43", help="comma-separated; each seed runs every recipe (order alternates)")
    parser.add_argument("--runs", default=",".join(RUNS), help=f"comma-separated subset of {','.join(RUNS)}")
    parser.add_argument("--reuse", action="store_true", help="re-score the final models already in --work_dir instead of training")
    parser.add_argument("--work_dir", default=os.path.join(tempfile.gettempdir(), "hf_nanochat_recipe_2026"))
    args = parser.parse_args()
    names, seeds = args.runs.split(","), [int(s) for s in args.seeds.split(",")]
    unknown = sorted(set(names) - set(RUNS))
    if unknown:
        parser.error(f"--runs: unknown {unknown} (known: {list(RUNS)})")
    work = Path(args.work_dir)
    tok_dir, tokenizer = shared_tokenizer(work)
    results: dict[str, list[dict]] = {n: [] for n in names}
    for i, seed in enumerate(seeds):
        for name in names if i % 2 == 0 else names[::-1]:  # alternate who goes first (load drifts)
            r = one_run(name, seed, args, tok_dir, tokenizer, work)
            results[name].append(r)
            print(f"[{name} seed {seed}] val bpb {r['val_bpb']:.4f} (best-fit rows {r['val_bpb_best_fit']:.4f}), {r['tokens_per_s']:.0f} tok/s, {r['train_s']:.0f} s, "
                  f"load {r['load'][0]:.1f} -> {r['load'][1]:.1f}", flush=True)

    base = results[names[0]]
    mean = lambda runs, k: statistics.mean(r[k] for r in runs)  # noqa: E731
    print(f"\ndepth {args.depth}, seq {SEQ}, {args.steps} steps x {args.total_batch} tokens (device batch {DEVICE_BATCH}), vocab {len(tokenizer)}, "
          f"fp32, threads {torch.get_num_threads()}, seeds {seeds}; val bpb on {EVAL_TOKENS} val tokens, rows cut by each packing")
    print(f"{'':12} {'params':>9} {'FLOPs/tok':>10} {'rows':>8} {'val bpb per seed':>16} {'mean':>7} {'spread':>7} {'/' + names[0]:>9} "
          f"{'loss':>7} {'tok/s':>6} {'/' + names[0]:>9} {'dropped':>8}")
    for name in names:
        runs = results[name]
        dropped = f"{mean(runs, 'dropped'):.1%}" if runs[0]["dropped"] is not None else "-"
        for key, rows in (("val_bpb", "stream"), ("val_bpb_best_fit", "best_fit")):
            bpb = [r[key] for r in runs]
            head = f"{name:12} {runs[0]['params']:>9,} {runs[0]['flops_per_token']:>10,}" if rows == "stream" else " " * 33
            tail = (f"{mean(runs, 'final_loss'):>7.4f} {mean(runs, 'tokens_per_s'):>6.0f} "
                    f"{mean(runs, 'tokens_per_s') / mean(base, 'tokens_per_s'):>9.3f} {dropped:>8}") if rows == "stream" else ""
            print(f"{head} {rows:>8} {' '.join(f'{b:.4f}' for b in bpb):>16} {statistics.mean(bpb):>7.4f} {max(bpb) - min(bpb):>7.4f} "
                  f"{statistics.mean(bpb) / mean(base, key):>9.4f} {tail}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
