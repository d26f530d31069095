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


class NanoChatGPTConfig(PreTrainedConfig):
    r"""Shapes and numerics of nanochat's GPT.

    Build one with [`NanoChatGPTConfig.from_depth`], which applies nanochat's scaling rule
    (`hidden_size = 64 * depth`, `num_attention_heads = ceil(hidden_size / 128)`).

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
        rope_theta (`float`, defaults to 10000.0):
            Base of the rotary frequencies.
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
    rope_theta: float = 10000.0
    rms_norm_eps: float | None = None
    final_logit_softcapping: float | None = 15.0
    use_cache: bool = True
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None
    pad_token_id: int | None = None
    tie_word_embeddings: bool = False

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

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @classmethod
    def from_depth(
        cls,
        depth: int,
        vocab_size: int = 65536,
        max_position_embeddings: int = 2048,
        num_key_value_heads: int | None = None,
        **kwargs,
    ) -> "NanoChatGPTConfig":
        """nanochat's shapes for a depth: width 64*depth, heads of ~128 channels."""
        if not isinstance(depth, int) or depth < 1:
            raise ValueError(f"depth must be an integer >= 1, got {depth!r}")
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


__all__ = ["NanoChatGPTConfig"]
