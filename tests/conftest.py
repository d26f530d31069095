"""Shared fixtures. Tests never touch the network: the Hub is switched off here."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest
import torch


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def fresh_accelerate_state():
    """Accelerate keeps its state process-wide; a test that builds an Accelerator starts clean and
    leaves nothing behind (modules opt in with `pytestmark = pytest.mark.usefixtures(...)`)."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


# Marks transformers' common model tests (tests/test_transformers_common.py) put on their tests.
TRANSFORMERS_TEST_MARKS = ("accelerate_tests", "flash_attn_test", "flash_attn_3_test", "flash_attn_4_test",
                           "torch_compile_test", "torch_export_test", "is_training_test", "generate")


def pytest_configure(config):
    for mark in TRANSFORMERS_TEST_MARKS:
        config.addinivalue_line("markers", f"{mark}: transformers' own test mark")
