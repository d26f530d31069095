"""nanochat's depth-scaled GPT as a transformers model.

Reads top to bottom: norm, rotary, attention, MLP, block, backbone, LM head.
This file travels with every checkpoint (trust_remote_code), so it imports only
torch and transformers. Parallelism and mixed precision are applied *to* this
model by the trainer; nothing here knows about them.

Architecture (nanochat, Nov 2025):
    token embedding -> RMSNorm -> [x + attn(norm(x)); x + mlp(norm(x))] * depth -> RMSNorm -> lm_head
    attention: rotary (nanochat's rotation direction) then QK RMSNorm, causal, optional GQA
    MLP: relu(x)**2; no biases; norms have no parameters; logits 15*tanh(logits/15) in fp32
Architecture (nanochat 2026, switched on by config fields; see NanoChatGPTConfig):
    smear of the previous token's embedding, per-layer resid/x0 scalars, value embeddings on
    alternate layers, sliding-window layers, q/k scaled after the QK norm, backout of the
    mid-layer residual, vocab padded to 64 (logits sliced back).
Module names follow nanochat (`transformer.wte`, `transformer.h.{i}.attn.c_q`, ...), so
nanochat checkpoints load by name and LoRA targets read like nanochat's code.
"""
from __future__ import annotations

import inspect
import warnings
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint
from transformers import GenerationMixin, PreTrainedModel
from transformers import initialization as init
from transformers.cache_utils import Cache, DynamicCache, DynamicLayer
from transformers.masking_utils import create_causal_mask, create_sliding_window_causal_mask
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS, dynamic_rope_update
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.utils.generic import can_return_tuple

from .configuration_nanochat_gpt import NanoChatGPTConfig

# transformers 5.24 renamed the KV cache argument and output field `past_key_values` -> `cache`
# (the old name is deprecated until 5.40): `generate()` passes and reads back whichever name its
# release uses. The forwards below accept both and return the cache under the installed name, so
# this file (which travels with every checkpoint) decodes with its cache on every release.
CACHE_NAME = "cache" if "cache" in BaseModelOutputWithPast.__dataclass_fields__ else "past_key_values"
_MASK_CACHE_NAME = "cache" if "cache" in inspect.signature(create_causal_mask).parameters else "past_key_values"
_DEPRECATED_CACHE_NAME = "past_key_values"


def _cache_argument(cache: Cache | None, kwargs: dict, caller: str) -> Cache | None:
    """The cache a caller passed, under either name (removing the old name from `kwargs`).

    Where the installed transformers reads `cache`, the old name warns as transformers' own
    models do (FutureWarning); on earlier releases it is the current name and stays silent."""
    old = kwargs.pop(_DEPRECATED_CACHE_NAME, None)
    if old is not None and cache is not None:
        raise ValueError("Pass the KV cache once, as `cache` or `past_key_values`, not both")
    if old is not None and CACHE_NAME != _DEPRECATED_CACHE_NAME and not torch.compiler.is_compiling():
        warnings.warn(
            f"`{_DEPRECATED_CACHE_NAME}` is deprecated and will be removed in version 5.40.0 for `{caller}`. "
            f"Use `{CACHE_NAME}` instead.",
            FutureWarning,
            stacklevel=3,
        )
    return cache if cache is not None else old


def rms_norm(x: torch.Tensor, eps: float | None) -> torch.Tensor:
    """Parameter-free RMSNorm; eps=None means the dtype's epsilon, as in nanochat."""
    return F.rms_norm(x, (x.size(-1),), eps=eps)


