"""Generation speed, side by side in one run, on CPU, same weights everywhere:

- `Engine.generate` (ours: DynamicCache, one shared prefill for all samples, tool-use state machine)
- `model.generate` on our NanoChatGPTForCausalLM (transformers' generation loop)
- `model.generate` on transformers' built-in NanoChatForCausalLM (`convert.to_transformers`)

at batch 1 (greedy) and batch 8 (8 samples of one prompt, temperature 1, top-k 50), with a
32-token prompt and 128 new tokens; tokens/s = samples x new tokens / wall time, prefill
included. Chat special tokens are suppressed in all three so every run makes exactly 128
tokens (a random model would otherwise stop or call the calculator at random).
Then time to first token in the Gradio app, seen by a `gradio_client` (HTTP, queue and all)
and by `Engine.stream` directly.

Runs are interleaved and medians reported, so load from other processes hits all alike.

    OMP_NUM_THREADS=2 python benchmarks/generate_speed.py
"""
from __future__ import annotations

import argparse
import pathlib
import socket
import statistics
import time

import torch
from torch import nn

import hf_nanochat
from hf_nanochat import NanoChatGPTConfig, NanoChatGPTForCausalLM
from hf_nanochat.serve.app import ChatLimits, build_app
from hf_nanochat.share.convert import to_transformers
from hf_nanochat.serve.engine import Engine
from hf_nanochat.data.tokenizer import SPECIAL_TOKENS, train_tokenizer


def corpus(max_chars: int = 3_000_000) -> list[str]:
    """Local text to train a benchmark tokenizer on (Python sources of installed packages)."""
    texts, total = [], 0
    for path in sorted(pathlib.Path(torch.__file__).parent.rglob("*.py")):
        text = path.read_text(errors="ignore")
        texts.append(text)
        total += len(text)
        if total > max_chars:
            break
    return texts


class NoChatTokens(nn.Module):
    """Our model with the chat special tokens' logits at -inf (what `suppress_tokens` does in
    `model.generate`), so the engine also always generates the full length."""

    def __init__(self, model: nn.Module, special_ids: list[int]):
        super().__init__()
        self.inner, self.config, self.special_ids = model, model.config, special_ids

    @property
    def device(self):
        return self.inner.device

    def forward(self, **kwargs):
        out = self.inner(**kwargs)
        out.logits[..., self.special_ids] = float("-inf")
        return out


def median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--vocab-size", type=int, default=8192)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.manual_seed(0)

    tokenizer = train_tokenizer(corpus(), vocab_size=args.vocab_size)
    special_ids = tokenizer.convert_tokens_to_ids(SPECIAL_TOKENS)
    config = NanoChatGPTConfig.from_depth(args.depth, vocab_size=len(tokenizer), max_position_embeddings=1024)
    ours = NanoChatGPTForCausalLM(config).eval()
    with torch.no_grad():
        for p in ours.parameters():  # zero-initialised projections would make every token equal
            if p.abs().sum() == 0:
                p.normal_(0, 0.02)
    builtin = to_transformers(ours).eval()
    engine = Engine(NoChatTokens(ours, special_ids), tokenizer)
    prompt = list(range(100, 132))
    prompt_t = torch.tensor([prompt])
    n = args.new_tokens

    def hf_generate(model, batch):
        sampling = dict(do_sample=True, top_k=50, temperature=1.0) if batch > 1 else dict(do_sample=False)
        out = model.generate(
            prompt_t, max_new_tokens=n, min_new_tokens=n, num_return_sequences=batch, suppress_tokens=special_ids,
            pad_token_id=special_ids[0], eos_token_id=None, **sampling,
        )
        assert out.shape == (batch, len(prompt) + n)

    def engine_generate(batch):
        kw = dict(temperature=1.0, top_k=50, seed=0) if batch > 1 else dict(temperature=0.0)
        out = engine.generate(prompt, num_samples=batch, max_tokens=n, **kw)
        assert [len(o) for o in out] == [n] * batch

    print(f"depth {args.depth}, vocab {len(tokenizer)}, {sum(p.numel() for p in ours.parameters()):,} params, "
          f"prompt {len(prompt)}, {n} new tokens, torch threads {torch.get_num_threads()}")
    with torch.inference_mode():
        engine_generate(1), hf_generate(ours, 1), hf_generate(builtin, 1)  # warm-up
        for batch in (1, 8):
            times = {"engine": [], "ours": [], "builtin": []}
            for _ in range(args.repeats):  # interleaved
                times["engine"].append(median_time(lambda: engine_generate(batch), 1))
                times["ours"].append(median_time(lambda: hf_generate(ours, batch), 1))
                times["builtin"].append(median_time(lambda: hf_generate(builtin, batch), 1))
            tps = {k: batch * n / statistics.median(v) for k, v in times.items()}
            print(f"batch {batch}: Engine.generate {tps['engine']:.0f} tok/s | model.generate (ours) {tps['ours']:.0f} tok/s | "
                  f"model.generate (built-in NanoChatForCausalLM) {tps['builtin']:.0f} tok/s | "
                  f"engine/ours {tps['engine'] / tps['ours']:.2f} | engine/builtin {tps['engine'] / tps['builtin']:.2f}")

    # Time to first token: Engine.stream alone, and through the app with a real HTTP client.
    messages = [{"role": "user", "content": "Why is the sky blue?"}]

    def first_chunk():
        stream = engine.chat(messages, temperature=0.6, top_k=50, max_tokens=64)
        next(stream)
        stream.close()

    first_chunk()
    direct = median_time(first_chunk, 10)
    from gradio_client import Client

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    demo = build_app(NoChatTokens(ours, special_ids), tokenizer, ChatLimits(), model_name="bench")
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, ssr_mode=False, quiet=True)
    client = Client(f"http://127.0.0.1:{port}/", verbose=False)
    ttfts = []
    for _ in range(11):
        start = time.perf_counter()
        job = client.submit("Why is the sky blue?", 0.6, 50, 64, api_name="/chat")
        for _update in job:
            ttfts.append(time.perf_counter() - start)
            break
        job.cancel()
        while not job.done():
            time.sleep(0.05)
    demo.close()
    print(f"time to first token: Engine.stream {direct * 1e3:.1f} ms | app via gradio_client {statistics.median(ttfts[1:]) * 1e3:.0f} ms "
          f"(median of {len(ttfts) - 1}, hf_nanochat {hf_nanochat.__version__})")


if __name__ == "__main__":
    main()
