"""The demo: run every example against a fresh embedded store, each in its
own process, then print the recorded session trees.

    make demo        (or: .venv/bin/python examples/run_all.py [--keep DIR])
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent

# (script, arguments); the order matters where one hands a session to the next.
EXAMPLES = [
    ("create_existing_session.py", []),
    ("seed_basic_usage.py", []),
    ("seed_distributed_process1.py", ["queue.txt"]),
    ("seed_distributed_process2.py", ["queue.txt"]),
    ("seed_error_recovery.py", []),
    ("seed_error_handling.py", []),
    ("thread_pool.py", []),
    ("asyncio_tasks.py", []),
]


def run(args: list[str], env: dict[str, str], cwd: Path) -> str:
    result = subprocess.run([sys.executable, *args], env=env, cwd=cwd, capture_output=True,
                            text=True, timeout=120)
    if result.returncode != 0:
        sys.exit(f"{' '.join(args)} failed ({result.returncode}):\n{result.stdout}{result.stderr}")
    return result.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--keep", type=Path, help="use (and keep) this directory as LUCIDIC_HOME")
    options = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="lucidic-demo-"))
    home = options.keep or workdir / "home"
    env = {k: v for k, v in os.environ.items() if not k.startswith("LUCIDIC_")}
    env["LUCIDIC_HOME"] = str(home)
    print(f"Embedded store: {home / 'lucidic.db'}\n")
    for script, args in EXAMPLES:
        print(f"$ python examples/{script} {' '.join(args)}".rstrip())
        output = run([str(HERE / script), *args], env, workdir)
        print("".join(f"  {line}\n" for line in output.splitlines()), end="")
    cli = ["-m", "lucidic.cli"]
    print("\n$ lucidic sessions list")
    print(run([*cli, "sessions", "list"], env, workdir))
    import json

    sessions = json.loads(run([*cli, "sessions", "list", "--json"], env, workdir))
    for session in reversed(sessions):
        print(f"$ lucidic sessions show {session['id']}")
        print(run([*cli, "sessions", "show", session["id"]], env, workdir))


if __name__ == "__main__":
    main()
