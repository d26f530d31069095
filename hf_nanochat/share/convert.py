"""Weight conversion between our model and other formats, and `hf-nanochat convert`.

    to-transformers    our folder -> transformers' built-in `nanochat` model type (no remote code)
    from-transformers  a built-in `nanochat` folder -> ours
    from-nanochat      a karpathy/nanochat checkpoint folder -> ours (see nanochat_checkpoint.py)

Both architectures are the same network under different names: ours keeps nanochat's module
names (`transformer.h.{i}.attn.c_q`), transformers' inference port uses Llama-style ones
(`model.layers.{i}.self_attn.q_proj`). The one numerical difference is the RMSNorm epsilon:
ours defaults to `None` (the dtype's machine epsilon, as nanochat's `F.rms_norm` does) while the
port needs a number, so fp32's epsilon is written there and read back as `None`.
"""
from __future__ import annotations

import argparse
import json
import re
import shutil
from pathlib import Path

import torch
from transformers import NanoChatConfig, NanoChatForCausalLM, PreTrainedModel
from transformers.initialization import no_init_weights

# (importing hf_nanochat.* runs hf_nanochat/__init__, which registers our classes, so
# save_pretrained writes auto_map and the code files)
from hf_nanochat.modeling.configuration_nanochat_gpt import NanoChatGPTConfig
from hf_nanochat.modeling.modeling_nanochat_gpt import NanoChatGPTForCausalLM

# (our name, transformers' name); `{i}` is the layer index.
_WEIGHT_NAMES = [
    ("transformer.wte.weight", "model.embed_tokens.weight"),
    ("transformer.h.{i}.attn.c_q.weight", "model.layers.{i}.self_attn.q_proj.weight"),
    ("transformer.h.{i}.attn.c_k.weight", "model.layers.{i}.self_attn.k_proj.weight"),
    ("transformer.h.{i}.attn.c_v.weight", "model.layers.{i}.self_attn.v_proj.weight"),
    ("transformer.h.{i}.attn.c_proj.weight", "model.layers.{i}.self_attn.o_proj.weight"),
    ("transformer.h.{i}.mlp.c_fc.weight", "model.layers.{i}.mlp.fc1.weight"),
    ("transformer.h.{i}.mlp.c_proj.weight", "model.layers.{i}.mlp.fc2.weight"),
    ("lm_head.weight", "lm_head.weight"),
]

# The code file a saved NanoChatTokenizer names in tokenizer_config.json's `auto_map`.
TOKENIZER_CODE_FILE = "tokenization_nanochat_gpt.py"
# Files a tokenizer folder may hold; copied next to converted weights.
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "chat_template.jinja",
    "chat_template.json",
    TOKENIZER_CODE_FILE,
)

# What our eps=None means for the fp32 reference numerics, and what the port is given for it.
_DTYPE_EPS = torch.finfo(torch.float32).eps


def _rename_patterns(src_index: int) -> list[tuple[re.Pattern, str]]:
    """Regexes from one naming (0 = ours, 1 = transformers') to the other."""
    patterns = []
    for names in _WEIGHT_NAMES:
        src, dst = names[src_index], names[1 - src_index]
        regex = re.escape(src).replace(re.escape("{i}"), r"(\d+)")
        patterns.append((re.compile(f"^{regex}$"), dst.replace("{i}", r"\1")))
    return patterns


def rename_state_dict(state_dict: dict[str, torch.Tensor], to: str) -> dict[str, torch.Tensor]:
    """Rename weights between our names and transformers' (`to` is "transformers" or "ours").

    An unknown key is an error: silently dropping a weight would give a broken model.
    """
    if to not in ("transformers", "ours"):
        raise ValueError(f"to must be 'transformers' or 'ours', got {to!r}")
    patterns = _rename_patterns(0 if to == "transformers" else 1)
    renamed = {}
    for key, tensor in state_dict.items():
        for regex, replacement in patterns:
            if regex.match(key):
                renamed[regex.sub(replacement, key)] = tensor
                break
        else:
            raise KeyError(f"weight {key!r} has no counterpart in the {to} naming")
    return renamed


def require_builtin_expressible(config: NanoChatGPTConfig) -> None:
    """transformers' `nanochat` type is the Nov 2025 model only: refuse anything else, since
    its loaders would drop the 2026 weights without a word and give a different model."""
    if config.nanochat_architecture != "2025-11":
        raise ValueError(
            f"this is a nanochat {config.nanochat_architecture} model (value embeddings, sliding windows, smear, "
            "backout, residual scalars, q/k scale or a padded vocab): transformers' built-in `nanochat` type "
            "cannot hold it. Keep this folder's own format (it loads with trust_remote_code=True)."
        )


