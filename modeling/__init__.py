"""Self-contained model and tokenizer files (torch / tokenizers + transformers only); installed as `hf_nanochat.modeling`.

Importing this package registers the model with the Auto classes, so
`AutoModelForCausalLM.from_pretrained(folder)` works without trust_remote_code in any process
that imported `hf_nanochat.modeling` (every pipeline module that loads a model does). The files
travel to the Hub one by one; this `__init__` does not, so it only ever runs installed.
"""
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer

from .configuration_nanochat_gpt import NanoChatGPTConfig
from .modeling_nanochat_gpt import NanoChatGPTForCausalLM, NanoChatGPTModel
from .tokenization_nanochat_gpt import NanoChatTokenizer, render_conversation

AutoConfig.register(NanoChatGPTConfig.model_type, NanoChatGPTConfig, exist_ok=True)
AutoModel.register(NanoChatGPTConfig, NanoChatGPTModel, exist_ok=True)
AutoModelForCausalLM.register(NanoChatGPTConfig, NanoChatGPTForCausalLM, exist_ok=True)
# A saved tokenizer folder names `NanoChatTokenizer`; registering it makes AutoTokenizer return
# the subclass whose apply_chat_template(tokenize=True) is injection-safe.
AutoTokenizer.register(NanoChatGPTConfig, tokenizer_class=NanoChatTokenizer, exist_ok=True)
# save_pretrained then copies the model files (and the tokenizer's) and writes `auto_map`, so
# the folder loads with trust_remote_code where hf_nanochat is not installed - the tokenizer
# included, with its injection-safe apply_chat_template.
NanoChatGPTConfig.register_for_auto_class()
NanoChatGPTModel.register_for_auto_class("AutoModel")
NanoChatGPTForCausalLM.register_for_auto_class("AutoModelForCausalLM")
NanoChatTokenizer.register_for_auto_class("AutoTokenizer")

__all__ = ["NanoChatGPTConfig", "NanoChatGPTModel", "NanoChatGPTForCausalLM", "NanoChatTokenizer", "render_conversation"]