class NanoChatGPTRotaryEmbedding(nn.Module):
    """cos/sin of the rotary angles, (batch, seq, head_dim/2), from the positions.

    transformers' rotary interface (`__init__(config)`, `forward(x, position_ids)`, `inv_freq`),
    so `config.rope_parameters` can ask for any of transformers' RoPE scaling types
    (ROPE_INIT_FUNCTIONS; `dynamic_rope_update` grows dynamic/longrope frequencies with the input).

    The "default" type (nanochat's) recomputes its frequencies in fp32 on the positions' device at
    every call, as this model always has: the `inv_freq` buffer, which a `model.to(bfloat16)` would
    round and `from_pretrained` leaves to `_init_weights`, is then only for transformers' tooling.
    Angles are always fp32 (nanochat computes its tables in bf16, which moves logits by ~1e-3).
    Computing from position_ids (not a cached table) makes packed sequences, left padding and
    KV-cache offsets all just work.
    """

    inv_freq: torch.Tensor

    def __init__(self, config: NanoChatGPTConfig, device: torch.device | None = None):
        super().__init__()
        self.config = config
        self.rope_type = config.rope_parameters.get("rope_type", "default")
        self.max_seq_len_cached = self.original_max_seq_len = config.max_position_embeddings
        if self.rope_type == "default":
            self.rope_init_fn = self.compute_default_rope_parameters
        elif self.rope_type in ROPE_INIT_FUNCTIONS:
            self.rope_init_fn = ROPE_INIT_FUNCTIONS[self.rope_type]
        else:
            raise ValueError(
                f"rope_type {self.rope_type!r} is not one this transformers release implements: "
                f"use one of {['default', *ROPE_INIT_FUNCTIONS]}"
            )
        inv_freq, self.attention_scaling = self.rope_init_fn(config, device)
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        self.register_buffer("original_inv_freq", inv_freq.clone(), persistent=False)

    @staticmethod
    def compute_default_rope_parameters(config: NanoChatGPTConfig, device: torch.device | None = None, **kwargs):
        """nanochat's frequencies theta^(-2i/head_dim), in fp32; no attention scaling."""
        head_dim, theta = config.head_dim, config.rope_parameters["rope_theta"]
        channels = torch.arange(0, head_dim, 2, device=device, dtype=torch.float32)
        return 1.0 / (theta ** (channels / head_dim)), 1.0

    @torch.no_grad()
    @dynamic_rope_update
    def forward(self, x: torch.Tensor, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.rope_type == "default":
            inv_freq, _ = self.compute_default_rope_parameters(self.config, position_ids.device)
        else:
            inv_freq = self.inv_freq.to(device=position_ids.device, dtype=torch.float32)
        angles = position_ids.to(torch.float32)[..., None] * inv_freq
        cos, sin = angles.cos(), angles.sin()
        if self.attention_scaling != 1.0:
            cos, sin = cos * self.attention_scaling, sin * self.attention_scaling
        return cos.to(x.dtype), sin.to(x.dtype)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate the two halves of each head (x: batch, seq, heads, head_dim) in nanochat's direction."""
    d = x.shape[-1] // 2
    x1, x2 = x[..., :d], x[..., d:]
    return torch.cat((x1 * cos + x2 * sin, x2 * cos - x1 * sin), dim=-1)


def repeat_kv(x: torch.Tensor, n_rep: int) -> torch.Tensor:
    """(batch, kv_heads, seq, dim) -> (batch, kv_heads * n_rep, seq, dim) for grouped-query attention."""
    if n_rep == 1:
        return x
    b, h, t, d = x.shape
    return x[:, :, None].expand(b, h, n_rep, t, d).reshape(b, h * n_rep, t, d)


def eager_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs,
):
    """Reference attention in plain matmuls (attn_implementation="eager"); returns weights too."""
    key = repeat_kv(key, module.num_key_value_groups)
    value = repeat_kv(value, module.num_key_value_groups)
    scores = torch.matmul(query, key.transpose(2, 3)) * scaling
    if attention_mask is None:
        q_len, kv_len = query.shape[2], key.shape[2]
        causal = torch.ones(q_len, kv_len, dtype=torch.bool, device=query.device).tril(kv_len - q_len)
        scores = scores.masked_fill(~causal, torch.finfo(scores.dtype).min)
    elif attention_mask.dtype == torch.bool:
        scores = scores.masked_fill(~attention_mask, torch.finfo(scores.dtype).min)
    else:
        scores = scores + attention_mask
    weights = F.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    weights = F.dropout(weights, p=dropout, training=module.training)
    out = torch.matmul(weights, value).transpose(1, 2).contiguous()
    return out, weights


