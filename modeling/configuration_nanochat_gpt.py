"""Configuration of nanochat's depth-scaled GPT.

This file travels with every checkpoint (trust_remote_code), so it imports only
transformers. The model type is `nanochat_gpt`: transformers already owns
`nanochat` for its inference-only port of the same architecture.
"""
from __future__ import annotations

import math

from transformers import PreTrainedConfig

# nanochat's scaling rule: the model is 64 channels wide per layer of depth and
# attention heads are (about) 128 channels each.
CHANNELS_PER_LAYER = 64
TARGET_HEAD_DIM = 128

# The model families `from_depth(architecture=...)` builds.
ARCHITECTURES = ("2025-11", "2026")
# Layer kinds of `layer_types`, in transformers' names (the mask functions and cache layers read them).
LAYER_TYPES = ("full_attention", "sliding_attention")


def window_pattern_layer_types(pattern: str, num_layers: int) -> list[str]:
    """nanochat's `window_pattern` ("SSSL": S = short window, L = full) tiled over the layers,
    the last layer always full (nanochat/gpt.py, `_compute_window_sizes`)."""
    pattern = pattern.upper()
    if not pattern or set(pattern) - {"S", "L"}:
        raise ValueError(f"window_pattern must be a non-empty string of 'S' and 'L', got {pattern!r}")
    types = ["sliding_attention" if pattern[i % len(pattern)] == "S" else "full_attention" for i in range(num_layers)]
    types[-1] = "full_attention"
    return types


def nanochat_short_window(seq_len: int, fraction: int = 4) -> int:
    """nanochat's short window `left` (keys before the query): seq_len/fraction rounded up to 128.
    A query sees left+1 keys; transformers' `sliding_window` counts the query too, so it is left+1."""
    return math.ceil(seq_len / fraction / 128) * 128


def value_embedding_layer_ids(num_layers: int) -> list[int]:
    """nanochat's value-embedding layers: alternate layers, the last always included
    (`has_ve`: `i % 2 == (n_layer - 1) % 2`)."""
    return [i for i in range(num_layers) if i % 2 == (num_layers - 1) % 2]


