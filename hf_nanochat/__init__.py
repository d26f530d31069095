"""hf-nanochat: nanochat's depth-scaled GPT and pipeline on the Hugging Face stack.

Importing the package registers the model with the Auto classes, so
`AutoModelForCausalLM.from_pretrained(folder)` works without trust_remote_code
in any process that imported hf_nanochat.
"""
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer

from hf_nanochat.modeling.configuration_nanochat_gpt import NanoChatGPTConfig
from hf_nanochat.modeling.modeling_nanochat_gpt import NanoChatGPTForCausalLM, NanoChatGPTModel
from hf_nanochat.modeling.tokenization_nanochat_gpt import NanoChatTokenizer, render_conversation

__version__ = "0.1.0"

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
