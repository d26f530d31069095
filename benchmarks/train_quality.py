"""Our Accelerate pretraining loop vs a plain-PyTorch loop written to nanochat's recipe.

Same model (depth 4), same tokenizer, same batches (both read hf_nanochat.data.PretrainStream
on the offline corpus), same number of steps and tokens. Reported side by side:
  * final validation bits-per-byte (target: ours <= 1.02x the reference)
  * training tokens/s, median over steps after warm-up (target: ours >= 0.95x)

The reference is deliberately independent of hf_nanochat's training code: its own Muon (as
nanochat: separate Muon and AdamW optimizers), its own schedule, its own bpb; no Accelerate.

    OMP_NUM_THREADS=2 python benchmarks/train_quality.py [--steps 30] [--rounds 2]
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hf_nanochat import NanoChatGPTConfig, NanoChatGPTForCausalLM  # noqa: E402
from hf_nanochat.data.stream import PretrainStream, load_documents  # noqa: E402
from hf_nanochat.data.tokenizer import load_tokenizer, token_byte_lengths, train_tokenizer  # noqa: E402

DEPTH, SEQ, DEVICE_BATCH, TOTAL_BATCH, VOCAB, EVAL_TOKENS = 4, 128, 4, 1024, 4096, 16384


# --------------------------------------------------------------------------- reference loop


def ref_newton_schulz(g, steps=5):
    a, b, c = 3.4445, -4.7750, 2.0315
    x = g.float()
    transposed = x.size(0) > x.size(1)
    if transposed:
        x = x.T
    x = x / (x.norm() + 1e-7)
    for _ in range(steps):
        A = x @ x.T
        x = a * x + (b * A + c * A @ A) @ x
    return x.T if transposed else x


class RefMuon(torch.optim.Optimizer):
    def __init__(self, params, lr, momentum=0.95):
        super().__init__(params, dict(lr=lr, momentum=momentum))

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            for p in group["params"]:
                buf = self.state[p].setdefault("buf", torch.zeros_like(p))
                buf.lerp_(p.grad, 1 - group["momentum"])
                g = p.grad.lerp(buf, group["momentum"])
                p.add_(ref_newton_schulz(g), alpha=-group["lr"] * max(1, p.size(0) / p.size(1)) ** 0.5)


def reference_train(tokenizer, source, steps, seed):
    torch.manual_seed(seed)
    model = NanoChatGPTForCausalLM(NanoChatGPTConfig.from_depth(DEPTH, vocab_size=len(tokenizer), max_position_embeddings=SEQ))
    scale = (model.config.hidden_size / 768) ** -0.5
    adamw = torch.optim.AdamW(
        [dict(params=[model.lm_head.weight], lr=0.004 * scale), dict(params=[model.transformer.wte.weight], lr=0.2 * scale)],
        betas=(0.8, 0.95), eps=1e-10, weight_decay=0.0,
    )
    muon = RefMuon(list(model.transformer.h.parameters()), lr=0.02)
    optimizers = (adamw, muon)
    for opt in optimizers:
        for group in opt.param_groups:
            group["initial_lr"] = group["lr"]
    accum = TOTAL_BATCH // (DEVICE_BATCH * SEQ)
    batches = iter(PretrainStream(tokenizer, source, SEQ, DEVICE_BATCH, split="train"))
    warmdown = round(0.2 * steps)
    losses, times = [], []
    for step in range(steps):
        t0 = time.perf_counter()
        lrm = 1.0 if step <= steps - warmdown else (steps - step) / warmdown
        for opt in optimizers:
            for group in opt.param_groups:
                group["lr"] = group["initial_lr"] * lrm
        muon.param_groups[0]["momentum"] = 0.85 + 0.10 * min(step / 300, 1)
        total = 0.0
        for _ in range(accum):
            x, y = next(batches)
            loss = model(input_ids=x, shift_labels=y).loss
            (loss / accum).backward()
            total += loss.item()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        for opt in optimizers:
            opt.step()
        model.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t0)
        losses.append(total / accum)
    # bits per byte on the val split
    token_bytes = token_byte_lengths(tokenizer)
    nats = n_bytes = 0.0
    model.eval()
    with torch.no_grad():
        val = iter(PretrainStream(tokenizer, source, SEQ, DEVICE_BATCH, split="val"))
        for _ in range(EVAL_TOKENS // (DEVICE_BATCH * SEQ)):
            x, y = next(val)
            logits = model(input_ids=x).logits
            per_token = F.cross_entropy(logits.view(-1, logits.size(-1)), y.view(-1), reduction="none")
            nb = token_bytes[y.view(-1)]
            nats += float((per_token * (nb > 0)).sum())
            n_bytes += float(nb.sum())
    return losses, times, nats / (math.log(2) * n_bytes)


# --------------------------------------------------------------------------- our loop


def our_train(tokenizer_dir, source, steps, seed, out_dir, **overrides):
    """hf_nanochat.train.pretrain.train on this benchmark's recipe, with `overrides` of any train
    config keys; returns (per-step losses, per-step seconds, final val bpb). The final model is
    out_dir/model."""
    from accelerate.state import AcceleratorState

    from hf_nanochat.train.pretrain import train
    from hf_nanochat.train.config import config_from_dict

    AcceleratorState._reset_state(reset_partial_state=True)
    config = config_from_dict(dict(
        dict(
            depth=DEPTH, max_seq_len=SEQ, device_batch_size=DEVICE_BATCH, total_batch_size=TOTAL_BATCH, num_iterations=steps,
            dataset=source, tokenizer=str(tokenizer_dir), precision="fp32", eval_every=0, eval_tokens=EVAL_TOKENS,
            sample_prompts=["The"], sample_max_tokens=1, seed=seed, output_dir=str(out_dir),
        ),
        **overrides,
    ))
    summary = train(config)
    metrics = [json.loads(line) for line in (Path(out_dir) / "metrics.jsonl").read_text().splitlines()]
    return [m["loss"] for m in metrics], [m["dt"] for m in metrics], summary["val_bpb"]


def shared_tokenizer(work: Path, source: str = "offline"):
    """The benchmarks' VOCAB-token BPE on `source`'s train split, trained once into work/tokenizer:
    (its folder, the loaded tokenizer)."""
    tok_dir = work / "tokenizer"
    if not (tok_dir / "tokenizer.json").exists():
        texts = (row["text"] for row in load_documents(source, "train"))
        train_tokenizer(texts, VOCAB, max_chars=3_000_000).save_pretrained(tok_dir)
    return tok_dir, load_tokenizer(str(tok_dir))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=2, help="alternating runs of each loop (timing noise)")
    parser.add_argument("--work_dir", default=os.path.join(tempfile.gettempdir(), "hf_nanochat_train_quality"))
    args = parser.parse_args()
    work = Path(args.work_dir)
    source = "offline"
    tok_dir, tokenizer = shared_tokenizer(work, source)
    results = {"ours": [], "reference": []}
    for r in range(args.rounds):
        run_dir = work / f"ours_{r}"
        shutil.rmtree(run_dir, ignore_errors=True)  # a fresh run, not a resume
        runs = [("reference", lambda: reference_train(tokenizer, source, args.steps, seed=42)), ("ours", lambda: our_train(tok_dir, source, args.steps, 42, run_dir))]
        for name, run in runs if r % 2 == 0 else runs[::-1]:  # alternate who goes first
            results[name].append(run())
    warm = min(5, args.steps // 4)

    def summarise(runs):
        step_time = statistics.median(t for _, times, _ in runs for t in times[warm:])
        return {"final_loss": runs[-1][0][-1], "val_bpb": runs[-1][2], "tokens_per_s": TOTAL_BATCH / step_time}

    ours, ref = summarise(results["ours"]), summarise(results["reference"])
    losses_equal = max(abs(a - b) for a, b in zip(results["ours"][-1][0], results["reference"][-1][0]))
    print(f"depth {DEPTH}, seq {SEQ}, {args.steps} steps x {TOTAL_BATCH} tokens, vocab {len(tokenizer)}, threads {torch.get_num_threads()}, rounds {args.rounds}")
    print(f"{'':12} {'final loss':>10} {'val bpb':>8} {'tokens/s':>9}")
    for name, s in (("reference", ref), ("ours", ours)):
        print(f"{name:12} {s['final_loss']:>10.4f} {s['val_bpb']:>8.4f} {s['tokens_per_s']:>9.0f}")
    print(f"val bpb ratio (ours/ref) {ours['val_bpb'] / ref['val_bpb']:.4f} (target <= 1.02)")
    print(f"tokens/s ratio (ours/ref) {ours['tokens_per_s'] / ref['tokens_per_s']:.3f} (target >= 0.95)")
    print(f"max |loss difference| over steps: {losses_equal:.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