def to_transformers_config(config: NanoChatGPTConfig) -> NanoChatConfig:
    """Our config as transformers' built-in NanoChatConfig (same shapes and numerics)."""
    require_builtin_expressible(config)
    return NanoChatConfig(
        vocab_size=config.vocab_size,
        hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size,
        num_hidden_layers=config.num_hidden_layers,
        num_attention_heads=config.num_attention_heads,
        num_key_value_heads=config.num_key_value_heads,
        max_position_embeddings=config.max_position_embeddings,
        hidden_act="relu2",
        attention_bias=False,
        rms_norm_eps=_DTYPE_EPS if config.rms_norm_eps is None else config.rms_norm_eps,
        rope_parameters=dict(config.rope_parameters),  # both rotaries take transformers' RoPE types
        final_logit_softcapping=config.final_logit_softcapping,
        bos_token_id=config.bos_token_id,
        eos_token_id=config.eos_token_id,
        pad_token_id=config.pad_token_id,
        tie_word_embeddings=False,
    )


def from_transformers_config(config: NanoChatConfig) -> NanoChatGPTConfig:
    """transformers' NanoChatConfig as ours; refuses settings our model does not implement."""
    unsupported = []
    if config.hidden_act != "relu2":
        unsupported.append(f"hidden_act={config.hidden_act!r} (ours is relu2)")
    if config.attention_bias:
        unsupported.append("attention_bias=True (ours has no biases)")
    head_dim = getattr(config, "head_dim", None)
    if head_dim is not None and head_dim != config.hidden_size // config.num_attention_heads:
        unsupported.append(f"head_dim={head_dim} != hidden_size/num_attention_heads")
    if unsupported:
        raise ValueError("cannot represent this NanoChatConfig: " + "; ".join(unsupported))
    eps = config.rms_norm_eps
    return NanoChatGPTConfig(
        vocab_size=config.vocab_size,
        hidden_size=config.hidden_size,
        num_hidden_layers=config.num_hidden_layers,
        num_attention_heads=config.num_attention_heads,
        num_key_value_heads=config.num_key_value_heads,
        intermediate_size=config.intermediate_size,
        max_position_embeddings=config.max_position_embeddings,
        rope_parameters=dict(config.rope_parameters or {"rope_type": "default", "rope_theta": 10000.0}),
        rms_norm_eps=None if eps == _DTYPE_EPS else eps,
        final_logit_softcapping=config.final_logit_softcapping,
        bos_token_id=config.bos_token_id,
        eos_token_id=config.eos_token_id,
        pad_token_id=config.pad_token_id,
    )


def _build_with_weights(model_cls: type[PreTrainedModel], config, state_dict, dtype: torch.dtype, generation_config):
    # Skip random init: every weight is overwritten right after (strict load).
    with no_init_weights():
        model = model_cls._from_config(config, dtype=dtype)
    model.load_state_dict(state_dict, strict=True)
    if generation_config is not None:
        model.generation_config = generation_config.__class__.from_dict(generation_config.to_dict())
    return model.eval()


def to_transformers(model: NanoChatGPTForCausalLM) -> NanoChatForCausalLM:
    """A transformers-native NanoChatForCausalLM with a copy of our model's weights."""
    state_dict = rename_state_dict(model.state_dict(), to="transformers")
    return _build_with_weights(
        NanoChatForCausalLM, to_transformers_config(model.config), state_dict, model.dtype, model.generation_config
    )


def from_transformers(model: NanoChatForCausalLM) -> NanoChatGPTForCausalLM:
    """Our NanoChatGPTForCausalLM with a copy of a transformers NanoChatForCausalLM's weights."""
    config = from_transformers_config(model.config)
    state_dict = dict(model.state_dict())
    if model.config.tie_word_embeddings:
        # Ours is always untied: the tied matrix becomes two equal copies.
        state_dict["lm_head.weight"] = state_dict["model.embed_tokens.weight"].clone()
    state_dict = rename_state_dict(state_dict, to="ours")
    return _build_with_weights(NanoChatGPTForCausalLM, config, state_dict, model.dtype, model.generation_config)


