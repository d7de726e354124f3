"""The README's commands, run as they are written, in a copy of the checkout
(the files a fresh clone holds, with the virtual environment running the
tests): `make demo` and the command that reads its sessions, the quickstart
and the CLI commands after it, and the shared-server walkthrough.

Every shell block the README marks `<!-- tested ... -->` runs here. The
server walkthrough names a production machine, so on this one it runs with
these substitutions, and no others: the database's directory /var/lib/lucidic
becomes a temporary one, the host lucidic.internal and the address 0.0.0.0
become 127.0.0.1, port 8765 a free port, `lk_...` the key just made, and the
user's own `worker.py` the quickstart. `make test` is not run from inside
the test suite it starts; `pip install` lines are checked by
tests/test_packaging.py instead.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from helpers import ENV_VARS, ROOT

README = (ROOT / "README.md").read_text("utf-8")
#: What `make test VENV=...` hands its children; a user's shell has none of it
#: (the README's `make demo` would build that VENV in the copy).
_MAKE_VARIABLES = ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")
_BLOCK = re.compile(r"<!-- (tested[^>]*|quickstart: [^>]*|the output of [^>]*) -->\n"
                    r"```(\w+)\n(.*?)```", re.S)


def _blocks(kind: str) -> list[tuple[str, str, str]]:
    """(marker, language, body) of each marked block whose marker starts with kind."""
    return [m.groups() for m in _BLOCK.finditer(README) if m.group(1).startswith(kind)]


def _commands(language: str, body: str) -> list[str]:
    """The commands of a block: every line of a bash block, the `$ ` lines of
    a console block (the others are what they print), comments dropped."""
    commands = []
    for line in body.splitlines():
        if language == "console":
            if not line.startswith("$ "):
                continue
            line = line[2:]
        words = shlex.split(line, comments=True)
        if words:
            commands.append(line.split("  #")[0].rstrip() if "  #" in line else line.strip())
    return commands


@pytest.fixture(scope="module")
def clone(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The checkout's tracked files (as they are now) in a fresh directory,
    with the virtual environment running these tests as its .venv (the
    checkout's, or another Python's: `make test VENV=.venv-3.13 ...`)."""
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True,
                            check=True, timeout=60).stdout.decode().split("\0")
    target = tmp_path_factory.mktemp("clone") / "lucidic"
    for name in filter(None, listed):
        source = ROOT / name
        if source.is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)  # mtimes kept: make sees .venv up to date
    (target / ".venv").symlink_to(sys.prefix)
    fresh = subprocess.run(["make", "-q", ".venv/.installed"], cwd=target, timeout=60,
                           env={k: v for k, v in os.environ.items() if k not in _MAKE_VARIABLES})
    if fresh.returncode != 0:
        pytest.fail("the .venv is older than the pyproject files: run `make install` first")
    return target


def _env(clone: Path, tmp_path: Path, **extra: str) -> dict[str, str]:
    """A shell as a user of the clone has it: the venv's commands first on
    PATH, a data directory of the test's own, a temp directory to watch."""
    env = {k: v for k, v in os.environ.items()
           if k not in ENV_VARS and k not in _MAKE_VARIABLES}
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir(exist_ok=True)
    env.update(PATH=f"{clone / '.venv' / 'bin'}{os.pathsep}{env.get('PATH', '')}",
               VIRTUAL_ENV=str(clone / ".venv"), LUCIDIC_HOME=str(tmp_path / "home"),
               TMPDIR=str(tmpdir), **extra)
    env.pop("PYTHONPATH", None)
    return env


def _run(command: str, clone: Path, env: dict[str, str], timeout: float = 300
         ) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(["bash", "-c", command], cwd=clone, env=env, capture_output=True,
                            text=True, timeout=timeout)
    assert result.returncode == 0, f"$ {command}\n{result.stdout}\n{result.stderr}"
    return result


def test_make_demo_keeps_its_sessions_where_the_next_command_reads_them(clone, tmp_path):
    (demo,), (after,) = [_blocks("tested")[0:1], _blocks("tested")[1:2]]
    commands = _commands(demo[1], demo[2]) + _commands(after[1], after[2])
    assert commands[:2] == ["make demo", "make test"]
    env = _env(clone, tmp_path)
    shown = _run("make demo", clone, env).stdout
    assert "Read them again with:\n  LUCIDIC_HOME=.lucidic-demo .venv/bin/lucidic sessions list" \
        in shown
    # the README's next command, as written, finds the demo's sessions
    (read_again,) = commands[2:]
    listed = _run(read_again, clone, env).stdout.splitlines()
    assert len(listed) == 8 and any("Trip planner" in line for line in listed)
    # and the demo left nothing behind in the temp directory
    assert list(Path(env["TMPDIR"]).iterdir()) == []


def test_the_quickstart_runs_with_the_core_alone_and_says_what_to_run_next(clone, tmp_path):
    (_, language, code), = _blocks("quickstart")
    assert code == (clone / "examples" / "quickstart.py").read_text("utf-8")
    assert "providers=" not in code  # the core alone
    (_, language, body) = _blocks("tested")[2]
    commands = _commands(language, body)
    assert commands[0] == "python examples/quickstart.py"
    env = _env(clone, tmp_path)
    printed = _run(commands[0], clone, env).stdout
    session_id = re.fullmatch(r"Recorded session (\S+); see it with: lucidic sessions show "
                              r"\1\n", printed).group(1)
    listed = _run(commands[1], clone, env).stdout
    assert listed.startswith(f"{session_id}  Trip planner  ")
    shown = _run(commands[2].replace("<session_id>", session_id), clone, env).stdout
    assert shown.startswith("Trip planner\n")
    assert "└─ step Plan the trip  " in shown and "event looked up the weather  → sunny" in shown


