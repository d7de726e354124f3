"""Bad input is stored safely or refused with a clear error; it never crashes
the host program."""

from __future__ import annotations

import socket

import pytest

import lucidic as lai
from lucidic._records import MAX_TEXT_CHARS
from lucidic.errors import InvalidOperationError


def _events(store, sid):
    assert lai.flush()
    return store.session_tree(sid)["events"]


def test_non_string_text_fields_are_stored_as_text(store):
    sid = lai.init(session_name=12345)
    lai.create_step(state=3.5, action=["a", "b"], goal={"g": 1})
    lai.create_event(description=42, result=None)
    assert lai.flush()
    tree = store.session_tree(sid)
    assert tree["name"] == "12345"
    step = tree["steps"][0]
    assert (step["state"], step["action"], step["goal"]) == ("3.5", "['a', 'b']", "{'g': 1}")
    assert step["events"][0]["description"] == "42"


def test_objects_that_cannot_be_serialised_are_stored_as_their_repr(store):
    sid = lai.init()

    class Unprintable:
        def __repr__(self):
            raise RuntimeError("no repr for you")

        __str__ = __repr__

    with socket.socket() as sock:
        lai.create_event(description=Unprintable(),
                         arguments={"sock": sock, "bad": Unprintable(), "set": {1},
                                    "bytes": b"\x00\x01", "nan": float("nan"), 3: "int key"})
    (event,) = _events(store, sid)
    assert event["description"].startswith("<unrepresentable ")
    assert event["description"].endswith("Unprintable>")
    args = event["arguments"]
    assert args["sock"].startswith("<socket.socket")
    assert args["bad"] == event["description"]
    assert args["set"] == [1] and args["bytes"] == "<2 bytes>" and args["nan"] == "nan"
    assert args["3"] == "int key"


def test_cyclic_and_deep_structures_do_not_hang_or_crash(store):
    sid = lai.init()
    cyclic: list = []
    cyclic.append(cyclic)
    deep: dict = {}
    node = deep
    for _ in range(500):
        node["child"] = {}
        node = node["child"]
    lai.create_event(arguments={"cyclic": cyclic, "deep": deep})
    (event,) = _events(store, sid)
    assert "[...]" in str(event["arguments"]["cyclic"])


def test_megabyte_strings_are_stored_whole_and_giant_ones_are_cut_with_a_note(store):
    sid = lai.init()
    megabyte = "x" * (1024 * 1024)
    giant = "y" * (MAX_TEXT_CHARS + 10)
    lai.create_event(description=megabyte, result=giant)
    (event,) = _events(store, sid)
    assert event["description"] == megabyte
    assert event["result"].startswith("y" * 1000)
    assert event["result"].endswith("[truncated 10 characters]")


def test_nul_bytes_and_lone_surrogates_are_stored_safely(store):
    sid = lai.init(session_name="nul\x00name")
    lai.create_event(description="a\x00b", result="bad \ud800 surrogate",
                     arguments={"k\x00": "v\udfff"})
    (event,) = _events(store, sid)
    assert event["description"] == "a\ufffdb"
    assert event["result"] == "bad \ufffd surrogate"
    assert event["arguments"] == {"k\ufffd": "v\ufffd"}
    assert store.get_session(sid)["name"] == "nul\ufffdname"


@pytest.mark.parametrize("call, message", [
    (lambda: lai.create_step(eval_score="high"), "eval_score must be a number"),
    (lambda: lai.create_event(cost_added="cheap"), "cost_added must be a number"),
    (lambda: lai.create_event(cost_added=float("inf")), "finite"),
    (lambda: lai.create_event(cost_added=1e19), r"within ±1e\+18 dollars, not 1e\+19"),
    (lambda: lai.update_event(cost_added=-(10**30)), r"within ±1e\+18 dollars, not -1000"),
    (lambda: lai.create_event(screenshots="one.png"), "screenshots must be a list"),
    (lambda: lai.update_session(is_successful="yes"), "is_successful must be True, False"),
    (lambda: lai.create_step(screenshot_path="/no/such/file.png"), "cannot read screenshot_path"),
    (lambda: lai.update_step(step_id=5), "step_id must be"),
    (lambda: lai.update_event(), "no event created here"),
    (lambda: lai.end_step(), "no open step"),
])
def test_misuse_in_a_session_raises_a_clear_error(call, message):
    lai.init()
    with pytest.raises(InvalidOperationError, match=message):
        call()


