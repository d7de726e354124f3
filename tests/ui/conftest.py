"""Fixtures for the web UI tests: real `lucidic ui` and `lucidic server`
processes, real SDK processes recording sessions (agents.py), and Debian's
chromium driven by Playwright (never Playwright's own browser download)."""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from helpers import child_env

# The server tests' fixtures (a real `lucidic server` over a fresh SQLite file
# or PostgreSQL schema), shared rather than written again.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "server"))
_spec = importlib.util.spec_from_file_location(
    "lucidic_server_test_fixtures", Path(__file__).resolve().parents[1] / "server" / "conftest.py")
assert _spec is not None and _spec.loader is not None
_server_fixtures = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_server_fixtures)
pg_url = _server_fixtures.pg_url
sqlite_url = _server_fixtures.sqlite_url
db_url = _server_fixtures.db_url
start_server = _server_fixtures.start_server
ServerProcess = _server_fixtures.ServerProcess

ROOT = Path(__file__).resolve().parents[2]
AGENTS = Path(__file__).resolve().parent / "agents.py"
CHROMIUM = os.environ.get("LUCIDIC_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync"]
NO_BROWSER = (f"the browser tests need Debian's chromium at {CHROMIUM}: run "
              "`sudo apt-get install -y chromium fonts-noto-cjk` (as root, `make test` installs "
              "it), or point LUCIDIC_CHROMIUM at a Chromium binary. Never `playwright install`: "
              "its download cannot work here.")


class UiProcess(ServerProcess):
    """`lucidic ui` in a child process, on a free port of 127.0.0.1 (stopped
    as a server process is)."""

    def __init__(self, home: Path, log: Path, extra: list[str] | None = None) -> None:
        # Not ServerProcess.__init__: the port is the one `lucidic ui --port 0` prints.
        self.home, self.log = home, log
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "lucidic", "ui", "--port", "0", *(extra or [])],
                stdout=subprocess.PIPE, stderr=out, env=child_env(home), cwd=ROOT, text=True)
        assert self.proc.stdout is not None
        self.url = ""
        # Up to the URL, or the end of its output (it exited): a deadline
        # looked at between two lines gave up, on a loaded machine, after the
        # first line of three printed at once, the URL next in the pipe ("printed
        # no URL"). A child that hangs is the test's timeout's to end.
        while not self.url:
            line = self.proc.stdout.readline()
            if not line:
                self.proc.wait(10)
                raise AssertionError(f"lucidic ui exited ({self.proc.returncode}) without "
                                     f"printing its URL:\n{log.read_text()}")
            found = re.search(r"http://\S+/", line)
            self.url = found.group(0).rstrip("/") if found else ""
        self.port = int(self.url.rsplit(":", 1)[1])


@pytest.fixture
def ui(lucidic_home: Path, tmp_path: Path) -> Iterator[UiProcess]:
    """`lucidic ui` over this test's embedded store."""
    process = UiProcess(lucidic_home, tmp_path / "ui.log")
    yield process
    process.stop()
    assert "Traceback" not in process.log.read_text(errors="replace"), process.log.read_text()


@pytest.fixture
def agent(lucidic_home: Path) -> Callable[..., str]:
    """Run a recording scenario of agents.py in its own process; its session id."""

    def run(*args: str, env: dict[str, str] | None = None, check: bool = True) -> str:
        result = subprocess.run([sys.executable, str(AGENTS), *args],
                                env=child_env(lucidic_home, env), capture_output=True, text=True,
                                timeout=120, cwd=ROOT)
        if check and result.returncode != 0:
            raise AssertionError(f"agents.py {args} failed:\n{result.stdout}\n{result.stderr}")
        return result.stdout.split()[0]

    return run


SHARED_CASSETTES = Path(os.environ.get("LUCIDIC_SHARED_CASSETTES",
                                       ROOT.parent / "shared" / "cassettes"))


def llm_cassette() -> Path:
    """A recorded OpenAI chat completion: the shared recording of a plain
    call, else the project's own (a refusal), so the tests never lack one."""
    shared = SHARED_CASSETTES / "openai" / "chat.yaml"
    return shared if shared.is_file() else ROOT / "cassettes" / "openai" / "chat_refusal.yaml"


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    # Module-scoped: while Playwright's sync API is open, its event loop runs
    # in this thread, and every later test's asyncio.run() would fail.
    if not Path(CHROMIUM).is_file() and not shutil.which(CHROMIUM):
        if os.environ.get("CI"):
            pytest.fail(NO_BROWSER)
        pytest.skip(NO_BROWSER)
    from playwright.sync_api import expect, sync_playwright

    # Assertions wait as long as actions do (Playwright's own default is 5 s,
    # which a loaded CI machine running the suite two at a time can pass).
    expect.set_options(timeout=20_000)
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


class Page:
    """A browser page that records every request it makes and every
    console error and CSP violation it meets."""

    def __init__(self, browser: Any) -> None:
        self.context = browser.new_context(viewport={"width": 1400, "height": 900},
                                           locale="en-US", timezone_id="UTC")
        self.page = self.context.new_page()
        self.page.set_default_timeout(20_000)
        self.requests: list[str] = []
        self.problems: list[str] = []
        self.page.on("request", lambda r: self.requests.append(r.url))
        self.page.on("console", lambda m: self.problems.append(m.text)
                     if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.problems.append(str(e)))

    def close(self) -> None:
        self.context.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Page]:
    opened = Page(browser)
    yield opened
    opened.close()