def local_window_attention(
    module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, window: int, scaling: float
) -> torch.Tensor:
    """Causal sliding-window attention without a (T x T) mask, for SDPA/eager training passes
    (no padding, no cache, no packing); returns (batch, seq, heads, head_dim) like the attention
    interfaces. Hand-written because transformers' SDPA path builds a dense (T x T) mask for
    sliding layers, which costs more than full causal attention on CPU.

    Queries go in blocks of `window // 2`; each block attends the `window - 1` keys before it
    and its own (key blocks are overlapping views made contiguous, batched into one SDPA call
    with a small shared mask). Keys per query: 1.5 * window instead of seq / 2 on average.
    """
    b, h, t, d = query.shape
    key, value = repeat_kv(key, module.num_key_value_groups), repeat_kv(value, module.num_key_value_groups)
    left = window - 1
    block = max(16, left // 2)
    n = -(-t // block)
    pad = n * block - t
    # keys: `left` invisible slots in front; queries (and keys) padded at the end to whole blocks
    q = F.pad(query, (0, 0, 0, pad)).view(b, h, n, block, d).transpose(1, 2).reshape(b * n, h, block, d)
    k = F.pad(key, (0, 0, left, pad)).unfold(2, block + left, block).permute(0, 2, 1, 4, 3).reshape(b * n, h, block + left, d)
    v = F.pad(value, (0, 0, left, pad)).unfold(2, block + left, block).permute(0, 2, 1, 4, 3).reshape(b * n, h, block + left, d)
    qi = torch.arange(block, device=query.device)[:, None] + left  # query position within its key span
    kj = torch.arange(block + left, device=query.device)[None]
    visible = (kj <= qi) & (kj > qi - window)
    real_key = torch.arange(n, device=query.device)[:, None, None] * block + kj[None] >= left  # not front padding
    mask = (visible[None] & real_key)[:, None].repeat(b, 1, 1, 1)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scaling)
    return out.view(b, n, h, block, d).transpose(2, 3).reshape(b, n * block, h, d)[:, :t]


class NanoChatGPTAttention(nn.Module):
    def __init__(self, config: NanoChatGPTConfig, layer_idx: int):
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx
        self.head_dim = config.head_dim
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.num_key_value_groups = self.num_heads // self.num_kv_heads
        self.scaling = self.head_dim**-0.5
        self.is_causal = True
        self.c_q = nn.Linear(config.hidden_size, self.num_heads * self.head_dim, bias=False)
        self.c_k = nn.Linear(config.hidden_size, self.num_kv_heads * self.head_dim, bias=False)
        self.c_v = nn.Linear(config.hidden_size, self.num_kv_heads * self.head_dim, bias=False)
        self.c_proj = nn.Linear(self.num_heads * self.head_dim, config.hidden_size, bias=False)
        self.c_proj.zero_init = True  # residual branches start as identity (nanochat)
        for proj in (self.c_q, self.c_k, self.c_v):
            proj.init_2026 = "qkv"
        # nanochat 2026 (nanochat/gpt.py CausalSelfAttention): window, value-embedding gate, q/k scale.
        layer_types = config.layer_types
        self.sliding_window = (
            config.sliding_window if layer_types is not None and layer_types[layer_idx] == "sliding_attention" else None
        )
        self.qk_scale = config.qk_scale
        self.ve_gate = None
        if config.value_embedding_layers and layer_idx in config.value_embedding_layers:
            self.ve_gate = nn.Linear(config.value_embedding_gate_channels, self.num_kv_heads, bias=False)
            self.ve_gate.init_2026 = "gate"

    def forward(
        self,
        hidden_states: torch.Tensor,
        cos_sin: tuple[torch.Tensor, torch.Tensor],
        attention_mask: torch.Tensor | None = None,
        cache: Cache | None = None,
        value_embed: torch.Tensor | None = None,
        **kwargs,
    ):
        b, t, _ = hidden_states.shape
        q = self.c_q(hidden_states).view(b, t, self.num_heads, self.head_dim)
        k = self.c_k(hidden_states).view(b, t, self.num_kv_heads, self.head_dim)
        v = self.c_v(hidden_states).view(b, t, self.num_kv_heads, self.head_dim)
        if self.ve_gate is not None:
            v = v + self._value_embedding(hidden_states, value_embed)
        cos, sin = (c[:, :, None, :] for c in cos_sin)  # broadcast over heads
        # nanochat order: rotary first, then QK norm.
        q = rms_norm(apply_rotary(q, cos, sin), self.config.rms_norm_eps).transpose(1, 2)
        k = rms_norm(apply_rotary(k, cos, sin), self.config.rms_norm_eps).transpose(1, 2)
        if self.qk_scale != 1.0:
            q, k = q * self.qk_scale, k * self.qk_scale
        v = v.transpose(1, 2)
        if cache is not None:
            k, v = cache.update(k, v, self.layer_idx)
        attention: Callable = ALL_ATTENTION_FUNCTIONS.get_interface(
            self.config._attn_implementation, eager_attention_forward
        )
        if self.sliding_window is not None:
            if attention_mask is None and self.config._attn_implementation in ("sdpa", "eager"):
                # the model passes no mask for a plain window (see NanoChatGPTModel.forward)
                if q.shape[2] > self.sliding_window:
                    out = local_window_attention(self, q, k, v, self.sliding_window, self.scaling)
                    return self.c_proj(out.reshape(b, t, -1)), None
            kwargs["sliding_window"] = self.sliding_window  # read by the flash-attention kernels
        out, weights = attention(self, q, k, v, attention_mask, scaling=self.scaling, dropout=0.0, **kwargs)
        return self.c_proj(out.reshape(b, t, -1)), weights

    def _value_embedding(self, hidden_states: torch.Tensor, value_embed: torch.Tensor | None) -> torch.Tensor:
        """scale * sigmoid(ve_gate(h[..., :channels])) per kv head, times the token's value embedding."""
        if value_embed is None:
            raise ValueError(f"layer {self.layer_idx} adds value embeddings: the model needs input_ids, not only inputs_embeds")
        b, t, _ = hidden_states.shape
        gate = self.config.value_embedding_gate_scale * torch.sigmoid(
            self.ve_gate(hidden_states[..., : self.config.value_embedding_gate_channels])
        )
        return gate[..., None] * value_embed.view(b, t, self.num_kv_heads, self.head_dim)


class NanoChatGPTMLP(nn.Module):
    def __init__(self, config: NanoChatGPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.c_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)
        self.c_proj.zero_init = True
        self.c_fc.init_2026 = "fc"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(F.relu(self.c_fc(x)).square())


class NanoChatGPTBlock(GradientCheckpointingLayer):
    def __init__(self, config: NanoChatGPTConfig, layer_idx: int):
        super().__init__()
        self.eps = config.rms_norm_eps
        self.attn = NanoChatGPTAttention(config, layer_idx)
        self.mlp = NanoChatGPTMLP(config)

    def forward(self, hidden_states, cos_sin, attention_mask=None, cache=None, value_embed=None, **kwargs):
        attn_out, weights = self.attn(
            rms_norm(hidden_states, self.eps), cos_sin, attention_mask, cache, value_embed=value_embed, **kwargs
        )
        hidden_states = hidden_states + attn_out
        hidden_states = hidden_states + self.mlp(rms_norm(hidden_states, self.eps))
        return hidden_states, weights


class NanoChatGPTPreTrainedModel(PreTrainedModel):
    config_class = NanoChatGPTConfig
    config: NanoChatGPTConfig
    base_model_prefix = "transformer"
    supports_gradient_checkpointing = True
    _no_split_modules = ["NanoChatGPTBlock"]
    _skip_keys_device_placement = ["cache", "past_key_values"]
    _supports_sdpa = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    _can_compile_fullgraph = True

    def _init_weights(self, module: nn.Module) -> None:
        # transformers calls this for every module that owns parameters, so output projections
        # are recognised by the `zero_init` tag set where they are built.
        if self.config.nanochat_architecture == "2026":
            self._init_weights_2026(module)
        elif isinstance(module, nn.Embedding):
            init.normal_(module.weight, mean=0.0, std=1.0)
        elif isinstance(module, nn.Linear):
            if getattr(module, "zero_init", False):
                init.zeros_(module.weight)
            else:
                # nanochat: std 1/sqrt(fan_in), shrunk further for matrices that narrow the stream.
                fan_out, fan_in = module.weight.shape
                init.normal_(module.weight, mean=0.0, std=fan_in**-0.5 * min(1.0, (fan_out / fan_in) ** 0.5))
        elif isinstance(module, NanoChatGPTRotaryEmbedding):
            # Non-persistent buffers are not in checkpoints: from_pretrained leaves them to this.
            inv_freq, _ = module.rope_init_fn(module.config, module.inv_freq.device)
            init.copy_(module.inv_freq, inv_freq)
            init.copy_(module.original_inv_freq, inv_freq)

    def _init_weights_2026(self, module: nn.Module) -> None:
        """nanochat master's `init_weights` (nanochat/gpt.py), with s = sqrt(3/hidden_size): the
        uniform(-s, s) that has std 1/sqrt(hidden_size)."""
        n, s = self.config.num_hidden_layers, (3.0 / self.config.hidden_size) ** 0.5
        if isinstance(module, NanoChatGPTModel):
            depth_frac = torch.arange(n, dtype=torch.float32) / max(n - 1, 1)
            if module.resid_lambdas is not None:
                init.copy_(module.resid_lambdas, 1.15 - 0.10 * depth_frac)
                init.copy_(module.x0_lambdas, 0.20 - 0.15 * depth_frac)
            if module.smear_lambda is not None:
                init.zeros_(module.smear_lambda)
            if module.backout_lambda is not None:
                init.constant_(module.backout_lambda, 0.2)
            return
        role = getattr(module, "init_2026", None)
        if role is None and isinstance(module, nn.Linear) and getattr(module, "zero_init", False):
            role = "zero"
        if role == "qkv" or role == "value_embed":
            init.uniform_(module.weight, -s, s)
        elif role == "fc":
            init.uniform_(module.weight, -0.4 * s, 0.4 * s)
        elif role == "zero":
            init.zeros_(module.weight)
        elif role == "gate":
            init.uniform_(module.weight, 0.0, 0.02)
        elif role == "wte":
            init.normal_(module.weight, mean=0.0, std=0.8)
        elif role == "head":
            init.normal_(module.weight, mean=0.0, std=0.001)


class NanoChatGPTModel(NanoChatGPTPreTrainedModel):
    """The backbone: embeddings and blocks, returning the final normed hidden states."""

    def __init__(self, config: NanoChatGPTConfig):
        super().__init__(config)
        self.wte = nn.Embedding(config.padded_vocab_size, config.hidden_size)
        self.wte.init_2026 = "wte"
        self.h = nn.ModuleList(NanoChatGPTBlock(config, i) for i in range(config.num_hidden_layers))
        self.rotary_emb = NanoChatGPTRotaryEmbedding(config)
        self._build_2026_parameters(config)
        self.gradient_checkpointing = False
        self.post_init()

    def _build_2026_parameters(self, config: NanoChatGPTConfig) -> None:
        """nanochat 2026's model-level weights (nanochat/gpt.py GPT.__init__); None when off.
        Real values are set by `_init_weights_2026`."""
        n = config.num_hidden_layers
        kv_dim = config.num_key_value_heads * config.head_dim
        self.value_embeds = None
        if config.value_embedding_layers:
            # keyed by layer index, as nanochat's ModuleDict (`value_embeds.{i}.weight`)
            self.value_embeds = nn.ModuleDict(
                {str(i): nn.Embedding(config.padded_vocab_size, kv_dim) for i in sorted(config.value_embedding_layers)}
            )
            for embedding in self.value_embeds.values():
                embedding.init_2026 = "value_embed"
        scalars = config.residual_scalars
        self.resid_lambdas = nn.Parameter(torch.ones(n)) if scalars else None
        self.x0_lambdas = nn.Parameter(torch.zeros(n)) if scalars else None
        self.smear_gate = self.smear_lambda = None
        if config.smear_gate_channels is not None:
            self.smear_gate = nn.Linear(config.smear_gate_channels, 1, bias=False)
            self.smear_gate.init_2026 = "gate"
            self.smear_lambda = nn.Parameter(torch.zeros(1))
        self.backout_lambda = nn.Parameter(torch.full((1,), 0.2)) if config.backout_layer is not None else None

    def get_input_embeddings(self) -> nn.Embedding:
        return self.wte

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.wte = value

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPast:
        cache = _cache_argument(cache, kwargs, "NanoChatGPTModel.forward")
        position_ids_given = position_ids is not None
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Pass exactly one of input_ids or inputs_embeds")
        # generate() may pass masks it built already, one per layer type (static caches do).
        prebuilt_masks = attention_mask if isinstance(attention_mask, dict) else None
        if prebuilt_masks is not None:
            attention_mask = None
        if output_hidden_states is None:
            output_hidden_states = self.config.output_hidden_states
        if output_attentions is None:
            output_attentions = self.config.output_attentions
        use_cache = self.config.use_cache if use_cache is None else use_cache
        if self.gradient_checkpointing and self.training:
            use_cache = False  # a cache is pointless (and wrong) when blocks are recomputed
        if inputs_embeds is None:
            inputs_embeds = self.wte(input_ids)
        fresh_cache = use_cache and cache is None
        if fresh_cache:
            cache = DynamicCache(config=self.config)
        if position_ids is None:
            offset = cache.get_seq_length() if cache is not None else 0
            position_ids = torch.arange(offset, offset + inputs_embeds.shape[1], device=inputs_embeds.device)[None]
            if attention_mask is not None and attention_mask.ndim == 2 and not torch.all(attention_mask):
                # Left padding: real tokens count positions from 0 like an unpadded prompt.
                position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, -inputs_embeds.shape[1] :]

        # Padding, KV offsets and packed documents (position_ids that restart at 0 with no
        # attention_mask) all become one mask here; None means "plain causal" for SDPA.
        # transformers only looks for packed documents when no cache is passed, and a cache we
        # just created is empty, so it is left out of the mask computation.
        mask_kwargs = dict(
            config=self.config,
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            **{_MASK_CACHE_NAME: None if fresh_cache else cache},
        )
        layer_types = self.config.layer_types
        if prebuilt_masks is not None:
            masks = [prebuilt_masks[kind] for kind in layer_types]
        else:
            mask = create_causal_mask(**mask_kwargs)
            masks = [mask] * len(self.h)
        if prebuilt_masks is None and "sliding_attention" in layer_types:
            # One mask per kind of layer, as transformers' sliding-window models (Mistral, Gemma)
            # build them - except for a plain window under SDPA/eager, which attention computes
            # blockwise instead of through transformers' dense (T x T) mask.
            plain = self._plain_window(attention_mask, position_ids_given, cache if not fresh_cache else None, output_attentions)
            sliding = None if plain else create_sliding_window_causal_mask(**mask_kwargs)
            masks = [sliding if kind == "sliding_attention" else mask for kind in layer_types]
        cos_sin = self.rotary_emb(inputs_embeds, position_ids)

        hidden = rms_norm(inputs_embeds, self.config.rms_norm_eps)
        if self.smear_gate is not None:
            hidden = self._smear(hidden, position_ids, attention_mask, cache)
        x0 = hidden
        x_mid = None
        all_hidden = (hidden,) if output_hidden_states else None
        all_attn = () if output_attentions else None
        for i, block in enumerate(self.h):
            if self.resid_lambdas is not None:
                hidden = self.resid_lambdas[i] * hidden + self.x0_lambdas[i] * x0
            value_embed = None
            if self.value_embeds is not None and str(i) in self.value_embeds and input_ids is not None:
                value_embed = self.value_embeds[str(i)](input_ids).to(hidden.dtype)
            hidden, weights = block(hidden, cos_sin, masks[i], cache, value_embed=value_embed, **kwargs)
            if i == self.config.backout_layer:
                x_mid = hidden
            if output_hidden_states:
                all_hidden += (hidden,)
            if output_attentions:
                all_attn += (weights,)
        if x_mid is not None:
            hidden = hidden - self.backout_lambda * x_mid
        hidden = rms_norm(hidden, self.config.rms_norm_eps)
        if output_hidden_states:
            all_hidden = all_hidden[:-1] + (hidden,)
        return BaseModelOutputWithPast(
            last_hidden_state=hidden,
            hidden_states=all_hidden,
            attentions=all_attn,
            **{CACHE_NAME: cache if use_cache else None},
        )

    def _plain_window(self, attention_mask, position_ids_given: bool, cache: Cache | None, output_attentions: bool) -> bool:
        """Whether sliding layers see nothing but the causal window: no padding, no cached
        tokens, no packed documents (explicit position_ids), SDPA or eager without weights out."""
        if self.config._attn_implementation not in ("sdpa", "eager") or output_attentions:
            return False
        if cache is not None and cache.get_seq_length() > 0:
            return False
        if position_ids_given:
            return False
        return attention_mask is None or (attention_mask.ndim == 2 and bool(torch.all(attention_mask)))

    def _smear(self, x: torch.Tensor, position_ids, attention_mask, cache: Cache | None) -> torch.Tensor:
        """nanochat 2026's smear (nanochat/gpt.py GPT.forward):
        `x_t += smear_lambda * sigmoid(smear_gate(x_t[:channels])) * x_{t-1}` on the normed embedding.

        Differs from nanochat where nanochat is inexact: the previous token's embedding of the
        first token of a chunk comes from the cache (nanochat drops the smear there in chunked
        prefill), and no token smears across position 0 (a left-padded row's first real token,
        a packed document's first token) or from a padded position.
        """
        b, t, _ = x.shape
        past = cache.get_seq_length() if cache is not None else 0
        state = _SmearState(cache, len(self.h)) if cache is not None else None
        first_prev = state.previous_embedding() if state is not None and past > 0 else None
        if first_prev is None:
            if past > 0:
                raise ValueError("the cache holds tokens but no smear state: it was not filled by this model")
            first_prev = torch.zeros_like(x[:, :1])
        prev = torch.cat([first_prev.to(x.dtype).expand(b, 1, -1), x[:, :-1]], dim=1)
        active = (position_ids > 0).expand(b, t)
        if attention_mask is not None and attention_mask.ndim == 2:
            prev_mask = attention_mask[:, -t - 1 : -1] if attention_mask.shape[1] > t else None
            if prev_mask is None:  # no earlier position: the first token has nothing to smear
                prev_mask = F.pad(attention_mask[:, :-1], (1, 0), value=0)
            active = active & prev_mask.bool()
        gate = self.smear_lambda.to(x.dtype) * torch.sigmoid(self.smear_gate(x[..., : self.config.smear_gate_channels]))
        smeared = x + gate * prev * active[..., None].to(x.dtype)
        if state is not None:
            state.store(x)
        return smeared


