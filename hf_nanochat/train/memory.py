"""Per-device memory plan for a training run, before paying for the hardware.

The estimate counts what our implementation really keeps alive at the peak of a training
step (end of forward / start of backward):

- weights: fp32 master weights; under autocast also the cached low-precision copies of every
  matmul weight; under FSDP the fp32 shard plus two unsharded low-precision layers in flight
  (the one computing and the one prefetched);
- gradients: fp32, sharded by FSDP; DDP adds its bucket copies;
- optimizer state: Muon keeps one momentum buffer per block matrix, AdamW two moments for the
  embedding and lm_head (or for everything with `optimizer: adamw`); sharded by FSDP;
- activations saved for backward: 23 hidden widths per token and layer, counted on our model
  with `torch.autograd.graph.saved_tensors_hooks` (relu(x) and relu(x)**2 at 4 widths each,
  the rest norm inputs/outputs, q/k/v before and after rotary + QK norm, attention outputs),
  plus about two layers' worth of gradients in flight during backward; with activation
  checkpointing only each block's input is kept, plus one block being recomputed;
- logits: fp32, about 3.5 vocabulary-sized buffers per token (soft-cap tanh, the capped logits,
  log-softmax, and the gradient being formed); with `loss_chunk_tokens` only one chunk's worth.

nanochat 2026 models (config.nanochat_architecture == "2026") add value embeddings (AdamW, like
the embedding; lookups, so no autocast copy), the gates (Muon), a padded vocab, about 2 more
saved widths per layer (the x0 mix, scaled q/k, gated value embeddings) and, on sliding layers,
the blockwise window attention's overlapping key/value blocks (4 kv widths more), measured
with the same saved-tensor hooks.

Linear outputs are stored in the compute dtype (2 bytes under bf16/fp16 autocast, 4 in fp32).
Checked against measured peaks on CPU (tests/test_memory.py, within 25%) and, when a GPU is
lent, on GPU (benchmarks/RESULTS.md).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from hf_nanochat.modeling.configuration_nanochat_gpt import NanoChatGPTConfig

ACTIVATION_WIDTHS_PER_LAYER = 23  # saved for backward, in units of hidden_size per token
ACTIVATION_WIDTHS_2026 = 2  # more per layer in a nanochat 2026 model
BLOCKWISE_WINDOW_KV_WIDTHS = 4  # more per sliding layer, in units of the kv width (3x keys and values)
BACKWARD_TRANSIENT_LAYERS = 2  # gradient buffers alive while backward walks the blocks
LOGIT_BUFFERS = 3.5
CUDA_RESERVE_BYTES = 1 << 30  # CUDA context, allocator fragmentation and workspace, on GPUs only
GiB = 1 << 30


@dataclass(frozen=True)
class MemoryEstimate:
    weights: int
    gradients: int
    optimizer: int
    activations: int
    logits: int
    reserve: int

    @property
    def total(self) -> int:
        return self.weights + self.gradients + self.optimizer + self.activations + self.logits + self.reserve

    def as_dict(self) -> dict:
        return {**asdict(self), "total": self.total}


def parameter_groups(config: NanoChatGPTConfig) -> tuple[int, int, int]:
    """(all params, block-matrix params, embedding + lm_head params), computed from shapes.
    nanochat 2026: gates count as matrices (Muon), value embeddings and scalars with the
    embeddings (AdamW)."""
    c, v = config.hidden_size, config.padded_vocab_size
    kv = config.num_key_value_heads * config.head_dim
    per_layer = c * c * 2 + 2 * c * kv + 2 * c * config.intermediate_size
    matrices = config.num_hidden_layers * per_layer
    embed_head = 2 * v * c
    ve_layers = len(config.value_embedding_layers or ())
    matrices += ve_layers * config.num_key_value_heads * config.value_embedding_gate_channels
    matrices += config.smear_gate_channels or 0
    embed_head += ve_layers * v * kv + _scalar_params(config)
    return matrices + embed_head, matrices, embed_head


def _scalar_params(config: NanoChatGPTConfig) -> int:
    return (2 * config.num_hidden_layers if config.residual_scalars else 0) + (
        config.smear_gate_channels is not None
    ) + (config.backout_layer is not None)


def lookup_params(config: NanoChatGPTConfig) -> int:
    """Parameters read by index, not by matmul (no autocast copy): embedding + value embeddings."""
    kv = config.num_key_value_heads * config.head_dim
    return config.padded_vocab_size * (config.hidden_size + len(config.value_embedding_layers or ()) * kv)


def activation_widths_per_layer(config: NanoChatGPTConfig) -> float:
    """Saved-for-backward hidden widths per token, averaged over layers."""
    widths = ACTIVATION_WIDTHS_PER_LAYER
    if config.nanochat_architecture == "2026":
        widths += ACTIVATION_WIDTHS_2026
        sliding = (config.layer_types or []).count("sliding_attention")
        kv_fraction = config.num_key_value_heads * config.head_dim / config.hidden_size
        widths += BLOCKWISE_WINDOW_KV_WIDTHS * kv_fraction * sliding / config.num_hidden_layers
    return widths


def estimate_memory(
    config: NanoChatGPTConfig,
    device_batch_size: int,
    seq_len: int,
    *,
    dtype: str = "fp32",
    world_size: int = 1,
    fsdp: bool = False,
    activation_checkpointing: bool = False,
    optimizer: str = "muon",
    on_gpu: bool = True,
    loss_chunk_tokens: int = 0,
) -> MemoryEstimate:
    """Peak bytes per device of one training step. `dtype` is the compute dtype (fp32|bf16|fp16)."""
    if dtype not in ("fp32", "bf16", "fp16"):
        raise ValueError(f"dtype must be fp32, bf16 or fp16, got {dtype!r}")
    if optimizer not in ("muon", "adamw", "muon_adamw_2026"):
        raise ValueError(f"optimizer must be muon, adamw or muon_adamw_2026, got {optimizer!r}")
    if device_batch_size < 1 or seq_len < 1 or world_size < 1:
        raise ValueError("device_batch_size, seq_len and world_size must be >= 1")
    total, matrices, embed_head = parameter_groups(config)
    low = dtype != "fp32"
    act_bytes = 2 if low else 4
    shard = world_size if fsdp else 1
    layer_params = matrices // config.num_hidden_layers

    weights = 4 * total // shard
    if low and fsdp:
        weights += 2 * (2 * layer_params) + 2 * config.padded_vocab_size * config.hidden_size  # layers in flight + head
    elif low:
        weights += 2 * (total - lookup_params(config))  # autocast's cached copies (embeddings are lookups)
    gradients = 4 * total // shard
    if world_size > 1 and not fsdp:
        gradients += 4 * total  # DDP gradient buckets
    if optimizer != "adamw":  # both Muons: one momentum per matrix (2026's second moments are a row/column each)
        opt = (4 * matrices + 8 * embed_head) // shard
        if fsdp and world_size > 1:
            opt += 4 * 2 * max(config.hidden_size * config.intermediate_size, config.hidden_size**2)  # gathered matrices
    else:
        opt = 8 * total // shard

    tokens = device_batch_size * seq_len
    per_layer = activation_widths_per_layer(config) * config.hidden_size * act_bytes * tokens
    kept_layers = 1 if activation_checkpointing else config.num_hidden_layers
    activations = (kept_layers + BACKWARD_TRANSIENT_LAYERS) * per_layer
    if activation_checkpointing:
        activations += config.num_hidden_layers * config.hidden_size * act_bytes * tokens  # block inputs
    logit_tokens = min(tokens, loss_chunk_tokens) if loss_chunk_tokens > 0 else tokens
    logits = int(LOGIT_BUFFERS * 4 * config.padded_vocab_size * logit_tokens)
    return MemoryEstimate(
        weights=int(weights),
        gradients=int(gradients),
        optimizer=int(opt),
        activations=int(activations),
        logits=logits,
        reserve=CUDA_RESERVE_BYTES if on_gpu else 0,
    )


# Evaluation (bits per byte) in the middle of training, under torch.no_grad: the optimizer state
# stays, gradients were freed by zero_grad(set_to_none=True) (DDP keeps its buckets), no graph is
# kept (one block's intermediates at a time) and the logits are the head output, its fp32 soft-cap
# cap * tanh(logits / cap) (the division and the tanh each a buffer) and the log-softmax of the
# cross-entropy: 4 vocabulary-sized fp32 buffers per token alive at once (measured on CPU: depth 4,
# vocab 32768, 4 x 256 whole logits, 534 MiB where 3 buffers plan 407). In chunks
# (`loss_chunk_tokens`, hf_nanochat.train.pretrain.evaluate_bpb) the model's chunked loss frees
# the head output as it goes: 3 per chunk token (measured: vocab 32768, 8 x 256 in chunks of 512,
# 223 MiB, 3 buffers plan 238).
EVAL_LOGIT_BUFFERS = 4
EVAL_CHUNK_LOGIT_BUFFERS = 3
# TRL's SFTTrainer replaces the model's loss with its fused LM head (trl/trainer/utils.py
# add_fused_lm_head -> trl/kernels/chunked_logprob.py, TRL 1.16): the logits exist one tile at a
# time, TOKEN_CHUNK_SIZE = 4096 tokens by _CHUNKED_LOGPROB_CHUNK_SIZE = 32768 vocabulary columns
# (the 32768 is a vocabulary width, not a token count). Without Triton (CPU) its torch fallback
# (_forward_tile, _backward_tile) makes about 9.5 fp32 tile-sized temporaries at its peak in
# backward (softcap, exp, log-probabilities, masks, the gradient), measured on CPU
# (tests/test_memory.py). GPUs: the figure below is the earlier reading (3.5 fp32 buffers of
# 32768 tokens x the vocabulary), which the code says overestimates where Triton runs (its
# kernels fold one tile in place) and not on GPUs Triton does not support (P100: the fallback);
# it stays, with the recipes' chat device batches pinned on it, until measured on a GPU.
TRL_TILE_TOKENS = 4096
TRL_TILE_VOCAB = 32768
TRL_TILE_BUFFERS_WITHOUT_TRITON = 9.5
GPU_LOGPROB_CHUNK_TOKENS = 32768


def trl_logit_bytes(config: NanoChatGPTConfig, tokens: int, on_gpu: bool) -> int:
    """What TRL's fused LM head holds of the logits at once (see TRL_TILE_TOKENS)."""
    if on_gpu:
        return int(LOGIT_BUFFERS * 4 * config.padded_vocab_size * min(tokens, GPU_LOGPROB_CHUNK_TOKENS))
    tile = min(tokens, TRL_TILE_TOKENS) * min(config.padded_vocab_size, TRL_TILE_VOCAB)
    return int(TRL_TILE_BUFFERS_WITHOUT_TRITON * 4 * tile)


