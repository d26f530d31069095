"""CORE evaluator speed on CPU, side by side in one run, same model and examples everywhere:

- plain loop: every prompt in its own forward (batch 1), scored as nanochat scores it;
- per example: all prompts of one example in one right-padded forward (nanochat's batching,
  `batch_tokens=0`);
- packed: several examples of similar length per forward, up to `--batch-tokens` padded tokens
  (our default, 16384).

Model: our NanoChatGPT at `--depth` (random weights; speed does not depend on them) with a
tokenizer trained on the offline corpus; data: the offline smoke bundle (its few-shot tasks give
CORE-like prompt lengths). All three must agree on every example's correctness. Examples/s from
the median of interleaved repeats.

    OMP_NUM_THREADS=2 python benchmarks/core_eval_speed.py
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq
import torch
import torch.nn.functional as F

from hf_nanochat import NanoChatGPTConfig, NanoChatGPTForCausalLM
from hf_nanochat.data.stream import _data_files, offline_corpus
from hf_nanochat.data.tokenizer import encode_plain, train_tokenizer
from hf_nanochat.evaluate import core


@torch.no_grad()
def plain_loop(model, tokenizer, bundle, max_per_task: int) -> dict[str, int]:
    """One prompt per forward; losses over the whole row, then the span (nanochat's forward_model)."""
    bos, correct = core.bos_token_id(tokenizer), {}
    for task in bundle.tasks:
        data, n = bundle.rows(task, max_per_task), 0
        for i in range(len(data)):
            ex = core.prepare_example(task, data, i, lambda t: encode_plain(tokenizer, t), bos, None)
            scores = []
            for row, s, e in zip(ex.rows, ex.starts, ex.ends):
                ids = torch.tensor([row])
                logits = model(input_ids=ids, use_cache=False).logits[0].float()
                if task.task_type == "language_modeling":
                    scores.append(bool((logits[s - 1 : e - 1].argmax(-1) == ids[0, s:e]).all()))
                else:
                    losses = F.cross_entropy(logits[:-1], ids[0, 1:], reduction="none")
                    scores.append(losses[s - 1 : e - 1].mean().item())
            n += scores[0] if task.task_type == "language_modeling" else scores.index(min(scores)) == ex.gold
        correct[task.label] = int(n)
    return correct


def ours(model, tokenizer, bundle, max_per_task: int, batch_tokens: int) -> dict[str, int]:
    results = core.evaluate_core(model, tokenizer, bundle, max_per_task, batch_tokens=batch_tokens, progress=False)
    return {k: v["correct"] for k, v in results["tasks"].items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--vocab-size", type=int, default=4096)
    parser.add_argument("--max-per-task", type=int, default=6)
    parser.add_argument("--batch-tokens", type=int, default=16384)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()

    files = _data_files(offline_corpus())
    texts = [t for f in files[:-1] for t in pq.read_table(f).column("text").to_pylist()]
    tokenizer = train_tokenizer(texts, vocab_size=args.vocab_size, max_chars=3_000_000)
    torch.manual_seed(0)
    config = NanoChatGPTConfig.from_depth(args.depth, vocab_size=len(tokenizer), max_position_embeddings=2048)
    model = NanoChatGPTForCausalLM(config).eval()
    with torch.no_grad():  # nanochat zero-initialises lm_head: random weights give distinct scores
        for p in model.parameters():
            if p.abs().sum() == 0:
                p.normal_(0, 0.05)
    with tempfile.TemporaryDirectory() as tmp:
        bundle = core.load_bundle(core.write_smoke_bundle(Path(tmp) / "smoke", rows_per_task=args.max_per_task))
        n_examples = sum(len(bundle.rows(t, args.max_per_task)) for t in bundle.tasks)
        methods = {
            "plain loop (one prompt per forward)": lambda: plain_loop(model, tokenizer, bundle, args.max_per_task),
            "per example (batch_tokens=0)": lambda: ours(model, tokenizer, bundle, args.max_per_task, 0),
            f"packed (batch_tokens={args.batch_tokens})": lambda: ours(model, tokenizer, bundle, args.max_per_task, args.batch_tokens),
        }
        times: dict[str, list[float]] = {name: [] for name in methods}
        answers = {}
        for _ in range(args.repeats):
            for name, fn in methods.items():
                t0 = time.perf_counter()
                answers[name] = fn()
                times[name].append(time.perf_counter() - t0)
    first = next(iter(answers.values()))
    assert all(a == first for a in answers.values()), answers
    params = sum(p.numel() for p in model.parameters())
    print(f"depth {args.depth}, {params / 1e6:.1f}M params, vocab {len(tokenizer)}, {n_examples} examples "
          f"({args.max_per_task} per task x {len(bundle.tasks)} smoke tasks), torch threads {torch.get_num_threads()}")
    base = statistics.median(times[next(iter(methods))])
    print("| method | examples/s | vs plain loop |\n|---|---:|---:|")
    for name, ts in times.items():
        t = statistics.median(ts)
        print(f"| {name} | {n_examples / t:.1f} | {base / t:.2f}x |")
    print(f"all methods agree: {sum(first.values())}/{n_examples} correct")


if __name__ == "__main__":
    main()
