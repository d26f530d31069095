"""Moved to `hf_nanochat.serve.app`; `python -m hf_nanochat.app` (named in model cards already on
the Hub) keeps working for one release."""
import sys

from hf_nanochat.serve.app import *  # noqa: F401,F403
from hf_nanochat.serve.app import main

if __name__ == "__main__":
    sys.exit(main())