def _model_state(config: NanoChatGPTConfig, dtype: str, world_size: int, fsdp: bool, optimizer: str) -> tuple[int, int, int]:
    """(weights, gradients, optimizer state) bytes per device, as estimate_memory counts them."""
    est = estimate_memory(config, 1, 1, dtype=dtype, world_size=world_size, fsdp=fsdp, optimizer=optimizer, on_gpu=False)
    return est.weights, est.gradients, est.optimizer


def estimate_eval_memory(
    config: NanoChatGPTConfig,
    device_batch_size: int,
    seq_len: int,
    *,
    dtype: str = "fp32",
    world_size: int = 1,
    fsdp: bool = False,
    optimizer: str = "muon",
    on_gpu: bool = True,
    loss_chunk_tokens: int = 0,
    during_training: bool = True,
) -> MemoryEstimate:
    """Peak bytes per device of evaluate_bpb during training (see EVAL_LOGIT_BUFFERS), or with
    `during_training=False` of `hf-nanochat eval --kind base` (the model alone, in the compute dtype)."""
    weights, _, opt = _model_state(config, dtype, world_size, fsdp, optimizer)
    total, _, _ = parameter_groups(config)
    gradients = 4 * total if world_size > 1 and not fsdp else 0  # DDP buckets outlive zero_grad
    if not during_training:
        weights, gradients, opt = total * (2 if dtype != "fp32" else 4), 0, 0
    act_bytes = 2 if dtype != "fp32" else 4
    tokens = device_batch_size * seq_len
    activations = ACTIVATION_WIDTHS_PER_LAYER * config.hidden_size * act_bytes * tokens  # one block at a time
    if loss_chunk_tokens > 0:
        logits = EVAL_CHUNK_LOGIT_BUFFERS * 4 * config.vocab_size * min(tokens, loss_chunk_tokens)
    else:
        logits = EVAL_LOGIT_BUFFERS * 4 * config.vocab_size * tokens
    return MemoryEstimate(weights, gradients, opt, int(activations), int(logits), CUDA_RESERVE_BYTES if on_gpu else 0)


