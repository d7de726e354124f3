"""Masking runs on every text field in the caller's thread, and a failing
masking function never lets unmasked text through."""

from __future__ import annotations

import json
import traceback

import pytest

import lucidic as lai
from lucidic import _internal
from lucidic._records import REDACTED
from lucidic.plugins import record_event, start_llm_call

SECRET = "sk-SECRET-123"


def _mask(text: str) -> str:
    return text.replace(SECRET, "<key>")


def _everything_recorded(store, sid) -> str:
    assert lai.flush()
    return json.dumps(store.session_tree(sid))


def _record_everywhere(tmp_path) -> None:
    shot = tmp_path / "shot.png"
    shot.write_bytes(SECRET.encode())
    lai.update_session(task=f"task {SECRET}", session_eval_reason=SECRET,
                       is_successful_reason=SECRET, tags=[SECRET])
    lai.create_step(state=SECRET, action=SECRET, goal=SECRET, eval_description=SECRET,
                    screenshot=SECRET)
    lai.update_step(state=f"updated {SECRET}")
    lai.create_event(description=SECRET, result=SECRET, model=SECRET, screenshots=[SECRET],
                     function_name=SECRET, arguments={"nested": [{"deep": SECRET}], SECRET: 1})
    lai.update_event(result=f"again {SECRET}")
    lai.end_event(description=f"end {SECRET}")

    @lai.step(state=SECRET, action=SECRET, goal=SECRET, eval_description=SECRET)
    def decorated():
        return lookup(SECRET, extra={"k": SECRET})

    @lai.event(description=SECRET)
    def lookup(query, extra):
        return f"result {SECRET}"

    decorated()
    call = start_llm_call("openai", request_model="gpt-4o",
                          input=[{"role": "user", "content": f"my key is {SECRET}"}])
    call.finish(model="gpt-4o", output={"role": "assistant", "content": SECRET},
                input_tokens=1, output_tokens=1)
    failed = start_llm_call("openai", input=[SECRET])
    failed.fail(RuntimeError(SECRET))
    record_event("tool", description=SECRET, arguments={"q": SECRET}, result=SECRET)
    lai.end_step(state=f"end {SECRET}")


def test_masking_reaches_every_text_field(store, tmp_path):
    sid = lai.init(session_name=f"name {SECRET}", task=SECRET, tags=[SECRET],
                   masking_function=_mask)
    _record_everywhere(tmp_path)
    lai.end_session(is_successful_reason=SECRET)
    recorded = _everything_recorded(store, sid)
    assert SECRET not in recorded
    assert recorded.count("<key>") > 30
    events = store.session_tree(sid)["steps"][0]["events"]
    generic = next(e for e in events if e["type"] == "generic")
    assert generic["arguments"] == {"nested": [{"deep": "<key>"}], "<key>": 1}


@pytest.fixture
def fresh_log_limits(monkeypatch):
    """Rate-limited warnings said by an earlier test may be said again."""
    monkeypatch.setattr(_internal, "_last_logged", {})


def test_a_raising_masking_function_redacts_and_says_it_is_the_masking_functions_bug(
        store, tmp_path, caplog, fresh_log_limits):
    def broken(text: str) -> str:
        if SECRET in text:
            raise RuntimeError("mask bug")
        return text

    sid = lai.init(session_name=SECRET, masking_function=broken)
    _record_everywhere(tmp_path)
    recorded = _everything_recorded(store, sid)
    assert SECRET not in recorded
    assert REDACTED in recorded
    (warning,) = [r for r in caplog.records if "masking_function" in r.getMessage()]
    assert warning.levelname == "WARNING" and warning.name == "lucidic"
    assert warning.getMessage().startswith(
        "lucidic: masking_function raised RuntimeError('mask bug'); the text was redacted")
    assert "internal error" not in warning.getMessage()
    # the traceback is the user's function's, to fix it by
    assert warning.exc_info is not None and warning.exc_info[2] is not None
    assert "broken" in "".join(traceback.format_tb(warning.exc_info[2]))


def test_a_masking_function_returning_non_text_redacts(store, caplog, fresh_log_limits):
    sid = lai.init(masking_function=lambda text: None)
    lai.create_event(description=SECRET)
    assert SECRET not in _everything_recorded(store, sid)
    assert any(r.getMessage().startswith("lucidic: masking_function returned NoneType, not str; "
                                         "the text was redacted") for r in caplog.records)


def test_masking_happens_before_records_are_queued_or_spooled(tmp_path):
    from lucidic.testing import capture

    with capture() as captured:
        captured.sink.failing = True  # everything goes to the spool
        lai.init(masking_function=_mask)
        lai.create_event(description=SECRET)
        lai.flush(timeout=0.5)
        spooled = b"".join(p.read_bytes() for p in (captured.directory / "spool")
                           .rglob("*.jsonl"))
        assert spooled and SECRET.encode() not in spooled
        assert b"<key>" in spooled
        captured.sink.failing = False
        assert captured.flush(10)


def test_a_masking_function_returning_non_text_redacts_a_decorated_steps_texts(
        store, caplog, fresh_log_limits):
    @lai.step(action=SECRET, goal=SECRET)
    def decorated() -> None:
        pass

    sid = lai.init(masking_function=lambda text: None)
    decorated()
    recorded = _everything_recorded(store, sid)
    assert SECRET not in recorded
    (step,) = store.session_tree(sid)["steps"]
    assert (step["action"], step["goal"]) == (REDACTED, REDACTED)
    assert any(r.getMessage().startswith("lucidic: masking_function returned NoneType, not str")
               for r in caplog.records)
