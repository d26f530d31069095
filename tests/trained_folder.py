"""A small folder that looks like a finished training run: model, tokenizer, report.md."""
from pathlib import Path

import torch

from hf_nanochat import NanoChatGPTConfig, NanoChatGPTForCausalLM
from hf_nanochat.data.tokenizer import train_tokenizer

TEXTS = ["Why is the sky blue? Because of Rayleigh scattering of sunlight by air molecules. " * 4] * 30
REPORT = "| metric | value |\n|---|---|\n| val bpb | 1.234 |\n| CORE | 0.0456 |\n"


def make_trained_folder(folder: Path) -> Path:
    """Tiny random-weight model (every weight random: nanochat's init zeroes lm_head) + our tokenizer."""
    tok = train_tokenizer(TEXTS, vocab_size=320)
    config = NanoChatGPTConfig(vocab_size=len(tok), hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                               max_position_embeddings=128, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    generator = torch.Generator().manual_seed(0)
    model = NanoChatGPTForCausalLM(config)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * 0.3)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    (folder / "report.md").write_text(REPORT)
    return folder
