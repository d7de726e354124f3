"""The demo: run every example against a fresh embedded store, each in its
own process, then print the recorded session trees.

    make demo        (or: .venv/bin/python examples/run_all.py [--home DIR])

The store is kept in .lucidic-demo/ beside this folder (started afresh by
each run), and the demo ends by printing the commands that read it again.
Everything else it makes (the examples' working files) is removed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_HOME = HERE.parent / ".lucidic-demo"

# (script, arguments); the order matters where one hands a session to the next.
EXAMPLES = [
    ("quickstart.py", []),
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


def shown(path: Path) -> str:
    """A path as the user can type it from where they are."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def fresh_home(options: argparse.Namespace) -> Path:
    home: Path = options.home.resolve()
    if home == DEFAULT_HOME.resolve():
        shutil.rmtree(home, ignore_errors=True)  # the demo's own: started afresh
    elif home.exists() and any(home.iterdir()):
        sys.exit(f"{home} is not empty: give --home a new or empty directory")
    home.mkdir(parents=True, exist_ok=True)
    return home


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--home", type=Path, default=DEFAULT_HOME,
                        help="the LUCIDIC_HOME the demo records into (default: %(default)s)")
    options = parser.parse_args()
    home = fresh_home(options)
    env = {k: v for k, v in os.environ.items() if not k.startswith("LUCIDIC_")}
    env["LUCIDIC_HOME"] = str(home)
    print(f"Embedded store: {home / 'lucidic.db'}\n")
    cli = ["-m", "lucidic"]
    with tempfile.TemporaryDirectory(prefix="lucidic-demo-") as scratch:
        workdir = Path(scratch)  # the examples' working files, removed at the end
        for script, args in EXAMPLES:
            print(f"$ python examples/{script} {' '.join(args)}".rstrip())
            output = run([str(HERE / script), *args], env, workdir)
            print("".join(f"  {line}\n" for line in output.splitlines()), end="")
        print("\n$ lucidic sessions list")
        print(run([*cli, "sessions", "list"], env, workdir))
        sessions = json.loads(run([*cli, "sessions", "list", "--json"], env, workdir))
        for session in reversed(sessions):
            print(f"$ lucidic sessions show {session['id']}")
            print(run([*cli, "sessions", "show", session["id"]], env, workdir))
    command = f"LUCIDIC_HOME={shown(home)} {shown(Path(sys.executable).parent / 'lucidic')}"
    print(f"The demo's {len(sessions)} sessions are kept in {shown(home)} (each `make demo` "
          "starts it afresh). Read them again with:")
    print(f"  {command} sessions list")
    print(f"  {command} sessions show {sessions[-1]['id']}")


if __name__ == "__main__":
    main()
