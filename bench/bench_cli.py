"""What the `lucidic` command costs to answer, in fresh processes.

Compared, in rounds that alternate between them so that drift hits them alike:

  startup        `python -c pass`: the interpreter alone
  version        `lucidic --version`: the CLI's own floor (imports lucidic)
  providers      `lucidic providers`: lists the installed plugins and the
                 library version each found, without importing the libraries
  libraries      importing the five libraries the plugins instrument (openai,
                 anthropic, langchain_core, pydantic_ai, agents): what listing
                 the plugins cost when it imported them

The figure is the median wall time over the rounds.

    .venv/bin/python bench/bench_cli.py [--rounds 7]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

LIBRARIES = "import openai, anthropic, langchain_core.callbacks, pydantic_ai, agents"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--quick", action="store_true", help="three rounds")
    options = parser.parse_args()
    rounds = 3 if options.quick else options.rounds
    commands = {
        "startup": [sys.executable, "-c", "pass"],
        "version": [sys.executable, "-m", "lucidic", "--version"],
        "providers": [sys.executable, "-m", "lucidic", "providers"],
        "libraries": [sys.executable, "-c", LIBRARIES],
    }
    with tempfile.TemporaryDirectory(prefix="lucidic-bench-cli-") as home:
        env = {**os.environ, "LUCIDIC_HOME": home}
        times: dict[str, list[float]] = {name: [] for name in commands}
        for round_number in range(rounds):
            names = list(commands)
            names = names[round_number % len(names):] + names[:round_number % len(names)]
            for name in names:
                start = time.perf_counter()
                subprocess.run(commands[name], env=env, check=True, stdout=subprocess.DEVNULL)
                times[name].append(time.perf_counter() - start)
    median = {name: statistics.median(values) for name, values in times.items()}
    for name, value in median.items():
        print(f"{name:<10} {value * 1000:8.0f} ms")
    over = (median["providers"] - median["version"]) * 1000
    print(f"lucidic providers: {median['providers'] * 1000:.0f} ms, "
          f"{median['providers'] / median['libraries']:.2f} of importing the libraries "
          f"({median['libraries'] * 1000:.0f} ms); +{over:.0f} ms over `lucidic --version`")


if __name__ == "__main__":
    main()