@pytest.mark.parametrize("call, message", [
    (lambda: lai.continue_session(123), "session_id must be a string"),
    (lambda: lai.continue_session(""), "not a valid session id"),
    (lambda: lai.continue_session("x" * 1000), "not a valid session id"),
    (lambda: lai.continue_session("bad\nid"), "not a valid session id"),
    (lambda: lai.init(providers="openai"), "providers must be a list"),
    (lambda: lai.init(providers=["no-such-provider"]), "unknown provider 'no-such-provider'"),
    (lambda: lai.init(masking_function="mask"), "masking_function must be a callable"),
    (lambda: lai.init(tags="a,b"), "tags must be a list"),
    (lambda: lai.init(agent_id=7), "agent_id must be a string"),
    (lambda: lai.init(auto_end="no"), "auto_end must be True, False"),
    (lambda: lai.continued(None), "session_id must be a string"),
    (lambda: lai.flush(timeout="soon"), "timeout must be a number"),
])
def test_bad_arguments_raise_a_clear_error_before_anything_happens(call, message):
    with pytest.raises(InvalidOperationError, match=message):
        call()


def test_screenshot_path_is_read_into_the_step(store, tmp_path):
    import base64

    image = tmp_path / "screen.png"
    image.write_bytes(b"\x89PNG fake image bytes")
    sid = lai.init()
    lai.create_step(screenshot_path=str(image))
    assert lai.flush()
    (step,) = store.session_tree(sid)["steps"]
    assert base64.b64decode(step["screenshot"]) == b"\x89PNG fake image bytes"
    assert step["screenshot_path"] == str(image)


def test_recording_calls_without_a_session_do_nothing_and_return_none(store):
    assert lai.create_step(state="x") is None
    assert lai.create_event(description="x") is None
    lai.update_step(state="x")
    lai.end_step()
    lai.update_event(description="x")
    lai.end_event()
    with pytest.raises(lai.LucidicNotInitializedError, match="needs a current session"):
        lai.update_session(task="x")


def test_floats_past_the_64_bit_integers_are_stored_as_given_without_the_slow_path(
        tmp_path, monkeypatch):
    """A column of floats needs no bounds (any finite float is bound as it
    is): a group of them, however large, is not cleaned value by value; an
    integer past 64 bits in the same column still is, and is stored as NULL."""
    from lucidic import store as store_module

    store = store_module.Store(tmp_path / "floats.db")
    cleaned: list[object] = []
    scalar = store_module._scalar_param
    monkeypatch.setattr(store_module, "_scalar_param",
                        lambda value: cleaned.append(value) or scalar(value))
    scores = [1e20, -1e20, 0.5]
    try:
        store.write([("step", f"step-{i}", 2.0, {"session_id": "s", "eval_score": score,
                                                  "started_at": 1.0})
                     for i, score in enumerate(scores)])
        assert cleaned == []
        assert [store.get_step(f"step-{i}")["eval_score"] for i in range(3)] == scores
        store.write([("step", "huge", 3.0, {"session_id": "s", "eval_score": 2 ** 64,
                                             "started_at": 1.0})])
        assert store.get_step("huge")["eval_score"] is None
        assert 2 ** 64 in cleaned
    finally:
        store.close()


def test_a_step_without_its_session_is_refused_before_anything_of_its_batch_is_written(
        tmp_path):
    from lucidic.store import Store

    store = Store(tmp_path / "orphan.db")
    events = [("event", f"e{i}", 1.0, {"session_id": "s", "type": "generic"})
              for i in range(3)]
    steps = [("step", f"st{i}", 1.0, {"session_id": "s", "action": "a"}) for i in range(2)]
    orphan = ("step", "orphan", 1.0, {"action": "a"})
    try:
        with pytest.raises(ValueError, match="^step record 'orphan' lacks 'session_id'$"):
            store.write([*events, *steps, orphan])
        assert store.count("events") == store.count("steps") == 0
        store.write([*events, *steps])
        assert store.count("events") == 3 and store.count("steps") == 2
    finally:
        store.close()


def test_the_sdks_batch_is_not_checked_a_record_at_a_time_in_python(tmp_path, monkeypatch):
    """Whether each record names its session is checked a column at a time
    (by the grouping into rows), not by a loop over the records."""
    from lucidic import store as store_module

    class Counted(dict):
        looked_up = 0

        def get(self, *args):
            Counted.looked_up += 1
            return super().get(*args)

    monkeypatch.setattr(store_module, "_GUARDS", Counted(store_module._GUARDS))
    store = store_module.Store(tmp_path / "checked.db")
    try:
        store.write([("step", f"st{i}", 1.0, {"session_id": "s", "action": "a"})
                     for i in range(100)])
        assert store.count("steps") == 100
        assert Counted.looked_up == 0
    finally:
        store.close()