def attention_mask_bytes(config: NanoChatGPTConfig, rows: int, row_len: int, dtype: str, on_gpu: bool) -> int:
    """What a chat step's explicit attention mask costs: transformers builds one boolean
    (rows, 1, L, L) mask, and SDPA turns it into an additive bias in the compute dtype that every
    layer saves for backward (on CPU the math kernel also keeps each layer's fp32 attention
    probabilities and scores). Linear in the rows, quadratic in their length: TRL's own
    padding-free packing (ONE row of batch x max_length tokens) would make it quadratic in the
    device batch, which is why the chat stages keep packed rows apart."""
    act_bytes = 2 if dtype != "fp32" else 4
    square = rows * row_len * row_len
    per_layer = square * act_bytes + (0 if on_gpu else 2 * 4 * config.num_attention_heads * square)
    return square + config.num_hidden_layers * per_layer


def estimate_chat_memory(
    config: NanoChatGPTConfig,
    device_batch_size: int,
    max_length: int,
    *,
    packing: bool,
    dtype: str = "fp32",
    world_size: int = 1,
    fsdp: bool = False,
    activation_checkpointing: bool = False,
    optimizer: str = "muon",
    on_gpu: bool = True,
) -> MemoryEstimate:
    """Peak bytes per device of one mid/SFT step through TRL's SFTTrainer: the base step's model
    state and activations for device_batch x max_length tokens (the worst case: full packed rows
    or a batch padded to max_length), one tile of TRL's fused LM head instead of whole logits
    (trl_logit_bytes), and the attention mask (counted with the activations; see
    attention_mask_bytes). `packing` changes nothing: packed rows are rows."""
    base = estimate_memory(
        config, device_batch_size, max_length, dtype=dtype, world_size=world_size, fsdp=fsdp,
        activation_checkpointing=activation_checkpointing, optimizer=optimizer, on_gpu=on_gpu,
    )
    # Packed or not, a device batch is B rows of at most max_length tokens (packing keeps its rows
    # apart: hf_nanochat.train.sft.PackedRowsCollator), each with its own (L, L) mask.
    del packing
    tokens = device_batch_size * max_length
    mask = attention_mask_bytes(config, device_batch_size, max_length, dtype, on_gpu)
    logits = trl_logit_bytes(config, tokens, on_gpu)
    activations = base.activations + mask
    if not on_gpu:
        # The head's backward (its tile temporaries) runs and frees before backward reaches the
        # blocks, whose in-flight gradients (and, with checkpointing, the recomputed block) come
        # after: the step holds the larger of the two, not both (measured on CPU; GPUs keep the
        # pinned reading, see TRL_TILE_TOKENS).
        per_layer = activation_widths_per_layer(config) * config.hidden_size * (2 if dtype != "fp32" else 4) * tokens
        after_head = int((BACKWARD_TRANSIENT_LAYERS + (1 if activation_checkpointing else 0)) * per_layer)
        activations += max(0, after_head - logits) - after_head
    return MemoryEstimate(base.weights, base.gradients, base.optimizer, activations, logits, base.reserve)


