"""Instructions one recorded step costs, counted by valgrind's callgrind: the
same on any day, where the timings of bench_core part 5 move by tens of
percent on a shared machine.

    .venv/bin/python bench/instructions_step.py            # 20,480 steps a count (~3 min)
    .venv/bin/python bench/instructions_step.py --n 4096   # quicker

Each figure is a child run under ``valgrind --tool=callgrind`` with 2N
steps, less the same child with N, divided by N: start-up, init and
shutdown cancel out, and so does what only the first steps pay (the store
preparing its statements, the first spool segment), which a count less a
run of none would charge to the N steps (about 4,000 instructions a whole
step at N = 20,000). N is a multiple of the store's statement size, so the
delivery of the whole step is full batches, each one statement (a batch's
remainder would be smaller statements, each prepared once, their cost
depending on N):

- floor: bench_core's hand-written floor recorder;
- hot path: ``@lai.step`` with a session, what the user's thread does (the
  worker and the spill thread idle; the queue keeps what the loop makes, as
  the floor's does: cleared every thousand steps, the counts moved by up to
  15% with where the interpreter happened to place things in memory, the
  same child started by a relative or an absolute path);
- with masking: the same with an identity ``masking_function``, less its own
  calls (counted apart);
- whole step: ``@lai.step`` and the flush that delivers it to the embedded
  store, worker included: held until the loop ends, then taking full
  batches, as it does from a tight loop's backlog (left to its clock, under
  valgrind's slowness it would take batches of whatever a tick let pile up,
  and the count would move by a fifth from run to run); the spill thread
  idle (under valgrind every record would wait long enough to be copied,
  which a normal run does not).

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
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # run from a checkout without installing

from lucidic.store import ROWS_PER_STATEMENT  # noqa: E402


def child(kind: str, n: int) -> None:
    os.environ["LUCIDIC_HOME"] = tempfile.mkdtemp(prefix="lucidic-instructions-")
    if kind == "floor":
        sys.path.insert(0, str(HERE.parent))
        from bench_core import FloorRecorder

        floor = FloorRecorder()
        step = floor.step(lambda x: x)
        floor.session.set("floor")
        for i in range(n):
            step(i)
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
    from lucidic import _pipeline
    from lucidic._context import process_slot

    # The spill thread and the worker's clock asleep: their ticks, counted
    # by valgrind's slow clock, would move the counts from run to run.
    _pipeline.SPILL_TICK = 3600.0

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
    pipeline._interval = 3600.0  # (flush() wakes it)
    lai.flush(60)
    # The worker waits for the loop's end (the hot path is counted alone; the
    # whole step's delivery is then full batches: left to its clock, under
    # valgrind's slowness the worker would take batches of whatever a tick
    # let pile up, and the count would move by a fifth from run to run).
    deliver, pipeline._cycle = pipeline._cycle, lambda: None  # type: ignore[method-assign]
    pipeline._max_queue = 10 ** 9  # (it holds what the loop makes; nothing overflows)
    for i in range(n):
        stepped(i)
    if kind == "whole":
        pipeline._cycle = deliver  # type: ignore[method-assign]
        lai.flush(600)
    else:
        pipeline._queue.clear()  # (else the exit would deliver it)


def instructions(kind: str, n: int) -> int:
    """Instructions of a child run under callgrind (all its threads)."""
    with tempfile.TemporaryDirectory() as out:
        result = subprocess.run(
            ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}/cg.%p",
             sys.executable, str(HERE), "--child", kind, str(n)],
            # (string hashing seeded alike in every child: dict and set
            # lookups then probe alike, and the counts repeat)
            capture_output=True, text=True, cwd=str(ROOT),
            env={**os.environ, "PYTHONHASHSEED": "0"})
        if result.returncode != 0:
            raise SystemExit(f"the child failed under valgrind:\n{result.stderr[-2000:]}")
        totals = [int(m.group(1).replace(",", "")) for m in
                  re.finditer(r"Collected : ([\d,]+)", result.stderr)]
        if not totals:
            raise SystemExit(f"callgrind reported no count:\n{result.stderr[-2000:]}")
        return sum(totals)


def per_step(kind: str, n: int) -> float:
    return (instructions(kind, 2 * n) - instructions(kind, n)) / n


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=10 * ROWS_PER_STATEMENT,
                        help=f"steps a count (a multiple of {ROWS_PER_STATEMENT:,}: the whole "
                             "step's delivery is then full batches, each one statement)")
    parser.add_argument("--child", nargs=2, metavar=("KIND", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args.child[0], int(args.child[1]))
        return 0
    if shutil.which("valgrind") is None:
        print("valgrind is not installed (apt-get install valgrind): nothing to count")
        return 0
    n = args.n
    if n <= 0 or n % ROWS_PER_STATEMENT:
        parser.error(f"--n must be a positive multiple of {ROWS_PER_STATEMENT:,}")
    floor, hot, masked = per_step("floor", n), per_step("hot", n), per_step("masked", n)
    mask_calls = per_step("identity", n) - per_step("loop", n)
    whole = per_step("whole", n)
    print(f"Instructions per recorded step (callgrind, {2 * n:,} steps less {n:,}; "
          f"Python {sys.version.split()[0]})")
    print(f"  floor recorder                          {floor:>9,.0f}")
    print(f"  @lai.step hot path                      {hot:>9,.0f}   ({hot / floor:.2f}x floor)")
    print(f"  masking beyond its 2 calls              {masked - hot - mask_calls:>9,.0f}")
    print(f"  whole step, delivery included           {whole:>9,.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
