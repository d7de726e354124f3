"""The plugin API as the first-party openai and anthropic plugins meet it:
discovery through entry points, clear errors, the `lucidic providers`
command, and patches that are idempotent and undone exactly."""

from __future__ import annotations

import importlib
import importlib.util
import json
from importlib import metadata

import pytest

import lucidic as lai
from lucidic import cli, plugins
from lucidic.errors import InvalidOperationError
from lucidic.testing import capture

pytestmark = pytest.mark.usefixtures("restore_adapters")


def patched_attributes(adapter_name: str) -> dict[tuple[type, str], object]:
    """What every attribute the adapter patches holds right now."""
    module = importlib.import_module(f"lucidic_{adapter_name}._adapter")
    found = {}
    for module_name, class_name, method, *_ in (*module.PATCHES,
                                                *getattr(module, "RESPONSE_PATCHES", ()),
                                                *getattr(module, "REQUEST_PATCHES", ())):
        if importlib.util.find_spec(module_name) is None:
            continue  # a module this version of the library does not have
        owner = getattr(importlib.import_module(module_name), class_name)
        found[(owner, method)] = vars(owner)[method]
    return found


def test_first_party_plugins_are_discovered_through_the_entry_point_group():
    entry_points = {ep.name: ep for ep in metadata.entry_points(group="lucidic.providers")}
    assert entry_points["openai"].value == "lucidic_openai:OpenAIAdapter"
    assert entry_points["anthropic"].value == "lucidic_anthropic:AnthropicAdapter"
    adapter = plugins.get_adapter("openai")
    assert type(adapter).__name__ == "OpenAIAdapter"
    assert plugins.get_adapter("openai") is adapter  # one adapter per name
    infos = {info.name: info for info in plugins.describe()}
    for name, distribution in (("openai", "lucidic-toolkit-openai"),
                               ("anthropic", "lucidic-toolkit-anthropic")):
        info = infos[name]
        assert info.distribution == distribution
        assert info.library == name
        assert info.library_version == metadata.version(name)
        assert info.problem is None


def test_unknown_provider_names_the_installed_ones_and_the_first_party_distributions():
    with pytest.raises(InvalidOperationError) as raised:
        lai.init(providers=["openai", "mistral"])
    message = str(raised.value)
    assert message.startswith("unknown provider 'mistral'. Installed providers: anthropic, ")
    # no made-up distribution: the first-party ones, by the names that install them
    assert "lucidic-mistral" not in message
    assert "openai (lucidic-toolkit-openai)" in message
    assert "entry-point group 'lucidic.providers'" in message
    # nothing was patched before the error
    assert not plugins.get_adapter("openai").instrumented


@pytest.mark.parametrize(("asked", "expected"), [
    ("opnai", "unknown provider 'opnai'; did you mean 'openai'? Installed providers: "),
    ("antropic", "unknown provider 'antropic'; did you mean 'anthropic'? Installed providers: "),
    ("pydantic-ai", "unknown provider 'pydantic-ai': provider names are written with "
                    "underscores, as 'pydantic_ai'; use providers=['pydantic_ai']. "),
    ("langgraph", "unknown provider 'langgraph': LangGraph runs on langchain-core, whose "
                  "callbacks the 'langchain' plugin records; use providers=['langchain']. "),
    ("nope", "unknown provider 'nope'. Installed providers: "),  # no far-fetched guess
])
def test_a_mistyped_provider_name_suggests_the_closest_known_one(asked, expected):
    with pytest.raises(InvalidOperationError) as raised:
        lai.init(providers=[asked])
    assert str(raised.value).startswith(expected)


def test_a_first_party_provider_not_installed_says_which_distribution_installs_it():
    message = plugins.unknown_provider_message("anthropic", ["openai"])
    assert message == ("provider 'anthropic' is not installed: pip install "
                       "lucidic-toolkit-anthropic. Installed providers: openai.")
    pointed = plugins.unknown_provider_message("langgraph", ["openai"])
    assert "use providers=['langchain'] (not installed: pip install lucidic-toolkit-langchain)" \
        in pointed


def test_listing_the_providers_imports_none_of_their_libraries(lucidic_home):
    """`lucidic providers` reads the plugins' declarations without importing
    openai, anthropic, langchain-core, pydantic-ai or the Agents SDK (which
    took seconds)."""
    from helpers import run_python

    result = run_python("""
        import contextlib, io, json, sys
        from lucidic import cli
        listing = io.StringIO()
        with contextlib.redirect_stdout(listing):
            cli.main(["providers", "--json"])
        heavy = ("openai", "anthropic", "langchain_core", "pydantic_ai", "agents")
        print(json.dumps({"listed": json.loads(listing.getvalue()),
                          "imported": sorted(m for m in heavy if m in sys.modules)}))
    """, home=lucidic_home)
    found = json.loads(result.stdout)
    assert {p["name"] for p in found["listed"]} >= {"openai", "anthropic", "langchain",
                                                    "pydantic_ai", "openai_agents"}
    assert found["imported"] == []


