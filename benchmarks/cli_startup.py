"""`hf-nanochat --help` start-up time next to what importing torch + transformers alone costs
(what --help paid before the package's imports were made lazy), alternating, medians.

    python benchmarks/cli_startup.py [--rounds 5]

Prints a markdown section to append to benchmarks/RESULTS.md.
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

COMMANDS = {
    "hf-nanochat --help": [sys.executable, "-m", "hf_nanochat.cli", "--help"],
    "python -c 'import torch, transformers.modeling_utils'": [sys.executable, "-c", "import torch, transformers.modeling_utils"],
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    times: dict[str, list[float]] = {name: [] for name in COMMANDS}
    for _ in range(args.rounds):
        for name, command in COMMANDS.items():
            t0 = time.perf_counter()
            subprocess.run(command, check=True, capture_output=True)
            times[name].append(time.perf_counter() - t0)
    (help_name, heavy_name) = COMMANDS
    help_s, heavy_s = (statistics.median(times[n]) for n in COMMANDS)
    print("| command | median wall time |\n|---|---:|")
    for name in COMMANDS:
        print(f"| `{name}` | {statistics.median(times[name]):.2f} s |")
    print(f"\n--help takes {help_s / heavy_s:.2f}x the time of the imports it no longer does ({args.rounds} alternating rounds).")


if __name__ == "__main__":
    main()
