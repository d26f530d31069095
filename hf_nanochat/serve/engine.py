"""Chat generation: sampling, several samples from one prefill, the calculator tool, streaming.

Written on transformers' cache API rather than `model.generate` because tool use changes the
token stream mid-generation (nanochat's engine does the same): when a sample closes a
`<|python_start|>expr<|python_end|>` block, the expression goes to the calculator and
`<|output_start|>result<|output_end|>` is forced into that sample's next steps, while the
other samples keep sampling (the protocol itself is hf_nanochat/serve/tools.py, shared with the
RL rollouts; `generate_with_masks` says which tokens it forced). The pieces transformers has are used as they are:
`DynamicCache` (prefill once, `batch_repeat_interleave` for the samples, `batch_select_indices`
to drop finished ones) and the Temperature/TopK/TopP logits warpers.
"""
from __future__ import annotations

import codecs
import inspect
import re
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from tokenizers import decoders
from transformers import DynamicCache, PreTrainedModel, PreTrainedTokenizerBase
from transformers.convert_slow_tokenizer import bytes_to_unicode
from transformers.generation import LogitsProcessorList, TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

from hf_nanochat.data.tokenizer import (
    ASSISTANT_END,
    BOS,
    OUTPUT_END,
    OUTPUT_START,
    PYTHON_END,
    PYTHON_START,
    load_tokenizer,
    render_for_completion,
)
from hf_nanochat.serve.tools import CalculatorProtocol, ToolCall
from hf_nanochat.train.precision import resolve_precision

ENGINE_TOKENS = (BOS, ASSISTANT_END, PYTHON_START, PYTHON_END, OUTPUT_START, OUTPUT_END)

# How tool calls read in streamed text (Markdown in the web app, plain in a terminal):
#   🧮 `12*7+3` → `87`
TOOL_RENDERING = {PYTHON_START: "🧮 `", PYTHON_END: "`", OUTPUT_START: " → `", OUTPUT_END: "`"}
_RENDERED_TOOL_CALL = re.compile(r"🧮 `([^`]*)`(?: → `([^`]*)`)?(?: \(calculator refused: [^)]*\))?")


def parse_rendered_reply(text: str) -> str | list[dict]:
    """Undo `Engine.stream`'s tool rendering: a reply shown to a user, back to message content
    with python / python_output parts, so the next turn's prompt has the real tool tokens."""
    parts, end = [], 0
    for call in _RENDERED_TOOL_CALL.finditer(text):
        if call.start() > end:
            parts.append({"type": "text", "text": text[end : call.start()]})
        parts.append({"type": "python", "text": call.group(1)})
        if call.group(2) is not None:
            parts.append({"type": "python_output", "text": call.group(2)})
        end = call.end()
    if not parts:
        return text
    if end < len(text):
        parts.append({"type": "text", "text": text[end:]})
    return parts


def default_dtype(device: torch.device | str) -> torch.dtype:
    """The dtype training computes in on this device (`precision.resolve_precision("auto")`):
    bf16 on GPUs with compute capability >= 8.0, fp16 on P100/V100/T4, fp32 on CPU and MPS.
    Inference casts the weights to it (no master copy to keep, unlike training)."""
    mode = resolve_precision("auto", torch.device(device)).mode
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[mode]


