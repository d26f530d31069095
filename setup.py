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
    # Every floor below is what .ci/floors.txt pins in CI's second environment (the suite runs
    # there too); the first environment takes the newest releases these ranges allow.
    # transformers >= 5.23 for the pipeline (TrainingArguments' activation_checkpointing, which
    # the chat stages pass to TRL); the model files that travel with checkpoints load and generate
    # from 5.16.1 on (.ci/model_floor.txt, tested too). < 6: major releases rename model APIs.
    # torch is a range on purpose: CI installs the CPU wheel torch==2.13.0 first and a range it
    # satisfies pulls nothing more (an unpinned torch would fetch CUDA builds). 2.13 is the only
    # build CI can test; >=2.6 is what the code needs (FSDP2's public fully_shard, F.rms_norm).
    # matplotlib 3.9: the first with NumPy 2 wheels (pyarrow, under datasets, needs NumPy 2).
    install_requires=[
        "torch>=2.6",
        "transformers>=5.23,<6",
        "tokenizers>=0.23.1",
        "huggingface_hub>=1.31.0",
        "safetensors>=0.8.0",
        "accelerate>=1.15.0",
        "datasets>=4.7.0",
        "trl>=1.16.0",
        "peft>=0.21.0",
        "gradio>=6.0.0",
        "pyyaml>=6.0.1",
        "matplotlib>=3.9.0",
        "english-words>=2.0,<3",  # SpellingBee's real word list (nanochat uses ~370K words); 8 MB, pure Python
    ],
    extras_require={
        "dev": [
            "pytest>=8",
            "hypothesis>=6",
            "playwright>=1.40",
            "tiktoken>=0.7",
            "rustbpe>=0.1",
            "lm-eval>=0.4",
            "parameterized>=0.9",  # transformers' own common model tests (tests/transformers_common)
        ],
    },
    entry_points={"console_scripts": ["hf-nanochat=hf_nanochat.cli:main"]},
)