def test_missing_library_is_a_clear_error_and_patches_nothing(monkeypatch):
    adapter = plugins.get_adapter("anthropic")
    before = patched_attributes("anthropic")
    monkeypatch.setattr(adapter, "library", "anthropic-not-installed-here")
    with pytest.raises(InvalidOperationError, match="pip install anthropic-not-installed-here"):
        lai.init(providers=["anthropic"])
    assert patched_attributes("anthropic") == before
    assert not adapter.instrumented


def test_unsupported_library_version_is_a_clear_error(monkeypatch):
    adapter = plugins.get_adapter("openai")
    monkeypatch.setattr(adapter, "supported_versions", ">=999")
    with pytest.raises(InvalidOperationError) as raised:
        lai.init(providers=["openai"])
    assert f"openai {metadata.version('openai')} is installed" in str(raised.value)


def test_lucidic_providers_lists_plugins_and_library_versions(capsys):
    assert cli.main(["providers"]) == 0
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()}
    assert (f"lucidic-toolkit-openai {metadata.version('lucidic-toolkit-openai')}  "
            f"openai {metadata.version('openai')} (supports >=1.66)") in lines["openai"]
    assert (f"lucidic-toolkit-anthropic {metadata.version('lucidic-toolkit-anthropic')}  "
            f"anthropic {metadata.version('anthropic')} (supports >=0.49)") in lines["anthropic"]
    assert cli.main(["providers", "--json"]) == 0
    listed = {p["name"]: p for p in json.loads(capsys.readouterr().out)}
    assert listed["openai"]["library_version"] == metadata.version("openai")
    assert listed["anthropic"]["entry_point"] == "lucidic_anthropic:AnthropicAdapter"


@pytest.mark.parametrize("name", ["openai", "anthropic"])
def test_instrument_and_uninstrument_are_idempotent_and_restore_exactly(name):
    adapter = plugins.get_adapter(name)
    original = patched_attributes(name)
    adapter.instrument()
    patched = patched_attributes(name)
    assert all(patched[key] is not original[key] for key in original)
    adapter.instrument()  # again: nothing wrapped twice
    again = patched_attributes(name)
    assert all(again[key] is patched[key] for key in original)
    assert all(value.__wrapped__ is original[key] for key, value in patched.items())
    adapter.uninstrument()
    restored = patched_attributes(name)
    assert all(restored[key] is original[key] for key in original)  # the very same objects
    adapter.uninstrument()  # again: harmless
    restored = patched_attributes(name)
    assert all(restored[key] is original[key] for key in original)
    adapter.instrument()  # and it can come back
    back = patched_attributes(name)
    assert adapter.instrumented and all(back[key] is not original[key] for key in original)


def test_after_uninstrument_calls_in_a_session_are_not_recorded():
    import openai
    from _cassettes import replay, request_body, shared_path

    path = shared_path("openai/chat.yaml")
    with capture() as captured, replay(path):
        lai.init(providers=["openai"])
        plugins.get_adapter("openai").uninstrument()
        openai.OpenAI(api_key="sk-test", max_retries=0).chat.completions.create(
            **request_body(path))
    assert captured.events("llm") == []


def test_providers_activate_through_continued_and_session():
    with capture():
        session_id = lai.init()
        lai.detach()
        assert not plugins.get_adapter("anthropic").instrumented
        with lai.continued(session_id, providers=["anthropic"]):
            assert plugins.get_adapter("anthropic").instrumented
        with lai.session("s", providers=["openai"]):
            assert plugins.get_adapter("openai").instrumented


def test_a_suppression_begun_switched_off_suppresses_only_while_switched_on():
    with capture() as captured:
        lai.init("gate")
        gate = plugins.begin_suppressing_llm_calls("framework", active=False)
        try:
            plugins.start_llm_call("p", request_model="recorded").finish()
            gate.active = True
            assert plugins.start_llm_call("p", request_model="suppressed") is None
            gate.active = False
            plugins.start_llm_call("p", request_model="recorded again").finish()
        finally:
            gate.end()
    assert [e["request_model"] for e in captured.events("llm")] == ["recorded",
                                                                    "recorded again"]


