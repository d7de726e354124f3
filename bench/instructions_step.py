"""Instructions one recorded step costs, counted by valgrind's callgrind: the
same on any day, where the timings of bench_core part 5 move by tens of
percent on a shared machine.

    .venv/bin/python bench/instructions_step.py            # 20,000 steps a count
    .venv/bin/python bench/instructions_step.py --n 5000   # quicker

Each figure is a child run under ``valgrind --tool=callgrind`` with N steps,
less the same child with none (start-up, init and shutdown cancel out),
divided by N:

- floor: bench_core's hand-written floor recorder;
- hot path: ``@lai.step`` with a session, what the user's thread does (the
  worker and the spill thread idle, the queue cleared every 1,000 steps);
- with masking: the same with an identity ``masking_function``, less its own
  calls (counted apart);
- whole step: ``@lai.step`` and the flush that delivers it to the embedded
  store, worker included (the spill thread idle: under valgrind every record
  would wait long enough to be spilled, which a normal run does not).

Needs valgrind (``apt-get install valgrind``); says so and exits 0 without it.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve()
ROOT = HERE.parent.parent


def child(kind: str, n: int) -> None:
    os.environ["LUCIDIC_HOME"] = tempfile.mkdtemp(prefix="lucidic-instructions-")
    if kind == "floor":
        sys.path.insert(0, str(HERE.parent))
        from bench_core import FloorRecorder

        floor = FloorRecorder()
        step = floor.step(lambda x: x)
        floor.session.set("floor")
        for _ in range(n // 1000):
            for i in range(1000):
                step(i)
            floor.queue.clear()
        return
    if kind in ("identity", "loop"):
        def identity(text: str) -> str:
            return text
        if kind == "loop":
            for _ in range(n):
                pass
            return
        for _ in range(n):
            identity("action")
            identity("function_name")
        return

    import lucidic as lai
    from lucidic._context import process_slot

    def identity_mask(text: str) -> str:
        return text

    def body(x: int) -> int:
        return x

    stepped = lai.step(body)
    lai.init(session_name="instructions",
             masking_function=identity_mask if kind == "masked" else None)
    binding = process_slot.binding
    assert binding is not None
    pipeline = binding.pipeline
    # Idle, as it is in a normal run when nothing waits 0.1 s (see the module doc).
    pipeline._spill_tick = lambda: None  # type: ignore[method-assign]
    lai.flush(60)
    if kind == "whole":
        for i in range(n):
            stepped(i)
        lai.flush(600)
        return
    pipeline._cycle = lambda: None  # type: ignore[method-assign]  # the hot path alone
    queue = pipeline._queue
    for _ in range(n // 1000):
        for i in range(1000):
            stepped(i)
        queue.clear()


def instructions(kind: str, n: int) -> int:
    """Instructions of a child run under callgrind (all its threads)."""
    with tempfile.TemporaryDirectory() as out:
        result = subprocess.run(
            ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}/cg.%p",
             sys.executable, str(HERE), "--child", kind, str(n)],
            capture_output=True, text=True, cwd=str(ROOT))
        if result.returncode != 0:
            raise SystemExit(f"the child failed under valgrind:\n{result.stderr[-2000:]}")
        totals = [int(m.group(1).replace(",", "")) for m in
                  re.finditer(r"Collected : ([\d,]+)", result.stderr)]
        if not totals:
            raise SystemExit(f"callgrind reported no count:\n{result.stderr[-2000:]}")
        return sum(totals)


def per_step(kind: str, n: int) -> float:
    return (instructions(kind, n) - instructions(kind, 0)) / n


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=20_000, help="steps a count (a multiple of 1,000)")
    parser.add_argument("--child", nargs=2, metavar=("KIND", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args.child[0], int(args.child[1]))
        return 0
    if shutil.which("valgrind") is None:
        print("valgrind is not installed (apt-get install valgrind): nothing to count")
        return 0
    n = args.n
    floor, hot, masked = per_step("floor", n), per_step("hot", n), per_step("masked", n)
    mask_calls = per_step("identity", n) - per_step("loop", n)
    whole = per_step("whole", n)
    print(f"Instructions per recorded step (callgrind, {n:,} steps less none; "
          f"Python {sys.version.split()[0]})")
    print(f"  floor recorder                          {floor:>9,.0f}")
    print(f"  @lai.step hot path                      {hot:>9,.0f}   ({hot / floor:.2f}x floor)")
    print(f"  masking beyond its 2 calls              {masked - hot - mask_calls:>9,.0f}")
    print(f"  whole step, delivery included           {whole:>9,.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
