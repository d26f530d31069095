"""Moved to `hf_nanochat.data.tokenizer`; this name stays for one release."""
from hf_nanochat.data.tokenizer import *  # noqa: F401,F403
from hf_nanochat.data.tokenizer import load_tokenizer, train_tokenizer  # noqa: F401