class NanoChatGPTConfig(PreTrainedConfig):
    r"""Shapes and numerics of nanochat's GPT.

    Build one with [`NanoChatGPTConfig.from_depth`], which applies nanochat's scaling rule
    (`hidden_size = 64 * depth`, `num_attention_heads = ceil(hidden_size / 128)`).

    Two architectures share this config. The defaults are nanochat's Nov 2025 model (commit
    06677c3); every field after `tie_word_embeddings` below switches on one feature of the model
    nanochat trains since January 2026, and `from_depth(depth, architecture="2026")` sets them all
    as nanochat master does (width `ceil(64*depth/128)*128`, heads of 128, vocab 32768 padded to
    64, rope base 100K, window pattern "SSSL", q/k scale 1.2, smear, backout, value embeddings,
    per-layer residual scalars). `nanochat_architecture` says which family a config is.

    Args:
        vocab_size (`int`, defaults to 65536):
            Number of token ids (nanochat's BPE has 2**16, the 9 special tokens included).
        hidden_size (`int`, defaults to 1280):
            Width of the residual stream (`n_embd` in nanochat).
        num_hidden_layers (`int`, defaults to 20):
            Number of transformer blocks (`n_layer`, the "depth").
        num_attention_heads (`int`, defaults to 10):
            Query heads (`n_head`); must divide `hidden_size` into an even head dimension.
        num_key_value_heads (`int`, *optional*):
            Key/value heads (`n_kv_head`) for grouped-query attention; must divide
            `num_attention_heads`. Defaults to `num_attention_heads` (plain multi-head attention).
        intermediate_size (`int`, *optional*):
            Hidden width of the MLP; defaults to `4 * hidden_size`.
        max_position_embeddings (`int`, defaults to 2048):
            Context length the model is trained for (`sequence_len`). Rotary angles are computed
            from positions on the fly, so longer inputs run but are out of distribution.
        rope_parameters (`dict`, *optional*):
            Rotary embedding settings in transformers' standard form: `rope_type` ("default" is
            nanochat's plain rotary; "linear", "dynamic", "yarn", ... are transformers' RoPE
            scaling types) and `rope_theta`, the base of the rotary frequencies (10000.0, nanochat's
            value, when not given), plus whatever the scaling type needs (e.g. `factor`).
            `rope_theta=` (the key of configs written before this field existed) still works: it
            lands in `rope_parameters`, and `config.rope_theta` reads it back.
        rms_norm_eps (`float`, *optional*):
            Epsilon of the parameter-free RMSNorms. `None` (nanochat's choice) uses the input
            dtype's machine epsilon, as `torch.nn.functional.rms_norm` does with no eps.
        final_logit_softcapping (`float`, *optional*, defaults to 15.0):
            Logits are squashed as `cap * tanh(logits / cap)` in fp32. The name is the one TRL
            and transformers read, so their own loss paths reproduce ours.
        use_cache (`bool`, defaults to `True`):
            Whether generation keeps a key/value cache.
        bos_token_id / eos_token_id / pad_token_id (`int`, *optional*):
            Special ids, set from the tokenizer (`<|bos|>`, `<|assistant_end|>`).
        tie_word_embeddings (`bool`, defaults to `False`):
            nanochat's embedding and lm_head are separate matrices; keep this `False`.
        pad_vocab_size_to_multiple_of (`int`, defaults to 1):
            Embedding, value-embedding and lm_head rows are padded up to a multiple of this (64 in
            nanochat 2026, for matmul tiling); logits are sliced back to `vocab_size`.
        layer_types (`list[str]`, *optional*):
            Per layer "full_attention" or "sliding_attention" (transformers' names, read by its mask
            functions and cache layers). `None` = all full.
        sliding_window (`int`, *optional*):
            Keys a "sliding_attention" query sees, itself included (transformers' convention:
            key j is visible to query i iff i - sliding_window < j <= i). nanochat's window
            `left` = 512 is `sliding_window = 513`.
        value_embedding_layers (`list[int]`, *optional*):
            Layers whose values get a per-token value embedding (`value_embeds.{i}`, looked up
            from the input ids) added through a per-kv-head gate:
            `v += scale * sigmoid(ve_gate(h[..., :channels])) * value_embeds[i][ids]`.
        value_embedding_gate_channels (`int`, defaults to 12):
            Leading channels of the normed block input the value-embedding gate reads.
        value_embedding_gate_scale (`float`, defaults to 3.0):
            The gate is `scale * sigmoid(...)`, in (0, scale).
        smear_gate_channels (`int`, *optional*):
            Token smear: `x_t += smear_lambda * sigmoid(smear_gate(x_t[:channels])) * x_{t-1}` on
            the normed embedding (24 in nanochat). `None` = no smear. Not applied at position 0
            (a document start, left padding's first real token).
        backout_layer (`int`, *optional*):
            Before the final norm, `x -= backout_lambda * x_mid` with `x_mid` the residual stream
            after this layer (nanochat: `num_hidden_layers // 2`). `None` = no backout.
        residual_scalars (`bool`, defaults to `False`):
            Before each block, `x = resid_lambdas[i] * x + x0_lambdas[i] * x0` (x0 = the smeared
            normed embedding).
        qk_scale (`float`, defaults to 1.0):
            Queries and keys are multiplied by this after the QK norm (nanochat 2026: 1.2).
    """

    model_type = "nanochat_gpt"
    keys_to_ignore_at_inference = ["cache", "past_key_values"]
    # nanochat's own names, for readers of nanochat's code.
    attribute_map = {
        "n_layer": "num_hidden_layers",
        "n_embd": "hidden_size",
        "n_head": "num_attention_heads",
        "n_kv_head": "num_key_value_heads",
        "sequence_len": "max_position_embeddings",
    }

    vocab_size: int = 65536
    hidden_size: int = 1280
    num_hidden_layers: int = 20
    num_attention_heads: int = 10
    num_key_value_heads: int | None = None
    intermediate_size: int | None = None
    max_position_embeddings: int = 2048
    rope_parameters: dict | None = None
    rms_norm_eps: float | None = None
    final_logit_softcapping: float | None = 15.0
    use_cache: bool = True
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None
    pad_token_id: int | None = None
    tie_word_embeddings: bool = False
    # nanochat 2026 features; the defaults are the Nov 2025 model (see the docstring).
    pad_vocab_size_to_multiple_of: int = 1
    layer_types: list[str] | None = None
    sliding_window: int | None = None
    value_embedding_layers: list[int] | None = None
    value_embedding_gate_channels: int = 12
    value_embedding_gate_scale: float = 3.0
    smear_gate_channels: int | None = None
    backout_layer: int | None = None
    residual_scalars: bool = False
    qk_scale: float = 1.0

    def __post_init__(self, **kwargs):
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads
        if self.intermediate_size is None:
            self.intermediate_size = 4 * self.hidden_size
        self._validate_shapes()
        super().__post_init__(**kwargs)

    def _validate_shapes(self) -> None:
        if self.num_hidden_layers < 1:
            raise ValueError(f"num_hidden_layers (depth) must be >= 1, got {self.num_hidden_layers}")
        if self.vocab_size < 1:
            raise ValueError(f"vocab_size must be >= 1, got {self.vocab_size}")
        if self.num_attention_heads < 1 or self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size ({self.hidden_size}) must be divisible by num_attention_heads "
                f"({self.num_attention_heads})"
            )
        if (self.hidden_size // self.num_attention_heads) % 2:
            raise ValueError(
                f"head dimension hidden_size/num_attention_heads = {self.hidden_size // self.num_attention_heads} "
                "must be even for rotary embeddings"
            )
        if self.num_key_value_heads < 1 or self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"num_key_value_heads ({self.num_key_value_heads}) must divide num_attention_heads "
                f"({self.num_attention_heads})"
            )
        if self.tie_word_embeddings:
            raise ValueError("nanochat's GPT has an untied lm_head: tie_word_embeddings must be False")
        self._validate_2026_features()

    def _validate_2026_features(self) -> None:
        n = self.num_hidden_layers
        if self.pad_vocab_size_to_multiple_of < 1:
            raise ValueError(f"pad_vocab_size_to_multiple_of must be >= 1, got {self.pad_vocab_size_to_multiple_of}")
        if self.layer_types is None:
            if self.sliding_window is not None:
                # transformers' cache would make every layer sliding; say which ones explicitly.
                raise ValueError("sliding_window needs layer_types saying which layers slide")
            # Every layer full (Nov 2025). A list, never None: transformers' mask and cache code
            # (generate's static-cache masks among it) iterates over it whenever it exists.
            self.layer_types = ["full_attention"] * n
        if len(self.layer_types) != n or set(self.layer_types) - set(LAYER_TYPES):
            raise ValueError(f"layer_types must list {n} entries out of {LAYER_TYPES}, got {self.layer_types}")
        if "sliding_attention" in self.layer_types and (self.sliding_window is None or self.sliding_window < 1):
            raise ValueError("layer_types has sliding_attention layers: set sliding_window (keys per query, >= 1)")
        if self.value_embedding_layers is not None:
            bad = [i for i in self.value_embedding_layers if not 0 <= i < n]
            if bad or len(set(self.value_embedding_layers)) != len(self.value_embedding_layers):
                raise ValueError(f"value_embedding_layers must be distinct layer indices in [0, {n}), got {self.value_embedding_layers}")
            if not 1 <= self.value_embedding_gate_channels <= self.hidden_size:
                raise ValueError(f"value_embedding_gate_channels must be in [1, hidden_size], got {self.value_embedding_gate_channels}")
        if self.smear_gate_channels is not None and not 1 <= self.smear_gate_channels <= self.hidden_size:
            raise ValueError(f"smear_gate_channels must be in [1, hidden_size] or None, got {self.smear_gate_channels}")
        if self.backout_layer is not None and not 0 <= self.backout_layer < n:
            raise ValueError(f"backout_layer must be a layer index in [0, {n}) or None, got {self.backout_layer}")

    @property
    def padded_vocab_size(self) -> int:
        """Rows of the embedding, value embeddings and lm_head (logits are sliced to vocab_size)."""
        m = self.pad_vocab_size_to_multiple_of
        return -(-self.vocab_size // m) * m

    @property
    def nanochat_architecture(self) -> str:
        """"2026" when any nanochat-2026 feature is on, else "2025-11" (the model
        transformers' built-in `nanochat` type also holds)."""
        features = (
            self.pad_vocab_size_to_multiple_of != 1,
            self.layer_types is not None and "sliding_attention" in self.layer_types,
            bool(self.value_embedding_layers),
            self.smear_gate_channels is not None,
            self.backout_layer is not None,
            self.residual_scalars,
            self.qk_scale != 1.0,
        )
        return "2026" if any(features) else "2025-11"

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    # Kept for code written against the field this config had before `rope_parameters`;
    # transformers' own RoPE code reads `rope_parameters["rope_theta"]`.
    @property
    def rope_theta(self) -> float:
        return (getattr(self, "rope_parameters", None) or {}).get("rope_theta", self.default_theta)

    @rope_theta.setter
    def rope_theta(self, value: float) -> None:
        self.rope_parameters = {**(getattr(self, "rope_parameters", None) or {}), "rope_theta": value}

    @classmethod
    def from_depth(
        cls,
        depth: int,
        vocab_size: int | None = None,
        max_position_embeddings: int = 2048,
        num_key_value_heads: int | None = None,
        architecture: str = "2025-11",
        **kwargs,
    ) -> "NanoChatGPTConfig":
        """nanochat's shapes for a depth: width 64*depth, heads of ~128 channels (Nov 2025), or
        with `architecture="2026"` nanochat master's model (see `_depth_2026`)."""
        if not isinstance(depth, int) or depth < 1:
            raise ValueError(f"depth must be an integer >= 1, got {depth!r}")
        if architecture not in ARCHITECTURES:
            raise ValueError(f"architecture must be one of {ARCHITECTURES}, got {architecture!r}")
        if architecture == "2026":
            return cls._depth_2026(depth, max_position_embeddings, num_key_value_heads, vocab_size or 32768, **kwargs)
        vocab_size = vocab_size or 65536
        hidden_size = CHANNELS_PER_LAYER * depth
        num_heads = max(1, math.ceil(hidden_size / TARGET_HEAD_DIM))
        if hidden_size % num_heads:
            raise ValueError(
                f"depth {depth} gives width {hidden_size}, which {num_heads} heads (ceil(width/128)) "
                "do not divide; pick a depth whose width splits into ~128-channel heads"
            )
        return cls(
            vocab_size=vocab_size,
            hidden_size=hidden_size,
            num_hidden_layers=depth,
            num_attention_heads=num_heads,
            num_key_value_heads=num_key_value_heads,
            max_position_embeddings=max_position_embeddings,
            **kwargs,
        )

    @classmethod
    def _depth_2026(cls, depth, max_position_embeddings, num_key_value_heads, vocab_size, window_pattern="SSSL", **kwargs):
        """nanochat master (92d63d4, nanochat/gpt.py GPTConfig + gpt.py/base_train.py): width
        rounded up to whole 128-channel heads, vocab 32768 by default, everything else as
        listed in the class docstring."""
        hidden_size = math.ceil(CHANNELS_PER_LAYER * depth / TARGET_HEAD_DIM) * TARGET_HEAD_DIM
        layer_types = window_pattern_layer_types(window_pattern, depth)
        features = dict(
            vocab_size=vocab_size,
            hidden_size=hidden_size,
            num_hidden_layers=depth,
            num_attention_heads=hidden_size // TARGET_HEAD_DIM,
            num_key_value_heads=num_key_value_heads,
            max_position_embeddings=max_position_embeddings,
            rope_theta=100000.0,
            pad_vocab_size_to_multiple_of=64,
            layer_types=layer_types,
            sliding_window=nanochat_short_window(max_position_embeddings) + 1 if "sliding_attention" in layer_types else None,
            value_embedding_layers=value_embedding_layer_ids(depth),
            value_embedding_gate_channels=12,
            value_embedding_gate_scale=3.0,
            smear_gate_channels=24,
            backout_layer=depth // 2,
            residual_scalars=True,
            qk_scale=1.2,
        )
        features.update(kwargs)
        return cls(**features)


__all__ = ["NanoChatGPTConfig"]
