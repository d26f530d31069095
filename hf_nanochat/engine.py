"""Moved to `hf_nanochat.serve.engine`; this name stays for one release."""
from hf_nanochat.serve.engine import *  # noqa: F401,F403
from hf_nanochat.serve.engine import Engine, load_chat_model, parse_rendered_reply  # noqa: F401