def estimate_chat_eval_memory(config: NanoChatGPTConfig, batch_size: int, max_tokens: int, *, dtype: str = "fp32", on_gpu: bool = True) -> MemoryEstimate:
    """`hf-nanochat eval --kind chat` (hf_nanochat.evaluate.chat_eval): the model loaded in the
    compute dtype, a no-grad forward of `batch_size` prompts padded to at most `max_tokens` with
    their fp32 logits and soft-cap (multiple choice), and a generation's KV cache."""
    total, _, _ = parameter_groups(config)
    act_bytes = 2 if dtype != "fp32" else 4
    tokens = batch_size * max_tokens
    activations = ACTIVATION_WIDTHS_PER_LAYER * config.hidden_size * act_bytes * tokens
    kv_cache = 2 * config.num_hidden_layers * config.num_key_value_heads * config.head_dim * max_tokens * act_bytes
    logits = 2 * 4 * config.vocab_size * tokens
    return MemoryEstimate(total * act_bytes, 0, 0, int(activations + kv_cache), int(logits), CUDA_RESERVE_BYTES if on_gpu else 0)


def largest_device_batch(config: NanoChatGPTConfig, seq_len: int, budget_bytes: int, **kwargs) -> int:
    """Largest device batch whose estimate fits the budget (0 if not even batch 1 fits)."""
    if estimate_memory(config, 1, seq_len, **kwargs).total > budget_bytes:
        return 0
    lo, hi = 1, 2
    while estimate_memory(config, hi, seq_len, **kwargs).total <= budget_bytes:
        lo, hi = hi, hi * 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if estimate_memory(config, mid, seq_len, **kwargs).total <= budget_bytes:
            lo = mid
        else:
            hi = mid
    return lo


