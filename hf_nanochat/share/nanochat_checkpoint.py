"""Import a karpathy/nanochat checkpoint: `hf-nanochat convert from-nanochat DIR OUT`.

nanochat saves `model_<step>.pt` (a torch state dict, keys possibly prefixed `_orig_mod.` by
torch.compile, the embedding in bf16), `meta_<step>.json` (its `model_config` is GPTConfig's
kwargs) and, in a separate folder, `tokenizer.pkl` (a pickled `tiktoken.Encoding`). Our module
names are nanochat's, so weights load by name (nanochat 2026's model-level weights move under
`transformer.`); the tokenizer becomes a `tokenizer.json` with the same id for every token.

Every nanochat era converts. Constants a checkpoint does not store (rope base, q/k scale, short
window, value-embedding gate width and scale) changed during 2026 and are read off which keys
and shapes exist (/work/shared/NANOCHAT_2026.md, "Checkpoints"):

    era         tell-tale                            gate          q/k   rope  short window
    2025-11     no 2026 keys                         -             1     10K   -
    2026-01     ve_gate (kv, 32)                     2*sigmoid/32  1     10K   T/2
    2026-03-09  ve_gate (kv, 12), no smear_gate      3*sigmoid/12  1.15  100K  ceil(T/3/128)*128
    2026-03-14  ve_gate (kv, 12) + smear_gate        3*sigmoid/12  1.2   100K  ceil(T/4/128)*128

The logit softcap is 15 in every era we reproduce. A key the era does not explain is an error
naming it: nothing is ever dropped.

Safety: weights load with `torch.load(weights_only=True)`; the pickle is read by an unpickler
that admits one global, tiktoken's Encoding, and builds it from validated plain data - no
code from the file runs.
"""
from __future__ import annotations

import json
import math
import pickle
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from hf_nanochat.errors import UserError
from hf_nanochat.modeling.configuration_nanochat_gpt import NanoChatGPTConfig, window_pattern_layer_types
from hf_nanochat.modeling.modeling_nanochat_gpt import NanoChatGPTForCausalLM

# GPTConfig fields of every nanochat version we read (window_pattern arrived in January 2026).
KNOWN_CONFIG_KEYS = {"sequence_len", "vocab_size", "n_layer", "n_head", "n_kv_head", "n_embd", "window_pattern"}

# nanochat 2026's weights that sit on the GPT itself; ours live on the backbone (`transformer.`).
MODEL_LEVEL_KEYS = re.compile(r"^(value_embeds\.\d+\.weight|resid_lambdas|x0_lambdas|smear_gate\.weight|smear_lambda|backout_lambda)$")
_VE_GATE = re.compile(r"^transformer\.h\.(\d+)\.attn\.ve_gate\.weight$")
_VALUE_EMBED = re.compile(r"^value_embeds\.(\d+)\.weight$")


@dataclass(frozen=True)
class Era:
    """The constants of one nanochat era that checkpoints do not store."""

    name: str
    rope_theta: float
    qk_scale: float
    gate_channels: int | None
    gate_scale: float | None
    short_window: Callable[[int], int] | None  # sequence_len -> keys before the query on "S" layers


