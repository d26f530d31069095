"""transformers' own common model tests (ModelTesterMixin, ConfigTester, TrainingTesterMixin),
from the sdist of the installed transformers release, run against our model with a tester of ours.

Every test of the mixins runs; what cannot apply to this model skips with the reason (most of
them transformers' own: GPU, flash-attention, DeepSpeed, MoE, composite models). The test files
come from PyPI (tests/transformers_common/fetch.py, which also says which modules of the
transformers repository the sdist lacks and what stands in for them); without a package index
the module skips, unless HF_NANOCHAT_REQUIRE_TRANSFORMERS_COMMON_TESTS=1 (CI) makes that an error.

PipelineTesterMixin is not used: it imports ~20 pipeline test modules that are not in the sdist
and runs pipelines on tiny checkpoints downloaded from the Hub. pipeline("text-generation") is
covered by the project's generation tests.
"""
import os
import sys
import unittest
from pathlib import Path
from unittest import mock

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from transformers_common.fetch import CommonTestsUnavailable, import_common_tests  # noqa: E402

try:
    modeling_common, configuration_common, training_mixin, MANIFEST = import_common_tests()
except CommonTestsUnavailable as err:
    if os.environ.get("HF_NANOCHAT_REQUIRE_TRANSFORMERS_COMMON_TESTS") == "1":
        raise
    pytest.skip(f"transformers' common model tests are not available: {err}", allow_module_level=True)

from torch import nn  # noqa: E402
from transformers import initialization as init  # noqa: E402
from transformers.models.auto import modeling_auto  # noqa: E402

from hf_nanochat import NanoChatGPTConfig, NanoChatGPTForCausalLM, NanoChatGPTModel  # noqa: E402
from hf_nanochat.modeling.modeling_nanochat_gpt import NanoChatGPTPreTrainedModel  # noqa: E402

pytestmark = pytest.mark.slow

ids_tensor = modeling_common.ids_tensor

# ModelTesterMixin decides what a class is (base model, causal LM, ...) by looking its name up in
# transformers' own auto-mapping tables, which list only in-library models; we enter ours there
# for the duration of the tests, as `AutoModel.register` does for loading.
AUTO_NAMES = [
    (modeling_auto.MODEL_MAPPING_NAMES, NanoChatGPTModel.__name__),
    (modeling_auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES, NanoChatGPTForCausalLM.__name__),
]


GENERATION_SHIMMED = "generation/test_utils.py" in MANIFEST["shimmed"]
# With the real GenerationTesterMixin (a release whose sdist ships it) its generate tests run too.
GENERATION_MIXINS = () if GENERATION_SHIMMED else (modeling_common.GenerationTesterMixin,)

NANOCHAT_INIT_WEIGHTS = NanoChatGPTPreTrainedModel._init_weights


def init_weights_with_live_branches(self, module: nn.Module) -> None:
    """nanochat's init, except that the zero-initialised matrices (both residual projections and
    lm_head) are drawn like the others. With nanochat's zeros every block is the identity and the
    logits uniform, so the tests that compare attention paths (eager vs SDPA, padding, batching,
    RoPE scaling) or losses would pass without looking at attention or targets at all.
    nanochat's own init is tested in tests/test_modeling.py."""
    NANOCHAT_INIT_WEIGHTS(self, module)
    if isinstance(module, nn.Linear) and getattr(module, "zero_init", False):
        init.normal_(module.weight, mean=0.0, std=module.weight.shape[1] ** -0.5)


class NanoChatGPTModelTester:
    """A tiny NanoChatGPTConfig (depth 2, GQA) and random inputs with a causal-shaped padding mask."""

    config_class = NanoChatGPTConfig
    base_model_class = NanoChatGPTModel
    causal_lm_class = NanoChatGPTForCausalLM

    def __init__(self, parent, batch_size=13, seq_length=7, vocab_size=99, hidden_size=32, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, intermediate_size=37, max_position_embeddings=512):
        self.parent = parent
        self.batch_size = batch_size
        self.seq_length = seq_length
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.num_key_value_heads = num_key_value_heads
        self.intermediate_size = intermediate_size
        self.max_position_embeddings = max_position_embeddings
        self.is_training = True
        self.pad_token_id = 0

    def get_config(self) -> NanoChatGPTConfig:
        return NanoChatGPTConfig(
            vocab_size=self.vocab_size,
            hidden_size=self.hidden_size,
            num_hidden_layers=self.num_hidden_layers,
            num_attention_heads=self.num_attention_heads,
            num_key_value_heads=self.num_key_value_heads,
            intermediate_size=self.intermediate_size,
            max_position_embeddings=self.max_position_embeddings,
            pad_token_id=self.pad_token_id,
            bos_token_id=1,
            eos_token_id=2,
        )

    def prepare_config_and_inputs_for_common(self):
        input_ids = ids_tensor([self.batch_size, self.seq_length], self.vocab_size)
        attention_mask = torch.tril(torch.ones_like(input_ids))  # rows with 1..seq_length real tokens
        return self.get_config(), {"input_ids": input_ids, "attention_mask": attention_mask}


class NanoChatGPTCommonTest(
    modeling_common.ModelTesterMixin, *GENERATION_MIXINS, training_mixin.TrainingTesterMixin, unittest.TestCase
):
    all_model_classes = (NanoChatGPTModel, NanoChatGPTForCausalLM)
    model_tester = None  # set in setUp (TrainingTesterMixin declares it abstract)
    # The mixin skips this for models whose config file has no copyright year >= 2023 (ours has
    # none): our _init_weights covers every parameter and buffer, so let it check.
    test_can_init_all_missing_weights_before_2023 = True

    @classmethod
    def setUpClass(cls):
        cls._patches = [mock.patch.dict(table, {NanoChatGPTConfig.model_type: name}) for table, name in AUTO_NAMES]
        cls._patches.append(mock.patch.object(NanoChatGPTPreTrainedModel, "_init_weights", init_weights_with_live_branches))
        for patch in cls._patches:
            patch.start()

    @classmethod
    def tearDownClass(cls):
        for patch in reversed(cls._patches):
            patch.stop()

    def setUp(self):
        self.model_tester = NanoChatGPTModelTester(self)
        self.config_tester = configuration_common.ConfigTester(
            self, config_class=NanoChatGPTConfig, vocab_size=99, hidden_size=32, num_attention_heads=4
        )

    def test_config(self):
        self.config_tester.run_common_tests()

    if GENERATION_SHIMMED:

        @unittest.skip(
            "transformers' GenerationTesterMixin (tests/generation/test_utils.py) is not in the sdist, so this "
            "tester cannot inherit it; generation is tested by the project's own generation tests"
        )
        def test_generation_tester_mixin_inheritance(self):
            pass