class _SmearState:
    """The smear's previous-token state, kept in the KV cache as one extra layer after the
    attention layers (keys = the normed pre-smear embeddings, values empty). Living in the cache,
    it follows every cache operation transformers' generation does (beam reordering, batch
    selection, cropping, offloading) and needs no change to `generate()`."""

    def __init__(self, cache: Cache, num_layers: int):
        self.cache, self.index = cache, num_layers

    def _layer(self):
        layers = getattr(self.cache, "layers", None)
        if layers is None:
            raise TypeError(f"{type(self.cache).__name__} has no layers to keep the smear state in")
        return layers[self.index] if len(layers) > self.index else None

    def previous_embedding(self) -> torch.Tensor | None:
        layer = self._layer()
        if layer is None or not getattr(layer, "is_initialized", False) or layer.keys.numel() == 0:
            return None
        return layer.keys[:, 0, -1:]

    def store(self, x: torch.Tensor) -> None:
        layers = self.cache.layers
        while len(layers) < self.index:  # a cache that grows its layers lazily: attention layers first
            layers.append(DynamicLayer())
        if len(layers) == self.index:
            layers.append(DynamicLayer())
        # Every position is kept (one hidden vector per token, 1/(2*layers) of the KV cache) so
        # that cropping the cache (assisted decoding) also rewinds the smear state.
        keys = x[:, None]
        layers[self.index].update(keys, keys[..., :0])