def copy_tokenizer_files(src: str | Path, out: str | Path, remote_code: bool = True) -> list[str]:
    """Copy the tokenizer files present in `src` into `out`; returns the names copied.

    `remote_code=False` leaves out the tokenizer's code file and its `auto_map`, so the folder
    loads without trust_remote_code (as transformers' generic tokenizer class).
    """
    src, out = Path(src), Path(out)
    copied = []
    for name in TOKENIZER_FILES:
        if (src / name).is_file() and (remote_code or name != TOKENIZER_CODE_FILE):
            shutil.copy2(src / name, out / name)
            copied.append(name)
    config_file = out / "tokenizer_config.json"
    if not remote_code and config_file.is_file():
        config = json.loads(config_file.read_text())
        if config.pop("auto_map", None) is not None:
            config_file.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")
    return copied


def convert_folder(src: str | Path, out: str | Path, direction: str) -> Path:
    """Convert a saved model folder (`direction`: "to-transformers" or "from-transformers")."""
    if direction == "to-transformers":
        source, convert = NanoChatGPTForCausalLM, to_transformers
    elif direction == "from-transformers":
        source, convert = NanoChatForCausalLM, from_transformers
    else:
        raise ValueError(f"unknown direction {direction!r}")
    src, out = Path(src), Path(out)
    expected = source.config_class.model_type
    from hf_nanochat.model_folder import check_model_source

    check_model_source(str(src))  # a missing folder is named as one
    found = _model_type(src)
    if found != expected:
        raise ValueError(f"{src} holds a {found!r} model; {direction} expects model_type {expected!r}")
    if direction == "to-transformers":
        require_builtin_expressible(NanoChatGPTConfig.from_pretrained(src))  # before loading or writing anything
    model = source.from_pretrained(src, dtype="auto")
    converted = convert(model)
    out.mkdir(parents=True, exist_ok=True)
    converted.save_pretrained(out)
    # transformers' built-in type is the no-remote-code format: its tokenizer must not need any.
    copy_tokenizer_files(src, out, remote_code=direction != "to-transformers")
    if direction == "from-transformers":
        restore_safe_tokenizer(out)
    from hf_nanochat.model_folder import match_permissions

    match_permissions(out)  # safetensors writes 0600; the rest is 0644
    return out


def restore_safe_tokenizer(folder: str | Path) -> bool:
    """Re-save a tokenizer that has nanochat's special tokens as our NanoChatTokenizer, which
    writes back its code file and `auto_map` (the injection-safe chat template path) that the
    no-remote-code format left out. Returns whether it did."""
    from hf_nanochat.data.tokenizer import SPECIAL_TOKENS, NanoChatTokenizer

    folder = Path(folder)
    tokenizer_file = folder / "tokenizer.json"
    if not tokenizer_file.is_file():
        return False
    added = {t.get("content") for t in json.loads(tokenizer_file.read_text()).get("added_tokens") or []}
    if not set(SPECIAL_TOKENS) <= added:
        return False
    NanoChatTokenizer.from_pretrained(folder).save_pretrained(folder)
    return True


def _model_type(folder: Path) -> str | None:
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"{folder} has no config.json: not a saved model folder")
    return json.loads(config_file.read_text()).get("model_type")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="direction", metavar="DIRECTION", required=True)
    p = sub.add_parser("to-transformers", help="our folder -> transformers' built-in nanochat (no remote code)")
    p.add_argument("folder")
    p.add_argument("out")
    p = sub.add_parser("from-transformers", help="a transformers nanochat folder -> our format")
    p.add_argument("folder")
    p.add_argument("out")
    p = sub.add_parser("from-nanochat", help="a karpathy/nanochat checkpoint folder -> our format")
    p.add_argument("checkpoint_dir", help="folder with model_<step>.pt and meta_<step>.json")
    p.add_argument("out")
    p.add_argument("--tokenizer-dir", help="folder with nanochat's tokenizer.pkl (default: look next to the checkpoint)")
    p.add_argument("--step", type=int, help="checkpoint step (default: the latest)")


def run(args: argparse.Namespace) -> int:
    if args.direction == "from-nanochat":
        from hf_nanochat.share.nanochat_checkpoint import convert_nanochat_checkpoint

        out = convert_nanochat_checkpoint(args.checkpoint_dir, args.out, tokenizer_dir=args.tokenizer_dir, step=args.step)
    else:
        out = convert_folder(args.folder, args.out, args.direction)
    print(f"wrote {out}")
    return 0
