"""The `lucidic` command as a user meets it: `sessions show` answering "what
did my agent do, and what did it cost" (compared in full for a recorded
session), `sessions list`, `--version`, help, and the keys commands."""

from __future__ import annotations

import json
import os
import pty
import re
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

import lucidic as lai
from helpers import ROOT, child_env, run_python
from lucidic import _render

SESSION = "0d9f6c1e-cli-demo"
T0 = 1_767_225_600.0  # 2026-01-01 00:00:00 UTC


def _cli(home: Path, *args: str, env: dict[str, str] | None = None
         ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "lucidic", *args], capture_output=True,
                          text=True, env=child_env(home, {"TZ": "UTC", **(env or {})}),
                          timeout=60, cwd=str(ROOT))


# What a support agent did: nested steps, a manual event with a model and a
# cost, LLM calls replayed from recordings (plain, streamed without usage, an
# Anthropic prompt-cache call) and a failed one, and a step that raised.
RECORD = """
import sys
sys.path.insert(0, sys.argv[1])
import anthropic, openai
from _cassettes import own_path, replay, request_body, shared_path
import lucidic as lai

lai.init(session_name="Support bot", session_id=sys.argv[2], agent_id="agent-7",
         task="answer a customer", tags=["demo", "cli"], providers=["openai", "anthropic"])

def chat(path, **kwargs):
    with replay(path):
        return openai.OpenAI(api_key="sk-test", max_retries=0).chat.completions.create(
            **request_body(path), **kwargs)

@lai.step(action="Plan the reply", goal="a short answer")
def plan():
    lai.create_event(description="looked up the order", result="shipped on Monday",
                     cost_added=0.0025, model="order-lookup-v2")
    chat(shared_path("openai/chat.yaml"))
    draft()

@lai.step(action="Draft", state="drafting")
def draft():
    path = shared_path("openai/chat_async_streaming.yaml")
    with replay(path):
        for _ in openai.OpenAI(api_key="sk-test", max_retries=0).chat.completions.create(
                **request_body(path)):
            pass
    path = own_path("anthropic/messages_prompt_cache.yaml")
    with replay(path):
        anthropic.Anthropic(api_key="sk-ant-test", max_retries=0).messages.create(
            **request_body(path))
    try:
        chat(own_path("openai/chat_error_400.yaml"))
    except openai.BadRequestError:
        pass
    check()

@lai.step(action="Check the tone")
def check():
    raise ValueError("too curt")

try:
    plan()
except ValueError:
    pass
lai.end_session(is_successful=False, is_successful_reason="the tone check failed")
assert lai.flush()
"""


def _at(seconds: float) -> float:
    return T0 + seconds


# (table, where, started, ended, duration, time to first token): fixed times,
# so that the whole output can be compared.
TIMES = [
    ("sessions", "id IS NOT NULL", 0.0, 2.5, None, None),
    ("steps", "action = 'Plan the reply'", 0.1, 2.4, None, None),
    ("steps", "action = 'Draft'", 0.7, 2.3, None, None),
    ("steps", "action = 'Check the tone'", 2.2, 2.200412, None, None),
    ("events", "type = 'generic'", 0.2, 0.2, None, None),
    ("events", "provider = 'openai' AND tokens_estimated IS NULL AND error IS NULL",
     0.3, 0.65, 0.35, None),
    ("events", "tokens_estimated = 1", 0.8, 1.45, 0.65, 0.0912),
    ("events", "provider = 'anthropic'", 1.5, 2.75, 1.25, None),
    ("events", "error IS NOT NULL", 2.1, 2.1123, 0.0123, None),
]


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The session above, recorded once in a child process, at fixed times;
    read-only for the tests that read it."""
    home = tmp_path_factory.mktemp("recorded") / "lucidic-home"
    run_python(RECORD, home=home, args=[str(ROOT / "tests" / "providers"), SESSION])
    with sqlite3.connect(home / "lucidic.db") as db:
        for table, where, started, ended, took, first in TIMES:
            changed = db.execute(f"UPDATE {table} SET started_at = ?, ended_at = ? "
                                 f"WHERE {where}", (_at(started), _at(ended))).rowcount
            assert changed == 1, (table, where)
            if took is not None:
                db.execute(f"UPDATE {table} SET duration = ?, time_to_first_token = ? "
                           f"WHERE {where}", (took, first))
    return home


#: The tests that read it run on one xdist worker, one after another: a module
#: fixture is made once per worker, and recording it (a child importing openai
#: and anthropic) costs more than any of these tests.
reads_recorded = pytest.mark.xdist_group("cli-recorded")


SHOWN = """\
Support bot
  session  0d9f6c1e-cli-demo
  status   failed: the tone check failed
  agent    agent-7
  task     answer a customer
  tags     demo, cli
  started  2026-01-01 00:00:00, took 2.50 s
  totals   3 steps, 5 events, 4 errors  ·  5,164 → 55 tokens (2,048 from cache, 3,072 written to cache)  ·  $0.0195
