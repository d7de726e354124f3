"""Run every benchmark script in bench/ (bench_*.py), one after another.

    .venv/bin/python bench/run_all.py            # full runs
    .venv/bin/python bench/run_all.py --quick    # arguments are passed to each script

Each script runs in its own interpreter with this one's executable; the exit
status is 1 if any of them failed.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path


def main(argv: list[str]) -> int:
    here = Path(__file__).resolve().parent
    scripts = sorted(here.glob("bench_*.py"))
    failed: list[str] = []
    for script in scripts:
        print(f"=== {script.name} {' '.join(argv)}".rstrip(), flush=True)
        start = time.perf_counter()
        status = subprocess.call([sys.executable, str(script), *argv])
        print(f"=== {script.name}: exit {status} in {time.perf_counter() - start:.0f} s\n",
              flush=True)
        if status != 0:
            failed.append(script.name)
    print(f"{len(scripts)} benchmark(s) run; failed: {', '.join(failed) if failed else 'none'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
