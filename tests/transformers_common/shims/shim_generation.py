"""Shim for transformers' tests/generation/test_utils.py, which the sdist does not ship.

test_modeling_common.py imports GenerationTesterMixin only to check that a tester of a
generative model inherits it. This stand-in has no tests: our tester does not inherit it (its
inheritance check is skipped with that reason), and generation is tested by the project's own
generation tests instead.
"""


class GenerationTesterMixin:
    pass