def default_device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def load_chat_model(
    name_or_path: str, device: str | torch.device | None = None, dtype: torch.dtype | None = None
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Model and tokenizer from a `save_pretrained` folder or Hub id, on `device` in `dtype`
    (defaults: the best device here and the dtype training would use on it), in eval mode."""
    from transformers import AutoModelForCausalLM

    import hf_nanochat.modeling  # noqa: F401  (registers the model type with the Auto classes)

    from hf_nanochat.model_folder import check_model_source

    check_model_source(name_or_path, need_tokenizer=True)  # before transformers reads it as a Hub id
    device = torch.device(device) if device is not None else default_device()
    dtype = dtype or default_dtype(device)
    model = AutoModelForCausalLM.from_pretrained(name_or_path, dtype=dtype).to(device).eval()
    tokenizer = load_tokenizer(name_or_path)
    return model, tokenizer


def cache_keyword(model: PreTrainedModel) -> str:
    """The keyword the model's forward takes its KV cache under: `cache` (transformers >= 5.24
    models, and ours on every release) or `past_key_values` (model files written before 5.24, as
    an older checkpoint's remote code may be); passing the other name would decode without it."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


@dataclass
class _Emitted:
    sample: int
    token: int
    tool_error: str | None = None  # set on `<|python_end|>` when the calculator refused
    forced: bool = False  # a tool-output token the protocol inserted, not a sampled one
    stop: bool = False  # the sampled stop token that ended this sample (the sample emits nothing after it)


class Utf8TokenDecoder:
    """Turns byte-level BPE tokens into text, emitting only whole UTF-8 characters.

    A byte-level token can end in the middle of a character (emoji and CJK are 3-4 bytes,
    often split); decoding tokens one by one would print U+FFFD. Here tokens become their
    bytes and go through Python's incremental UTF-8 decoder, which holds back an incomplete
    tail and marks only truly invalid bytes.
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase):
        backend = getattr(tokenizer, "backend_tokenizer", None)
        if backend is None or not isinstance(backend.decoder, decoders.ByteLevel):
            raise ValueError("streaming needs a byte-level BPE tokenizer (nanochat's); this one is not")
        self._tokenizer = tokenizer
        self._byte_of = {char: byte for byte, char in bytes_to_unicode().items()}
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, token: int) -> str:
        piece = self._tokenizer.convert_ids_to_tokens(token)
        return self._utf8.decode(bytes(self._byte_of[c] for c in piece))

    def flush(self) -> str:
        """Whatever is held back, with U+FFFD for an unfinished character (end of stream)."""
        return self._utf8.decode(b"", final=True)


class Engine:
    """Generation for a chat model: `generate` (token lists), `stream` and `chat` (text)."""

    def __init__(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase):
        self.model = model
        self.tokenizer = tokenizer
        ids = {name: tokenizer.convert_tokens_to_ids(name) for name in ENGINE_TOKENS}
        missing = [name for name, i in ids.items() if i is None or i == tokenizer.unk_token_id]
        if missing:
            raise ValueError(f"tokenizer lacks the chat special tokens {missing}")
        self.ids = ids
        self.tools = CalculatorProtocol(tokenizer)  # the tool protocol, shared with the RL rollouts
        self.stop_ids = {ids[ASSISTANT_END], ids[BOS]}
        self._rendering = {ids[name]: text for name, text in TOOL_RENDERING.items()}
        # Added tokens (all chat markers) never go through the byte decoder; unrendered ones vanish.
        self._special_ids = set(tokenizer.added_tokens_decoder) | set(ids.values())

    # --- token level ---------------------------------------------------------------------------

    def generate(
        self,
        prompt_ids: list[int],
        num_samples: int = 1,
        max_tokens: int = 256,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        seed: int | None = None,
    ) -> list[list[int]]:
        """`num_samples` completions of `prompt_ids` (prompt and stop token excluded; tool
        outputs included). Sample i draws from its own generator seeded `seed + i`, so it equals
        a single-sample run with that seed."""
        results, _ = self.generate_with_masks(prompt_ids, num_samples, max_tokens, temperature, top_k, top_p, seed)
        return results

    def generate_with_masks(
        self,
        prompt_ids: list[int],
        num_samples: int = 1,
        max_tokens: int = 256,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        seed: int | None = None,
        include_stop: bool = False,
    ) -> tuple[list[list[int]], list[list[int]]]:
        """As `generate`, plus a mask per completion: 1 for sampled tokens, 0 for the tool output
        the protocol forced in (nanochat's `generate_batch` masks). `include_stop` keeps the
        sampled `<|assistant_end|>` (mask 1) at the end of the samples that stopped."""
        results: list[list[int]] = [[] for _ in range(num_samples)]
        masks: list[list[int]] = [[] for _ in range(num_samples)]
        for step in self._steps(prompt_ids, num_samples, max_tokens, temperature, top_k, top_p, seed):
            for emitted in step:
                if emitted.stop and not include_stop:
                    continue
                results[emitted.sample].append(emitted.token)
                masks[emitted.sample].append(0 if emitted.forced else 1)
        return results, masks

    @torch.inference_mode()
    def _steps(self, prompt_ids, num_samples, max_tokens, temperature, top_k, top_p, seed) -> Iterator[list[_Emitted]]:
        """One list per decoding step: the token each still-running sample added."""
        self._check_arguments(prompt_ids, num_samples, max_tokens, temperature, top_k, top_p)
        model, device = self.model, self.model.device
        context = getattr(model.config, "max_position_embeddings", None)
        if context is not None:
            if len(prompt_ids) >= context:
                raise ValueError(f"prompt has {len(prompt_ids)} tokens; the model's context is {context}")
            max_tokens = min(max_tokens, context - len(prompt_ids))
        warpers = self._warpers(temperature, top_k, top_p)
        generators = [torch.Generator(device=device) for _ in range(num_samples)]
        for i, g in enumerate(generators):
            g.manual_seed(seed + i) if seed is not None else g.seed()

        # Prefill once, then give every sample its own copy of the prompt's keys and values.
        cache = DynamicCache(config=model.config)
        prompt = torch.tensor([prompt_ids], dtype=torch.long, device=device)
        cache_kw = cache_keyword(model)
        logits = model(input_ids=prompt, **{cache_kw: cache}, use_cache=True, logits_to_keep=1).logits[:, -1]
        if num_samples > 1:
            cache.batch_repeat_interleave(num_samples)
            logits = logits.expand(num_samples, -1)

        samples = [ToolCall() for _ in range(num_samples)]
        running = list(range(num_samples))  # sample index of each cache row
        for step in range(max_tokens):
            sampled = self._sample(logits, warpers, [generators[i] for i in running], greedy=temperature == 0)
            emitted, keep_rows = [], []
            for row, (i, token) in enumerate(zip(running, sampled)):
                state = samples[i]
                token, forced = self.tools.next_token(state, token)
                if not forced and token in self.stop_ids:
                    emitted.append(_Emitted(i, token, stop=True))
                    continue
                emitted.append(_Emitted(i, token, self.tools.observe(state, token), forced=forced))
                keep_rows.append(row)
            yield emitted
            if not keep_rows or step == max_tokens - 1:
                return
            if len(keep_rows) < len(running):
                cache.batch_select_indices(torch.tensor(keep_rows, device=device))
            running = [e.sample for e in emitted if not e.stop]
            next_ids = torch.tensor([[e.token] for e in emitted if not e.stop], dtype=torch.long, device=device)
            logits = model(input_ids=next_ids, **{cache_kw: cache}, use_cache=True).logits[:, -1]

    @staticmethod
    def _warpers(temperature, top_k, top_p) -> LogitsProcessorList:
        warpers = LogitsProcessorList()
        if temperature > 0 and temperature != 1.0:
            warpers.append(TemperatureLogitsWarper(temperature))
        if top_k:
            warpers.append(TopKLogitsWarper(top_k))
        if top_p is not None and top_p < 1.0:
            warpers.append(TopPLogitsWarper(top_p))
        return warpers

    @staticmethod
    def _sample(logits, warpers, generators, greedy: bool) -> list[int]:
        if greedy:
            return logits.argmax(dim=-1).tolist()
        # Inverse-CDF sampling, batched: one uniform per sample from its own generator (so a
        # sample's draws do not depend on the others), one searchsorted for all. Dividing by the
        # last entry makes it exactly 1.0 > u, and `right=True` never lands on a zero-probability
        # token. (torch.multinomial takes one generator per call: 8x slower at 8 samples.)
        cdf = torch.softmax(warpers(None, logits.float()), dim=-1).double().cumsum(dim=-1)
        cdf = cdf / cdf[:, -1:]
        u = torch.stack([torch.rand((), generator=g, device=cdf.device, dtype=torch.float64) for g in generators])
        return torch.searchsorted(cdf, u[:, None], right=True).squeeze(1).tolist()

    @staticmethod
    def _check_arguments(prompt_ids, num_samples, max_tokens, temperature, top_k, top_p) -> None:
        if not prompt_ids:
            raise ValueError("prompt_ids is empty (a chat prompt starts with <|bos|>)")
        if num_samples < 1 or max_tokens < 1:
            raise ValueError("num_samples and max_tokens must be >= 1")
        if temperature < 0:
            raise ValueError("temperature must be >= 0 (0 = greedy)")
        if top_k is not None and top_k < 0:
            raise ValueError("top_k must be >= 0 (0 or None = off)")
        if top_p is not None and not 0 < top_p <= 1:
            raise ValueError("top_p must be in (0, 1]")

    # --- text level ----------------------------------------------------------------------------

    def stream(self, prompt_ids: list[int], **sampling) -> Iterator[str]:
        """Text of one sample as it is generated: whole characters only, tool calls rendered
        as "🧮 `expression` → `result`". Same sampling arguments as `generate`."""
        decoder = Utf8TokenDecoder(self.tokenizer)
        for step in self._steps(prompt_ids, 1, **self._sampling_defaults(sampling)):
            for emitted in step:
                if emitted.stop:
                    continue
                if emitted.token in self._special_ids:
                    text = decoder.flush() + self._rendering.get(emitted.token, "")
                    if emitted.tool_error:
                        text += f" (calculator refused: {emitted.tool_error})"
                else:
                    text = decoder.push(emitted.token)
                if text:
                    yield text
        if tail := decoder.flush():
            yield tail

    def chat(self, messages: list[dict], **sampling) -> Iterator[str]:
        """Stream the assistant's reply to a conversation ({"role", "content"} dicts)."""
        yield from self.stream(render_for_completion(self.tokenizer, messages), **sampling)

    @staticmethod
    def _sampling_defaults(sampling: dict) -> dict:
        allowed = {"max_tokens": 256, "temperature": 1.0, "top_k": None, "top_p": None, "seed": None}
        unknown = set(sampling) - set(allowed)
        if unknown:
            raise TypeError(f"unknown sampling arguments {sorted(unknown)}")
        return {**allowed, **sampling}