└─ step Plan the reply  2.30 s  goal: a short answer  FAILED ValueError: too curt
   ├─ event looked up the order  → shipped on Monday  model order-lookup-v2  $0.0025
   ├─ llm openai gpt-3.5-turbo-0125  350 ms  15 → 19 tokens  $0.000036
   │     › user: Tell me a joke about opentelemetry
   │     ‹ assistant: Why did Opentelemetry break up with Tracing? Because it couldn't handle the baggage!
   └─ step Draft  1.60 s  state: drafting  FAILED ValueError: too curt
      ├─ llm openai gpt-3.5-turbo-0125  650 ms (first token 91.2 ms)  ~15 → ~24 tokens (estimated)  $0.0000435
      │     › user: Tell me a joke about opentelemetry
      │     ‹ assistant: Why did the developer break up with Opentelemetry? Because it couldn't handle the baggage of all th…
      ├─ llm anthropic claude-sonnet-4-20250514  1.25 s  5,134 → 12 tokens (2,048 from cache, 3,072 written to cache)  $0.017
      │     › user: How many vacation days do I get?
      │     ‹ assistant: You get 25 vacation days a year.
      ├─ llm openai gpt-4o-mini (requested)  12.3 ms  FAILED
      │     › user: Hello
      │     ✗ BadRequestError: Error code: 400 - Invalid 'temperature': decimal above maximum value. Expected a v…
      └─ step Check the tone  412 µs  FAILED ValueError: too curt