def capped_logits(lm_head: nn.Module, hidden: torch.Tensor, cap: float | None, vocab_size: int | None = None) -> torch.Tensor:
    """nanochat's head: fp32 logits, soft-capped to (-cap, cap) by cap * tanh(logits / cap).
    Rows of a padded lm_head past `vocab_size` are sliced off first (nanochat 2026)."""
    logits = lm_head(hidden)
    if vocab_size is not None and logits.shape[-1] > vocab_size:
        logits = logits[..., :vocab_size]
    logits = logits.float()
    return cap * torch.tanh(logits / cap) if cap is not None else logits


def _loss_sum(lm_head: nn.Module, hidden: torch.Tensor, targets: torch.Tensor, cap: float | None, vocab_size=None) -> torch.Tensor:
    return F.cross_entropy(capped_logits(lm_head, hidden, cap, vocab_size), targets, ignore_index=-100, reduction="sum")


def chunked_loss(
    lm_head: nn.Module,
    hidden: torch.Tensor,
    targets: torch.Tensor,
    cap: float | None,
    chunk_tokens: int,
    num_items_in_batch=None,
    vocab_size: int | None = None,
) -> torch.Tensor:
    """The causal-LM loss without ever holding (tokens x vocab) fp32 logits.

    Tokens go through the head `chunk_tokens` at a time; each chunk's logits are dropped after
    its loss and recomputed in backward (activation checkpointing), so the logits' memory is
    that of one chunk instead of the whole batch - for small models the largest item of a
    training step - at the cost of one extra head matmul. Same value as the unchunked loss:
    the mean over targets != -100, or their sum / `num_items_in_batch`.
    """
    hidden = hidden.reshape(-1, hidden.size(-1))
    targets = targets.reshape(-1).to(hidden.device)
    total = hidden.new_zeros((), dtype=torch.float32)
    for start in range(0, hidden.size(0), chunk_tokens):
        rows = slice(start, start + chunk_tokens)
        if torch.is_grad_enabled():
            total = total + checkpoint(_loss_sum, lm_head, hidden[rows], targets[rows], cap, vocab_size, use_reentrant=False)
        else:
            total = total + _loss_sum(lm_head, hidden[rows], targets[rows], cap, vocab_size)
    count = num_items_in_batch if num_items_in_batch is not None else (targets != -100).sum()
    if isinstance(count, torch.Tensor):
        count = count.to(total.device)
    return total / count