def test_the_sample_output_in_the_readme_is_what_the_cli_prints():
    from test_cli import SHOWN

    (_, _, sample), = _blocks("the output of")
    assert sample == SHOWN


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


_SERVER_SUBSTITUTIONS = (("/var/lib/lucidic", "{data}"), ("lucidic.internal", "127.0.0.1"),
                         ("0.0.0.0", "127.0.0.1"), ("8765", "{port}"), ("lk_...", "{key}"),
                         ("python worker.py", "python examples/quickstart.py"))


def test_the_shared_server_walkthrough_runs_on_loopback(clone, tmp_path):
    blocks = [b for b in _blocks("tested") if b[0] == "tested, on loopback"]
    (start, create_key, point) = [_commands(language, body) for _, language, body in blocks]
    values = {"data": str(tmp_path / "var-lib-lucidic"), "port": str(_free_port()), "key": ""}

    def here(command: str) -> str:
        for written, local in _SERVER_SUBSTITUTIONS:
            command = command.replace(written, local)
        return command.format(**values)

    assert start[0] == "pip install 'lucidic-toolkit[server]'"  # installed already: the venv
    (serve,) = start[1:]
    env = _env(clone, tmp_path)
    Path(values["data"]).mkdir()
    log = tmp_path / "server.log"
    with open(log, "wb") as out:
        server = subprocess.Popen(["bash", "-c", "exec " + here(serve)], cwd=clone, env=env,
                                  stdout=out, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{values['port']}"
        deadline = time.monotonic() + 30
        while True:
            assert server.poll() is None, log.read_text()
            try:
                if requests.get(url + "/healthz", timeout=1).status_code == 200:
                    break
            except requests.RequestException:
                pass
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        (make_key,) = create_key
        values["key"] = _run(here(make_key), clone, env).stdout.splitlines()[-1]
        assert values["key"].startswith("lk_")
        exports = [c for c in point if c.startswith("export ")]
        script = "; ".join(here(c) for c in point)
        assert len(exports) == 2
        printed = _run(script, clone, env, timeout=120).stdout
        session_id = re.search(r"Recorded session (\S+);", printed).group(1)
        assert re.search(rf"^{re.escape(session_id)}  Trip planner  ", printed, re.M)
    finally:
        server.terminate()
        server.wait(10)
    assert "Traceback" not in log.read_text()


def test_the_evaluation_walkthrough_runs_and_finds_the_regression(clone, tmp_path):
    (_, language, body), = [b for b in _blocks("tested") if b[0] == "tested, evaluation"]
    commands = _commands(language, body)
    assert commands[0] == "python examples/evaluate.py"
    env = _env(clone, tmp_path)
    printed = _run(commands[0], clone, env).stdout
    assert "compared with calculator v1" in printed
    assert re.search(r"^times\s+pass → fail \(-1\)", printed, re.M)
    listed = _run(commands[1], clone, env).stdout.splitlines()
    assert [line.split()[1:3] for line in listed[1:]] == [["calculator", "v2"],
                                                          ["calculator", "v1"]]
    v2, v1 = (line.split()[0] for line in listed[1:])
    shown = json.loads(_run(commands[2].replace("<experiment_id>", v1), clone, env).stdout)
    assert {run["case_id"] for run in shown["runs"]} == {"add", "times", "minus"}
    assert shown["summary"] == {"exact": 1.0, "quality": 1.0}
    compare = commands[3].replace("<A>", v1).replace("<B>", v2)
    failed = subprocess.run(["bash", "-c", compare], cwd=clone, env=env, capture_output=True,
                            text=True, timeout=120)
    assert failed.returncode == 1
    assert "exact regressed in 1 case(s): times (pass → fail)" in failed.stderr
    assert "no mass simulations yet" in _run(commands[4], clone, env).stdout


def _plain_signature(fn) -> str:
    """A function's signature as the README writes it: names and defaults, no
    annotations."""
    import inspect

    parts, keyword_only = [], False
    for parameter in inspect.signature(fn).parameters.values():
        if parameter.kind is parameter.KEYWORD_ONLY and not keyword_only:
            parts.append("*")
            keyword_only = True
        default = "" if parameter.default is parameter.empty else f"={parameter.default!r}"
        parts.append(parameter.name + default)
    return f"({', '.join(parts)})"


def test_the_api_table_gives_each_calls_signature_as_the_code_has_it():
    import lucidic as lai

    section = README.split("## The API", 1)[1].split("\n### ", 1)[0]
    rows = re.findall(r"^\| `(\w+)(\([^`]*\))(?: -> \w+)?`", section, re.M)
    written = {name: args for name, args in rows if "**" not in args}
    assert {"init", "continue_session", "update_session", "end_session", "score",
            "create_mass_sim"} <= set(written)
    assert {name: _plain_signature(getattr(lai, name)) for name in written} == written
