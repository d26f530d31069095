"""Self-contained model and tokenizer files (torch / tokenizers + transformers only); installed as `hf_nanochat.modeling`."""
