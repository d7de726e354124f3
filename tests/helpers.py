"""Helpers for tests: real child processes, a store read as the tools read it,
port 8000 held for lucidicai's client, and tomllib on every Python."""

from __future__ import annotations

import fcntl
import os
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from lucidic.reading import Reader
from lucidic.store import Store

if sys.version_info >= (3, 11):
    import tomllib
else:  # the dev extra installs tomli, the parser that became tomllib, before 3.11
    import tomli as tomllib  # noqa: F401 - for the tests that read pyproject.toml

ROOT = Path(__file__).resolve().parent.parent
ENV_VARS = ("LUCIDIC_API_KEY", "LUCIDIC_AGENT_ID", "LUCIDIC_BASE_URL", "LUCIDIC_FLUSH_TIMEOUT",
            "LUCIDIC_PRICES", "LUCIDIC_CONNECT_TIMEOUT", "LUCIDIC_MAX_QUEUE",
            "LUCIDIC_DURABLE")


class ReadableStore(Store):
    """A store with the reading layer's everyday queries at hand, as the tests
    read what the SDK wrote (lucidic.reading.Reader over the store)."""

    def reader(self) -> Reader:
        return Reader(self)

    def session_tree(self, session_id: str, project: str | None = None) -> dict[str, Any] | None:
        return self.reader().tree(session_id, project)

    def session_summary(self, session_id: str,
                        project: str | None = None) -> dict[str, Any] | None:
        return self.reader().session(session_id, project)

    def list_sessions(self, **query: Any) -> list[dict[str, Any]]:
        return self.reader().session_list(**query)


#: lucidicai 1.3.5 reads no base-URL variable: with LUCIDIC_DEBUG=True it
#: talks to http://localhost:8000/api, so the server under test listens there.
LUCIDICAI_PORT = 8000
_PORT_LOCK = Path(tempfile.gettempdir()) / "lucidic-tests-port-8000.lock"


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@contextmanager
def port_8000(timeout: float = 60.0) -> Iterator[None]:
    """Hold port 8000 for this test: test runs of other checkouts on this
    machine wait for each other here rather than collide."""
    with open(_PORT_LOCK, "w") as lock:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise AssertionError("another test run held port 8000 for too long") from None
                time.sleep(0.2)
        try:
            while not _port_free(LUCIDICAI_PORT):
                if time.monotonic() > deadline:
                    raise AssertionError(
                        f"port {LUCIDICAI_PORT} is taken by another program; lucidicai 1.3.5 "
                        "can only talk to http://localhost:8000, so these tests need it")
                time.sleep(0.2)
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


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



class FollowingCli:
    """`lucidic sessions show ID --follow` in a child process, its output read
    line by line as it comes (a thread drains the pipe, so the child never
    blocks on a full one)."""

    def __init__(self, home: Path, session_id: str, env: dict[str, str] | None = None) -> None:
        import queue
        import threading

        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "lucidic", "sessions", "show", session_id, "--follow",
             "--interval", "0.1"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=str(ROOT),
            env=child_env(home, {"TZ": "UTC", **(env or {})}))
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def wait_for(self, text: str, timeout: float = 30.0) -> None:
        """Read output until a line holding ``text`` arrives."""
        import queue
        import time

        deadline = time.monotonic() + timeout
        while not any(text in line for line in self.lines):
            try:
                line = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                line = None
            if line is None:
                self.proc.kill()
                raise AssertionError(f"no line with {text!r} came; output so far:\n"
                                     + "\n".join(self.lines) + "\n" + self.stderr())
            self.lines.append(line)

    def finish(self, timeout: float = 30.0) -> int:
        """Wait for the command to end by itself; its exit status."""
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise AssertionError("--follow did not end with the session; output:\n"
                                 + "\n".join(self.lines)) from None
        while (line := self._queue.get(timeout=timeout)) is not None:
            self.lines.append(line)
        return code

    def stderr(self) -> str:
        return self.proc.stderr.read() if self.proc.stderr and self.proc.poll() is not None \
            else ""


#: A session that ends (at exit, by auto_end) while a step and an LLM-like
#: event it holds are still open in a daemon thread nobody waited for.
#: A session whose one LLM call is a LangChain stream cut early (replayed from
#: the shared recordings: argv[1] is tests/providers): langchain-openai reports
#: usage in the stream's last chunk only, so the call has no token counts and
#: no cost. Prints the session id.
CUT_STREAM = """
import sys
sys.path.insert(0, sys.argv[1])
from _cassettes import replay, shared_path
from langchain_openai import ChatOpenAI
import lucidic as lai

print(lai.init(session_name="cut short", providers=["langchain"]), flush=True)
with replay(shared_path("langchain/lcel_stream_openai.yaml")):
    model = ChatOpenAI(model="gpt-4", api_key="sk-test", max_retries=0)
    for received, _ in enumerate(model.stream("write 10 lines about socks"), 1):
        if received == 5:
            break
lai.end_session()
assert lai.flush()
"""

OUTLIVED_STEP = """
import threading, time
import lucidic as lai
print(lai.init(session_name="outlived"), flush=True)
started = threading.Event()

@lai.step(action="background poll")
def poll():
    lai.create_event(description="finished event")
    started.set()
    time.sleep(600)

threading.Thread(target=poll, daemon=True).start()
started.wait()
lai.create_step(action="main work")
lai.end_step()
"""

#: A session ended while a step is still open in another thread, in a process
#: that then dies without its exit path (as a SIGKILL would): the step never
#: ends, and is never running again. (In OUTLIVED_STEP the exit path ends
#: the daemon thread's step as interrupted.)
STEP_NEVER_ENDED = OUTLIVED_STEP + """
lai.end_session()
import os
os._exit(0)
"""
