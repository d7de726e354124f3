"""The benchmark scripts still run: each of the quick ones, at a tiny size.

The README's figures come from ``bench/``, and several scripts read
Lucidic's internals (a profile must): a change that renames one would
otherwise break a benchmark nobody runs until the next measurement. These
tests assert that each script runs to the end and reports its figures, never
what the figures are (timings belong to the benchmarks, not to the suite).
The UI, server and protocol benchmarks run in their ``--quick`` form on
SQLite only (10 to 15 seconds each); what they count as stored must be all
that was sent.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from contextlib import nullcontext
from pathlib import Path

import pytest

from helpers import ROOT, child_env, port_8000, run_python

BENCH = ROOT / "bench"


def run_bench(home: Path, script: str, *args: str, timeout: float = 120,
              env: dict[str, str] | None = None) -> str:
    result = subprocess.run([sys.executable, str(BENCH / script), *args], capture_output=True,
                            text=True, timeout=timeout, env=child_env(home, env), cwd=str(ROOT))
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_profile_step_reports_every_piece_of_a_step(tmp_path: Path) -> None:
    out = run_bench(tmp_path, "profile_step.py", "--n", "1000", "--rounds", "1",
                    "--long", "5000", "--long-rounds", "1", "--shares-rounds", "1")
    for piece in ("hot path, in the user's thread", "end it (merged into its start)",
                  "worker, delivering to the embedded store", "SQLite upserts",
                  "whole CPU per recorded step", "In a tight loop of 5,000 steps",
                  "spill thread", "garbage collector, full collections",
                  "records delivered during the loop", "records read back from the spool"):
        assert piece in out
    # the last section: a row of figures for each mode of what runs beside the loop
    shares = out.split("The loop's own thread", 1)[1]
    for mode in ("neither (both held still)", "the spill thread", "the worker", "both"):
        assert re.search(rf"^  {re.escape(mode)} +[\d.]+ +[\d.]+$", shares, re.M), mode


def test_bench_core_hot_path_part_reports_against_its_floor(tmp_path: Path) -> None:
    code = f"""
        import sys
        sys.path.insert(0, {str(BENCH)!r})
        import bench_core
        hot = bench_core.part_hot_path(1, 2000)
        lines, missed = bench_core.report_hot_path(hot)
        print("\\n".join(lines))
    """
    out = run_python(code, home=tmp_path, timeout=120).stdout
    for line in ("floor recorder", "@lai.step, session, worker delivering",
                 "whole CPU per recorded step", "masking_function (identity) adds"):
        assert line in out


def test_bench_reliability_measures_durable_mode_and_a_sigkill(tmp_path: Path) -> None:
    code = f"""
        import sys
        sys.path.insert(0, {str(BENCH)!r})
        import bench_reliability
        costs = bench_reliability.part_costs(2000)
        # (one_kill itself checks that what survived has no gap)
        kill = bench_reliability.one_kill(True, False, 0.5)
        print(" ".join(sorted(costs)), kill["kept"])
    """
    *modes, kept = run_python(code, home=tmp_path, timeout=180).stdout.split()
    assert modes == ["default", "durable", "write_floor"]
    assert int(kept) > 0  # the session's events survived the kill


@pytest.mark.parametrize("kind", ["floor", "hot", "masked", "whole", "identity", "loop"])
def test_instructions_step_children_run_each_kind(tmp_path: Path, kind: str) -> None:
    # Natively (valgrind only counts what they do): each reaches its end. The
    # hot and masked children leave their worker idle, so the exit's flush
    # waits out its bound: a short one (not the default 5 s) does as well here.
    run_bench(tmp_path, "instructions_step.py", "--child", kind, "2048",
              env={"LUCIDIC_FLUSH_TIMEOUT": "0.5"})


def test_instructions_step_counts_with_callgrind_and_refuses_a_partial_batch(
        tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, str(BENCH / "instructions_step.py"), "--n", "1000"],
                            capture_output=True, text=True, timeout=60,
                            env=child_env(tmp_path), cwd=str(ROOT))
    assert result.returncode == 2 and "multiple of 2,048" in result.stderr
    if shutil.which("valgrind") is None:
        pytest.skip("valgrind is not installed")
    code = f"""
        import sys
        sys.path.insert(0, {str(BENCH)!r})
        import instructions_step
        print(instructions_step.instructions("loop", 10))
    """
    assert int(run_python(code, home=tmp_path, timeout=120).stdout) > 1_000_000


@pytest.mark.parametrize(("script", "args", "reported"), [
    ("bench_providers.py", ("--calls", "5", "--rounds", "1"), "recorded"),
    ("bench_evals.py", ("--cases", "5", "--rounds", "1", "--quick"), "replayed"),
    ("bench_cli.py", ("--rounds", "1"), "lucidic providers:"),
    ("bench_retention.py", ("--sessions", "300"), "after VACUUM"),
    ("bench_ui.py", ("--quick", "--rebuild", "--pg", ""),
     "rebuild, SQLite through lucidic ui (10,000 fresh sessions)"),
])
def test_a_quick_benchmark_runs_to_its_report(tmp_path: Path, script: str,
                                              args: tuple[str, ...], reported: str) -> None:
    assert reported in run_bench(tmp_path, script, *args)


@pytest.mark.parametrize(("script", "reported", "stored_lines"), [
    ("bench_server.py", ("all flushed: True", "lai.create_event, server down"), 1),
    pytest.param("bench_protocols.py", ("OTLP/protobuf", "lucidicai 1.3.5:"), 2,
                 marks=pytest.mark.xdist_group("port-8000")),  # with the protocol tests
    ("bench_ui.py", ("sessions list, page 200 (keyset)", "session of 10,000 events",
                     "dashboard, 30 days", "browser first paint, sessions list"), 0),
])
def test_a_server_or_ui_benchmark_runs_quick_and_stores_all_it_sent(
        tmp_path: Path, script: str, reported: tuple[str, ...], stored_lines: int) -> None:
    # bench_protocols runs lucidicai, which can only talk to port 8000: held
    # as the protocol tests hold it (a test on the other worker may be using it).
    with port_8000() if script == "bench_protocols.py" else nullcontext():
        out = run_bench(tmp_path, script, "--quick", "--pg", "", timeout=240)
    for line in reported:
        assert line in out
    stored = re.findall(r"stored ([\d,]+)/([\d,]+)", out)  # "stored 600/600"
    assert len(stored) == stored_lines
    assert all(kept == sent for kept, sent in stored), stored