def test_an_outer_suppression_stays_in_force_inside_an_inner_one():
    with capture() as captured:
        lai.init("nested suppressions")
        with plugins.suppress_llm_calls("outer"):
            inner = plugins.begin_suppressing_llm_calls("inner", active=False)
            assert plugins.start_llm_call("p") is None
            inner.end()
            assert plugins.start_llm_call("p") is None
        plugins.start_llm_call("p", request_model="after").finish()
    assert [e["request_model"] for e in captured.events("llm")] == ["after"]


def test_a_cost_a_plugin_gives_is_a_finite_number_within_the_servers_bound():
    # A plugin's cost is stored as a number the server takes: one it cannot
    # (text, NaN, beyond 1e18 dollars) is left unknown and the call is kept.
    with capture() as captured:
        lai.init("costs")
        for cost in (0.25, "0.5", "cheap", float("nan"), 1e19, -1e19, 10**30, 1e18):
            plugins.start_llm_call("p", request_model=repr(cost)).finish(cost=cost)
    assert [(e["request_model"], e.get("cost")) for e in captured.events("llm")] == [
        ("0.25", 0.25), ("'0.5'", 0.5), ("'cheap'", None), ("nan", None), ("1e+19", None),
        ("-1e+19", None), (repr(10**30), None), ("1e+18", 1e18)]


@pytest.mark.allow_internal_errors
def test_a_plugins_own_failure_around_a_wrapped_call_never_reaches_the_caller():
    """llm_call_wrapper guards the plugin's start and outcome functions: one
    that raises is logged and counted, and the caller gets what the library
    returned (the call recorded without its outcome)."""
    import asyncio

    import wrapt

    from lucidic._internal import internal_errors
    from lucidic.patching import llm_call_wrapper
    from lucidic.plugins import start_llm_call

    def complete(prompt):
        return prompt.upper()

    async def acomplete(prompt):
        return prompt.upper()

    def start(kwargs):
        return start_llm_call("mylib", request_model="m1", input=kwargs["prompt"])

    def broken_start(kwargs):
        raise KeyError("model")

    def broken_outcome(call, reply, asynchronous):  # one argument short: a plugin's bug
        return reply

    before = sum(internal_errors.values())
    with capture() as recorded:
        lai.init("a plugin's bugs")
        assert wrapt.FunctionWrapper(complete, llm_call_wrapper(broken_start, broken_outcome))(
            prompt="hi") == "HI"
        assert wrapt.FunctionWrapper(complete, llm_call_wrapper(start, broken_outcome))(
            prompt="hi") == "HI"
        wrapped = wrapt.FunctionWrapper(acomplete, llm_call_wrapper(start, broken_outcome,
                                                                    asynchronous=True))
        assert asyncio.run(wrapped(prompt="ho")) == "HO"
        lai.end_session()
    calls = recorded.events("llm")
    assert [(e["input"], e["request_model"], e["error"]) for e in calls] == [
        ("hi", "m1", None), ("ho", "m1", None)]
    assert sum(internal_errors.values()) - before == 3


# -- MethodPatches: what a library version lacks is skipped, nothing else ---------------