class NanoChatGPTForCausalLM(NanoChatGPTPreTrainedModel, GenerationMixin):
    """Backbone + untied lm_head with fp32 soft-capped logits and an fp32 loss."""

    _tied_weights_keys: dict[str, str] = {}

    def __init__(self, config: NanoChatGPTConfig):
        super().__init__(config)
        self.transformer = NanoChatGPTModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.padded_vocab_size, bias=False)
        self.lm_head.zero_init = True  # uniform predictions at step 0 (nanochat)
        self.lm_head.init_2026 = "head"  # nanochat 2026: small random instead
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.transformer.wte

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.transformer.wte = value

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def set_output_embeddings(self, value: nn.Linear) -> None:
        self.lm_head = value

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        loss_chunk_tokens: int | None = None,
        **kwargs,
    ) -> CausalLMOutputWithPast:
        """`labels` are shifted inside (HF convention) unless `shift_labels` (already aligned
        targets, as a pretraining stream produces) is passed; -100 is ignored. With
        `num_items_in_batch` the loss is a sum divided by it (exact gradient accumulation).
        With `loss_chunk_tokens` and targets, the loss is computed in chunks that never hold the
        whole batch's logits (see `chunked_loss`) and `logits` is None."""
        out = self.transformer(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=_cache_argument(cache, kwargs, "NanoChatGPTForCausalLM.forward"),
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            output_hidden_states=output_hidden_states,
            output_attentions=output_attentions,
            **{k: v for k, v in kwargs.items() if k not in ("shift_labels", "num_items_in_batch")},
        )
        hidden = out.last_hidden_state
        if isinstance(logits_to_keep, int):
            hidden = hidden[:, -logits_to_keep:] if logits_to_keep else hidden
        else:
            hidden = hidden[:, logits_to_keep]
        cap = self.config.final_logit_softcapping
        shift_labels = kwargs.get("shift_labels")
        if shift_labels is not None:
            kwargs["shift_labels"] = shift_labels = shift_labels.contiguous()  # rows sliced as row[:, 1:]
        has_targets = labels is not None or shift_labels is not None

        logits = loss = None
        if has_targets and loss_chunk_tokens:
            if loss_chunk_tokens < 1:
                raise ValueError(f"loss_chunk_tokens must be >= 1, got {loss_chunk_tokens}")
            targets = shift_labels if shift_labels is not None else F.pad(labels[:, 1:], (0, 1), value=-100)
            loss = chunked_loss(
                self.lm_head, hidden, targets, cap, loss_chunk_tokens, kwargs.get("num_items_in_batch"), self.config.vocab_size
            )
        else:
            logits = capped_logits(self.lm_head, hidden, cap, self.config.vocab_size)
            if has_targets:
                loss = self.loss_function(logits=logits, labels=labels, vocab_size=self.config.vocab_size, **kwargs)
        return CausalLMOutputWithPast(
            loss=loss,
            logits=logits,
            hidden_states=out.hidden_states,
            attentions=out.attentions,
            **{CACHE_NAME: getattr(out, CACHE_NAME)},
        )

    def num_flops_per_token(self) -> int:
        """Training FLOPs per token (forward + backward), nanochat's estimate (`estimate_flops`):
        6 * (matmul weights: embeddings, value embeddings and scalars excluded, a padded head
        included) + 12 * heads * head_dim * (keys a query sees) summed over layers, where a
        sliding layer sees min(window, seq) keys (nanochat counts its `left` = sliding_window - 1)."""
        c = self.config
        backbone = self.transformer
        n_matmul = sum(p.numel() for p in self.parameters()) - backbone.wte.weight.numel()
        if backbone.value_embeds is not None:
            n_matmul -= sum(p.numel() for p in backbone.value_embeds.parameters())
        for scalar in (backbone.resid_lambdas, backbone.x0_lambdas, backbone.smear_lambda, backbone.backout_lambda):
            if scalar is not None:
                n_matmul -= scalar.numel()
        seq = c.max_position_embeddings
        layer_types = c.layer_types or ["full_attention"] * c.num_hidden_layers
        keys = sum(min(c.sliding_window - 1, seq) if kind == "sliding_attention" else seq for kind in layer_types)
        return 6 * n_matmul + 12 * c.num_attention_heads * c.head_dim * keys


__all__ = ["NanoChatGPTPreTrainedModel", "NanoChatGPTModel", "NanoChatGPTForCausalLM"]