"""  # noqa: E501 - the output as printed


@reads_recorded
def test_sessions_show_reads_as_what_the_agent_did_and_what_it_cost(recorded):
    result = _cli(recorded, "sessions", "show", SESSION)
    assert result.returncode == 0, result.stderr
    assert result.stdout == SHOWN
    assert "\x1b[" not in result.stdout  # into a pipe: plain text, no colour codes


@reads_recorded
def test_sessions_show_full_shows_every_field_and_whole_messages(recorded):
    out = _cli(recorded, "sessions", "show", SESSION, "--full").stdout
    # the answer the default view cut, whole
    assert ("      │       assistant: Why did the developer break up with Opentelemetry? "
            "Because it couldn't handle the baggage of all their tracing requests!") in out
    # every field, the request model of a call that answered among them
    assert "      │     request_model: gpt-3.5-turbo\n" in out
    assert "      │     tokens_estimated: yes\n" in out
    assert "      │     cache_write_tokens: 3072\n" in out
    assert "      │     started_at: 2026-01-01 00:00:00 (2026-01-01T00:00:00.800000+00:00)\n" \
        in out
    assert "  project: default\n" in out
    assert ("      │     error: BadRequestError: Error code: 400 - Invalid 'temperature': "
            "decimal above maximum value. Expected a value <= 2, but got 7 instead.\n") in out
    assert "      │     arguments: {\n" in out  # structures as indented JSON, not repr


@reads_recorded
def test_sessions_show_json_has_iso_times_beside_the_epoch_ones(recorded):
    tree = json.loads(_cli(recorded, "sessions", "show", SESSION, "--json").stdout)
    assert tree["started_at"] == T0 and tree["started_at_iso"] == "2026-01-01T00:00:00+00:00"
    (plan,) = tree["steps"]
    assert plan["ended_at_iso"] == "2026-01-01T00:00:02.400000+00:00"
    llm = [e for e in plan["steps"][0]["events"] if e["provider"] == "anthropic"][0]
    assert llm["started_at_iso"] == "2026-01-01T00:00:01.500000+00:00"
    assert llm["cache_write_tokens"] == 3072 and llm["input"][-1]["role"] == "user"


@reads_recorded
def test_on_a_terminal_the_tree_is_drawn_in_colour(recorded):
    shown = _read_terminal(["sessions", "show", SESSION], recorded, {"COLUMNS": "200"})
    assert "\x1b[" in shown  # coloured
    words = re.sub(r"\x1b\[[0-9;]*m", "", shown).replace("\r\n", "\n")
    assert "├── event looked up the order" in words  # rich's tree
    assert "FAILED ValueError: too curt" in words and "$0.0025" in words


def test_a_session_whose_llm_call_reported_no_usage_says_so_not_zero(lucidic_home):
    from helpers import CUT_STREAM

    sid = run_python(CUT_STREAM, home=lucidic_home,
                     args=[str(ROOT / "tests" / "providers")]).stdout.split()[0]
    out = _cli(lucidic_home, "sessions", "show", sid).stdout
    totals = next(line for line in out.splitlines() if line.startswith("  totals"))
    assert totals == ("  totals   0 steps, 1 event  ·  no token counts for 1 LLM call  ·  "
                      "no cost for 1 LLM call")
    assert "tokens" not in out.replace("no token counts", "")  # no 0 shown as measured
    assert "$" not in out
    listed = _cli(lucidic_home, "sessions", "list").stdout
    assert "no token counts for 1 LLM call" in listed
    shown = json.loads(_cli(lucidic_home, "sessions", "show", sid, "--json").stdout)
    assert (shown["input_tokens"], shown["total_cost"]) == (0, 0.0)  # sums of what is known
    assert (shown["llm_calls_without_tokens"], shown["llm_calls_without_cost"]) == (1, 1)


def test_a_running_session_and_its_open_step_read_as_running(lucidic_home):
    sid = lai.init(session_name="still going")
    lai.create_step(action="thinking")
    assert lai.flush()
    out = _cli(lucidic_home, "sessions", "show", sid).stdout
    assert out.count("running") == 2  # the session's status once, the open step once
    assert "  status   running\n" in out and "took" not in out
    assert "└─ step thinking  running\n" in out
    listed = _cli(lucidic_home, "sessions", "list").stdout
    assert listed.count("running") == 1


@reads_recorded
def test_sessions_list_reads_each_session_with_status_and_totals(recorded, lucidic_home):
    lucidic_home.mkdir()
    with sqlite3.connect(recorded / "lucidic.db") as source, \
            sqlite3.connect(lucidic_home / "lucidic.db") as copy:
        source.backup(copy)
    lai.init(session_name="another one")
    assert lai.flush()
    lines = _cli(lucidic_home, "sessions", "list").stdout.splitlines()
    assert len(lines) == 2 and "another one" in lines[0] and "running" in lines[0]
    assert lines[1] == (f"{SESSION}  Support bot  agent agent-7  2026-01-01 00:00:00  "
                        "failed  (3 steps, 5 events, 4 errors  ·  5,164 → 55 tokens "
                        "(2,048 from cache, 3,072 written to cache)  ·  $0.0195)")
    listed = json.loads(_cli(lucidic_home, "sessions", "list", "--json").stdout)
    assert listed[1]["started_at_iso"] == "2026-01-01T00:00:00+00:00"
    assert listed[1]["cache_write_tokens"] == 3072


def test_counts_are_pluralised_and_values_are_text(lucidic_home):
    sid = lai.init(session_name="one of each")

    @lai.event(description="looked it up")
    def look_up(query: str, limit: int = 3) -> list[str]:
        return ["a", "b"]

    @lai.step(action="only", state="it's late")
    def only():
        look_up("socks", limit=2)

    only()
    lai.end_session()
    assert lai.flush()
    out = _cli(lucidic_home, "sessions", "show", sid).stdout
    assert out.startswith("one of each\n")  # the name as it is, not 'one of each'
    assert "  totals   1 step, 1 event\n" in out
    assert "└─ step only  " in out and "state: it's late" in out
    # a call's arguments as text
    assert "function " in out and "(query=socks, limit=2)" in out


@pytest.mark.parametrize(("seconds", "shown"), [
    (0.00000042, "0.42 µs"), (0.00004, "40.0 µs"), (0.00123, "1.23 ms"), (0.0123, "12.3 ms"),
    (0.123, "123 ms"), (0.99996, "1.00 s"), (1.234, "1.23 s"), (12.34, "12.3 s"),
    (59.99, "1 min 0 s"), (125, "2 min 5 s"), (3725, "1 h 2 min"),
])
def test_durations_have_the_precision_that_suits_them(seconds, shown):
    assert _render.duration(seconds) == shown


@pytest.mark.parametrize(("cost", "shown"), [
    (12345.678, "$12,345.68"), (1.5, "$1.50"), (0.25, "$0.25"), (0.0123, "$0.0123"),
    (0.000036, "$0.000036"), (0.0000435, "$0.0000435"),
])
def test_costs_show_enough_digits_to_be_read(cost, shown):
    assert _render.money(cost) == shown


def test_version_help_and_defaults(lucidic_home):
    version = _cli(lucidic_home, "--version")
    assert version.returncode == 0
    assert version.stdout.startswith(f"lucidic {lai.__version__} (lucidic-toolkit, Python ")
    bare = _cli(lucidic_home)
    assert bare.returncode == 0 and bare.stdout.startswith("usage: lucidic ")
    assert "sessions" in bare.stdout and "providers" in bare.stdout and "keys" in bare.stdout
    assert "    providers      installed provider plugins\n" in bare.stdout  # one line each
    sessions = _cli(lucidic_home, "sessions")
    assert sessions.returncode == 0 and sessions.stdout.startswith("usage: lucidic sessions ")
    assert "    show      a session's tree of steps and events\n" in sessions.stdout
    listing = _cli(lucidic_home, "sessions", "list", "--help").stdout
    assert "at most this many (default: 50)" in " ".join(listing.split())
    server = " ".join(_cli(lucidic_home, "server", "--help").stdout.split())
    assert "(default: 127.0.0.1)" in server and "(default: 8765)" in server
    assert "(default: None)" not in server


def test_unknown_session_and_missing_store_say_where_they_looked(lucidic_home, tmp_path):
    missing = _cli(tmp_path / "nowhere", "sessions", "list")
    assert missing.returncode != 0 and "no embedded store" in missing.stderr
    lai.init()
    assert lai.flush()
    unknown = _cli(lucidic_home, "sessions", "show", "nope")
    assert unknown.returncode == 1
    assert unknown.stderr == (f"lucidic: no session 'nope' in the embedded store at "
                              f"{lucidic_home / 'lucidic.db'} (`lucidic sessions list` shows "
                              "the recorded ones)\n")


def test_keys_commands_use_lucidic_database_url_and_say_where_they_looked(lucidic_home,
                                                                         tmp_path):
    server_db = f"sqlite:///{tmp_path / 'server.db'}"
    env = {"LUCIDIC_DATABASE_URL": server_db}
    created = _cli(lucidic_home, "keys", "create", "--project", "shop", env=env)
    assert created.returncode == 0, created.stderr
    assert created.stdout.startswith(f"database: {server_db} (LUCIDIC_DATABASE_URL)\n")
    key_id = re.search(r"key id:\s+(\S+)", created.stdout).group(1)
    listed = _cli(lucidic_home, "keys", "list", env=env).stdout
    assert listed.startswith(key_id) and "project shop" in listed and "active" in listed
    # without the variable: the embedded store, which holds no keys, and says so
    nothing = _cli(lucidic_home, "keys", "list").stdout
    assert nothing == (f"no API keys in sqlite:///{lucidic_home / 'lucidic.db'} (this "
                       "machine's embedded store: give the server's database with --db or "
                       "LUCIDIC_DATABASE_URL); make one with `lucidic keys create --project "
                       "NAME`\n")
    refused = _cli(lucidic_home, "keys", "revoke", key_id)
    assert refused.returncode == 1 and "embedded store" in refused.stderr
    revoked = _cli(lucidic_home, "keys", "revoke", key_id, env=env)
    assert revoked.returncode == 0 and "revoked" in revoked.stdout
    assert "revoked 20" in _cli(lucidic_home, "keys", "list", "--db", server_db).stdout


def test_a_database_password_is_never_printed():
    from lucidic.cli import _shown_url

    assert _shown_url("postgresql://lucidic:s3cret@db.internal:5432/lucidic") == \
        "postgresql://lucidic:***@db.internal:5432/lucidic"
    assert _shown_url("sqlite:////var/lib/lucidic.db") == "sqlite:////var/lib/lucidic.db"


def _read_terminal(args: list[str], home: Path, env: dict[str, str] | None = None) -> str:
    """What the CLI writes to a terminal (a pty), escape sequences and all."""
    controller, terminal = pty.openpty()
    try:
        process = subprocess.Popen([sys.executable, "-m", "lucidic", *args], stdout=terminal,
                                   stderr=subprocess.PIPE,
                                   env=child_env(home, {"TZ": "UTC", **(env or {})}),
                                   cwd=str(ROOT))
        os.close(terminal)
        terminal = -1
        output = b""
        while True:
            try:
                chunk = os.read(controller, 65536)
            except OSError:  # the child closed its end
                break
            if not chunk:
                break
            output += chunk
        assert process.wait(timeout=60) == 0
    finally:
        os.close(controller)
        if terminal != -1:
            os.close(terminal)
    return output.decode()


def test_recorded_text_cannot_drive_the_terminal(lucidic_home):
    # A name or an LLM answer may hold escape sequences (retitle, clear,
    # recolour the terminal) or bidi marks: shown as escapes, never obeyed.
    sid = lai.init(session_name="\x1b]0;pwned\x07name \x1b[2Jcleared")
    lai.create_event(description="answer \u202eevil\rback \x9b31m")
    lai.end_session()
    for args in (["sessions", "list"], ["sessions", "show", sid],
                 ["sessions", "show", sid, "--full"]):
        piped = _cli(lucidic_home, *args).stdout
        on_terminal = _read_terminal(args, lucidic_home)
        for out in (piped, on_terminal):
            assert "\\x1b]0;pwned\\x07name \\x1b[2Jcleared" in out
            assert "\x1b]" not in out and "\x07" not in out and "\x1b[2J" not in out
        assert "\u202e" not in piped + on_terminal and "\x9b" not in piped + on_terminal
    shown = _cli(lucidic_home, "sessions", "show", sid).stdout
    assert "answer \\u202eevil back \\x9b31m" in shown  # (a carriage return is whitespace)
    assert "\x1b[" in _read_terminal(["sessions", "show", sid], lucidic_home)  # still coloured


@pytest.mark.parametrize("args, why", [
    (["sessions", "list", "--limit", "99999999999999999999"], f"must be at most {2**63 - 1}"),
    (["sessions", "list", "--offset", "-1"], "must be at least 0"),
    (["sessions", "list", "--offset", "99999999999999999999"], f"must be at most {2**63 - 1}"),
    (["experiments", "list", "--limit", "0"], "must be at least 1"),
    (["experiments", "list", "--offset", "99999999999999999999"], f"must be at most {2**63 - 1}"),
    (["mass-sims", "list", "--limit", "-3"], "must be at least 1"),
    (["mass-sims", "list", "--offset", "x"], "must be a whole number, not 'x'"),
])
def test_paging_beyond_what_a_database_can_count_is_a_usage_error(lucidic_home, args, why):
    lai.init(session_name="one")
    lai.end_session()
    result = _cli(lucidic_home, *args)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert f"argument {args[2]}: {why}" in result.stderr


def test_paging_at_the_bounds_reads_what_is_there(lucidic_home):
    lai.init(session_name="one")
    lai.end_session()
    result = _cli(lucidic_home, "sessions", "list", "--limit", str(2**63 - 1))
    assert result.returncode == 0 and "one" in result.stdout
    result = _cli(lucidic_home, "sessions", "list", "--offset", str(2**63 - 1))
    assert result.returncode == 0 and result.stdout.startswith("no sessions in")


def test_a_step_its_session_outlived_reads_as_did_not_end_not_running(lucidic_home):
    from helpers import STEP_NEVER_ENDED

    sid = run_python(STEP_NEVER_ENDED, home=lucidic_home).stdout.split()[0]
    shown = _cli(lucidic_home, "sessions", "show", sid).stdout
    assert "step background poll  did not end" in shown
    assert "running" not in shown and "  status   finished\n" in shown
    tree = json.loads(_cli(lucidic_home, "sessions", "show", sid, "--json").stdout)
    poll, work = sorted(tree["steps"], key=lambda s: s["action"])
    assert poll["never_ended"] is True and work["never_ended"] is False
    assert poll["events"][0]["never_ended"] is False


def test_a_daemon_threads_step_at_exit_reads_as_interrupted_at_exit(lucidic_home):
    # It read "did not end", as if nobody knew what had become of it: the
    # exit path knows, and now says so, with the moment of the exit.
    from helpers import OUTLIVED_STEP

    sid = run_python(OUTLIVED_STEP, home=lucidic_home).stdout.split()[0]
    shown = _cli(lucidic_home, "sessions", "show", sid).stdout
    (line,) = [line for line in shown.splitlines() if "background poll" in line]
    assert "FAILED interrupted at exit: the process ended while this step ran" in line
    assert "did not end" not in shown and "running" not in shown
