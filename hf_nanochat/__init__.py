"""hf-nanochat: nanochat's depth-scaled GPT and pipeline on the Hugging Face stack.

The package itself imports nothing heavy, so `hf-nanochat --help` does not wait for torch and
transformers. The model names below load on first use; that import (like any import of
`hf_nanochat.modeling`) registers the model with the Auto classes, so
`AutoModelForCausalLM.from_pretrained(folder)` works without trust_remote_code.
"""
__version__ = "0.1.0"

__all__ = ["NanoChatGPTConfig", "NanoChatGPTModel", "NanoChatGPTForCausalLM", "NanoChatTokenizer", "render_conversation"]


def __getattr__(name: str):
    if name in __all__:
        import hf_nanochat.modeling as modeling

        return getattr(modeling, name)
    raise AttributeError(f"module 'hf_nanochat' has no attribute {name!r}")
