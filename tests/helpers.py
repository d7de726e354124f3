"""Helpers for tests that need real child processes."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ENV_VARS = ("LUCIDIC_API_KEY", "LUCIDIC_AGENT_ID", "LUCIDIC_BASE_URL", "LUCIDIC_FLUSH_TIMEOUT",
            "LUCIDIC_PRICES")


def child_env(home: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ENV_VARS}
    env.update({"LUCIDIC_HOME": str(home), "PYTHONUNBUFFERED": "1"})
    env.update(extra or {})
    return env


def run_python(code: str, *, home: Path, timeout: float = 60,
               env: dict[str, str] | None = None, check: bool = True,
               args: list[str] | None = None,
               cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run code in a fresh interpreter with LUCIDIC_HOME=home (in ``cwd``,
    else the project's root)."""
    full_env = child_env(home, env)
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code), *(args or [])],
                            capture_output=True, text=True, timeout=timeout, env=full_env,
                            cwd=str(cwd or ROOT))
    if check and result.returncode != 0:
        raise AssertionError(f"child failed ({result.returncode}):\n{result.stdout}\n"
                             f"{result.stderr}")
    return result

