"""Self-contained model files (torch + transformers only); installed as `hf_nanochat.modeling`."""
