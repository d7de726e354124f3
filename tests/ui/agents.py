"""Agents that record real sessions through the SDK, each run as its own
process by the browser tests and by docs/screenshots.py:

    python tests/ui/agents.py trip [CASSETTE]   # nested steps, a tool, an LLM call; detaches
    python tests/ui/agents.py handover SID      # continues SID elsewhere, ends it successful
    python tests/ui/agents.py step SID NAME     # continues SID, adds one step, detaches
    python tests/ui/agents.py new NAME [TASK]   # a session that ends with no outcome
    python tests/ui/agents.py failing           # an uncaught error: the session fails
    python tests/ui/agents.py html              # recorded text that looks like markup
    python tests/ui/agents.py big N             # one session of N events in nested steps
    python tests/ui/agents.py end SID           # ends SID successful

The LLM call is replayed from a recorded cassette (vcrpy, record_mode="none",
the request made exactly as recorded): nothing reaches the network. Each run
prints the session id it wrote.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import lucidic as lai


def _replayed_llm_call(cassette: Path) -> None:
    """Make the cassette's own request with the real client library, through
    the provider plugin, replayed from the recording."""
    import vcr
    import yaml

    body = json.loads(yaml.safe_load(cassette.read_text("utf-8"))["interactions"][0]
                      ["request"]["body"])
    recorder = vcr.VCR(record_mode="none", match_on=("method", "scheme", "host", "port", "path"))
    with recorder.use_cassette(str(cassette)):
        if "anthropic" in cassette.parts:
            import anthropic

            anthropic.Anthropic(api_key="sk-ant-test", max_retries=0).messages.create(**body)
        else:
            import openai

            openai.OpenAI(api_key="sk-test", max_retries=0).chat.completions.create(**body)


def trip(cassette: str | None) -> str:
    provider = "anthropic" if cassette and "anthropic" in Path(cassette).parts else "openai"
    sid = lai.init(session_name="Plan a weekend in Kyoto 京都", agent_id="trip-planner",
                   task="Two days in Kyoto: temples, food, a ryokan — under $900",
                   tags=["travel", "demo"], providers=[provider] if cassette else None)

    @lai.step(action="Understand the request", goal="Know dates, budget and tastes")
    def understand() -> None:
        lai.create_event(description="parsed the request",
                         result="2 days · budget $900 · likes temples and ramen")

    @lai.step(action="Search flights")
    def search() -> list[str]:
        @lai.event(description="search_flights")
        def search_flights(origin: str, destination: str) -> list[str]:
            return ["NH 7 SFO→KIX $612", "UA 837 SFO→KIX $655"]

        return search_flights("SFO", "KIX")

    @lai.step(action="Draft the itinerary", goal="A day-by-day plan")
    def draft() -> None:
        if cassette:
            _replayed_llm_call(Path(cassette))
        lai.create_event(description="chose a ryokan", result="Yoshida-sanso, ¥38,000/night",
                         cost_added=0.000137)

    understand()
    search()
    draft()
    lai.detach()
    return sid


def handover(sid: str) -> str:
    lai.continue_session(sid, agent_id="trip-planner")
    lai.create_step(action="Book the ryokan", state="booking")
    lai.create_event(description="book_room", function_name="book_room",
                     arguments={"hotel": "Yoshida-sanso", "nights": 2}, result="confirmed #A-1187")
    lai.end_step()
    lai.end_session(is_successful=True, is_successful_reason="itinerary and booking sent")
    return sid


def step(sid: str, name: str) -> str:
    lai.continue_session(sid)
    lai.create_step(action=name)
    lai.create_event(description=f"{name}: done")
    lai.end_step()
    lai.detach()
    return sid


def new(name: str, task: str | None) -> str:
    sid = lai.init(session_name=name, task=task, agent_id="support-bot")
    lai.create_step(action="Answer")
    lai.create_event(description="answered", result="ok")
    lai.end_step()
    lai.end_session()
    return sid


def failing() -> str:
    sid = lai.init(session_name="Nightly report", agent_id="reporter")
    print(sid, flush=True)

    @lai.step(action="Fetch the numbers")
    def fetch() -> None:
        raise TimeoutError("the warehouse did not answer in 30 s")

    fetch()  # uncaught: auto_end records it and marks the session failed
    return sid


def html() -> str:
    sid = lai.init(session_name="<script>alert('name')</script><b>bold?</b>",
                   task="<img src=x onerror=alert(1)> & &amp; \"quoted\"")
    lai.create_step(action="<i>not italic</i>")
    lai.create_event(description="<script>document.title='pwned'</script>",
                     result="</pre><h1>not a heading</h1>")
    lai.end_step()
    lai.end_session(is_successful=False, is_successful_reason="<u>reason</u>")
    return sid


def big(count: int) -> str:
    sid = lai.init(session_name=f"Batch of {count} events", agent_id="batcher")
    per_step = 100
    for first in range(0, count, per_step):
        lai.create_step(action=f"Batch {first // per_step + 1}")
        for i in range(first, min(first + per_step, count)):
            lai.create_event(description=f"item {i}", result="ok", cost_added=0.00001)
        lai.end_step()
    lai.end_session(is_successful=True)
    return sid


def end(sid: str) -> str:
    lai.continue_session(sid)
    lai.end_session(is_successful=True)
    return sid


def main(argv: list[str]) -> None:
    scenario, *args = argv
    scenarios: dict[str, Any] = {
        "trip": lambda: trip(args[0] if args else None), "handover": lambda: handover(args[0]),
        "step": lambda: step(args[0], args[1]),
        "new": lambda: new(args[0], args[1] if len(args) > 1 else None),
        "failing": failing, "html": html, "big": lambda: big(int(args[0])),
        "end": lambda: end(args[0]),
    }
    sid = scenarios[scenario]()
    if scenario != "failing":
        print(sid, flush=True)
    if not lai.flush(30):
        sys.exit("could not deliver everything")


if __name__ == "__main__":
    main(sys.argv[1:])
