"""Shared fixtures. Every test gets its own LUCIDIC_HOME and a clean process
state; swallowed internal errors fail the test unless it is marked
``allow_internal_errors`` (production swallows, tests fail loudly)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from lucidic._context import process_slot
from lucidic._internal import internal_errors
from lucidic._runtime import runtime
from lucidic.store import Store

ROOT = Path(__file__).resolve().parent.parent
SHARED_CASSETTES = Path(os.environ.get("LUCIDIC_SHARED_CASSETTES",
                                       ROOT.parent / "shared" / "cassettes"))

_ENV_VARS = ("LUCIDIC_API_KEY", "LUCIDIC_AGENT_ID", "LUCIDIC_BASE_URL", "LUCIDIC_FLUSH_TIMEOUT",
             "LUCIDIC_PRICES")


@pytest.fixture(autouse=True)
def lucidic_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    home = tmp_path / "lucidic-home"
    monkeypatch.setenv("LUCIDIC_HOME", str(home))
    for name in _ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    yield home
    for pipeline in list(runtime.pipelines.values()):
        runtime.forget_pipeline(pipeline, timeout=5.0)
    process_slot.binding = None


@pytest.fixture(autouse=True)
def fail_on_internal_errors(request: pytest.FixtureRequest) -> Iterator[None]:
    before = sum(internal_errors.values())
    snapshot = dict(internal_errors)
    yield
    if request.node.get_closest_marker("allow_internal_errors"):
        return
    after = sum(internal_errors.values())
    if after != before:
        grown = {k: v - snapshot.get(k, 0) for k, v in internal_errors.items()
                 if v != snapshot.get(k, 0)}
        pytest.fail(f"lucidic swallowed internal errors during the test: {grown}")


@pytest.fixture
def store(lucidic_home: Path) -> Iterator[Store]:
    """The embedded store this test's code writes to (read it after lai.flush())."""
    s = Store(lucidic_home / "lucidic.db")
    yield s
    s.close()


def run_python(code: str, *, home: Path, timeout: float = 60, env: dict[str, str] | None = None,
               check: bool = True, args: list[str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run code in a fresh interpreter with LUCIDIC_HOME=home."""
    full_env = {k: v for k, v in os.environ.items() if k not in _ENV_VARS}
    full_env.update({"LUCIDIC_HOME": str(home), "PYTHONUNBUFFERED": "1"})
    full_env.update(env or {})
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code), *(args or [])],
                            capture_output=True, text=True, timeout=timeout, env=full_env,
                            cwd=str(ROOT))
    if check and result.returncode != 0:
        raise AssertionError(f"child failed ({result.returncode}):\n{result.stdout}\n"
                             f"{result.stderr}")
    return result
