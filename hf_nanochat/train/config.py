"""Training recipe: a typed dataclass that a YAML file maps onto 1:1.

`load_config(yaml_path, overrides)` reads the YAML, applies `--key=value` command-line
overrides (values parsed as YAML scalars: `--device_batch_size=4`, `--compile=true`), and
checks every key and type before anything heavy is imported or allocated. An unknown key,
a mistyped value or an inconsistent combination is a ValueError naming the key.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Union

import yaml


@dataclass
class TrainConfig:
    """Every knob of a training run. Defaults are nanochat's d20 speedrun."""

    # --- stage -------------------------------------------------------------------------------
    stage: Literal["base", "mid", "sft"] = "base"  # base pretraining here; mid/sft run on TRL

    # --- model -------------------------------------------------------------------------------
    depth: int = 20  # the one knob: width 64*depth, heads ceil(width/128)
    max_seq_len: int = 2048  # context length trained at
    num_kv_heads: int | None = None  # grouped-query attention; None = as many as query heads
    # 2025-11: the Nov 2025 GPT; 2026: nanochat master's (value embeddings, sliding windows, smear,
    # backout, residual scalars: NanoChatGPTConfig.from_depth's architecture="2026"), which only
    # optimizer muon_adamw_2026 has parameter groups for
    architecture: Literal["2025-11", "2026"] = "2025-11"

    # --- tokenizer and data -------------------------------------------------------------------
    tokenizer: str | None = None  # a saved tokenizer folder; null: train one (-> output_dir/tokenizer)
    tokenizer_vocab_size: int = 65536  # when training one (nanochat: 2**16)
    tokenizer_max_chars: int | None = 2_000_000_000  # characters read to train it
    dataset: str = "karpathy/fineweb-edu-100b-shuffle"  # Hub id, local files/folder, "offline", or a name: climbmix, fineweb-edu
    # stream: documents back to back, cut every seq_len+1 tokens; best_fit: nanochat's BOS-aligned
    # best-fit rows (hf_nanochat.data.best_fit: every row starts at a document, tails cropped)
    packing: Literal["stream", "best_fit"] = "stream"
    text_column: str = "text"

    # --- batch and horizon ----------------------------------------------------------------
    device_batch_size: int | Literal["auto"] = 32  # rows per forward pass per device
    total_batch_size: int = 524_288  # tokens per optimizer step across all devices
    num_iterations: int = -1  # horizon, first of these three that is set (> 0) wins
    target_flops: float = -1.0
    target_param_data_ratio: float = 20.0  # tokens:params (20 = Chinchilla)

    # --- recipe --------------------------------------------------------------------------------
    # nanochat-2026: batch size, horizon, LRs, weight decay and schedules derived from the depth
    # (hf_nanochat.train.recipe_2026); keys in recipe_fixed are taken as given instead (filled
    # with the keys this YAML/command line sets, when not set itself)
    recipe: Literal["none", "nanochat-2026"] = "none"
    recipe_fixed: list[str] = field(default_factory=list)

    # --- optimizer (nanochat's recipe) --------------------------------------------------------
    # muon_adamw_2026: nanochat's 2026 MuonAdamW (hf_nanochat.train.optim_2026)
    optimizer: Literal["muon", "adamw", "muon_adamw_2026"] = "muon"
    matrix_lr: float = 0.02  # Muon, block matrices
    embedding_lr: float = 0.2  # AdamW, wte (scaled by (width/768)**-0.5)
    unembedding_lr: float = 0.004  # AdamW, lm_head (scaled likewise)
    adamw_matrix_lr: float = 0.004  # block matrices when optimizer: adamw
    scalar_lr: float = 0.5  # muon_adamw_2026: x0_lambdas (resid_lambdas at 0.01x)
    weight_decay: float = 0.0  # muon_adamw_2026: the Muon matrices' cautious decay
    weight_decay_schedule: Literal["constant", "cosine"] = "constant"  # cosine: to 0 over the run
    grad_clip: float = 1.0  # <= 0 disables clipping
    warmup_ratio: float = 0.0
    warmup_steps: int = 0  # > 0: linear warmup over this many steps (instead of warmup_ratio)
    warmdown_ratio: float = 0.2  # linear decay over the last 20% of steps
    final_lr_frac: float = 0.0
    muon_momentum_start: float = 0.85
    muon_momentum_end: float = 0.95
    muon_momentum_ramp_steps: int = 300
    muon_momentum_warmdown: float | None = None  # set: momentum goes end -> this over the LR warmdown
    ns_steps: int = 5
    ns_dtype: Literal["auto", "bf16", "fp32"] = "auto"  # auto: bf16 on GPUs that have it, else fp32

    # --- precision and speed ------------------------------------------------------------------
    precision: Literal["auto", "fp32", "fp16", "bf16"] = "auto"
    fp16_init_scale: float = 65536.0  # dynamic loss scaling starts here (halves on overflow)
    compile: bool = False  # torch.compile the model
    # > 0: the loss runs over this many tokens at a time and never holds the whole batch's fp32
    # logits (for small models the largest item in memory), for one extra lm_head matmul
    loss_chunk_tokens: int = 0
    peak_flops: float | None = None  # per-device peak for MFU; None: looked up for known GPUs

    # --- evaluation, logging, checkpoints ----------------------------------------------------
    eval_every: int = 250  # steps between val-bpb evaluations (and at the end); <= 0: end only
    eval_tokens: int = 10_485_760  # validation tokens per evaluation (across all devices)
    sample_prompts: list[str] = field(default_factory=lambda: ["The capital of France is", "The chemical symbol of gold is", "If yesterday was Friday, then tomorrow will be"])
    sample_max_tokens: int = 16
    log_every: int = 1  # progress-bar / console refresh
    log_with: list[str] = field(default_factory=list)  # Accelerate trackers: tensorboard, wandb
    run_name: str = "base"
    save_every: int = -1  # steps between checkpoints; <= 0: only at the end
    keep_checkpoints: int = 2  # newest checkpoints kept (the final one always)
    output_dir: str = "runs/base"
    seed: int = 42

    def validate(self) -> "TrainConfig":
        positive = ("depth", "max_seq_len", "total_batch_size", "tokenizer_vocab_size", "ns_steps", "sample_max_tokens", "log_every", "keep_checkpoints", "eval_tokens")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.loss_chunk_tokens < 0:
            raise ValueError(f"loss_chunk_tokens must be >= 0 (0: off), got {self.loss_chunk_tokens}")
        if isinstance(self.device_batch_size, int) and self.device_batch_size < 1:
            raise ValueError(f"device_batch_size must be >= 1 or 'auto', got {self.device_batch_size}")
        if self.num_iterations <= 0 and self.target_flops <= 0 and self.target_param_data_ratio <= 0:
            raise ValueError("set a horizon: num_iterations, target_flops or target_param_data_ratio (> 0)")
        for name in ("warmup_ratio", "warmdown_ratio", "final_lr_frac"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if self.warmup_ratio + self.warmdown_ratio > 1.0:
            raise ValueError("warmup_ratio + warmdown_ratio must be <= 1")
        if self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {self.warmup_steps}")
        if self.warmup_steps > 0 and self.warmup_ratio > 0:
            raise ValueError("set warmup_steps or warmup_ratio, not both")
        recipe_picks_optimizer = self.recipe == "nanochat-2026" and "optimizer" not in self.recipe_fixed
        if self.architecture == "2026" and self.optimizer != "muon_adamw_2026" and not recipe_picks_optimizer:
            raise ValueError(
                f"architecture 2026 has value embeddings and residual scalars that optimizer {self.optimizer!r} has no groups for: "
                "set optimizer: muon_adamw_2026 (or recipe: nanochat-2026, which picks it)"
            )
        if self.recipe != "none":
            from hf_nanochat.train.recipe_2026 import DERIVED_KEYS

            stray = sorted(set(self.recipe_fixed) - set(DERIVED_KEYS))
            if stray:
                raise ValueError(f"recipe_fixed: {stray} are not derived by recipe {self.recipe} (it derives {list(DERIVED_KEYS)})")
        unknown_trackers = set(self.log_with) - {"tensorboard", "wandb", "all"}
        if unknown_trackers:
            raise ValueError(f"log_with: unknown trackers {sorted(unknown_trackers)} (tensorboard, wandb)")
        return self

    def model_config(self, vocab_size: int, **token_ids):
        """The NanoChatGPTConfig this recipe trains: its depth, architecture, context and kv heads."""
        from hf_nanochat.modeling.configuration_nanochat_gpt import NanoChatGPTConfig

        return NanoChatGPTConfig.from_depth(
            self.depth, vocab_size=vocab_size, max_position_embeddings=self.max_seq_len,
            num_key_value_heads=self.num_kv_heads, architecture=self.architecture, **token_ids,
        )


def _type_name(tp) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(name: str, value, tp):
    """`value` as type `tp`, or a ValueError that names the key. ints are accepted for floats
    (`1e-3` and `1` both mean a float); bools are never ints."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        for option in typing.get_args(tp):
            try:
                return _coerce(name, value, option)
            except ValueError:
                continue
        raise ValueError(f"{name}: {value!r} is not a valid {_type_name(tp)}")
    if origin is Literal:
        if value in typing.get_args(tp):
            return value
        if isinstance(value, int) and not isinstance(value, bool) and str(value) in typing.get_args(tp):
            return str(value)  # YAML reads `architecture: 2026` as a number
        raise ValueError(f"{name}: {value!r} is not one of {list(typing.get_args(tp))}")
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if isinstance(value, str):  # `--log_with=tensorboard` on the command line
            value = [v for v in value.split(",") if v]
        if not isinstance(value, list):
            raise ValueError(f"{name}: expected a list, got {value!r}")
        return [_coerce(f"{name}[{i}]", v, item_tp) for i, v in enumerate(value)]
    if tp is type(None):
        if value is None:
            return None
        raise ValueError(f"{name}: expected null, got {value!r}")
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ValueError(f"{name}: expected true/false, got {value!r}")
    if tp in (int, float) and isinstance(value, str):
        try:  # YAML 1.1 reads `1e-3` and `5e5` as strings
            value = float(value)
        except ValueError:
            kind = "an integer" if tp is int else "a number"
            raise ValueError(f"{name}: expected {kind}, got {value!r}") from None
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():  # 5e5 written for an int
            return int(value)
        raise ValueError(f"{name}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ValueError(f"{name}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ValueError(f"{name}: expected a string, got {value!r}")
    raise TypeError(f"{name}: unsupported field type {tp}")


def parse_value(text: str):
    """A command-line value as YAML would read it (`4` -> 4, `true` -> True, `null` -> None)."""
    try:
        return yaml.safe_load(text) if text != "" else ""
    except yaml.YAMLError:
        return text


def parse_overrides(args: list[str]) -> dict:
    """`['--depth=4', '--compile', 'true', '--log_with=tensorboard']` -> {'depth': 4, ...}."""
    out, i = {}, 0
    while i < len(args):
        token = args[i]
        if not token.startswith("--") or token == "--":
            raise ValueError(f"expected --key=value, got {token!r}")
        key, eq, value = token[2:].partition("=")
        if not eq:
            if i + 1 >= len(args) or args[i + 1].startswith("--"):
                raise ValueError(f"--{key} needs a value (--{key}=VALUE)")
            value, i = args[i + 1], i + 1
        out[key.replace("-", "_")] = parse_value(value)
        i += 1
    return out


def config_from_dict(values: dict, source: str = "config") -> TrainConfig:
    hints = typing.get_type_hints(TrainConfig)
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        import difflib

        hints_text = "; ".join(
            f"{k!r} (did you mean {m[0]!r}?)" if (m := difflib.get_close_matches(k, known, n=1)) else repr(k) for k in unknown
        )
        raise ValueError(f"{source}: unknown key(s) {hints_text}")
    kwargs = {k: _coerce(k, v, hints[k]) for k, v in values.items()}
    if kwargs.get("recipe", "none") != "none" and "recipe_fixed" not in kwargs:
        from hf_nanochat.train.recipe_2026 import DERIVED_KEYS

        kwargs["recipe_fixed"] = [k for k in DERIVED_KEYS if k in kwargs]  # what the config set itself
    return TrainConfig(**kwargs).validate()


def load_config(path: str | Path | None = None, overrides: dict | list[str] | None = None) -> TrainConfig:
    """YAML file (optional) + overrides (dict or `--key=value` list) -> validated TrainConfig."""
    values: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"train config {path} does not exist")
        loaded = yaml.safe_load(path.read_text()) or {}
        if not isinstance(loaded, dict):
            raise ValueError(f"{path}: expected a mapping of key: value at the top level")
        values.update(loaded)
    if isinstance(overrides, list):
        overrides = parse_overrides(overrides)
    values.update(overrides or {})
    return config_from_dict(values, source=str(path) if path else "config")


def config_to_yaml(config: TrainConfig) -> str:
    return yaml.safe_dump(dataclasses.asdict(config), sort_keys=False)


__all__ = ["TrainConfig", "load_config", "parse_overrides", "parse_value", "config_from_dict", "config_to_yaml"]