def parse_size(text: str) -> int:
    """'16GB' -> 16e9 bytes, '16GiB' -> 16 * 2**30 (SI and binary prefixes, as written on the
    box and as nvidia-smi shows); '1.5T', '512M' without B mean binary units."""
    s = text.strip().upper()
    binary = s.endswith("IB") or not s.endswith("B")  # "16G" as a shorthand for 16GiB
    s = s.removesuffix("IB").removesuffix("B")
    number = s.rstrip("KMGT")
    unit = s[len(number) :]
    powers = {"": 0, "K": 1, "M": 2, "G": 3, "T": 4}
    try:
        value = float(number)
    except ValueError:
        raise ValueError(f"cannot read a memory size from {text!r} (try 16GB or 16GiB)") from None
    if unit not in powers or not math.isfinite(value) or value <= 0:
        raise ValueError(f"cannot read a memory size from {text!r} (try 16GB or 16GiB)")
    return int(value * (1024 if binary else 1000) ** powers[unit])


def format_estimate(est: MemoryEstimate, budget_bytes: int | None = None) -> str:
    rows = [(name, getattr(est, name)) for name in ("weights", "gradients", "optimizer", "activations", "logits", "reserve")]
    lines = [f"  {name:<12}{value / GiB:>9.2f} GiB" for name, value in rows]
    lines.append(f"  {'total':<12}{est.total / GiB:>9.2f} GiB")
    if budget_bytes is not None:
        verdict = "fits" if est.total <= budget_bytes else "does NOT fit"
        lines.append(f"  {verdict} in {budget_bytes / GiB:.1f} GiB")
    return "\n".join(lines)
