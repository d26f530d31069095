"""SFT throughput: our SFTTrainer stage setup vs the same model and batches in a plain PyTorch loop.

Both sides train the same model (depth 4, vocab 4096) on the same packed, padding-free batches
(TRL's bfd packing of synthetic chat data, rows of 512 tokens x 4) with the same optimizer
(nanochat's AdamW groups). The plain loop is forward(labels) -> backward -> clip -> step ->
zero_grad. SFTTrainer adds its fused LM-head loss, Accelerate, callbacks and logging.
Rounds alternate between the two (medians over rounds); the first steps of each round are warmup.

    OMP_NUM_THREADS=2 python benchmarks/sft_speed.py [--rounds 3 --steps 12]
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch
from transformers import TrainerCallback
from trl import SFTConfig, SFTTrainer

from hf_nanochat import NanoChatGPTConfig, NanoChatGPTForCausalLM
from hf_nanochat.data.chat_data import build_mixture
from hf_nanochat.train.optim import build_optimizer
from hf_nanochat.train.sft import tokenize_conversations
from hf_nanochat.data.tokenizer import train_tokenizer

WARMUP = 2


class StepTimer(TrainerCallback):
    def __init__(self):
        self.times: list[float] = []

    def on_step_begin(self, args, state, control, **kwargs):
        self._t = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.times.append(time.perf_counter() - self._t)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--depth", type=int, default=4)
    args = parser.parse_args()

    specs = [{"source": "arithmetic", "size": 600}, {"source": "identity", "size": 600}]
    specs += [{"source": s, "size": 600, "words": "bundled"} for s in ("spelling_bee", "simple_spelling")]
    conversations = build_mixture(specs)
    texts = ["".join(p["text"] for m in row for p in m["content"]) for row in conversations["messages"]]
    tokenizer = train_tokenizer(texts, vocab_size=4096)
    data = tokenize_conversations(conversations, tokenizer, max_length=512)
    torch.manual_seed(0)
    model = NanoChatGPTForCausalLM(NanoChatGPTConfig.from_depth(args.depth, vocab_size=len(tokenizer), max_position_embeddings=512))
    optimizer = build_optimizer(model, kind="adamw")
    timer = StepTimer()
    with tempfile.TemporaryDirectory() as out:
        sft_args = SFTConfig(
            output_dir=out, max_length=512, packing=True, per_device_train_batch_size=4, max_steps=args.steps,
            use_cpu=True, bf16=False, activation_checkpointing=False, logging_steps=1, save_strategy="no", seed=0,
            report_to=[], disable_tqdm=True, log_level="error", max_grad_norm=1.0,
        )
        trainer = SFTTrainer(model=model, args=sft_args, train_dataset=data, processing_class=tokenizer, optimizers=(optimizer, None), callbacks=[timer])
        batches = [b for _, b in zip(range(args.steps), trainer.get_train_dataloader())]
        batch_tokens = [int(b["input_ids"].numel()) for b in batches]

        trl_rates, plain_rates = [], []
        for _ in range(args.rounds):
            timer.times.clear()
            trainer.train()
            # tokens the trainer itself counted (cumulative per step) after the warmup steps
            seen = [h["num_tokens"] for h in trainer.state.log_history if "num_tokens" in h and "loss" in h]
            trl_rates.append((seen[-1] - seen[WARMUP - 1]) / sum(timer.times[WARMUP:]))

            model.train()
            times = []
            for batch in batches:
                t = time.perf_counter()
                out_ = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], labels=batch["labels"])
                out_.loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                times.append(time.perf_counter() - t)
            plain_rates.append(sum(batch_tokens[WARMUP:]) / sum(times[WARMUP:]))

    trl, plain = statistics.median(trl_rates), statistics.median(plain_rates)
    print(f"depth {args.depth}, vocab {len(tokenizer)}, packed rows 4 x 512, {args.steps} steps x {args.rounds} rounds, threads {torch.get_num_threads()}")
    print("| | SFTTrainer (ours) | plain PyTorch loop | ours/plain |")
    print("|---|---:|---:|---:|")
    print(f"| SFT train tokens/s | {trl:.0f} | {plain:.0f} | {trl / plain:.2f} |")


if __name__ == "__main__":
    main()
