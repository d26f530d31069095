"""RL rollout speed: tokens/s of the RL stage's rollouts through TRL's GRPOTrainer vs the chat
Engine's own batched sampling, on the same model, prompts and seeds (so the same tokens).

    python benchmarks/rl_rollout_speed.py [--depth 2] [--questions 4] [--samples 8] [--max-tokens 48]

  engine          Engine.generate_with_masks per question (one prefill, samples batched), the
                  calls the rollout makes, timed alone
  trainer rollout GRPOTrainer._generate: our rollout_func (the same Engine calls) + TRL's decoding
                  and length statistics
  trainer step    GRPOTrainer._generate_and_score_completions: the above + rewards, padding and
                  group-mean advantages (everything before the loss)
  trl generate    for comparison, TRL's own generation path (no rollout_func): one left-padded
                  `model.generate` over all the samples, no calculator tool; its own tokens (its
                  sampler differs), so only tokens/s compare

Random weights (nanochat's zero-initialised projections randomised) so samples do not stop at
once; every sample runs to --max-tokens unless it draws <|assistant_end|>. Results in
benchmarks/RESULTS.md.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import torch  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--depth", type=int, default=2)
    parser.add_argument("--questions", type=int, default=4)
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    import tempfile

    from chat_helpers import randomise_zero_initialised
    from rl_helpers import addition_conversations
    from sft_helpers import tiny_tokenizer
    from trl import GRPOTrainer

    from hf_nanochat import NanoChatGPTConfig, NanoChatGPTForCausalLM
    from hf_nanochat.data.tokenizer import render_for_completion
    from hf_nanochat.serve.engine import Engine
    from hf_nanochat.train.rewards import answer_match
    from hf_nanochat.train.rl import EngineRollout, RLStageConfig, grpo_args, prompt_dataset, rollout_seed, trl_reward

    torch.manual_seed(0)
    tok = tiny_tokenizer()
    model = randomise_zero_initialised(NanoChatGPTForCausalLM(NanoChatGPTConfig.from_depth(args.depth, vocab_size=len(tok), max_position_embeddings=256))).eval()
    questions = list(prompt_dataset(addition_conversations(1)).select(range(args.questions)))
    inputs = [q for q in questions for _ in range(args.samples)]  # TRL's RepeatSampler order

    with tempfile.TemporaryDirectory() as tmp:
        cfg = RLStageConfig.from_dict(dict(
            model="unused", output_dir=tmp, num_samples=args.samples, examples_per_step=args.questions,
            device_batch_size=args.samples, rollout_batch_size=args.samples, max_new_tokens=args.max_tokens, top_k=50,
            precision="fp32", data={"train": [{"source": "arithmetic", "size": 1}]}))
        rollout = EngineRollout(tok, args.max_tokens, 1.0, 50, args.samples, cfg.seed)
        trainer = GRPOTrainer(model=model, reward_funcs=[trl_reward(answer_match, tok, {})],
                              args=grpo_args(cfg, 1, {"bf16": False, "fp16": False, "use_cpu": True}),
                              train_dataset=prompt_dataset(addition_conversations(1)), processing_class=tok, rollout_func=rollout)
        model.train()  # as during training (the rollout switches to eval and back)

        engine = Engine(model, tok)

        def engine_calls():
            out = []
            for g, q in enumerate(questions):
                ids, _ = engine.generate_with_masks(render_for_completion(tok, q["prompt"]), num_samples=args.samples,
                                                    max_tokens=args.max_tokens, temperature=1.0, top_k=50,
                                                    seed=rollout_seed(cfg.seed, 0, 0, g, 0), include_stop=True)
                out += ids
            return out

        def trainer_rollout():
            return trainer._generate([q["prompt"] for q in inputs])[1]

        def trainer_step():
            batch = trainer._generate_and_score_completions([dict(q) for q in inputs])
            return [row[m.bool()].tolist() for row, m in zip(batch["completion_ids"], batch["completion_mask"])]

        reference = engine_calls()
        tokens = sum(map(len, reference))
        paths = {"engine": engine_calls, "trainer rollout": trainer_rollout, "trainer step": trainer_step}
        for name, fn in paths.items():
            print(f"warm-up: {name}", flush=True)
            assert fn() == reference, f"{name}: different tokens than the Engine's own calls"  # same work in every row
        plain = GRPOTrainer(model=model, reward_funcs=[trl_reward(answer_match, tok, {})],
                            args=grpo_args(cfg, 1, {"bf16": False, "fp16": False, "use_cpu": True}),
                            train_dataset=prompt_dataset(addition_conversations(1)), processing_class=tok)
        counts = {name: tokens for name in paths}

        def trl_generate():
            completions = plain._generate([q["prompt"] for q in inputs])[1]
            counts["trl generate"] = sum(map(len, completions))

        paths["trl generate"] = trl_generate
        print("warm-up: trl generate", flush=True)
        trl_generate()
        times = {name: [] for name in paths}
        for _ in range(args.repeats):  # interleaved, so a busy machine slows every path alike
            for name, fn in paths.items():
                t0 = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t0)
        rows = [(name, min(t), counts[name]) for name, t in times.items()]

    print(f"depth {args.depth}, {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M params, {args.questions} questions x "
          f"{args.samples} samples, <= {args.max_tokens} new tokens, {tokens} tokens per rollout, torch threads {torch.get_num_threads()}")
    base = tokens / rows[0][1]
    for name, seconds, n in rows:
        print(f"  {name:16s} {n / seconds:9.0f} tokens/s  ({n} tokens in {seconds * 1000:7.1f} ms; {n / seconds / base:.2f}x the Engine's tokens/s)")


if __name__ == "__main__":
    main()
