"""Shim for transformers' tests/utils/test_configuration_utils.py, which the sdist does not ship.

ConfigTester.check_config_arguments_init builds a config from `config_common_kwargs` and checks
every value arrives. These are arguments every PreTrainedConfig takes, each set to a value that
is not its default (generation parameters are left out: transformers 5 moves them to the
generation config instead of setting them on the model config).
"""

config_common_kwargs = {
    "return_dict": False,
    "output_hidden_states": True,
    "dtype": "float16",
    "chunk_size_feed_forward": 5,
    "architectures": ["NanoChatGPTForCausalLM"],
    "id2label": {0: "label"},
    "label2id": {"label": 0},
    "problem_type": "regression",
    "bos_token_id": 6,
    "pad_token_id": 7,
    "eos_token_id": 8,
}
