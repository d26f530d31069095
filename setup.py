"""hf-nanochat: nanochat's depth-scaled GPT and pipeline on the Hugging Face stack.

`modeling/` sits at the top level (it is what travels to the Hub with every
checkpoint) but is installed as `hf_nanochat.modeling`, never as a top-level
package called `modeling`.
"""
from setuptools import setup

# hf_nanochat/ is grouped by pipeline stage, one sub-package each.
STAGES = ["data", "train", "evaluate", "serve", "share", "speedrun"]

setup(
    name="hf-nanochat",
    version="0.1.0",
    description="nanochat's depth-scaled GPT, tokenizer, training and chat on transformers/accelerate/TRL",
    packages=["hf_nanochat", *(f"hf_nanochat.{stage}" for stage in STAGES), "hf_nanochat.modeling"],
    package_dir={"hf_nanochat": "hf_nanochat", "hf_nanochat.modeling": "modeling"},
    package_data={"hf_nanochat": ["resources/*.txt"]},
    python_requires=">=3.10",
    # torch is a range on purpose: CI installs the CPU wheel torch==2.13.0 first and a
    # range it satisfies pulls nothing more (an unpinned torch would fetch CUDA builds).
    install_requires=[
        "torch>=2.4",
        "transformers>=5.23,<6",
        "accelerate>=1.15",
        "datasets>=4.0",
        "tokenizers>=0.22",
        "trl>=1.16",
        "peft>=0.21",
        "gradio>=6.0",
        "huggingface_hub>=1.0",
        "safetensors>=0.4",
        "pyyaml>=6.0",
        "matplotlib>=3.8",
    ],
    extras_require={
        "dev": [
            "pytest>=8",
            "hypothesis>=6",
            "playwright>=1.40",
            "tiktoken>=0.7",
            "rustbpe>=0.1",
            "lm-eval>=0.4",
        ],
    },
    entry_points={"console_scripts": ["hf-nanochat=hf_nanochat.cli:main"]},
)
