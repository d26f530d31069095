"""Sharing: the Hub (push with a model card), conversions to and from transformers' built-in
nanochat and nanochat's own checkpoints, and LoRA merging."""