ERAS = {
    "2025-11": Era("2025-11 (commit 06677c3)", 10000.0, 1.0, None, None, None),
    "2026-01": Era("2026-01 (value embeddings, 32-channel gate)", 10000.0, 1.0, 32, 2.0, lambda t: t // 2),
    "2026-03-09": Era("2026-03-09 (12-channel gate, no smear)", 100000.0, 1.15, 12, 3.0, lambda t: math.ceil(t / 3 / 128) * 128),
    "2026-03-14": Era("2026-03-14+ (smear)", 100000.0, 1.2, 12, 3.0, lambda t: math.ceil(t / 4 / 128) * 128),
}

_STEP_FILE = re.compile(r"^model_(\d+)\.pt$")


class UnsupportedCheckpointError(ValueError):
    """The checkpoint uses a nanochat feature our architecture does not implement."""


# ---------------------------------------------------------------------------- weights


def find_steps(checkpoint_dir: str | Path) -> list[int]:
    """Steps with a `model_<step>.pt` in the folder, ascending (other .pt files are ignored)."""
    steps = sorted(int(m.group(1)) for p in Path(checkpoint_dir).iterdir() if (m := _STEP_FILE.match(p.name)))
    if not steps:
        raise FileNotFoundError(f"no model_<step>.pt in {checkpoint_dir}: not a nanochat checkpoint folder")
    return steps


def _step_file(checkpoint_dir: Path, prefix: str, step: int, suffix: str) -> Path:
    # nanochat writes 6-digit steps; accept any zero padding.
    for path in checkpoint_dir.glob(f"{prefix}_*{suffix}"):
        digits = path.name[len(prefix) + 1 : -len(suffix)]
        if digits.isdigit() and int(digits) == step:
            return path
    raise FileNotFoundError(f"no {prefix}_{step:06d}{suffix} in {checkpoint_dir}")


def load_checkpoint(checkpoint_dir: str | Path, step: int | None = None) -> tuple[dict, dict, int]:
    """(state dict with `_orig_mod.` stripped, meta dict, step); the latest step unless given."""
    checkpoint_dir = Path(checkpoint_dir)
    steps = find_steps(checkpoint_dir)
    if step is None:
        step = steps[-1]
    elif step not in steps:
        raise FileNotFoundError(f"step {step} not in {checkpoint_dir} (available: {steps})")
    weights = _step_file(checkpoint_dir, "model", step, ".pt")
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:  # torch's message is a page long (and suggests weights_only=False)
        lines = [line.strip() for line in str(err).splitlines() if line.strip()]
        reason = next((line for line in lines[1:] if not line.startswith("Check the documentation")), lines[0] if lines else "")
        raise UserError(f"refusing to load {weights}: it holds more than tensors, which could run code ({reason})") from None
    state = {k.removeprefix("_orig_mod."): v for k, v in state.items()}
    meta = json.loads(_step_file(checkpoint_dir, "meta", step, ".json").read_text())
    return state, meta, step


def detect_era(state_dict: dict[str, torch.Tensor]) -> str:
    """The nanochat era of a state dict (nanochat's key names), from which keys and shapes exist."""
    gates = {k: v for k, v in state_dict.items() if _VE_GATE.match(k)}
    if not gates:
        return "2025-11"
    widths = {tuple(v.shape)[1:] for v in gates.values()}
    if len(widths) != 1 or widths.pop()[0] not in (32, 12):
        shapes = {k: tuple(v.shape) for k, v in gates.items()}
        raise UnsupportedCheckpointError(f"value-embedding gates of a shape no nanochat era has: {shapes}")
    width = next(iter(gates.values())).shape[1]
    if width == 32:
        return "2026-01"
    return "2026-03-14" if "smear_gate.weight" in state_dict else "2026-03-09"


def config_from_meta(meta: dict, state_dict: dict[str, torch.Tensor]) -> NanoChatGPTConfig:
    """Our config from nanochat's meta json and the state dict's keys (any era)."""
    if "model_config" not in meta:
        raise ValueError("meta json has no 'model_config': not a nanochat checkpoint")
    mc = dict(meta["model_config"])
    unknown_keys = sorted(set(mc) - KNOWN_CONFIG_KEYS)
    if unknown_keys:
        raise UnsupportedCheckpointError(f"meta json's model_config has fields no nanochat era we know has: {unknown_keys}")
    n_layer, seq_len = mc["n_layer"], mc["sequence_len"]
    era_name = detect_era(state_dict)
    era = ERAS[era_name]
    shapes = dict(
        vocab_size=mc["vocab_size"],
        hidden_size=mc["n_embd"],
        num_hidden_layers=n_layer,
        num_attention_heads=mc["n_head"],
        num_key_value_heads=mc.get("n_kv_head", mc["n_head"]),
        max_position_embeddings=seq_len,
        rope_theta=era.rope_theta,
    )
    window = mc.get("window_pattern")
    if era_name == "2025-11":
        if window is not None and set(str(window).upper()) != {"L"}:
            raise UnsupportedCheckpointError(
                f"window_pattern={window!r} without value-embedding gates matches no nanochat era we know"
            )
        return NanoChatGPTConfig(**shapes)
    if window is None:
        raise UnsupportedCheckpointError(f"a {era.name} checkpoint whose meta json has no window_pattern")
    layer_types = window_pattern_layer_types(str(window), n_layer)
    sliding = "sliding_attention" in layer_types
    ve_layers = sorted(int(m.group(1)) for k in state_dict if (m := _VALUE_EMBED.match(k)))
    return NanoChatGPTConfig(
        **shapes,
        layer_types=layer_types,
        # transformers' window counts the query itself: nanochat's `left` + 1
        sliding_window=era.short_window(seq_len) + 1 if sliding else None,
        value_embedding_layers=ve_layers,
        value_embedding_gate_channels=era.gate_channels,
        value_embedding_gate_scale=era.gate_scale,
        smear_gate_channels=state_dict["smear_gate.weight"].shape[1] if "smear_gate.weight" in state_dict else None,
        backout_layer=n_layer // 2 if "backout_lambda" in state_dict else None,
        residual_scalars="resid_lambdas" in state_dict,
        qk_scale=era.qk_scale,
    )


def to_our_names(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """nanochat's key names -> ours: 2026's model-level weights move under `transformer.`."""
    return {("transformer." + k if MODEL_LEVEL_KEYS.match(k) else k): v for k, v in state_dict.items()}


def _unpad_vocab(state_dict: dict[str, torch.Tensor], vocab_size: int) -> dict[str, torch.Tensor]:
    # Later nanochat pads embedding, value-embedding and lm_head rows to a multiple of 64 and
    # slices logits back to vocab_size; the padding rows are never read, so dropping them loses nothing.
    for key in list(state_dict):
        if key in ("transformer.wte.weight", "lm_head.weight") or key.startswith("transformer.value_embeds."):
            if state_dict[key].shape[0] > vocab_size:
                state_dict[key] = state_dict[key][:vocab_size]
    return state_dict


def _target_dtype(state_dict: dict[str, torch.Tensor], dtype: str) -> torch.dtype:
    if dtype != "auto":
        return getattr(torch, dtype)
    # All-bf16 stays bf16; nanochat's usual mix (bf16 embedding, fp32 rest) goes to fp32, which
    # holds every bf16 value exactly.
    dtypes = {t.dtype for t in state_dict.values()}
    return dtypes.pop() if len(dtypes) == 1 else torch.float32


def model_from_checkpoint(state_dict: dict, meta: dict, dtype: str = "auto") -> NanoChatGPTForCausalLM:
    config = config_from_meta(meta, state_dict)
    era = ERAS[detect_era(state_dict)]
    state_dict = _unpad_vocab(to_our_names(state_dict), config.vocab_size)
    target = _target_dtype(state_dict, dtype)
    with torch.device("meta"):
        model = NanoChatGPTForCausalLM(config)
    expected = model.state_dict()
    extra, absent = sorted(set(state_dict) - set(expected)), sorted(set(expected) - set(state_dict))
    if extra or absent:
        raise UnsupportedCheckpointError(
            f"checkpoint weights do not match nanochat's GPT of era {era.name} (told by its keys): "
            f"unrecognised {extra[:8]}, missing {absent[:8]}"
        )
    wrong = [f"{k} {tuple(v.shape)} (expected {tuple(expected[k].shape)})" for k, v in state_dict.items() if v.shape != expected[k].shape]
    if wrong:
        raise UnsupportedCheckpointError("checkpoint weights of unexpected shapes: " + "; ".join(wrong[:8]))
    # assign=True swaps the meta tensors for the loaded ones (no second copy, no random init).
    model.load_state_dict({k: v.to(target) for k, v in state_dict.items()}, strict=True, assign=True)
    model.config.dtype = target
    return model.eval()


# ---------------------------------------------------------------------------- tokenizer


class _PickledEncoding:
    """Stands in for tiktoken.Encoding while unpickling: records the state, runs nothing."""

    def __setstate__(self, state):
        self.state = state


class _TiktokenOnlyUnpickler(pickle.Unpickler):
    # Every callable a pickle can invoke comes through find_class; admitting only the Encoding
    # class (mapped to an inert stand-in) means the file cannot execute code.
    def find_class(self, module: str, name: str):
        if (module, name) in (("tiktoken.core", "Encoding"), ("tiktoken", "Encoding")):
            return _PickledEncoding
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from tokenizer.pkl (only tiktoken.Encoding)")


def load_tiktoken_pickle(path: str | Path):
    """nanochat's tokenizer.pkl as a tiktoken.Encoding, without running code from the file."""
    import tiktoken

    with open(path, "rb") as f:
        obj = _TiktokenOnlyUnpickler(f).load()
    state = getattr(obj, "state", None) if isinstance(obj, _PickledEncoding) else None
    ok = (
        isinstance(state, dict)
        and set(state) == {"name", "pat_str", "mergeable_ranks", "special_tokens"}
        and isinstance(state["name"], str)
        and isinstance(state["pat_str"], str)
        and isinstance(state["mergeable_ranks"], dict)
        and all(isinstance(k, bytes) and type(v) is int for k, v in state["mergeable_ranks"].items())
        and isinstance(state["special_tokens"], dict)
        and all(isinstance(k, str) and type(v) is int for k, v in state["special_tokens"].items())
    )
    if not ok:
        # A str state would make tiktoken fetch a registered encoding by name; refuse that too.
        raise pickle.UnpicklingError(f"{path} does not hold a self-contained tiktoken Encoding")
    return tiktoken.Encoding(**state)


def tiktoken_to_tokenizers(encoding):
    """The same BPE as a `tokenizers.Tokenizer`: every token and special keeps its id.

    transformers' TikTokenConverter recovers the merges from the ranks; it reads ranks from a
    file, so it is handed the in-memory ones instead.
    """
    from transformers.convert_slow_tokenizer import TikTokenConverter

    ranks = encoding._mergeable_ranks
    specials = sorted(encoding._special_tokens.items(), key=lambda kv: kv[1])
    if [i for _, i in specials] != list(range(len(ranks), len(ranks) + len(specials))):
        raise ValueError("special tokens must take the ids right after the mergeable ranks")

    class _InMemory(TikTokenConverter):
        @staticmethod
        def load_tiktoken_bpe(_):
            return ranks

    converter = _InMemory(vocab_file=None, pattern=encoding._pat_str, extra_special_tokens=[t for t, _ in specials])
    tokenizer = converter.converted()
    # Plain ids in, plain ids out: nanochat adds <|bos|> itself where it belongs.
    tokenizer.post_processor = None
    for token, token_id in specials:
        if tokenizer.token_to_id(token) != token_id:
            raise AssertionError(f"special {token} got id {tokenizer.token_to_id(token)}, nanochat has {token_id}")
    return tokenizer


def find_tokenizer_pickle(checkpoint_dir: Path, tokenizer_dir: str | Path | None) -> Path:
    if tokenizer_dir is not None:
        candidates = [Path(tokenizer_dir) / "tokenizer.pkl"]
    else:
        # nanochat's layout: $NANOCHAT_BASE_DIR/{tokenizer/, base_checkpoints/d20/}
        candidates = [
            checkpoint_dir / "tokenizer.pkl",
            checkpoint_dir / "tokenizer" / "tokenizer.pkl",
            checkpoint_dir.parent.parent / "tokenizer" / "tokenizer.pkl",
        ]
    for path in candidates:
        if path.is_file():
            return path
    raise FileNotFoundError(
        "nanochat's tokenizer.pkl not found (looked in " + ", ".join(str(c) for c in candidates) + "); pass --tokenizer-dir"
    )


# ---------------------------------------------------------------------------- the command


def convert_nanochat_checkpoint(
    checkpoint_dir: str | Path,
    out: str | Path,
    tokenizer_dir: str | Path | None = None,
    step: int | None = None,
    dtype: str = "auto",
) -> Path:
    """Write a nanochat checkpoint (+ its tokenizer) as a `save_pretrained` folder of ours."""
    checkpoint_dir, out = Path(checkpoint_dir), Path(out)
    pkl = find_tokenizer_pickle(checkpoint_dir, tokenizer_dir)  # fail before the slow part
    state_dict, meta, step = load_checkpoint(checkpoint_dir, step)
    model = model_from_checkpoint(state_dict, meta, dtype)
    encoding = load_tiktoken_pickle(pkl)
    if encoding.n_vocab != model.config.vocab_size:
        raise ValueError(f"tokenizer has {encoding.n_vocab} tokens but the model's vocab_size is {model.config.vocab_size}")
    from hf_nanochat.data.tokenizer import chat_tokenizer

    tokenizer = chat_tokenizer(tiktoken_to_tokenizers(encoding))
    model.config.bos_token_id = tokenizer.bos_token_id
    model.config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    from hf_nanochat.model_folder import match_permissions

    match_permissions(out)  # safetensors writes 0600; the rest is 0644
    record = {**meta, "converted_from_step": step, "nanochat_era": detect_era(state_dict)}
    (out / "nanochat_meta.json").write_text(json.dumps(record, indent=2))
    return out