@pytest.fixture
def toy_library(tmp_path, monkeypatch):
    """A real installed module with a class to patch, and an installed module
    whose own import fails (it needs a dependency that is not installed)."""
    import sys

    (tmp_path / "lucidic_toy_lib.py").write_text(
        "class Client:\n"
        "    def complete(self, prompt):\n"
        "        return prompt.upper()\n", encoding="utf-8")
    (tmp_path / "lucidic_toy_broken.py").write_text(
        "import lucidic_toy_dependency_not_installed\n\n"
        "class Client:\n"
        "    def complete(self, prompt):\n"
        "        return prompt\n", encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield importlib.import_module("lucidic_toy_lib")
    for name in ("lucidic_toy_lib", "lucidic_toy_broken"):
        sys.modules.pop(name, None)


def counting_wrapper(seen):
    def wrapper(wrapped, instance, args, kwargs):
        seen.append(args)
        return wrapped(*args, **kwargs)
    return wrapper


def test_patches_of_modules_not_installed_are_skipped_and_the_others_applied(toy_library,
                                                                              caplog):
    """A plugin naming a module its library version lacks (or a package not
    installed at all) neither raises nor stops the patches after it; the
    skip is a debug line, not an internal error. A class or method the
    version lacks is skipped alike."""
    import logging
    import sys

    from lucidic._internal import internal_errors
    from lucidic.patching import MethodPatches

    client_class = toy_library.Client
    original = vars(client_class)["complete"]
    seen: list[tuple[object, ...]] = []
    patches = MethodPatches()
    errors_before = dict(internal_errors)
    with caplog.at_level(logging.DEBUG, logger="lucidic"):
        patches.apply([
            ("lucidic_no_such_module", "Client", "complete", counting_wrapper(seen)),
            ("lucidic_no_such_package.resources.chat", "Client", "complete",
             counting_wrapper(seen)),
            ("lucidic_toy_lib", "Client", "complete", counting_wrapper(seen)),
            ("lucidic_toy_lib", "ClientOfANewerRelease", "complete", counting_wrapper(seen)),
            ("lucidic_toy_lib", "Client", "method_of_a_newer_release", counting_wrapper(seen)),
        ])
    assert client_class().complete("hi") == "HI"
    assert seen == [("hi",)]  # the patch after the missing modules was made
    assert "lucidic_no_such_module" not in sys.modules
    skipped = [r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG]
    assert any("lucidic_no_such_module" in m and "not installed" in m for m in skipped)
    assert any("lucidic_no_such_package.resources.chat" in m for m in skipped)
    assert dict(internal_errors) == errors_before
    patches.restore()
    assert vars(client_class)["complete"] is original
    assert client_class().complete("hi") == "HI" and seen == [("hi",)]


def test_an_installed_module_that_fails_to_import_is_an_error_and_nothing_stays_patched(
        toy_library):
    """The skip is for a module that is not there: one that is there but
    cannot import (a dependency missing) raises, and the patches already
    made are undone."""
    from lucidic.patching import MethodPatches

    client_class = toy_library.Client
    original = vars(client_class)["complete"]
    patches = MethodPatches()
    with pytest.raises(ModuleNotFoundError) as raised:
        patches.apply([
            ("lucidic_toy_lib", "Client", "complete", counting_wrapper([])),
            ("lucidic_toy_broken", "Client", "complete", counting_wrapper([])),
        ])
    assert raised.value.name == "lucidic_toy_dependency_not_installed"
    assert vars(client_class)["complete"] is original
    patches.restore()  # nothing to undo
    assert vars(client_class)["complete"] is original


@pytest.mark.allow_internal_errors
def test_a_request_wrapper_records_only_the_calls_no_method_above_it_records():
    """llm_request_wrapper, on the request method every client method calls
    through, records a call that reaches it directly (a method bound before
    the patches), never one a method patched with llm_call_wrapper records,
    nor a request that is not an LLM call; its own bugs never reach the caller."""
    import asyncio

    import wrapt

    from lucidic._internal import internal_errors
    from lucidic.patching import llm_call_wrapper, llm_request_wrapper
    from lucidic.plugins import start_llm_call

    def request_of(args, kwargs):
        endpoint, prompt = args
        return prompt if endpoint == "/complete" else None

    def start(prompt):
        return start_llm_call("mylib", request_model="m1", input=prompt)

    def outcome(call, reply, asynchronous, prompt):
        call.finish(output=reply)
        return reply

    def send(endpoint, prompt):
        return prompt.upper()

    async def asend(endpoint, prompt):
        return prompt.upper()

    request = wrapt.FunctionWrapper(send, llm_request_wrapper(request_of, start, outcome))
    arequest = wrapt.FunctionWrapper(asend, llm_request_wrapper(request_of, start, outcome,
                                                                asynchronous=True))
    complete = wrapt.FunctionWrapper(lambda prompt: request("/complete", prompt),
                                     llm_call_wrapper(lambda kwargs: start(kwargs["prompt"]),
                                                      outcome))
    broken = wrapt.FunctionWrapper(send, llm_request_wrapper(
        lambda args, kwargs: 1 / 0, start, outcome))
    assert request("/complete", "no session") == "NO SESSION"
    before = sum(internal_errors.values())
    with capture() as recorded:
        lai.init("a request wrapper")
        assert complete(prompt="through the method") == "THROUGH THE METHOD"
        assert request("/complete", "straight to the request") == "STRAIGHT TO THE REQUEST"
        assert asyncio.run(arequest("/complete", "async")) == "ASYNC"
        assert request("/models", "not an llm call") == "NOT AN LLM CALL"
        assert broken("/complete", "a plugin bug") == "A PLUGIN BUG"
        lai.end_session()
    assert [(e["input"], e["output"]) for e in recorded.events("llm")] == [
        ("through the method", "THROUGH THE METHOD"),
        ("straight to the request", "STRAIGHT TO THE REQUEST"), ("async", "ASYNC")]
    assert sum(internal_errors.values()) - before == 1
