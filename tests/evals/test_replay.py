"""Replay: an experiment's OpenAI and Anthropic calls answered from another
experiment's recorded calls, against a loopback stub that counts requests:
none on replay, exactly one per miss in fallback mode."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest
from provider_stub import ProviderStub

from lucidic.evals import Case, ReplayMissError, evaluator, run_experiment
from lucidic.store import Store

PROMPTS = [Case("hello", name="hello"), Case("bonjour", name="bonjour")]
TOOLS = [{"type": "function", "function": {"name": "lookup", "parameters": {
    "type": "object", "properties": {"q": {"type": "string"}}}}}]


def _openai(provider: ProviderStub) -> openai.OpenAI:
    return openai.OpenAI(base_url=provider.url + "/v1", api_key="sk-test", max_retries=0)


def _anthropic(provider: ProviderStub) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=provider.url, api_key="sk-ant-test", max_retries=0)


def _llm_events(store: Store, session_id: str) -> list[dict[str, Any]]:
    tree = store.session_tree(session_id)
    assert tree is not None
    return sorted(tree["events"], key=lambda e: e["started_at"])


def test_openai_chat_plain_streamed_and_tool_calls_replay_without_a_request(
        provider: ProviderStub, store: Store) -> None:
    client = _openai(provider)

    def agent(prompt: str) -> dict[str, Any]:
        plain = client.chat.completions.create(
            model="gpt-4o-mini", temperature=0,
            messages=[{"role": "system", "content": "Echo."},
                      {"role": "user", "content": prompt}])
        stream = client.chat.completions.create(
            model="gpt-4o-mini", stream=True, stream_options={"include_usage": True},
            messages=[{"role": "user", "content": prompt + "?"}])
        streamed = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
        with client.chat.completions.stream(
                model="gpt-4o-mini", messages=[{"role": "user", "content": prompt + "!"}]) as s:
            helper = s.get_final_completion().choices[0].message.content
        tooled = client.chat.completions.create(
            model="gpt-4o-mini", tools=TOOLS, messages=[{"role": "user", "content": prompt}])
        call = tooled.choices[0].message.tool_calls[0]
        return {"plain": plain.choices[0].message.content, "streamed": streamed,
                "helper": helper, "tool": [call.function.name, call.function.arguments],
                "finish": tooled.choices[0].finish_reason,
                "model": plain.model, "usage": plain.usage.prompt_tokens}

    recorded = run_experiment(agent, PROMPTS, name="record", providers=["openai"])
    assert all(r.error is None for r in recorded.runs), [r.error for r in recorded.runs]
    made = provider.total
    assert made == 8

    replayed = run_experiment(agent, PROMPTS, name="replay", providers=["openai"],
                              replay=recorded.experiment_id)
    assert provider.total == made  # not one request reached the provider
    assert [r.output for r in replayed.runs] == [r.output for r in recorded.runs]
    assert replayed.runs[0].output["tool"] == ["lookup", '{"q": "hello"}']
    assert replayed.runs[0].output["finish"] == "tool_calls"
    assert (replayed.replayed, replayed.replay_misses) == (8, 0)
    # Marked as replayed, at no cost; the recording's model and tokens kept.
    before = _llm_events(store, recorded.runs[0].session_id)
    after = _llm_events(store, replayed.runs[0].session_id)
    assert [e["replayed_from"] for e in after] == [e["id"] for e in before]
    assert all(e["cost"] == 0 for e in after) and all(e["cost"] > 0 for e in before)
    assert [(e["model"], e["input_tokens"], e["output_tokens"]) for e in after] == [
        (e["model"], e["input_tokens"], e["output_tokens"]) for e in before]
    assert [e["output"] for e in after] == [e["output"] for e in before]
    assert replayed.runs[0].cost == 0 and recorded.runs[0].cost > 0


def test_async_clients_and_the_responses_api_replay_too(provider: ProviderStub) -> None:
    async def agent(prompt: str) -> list[str]:
        client = openai.AsyncOpenAI(base_url=provider.url + "/v1", api_key="sk-test",
                                    max_retries=0)
        plain = await client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": prompt}])
        stream = await client.chat.completions.create(
            model="gpt-4o-mini", stream=True, messages=[{"role": "user", "content": prompt}])
        streamed = "".join([c.choices[0].delta.content or "" async for c in stream
                            if c.choices])
        response = await client.responses.create(model="gpt-4o-mini", input=prompt,
                                                 instructions="Echo.")
        await client.close()
        return [plain.choices[0].message.content or "", streamed, response.output_text]

    recorded = run_experiment(agent, PROMPTS, name="async-record", providers=["openai"])
    made = provider.total
    assert made == 6 and all(r.error is None for r in recorded.runs)
    replayed = run_experiment(agent, PROMPTS, name="async-replay", providers=["openai"],
                              replay=recorded.experiment_id)
    assert provider.total == made
    assert [r.output for r in replayed.runs] == [r.output for r in recorded.runs]


def test_anthropic_messages_plain_and_streamed_replay(provider: ProviderStub,
                                                      store: Store) -> None:
    client = _anthropic(provider)

    def agent(prompt: str) -> list[str]:
        plain = client.messages.create(model="claude-3-5-haiku-latest", max_tokens=64,
                                       system="Echo.",
                                       messages=[{"role": "user", "content": prompt}])
        raw = client.messages.create(model="claude-3-5-haiku-latest", max_tokens=64,
                                     stream=True,
                                     messages=[{"role": "user", "content": prompt + "?"}])
        streamed = "".join(e.delta.text for e in raw if e.type == "content_block_delta")
        with client.messages.stream(model="claude-3-5-haiku-latest", max_tokens=64,
                                    messages=[{"role": "user", "content": prompt + "!"}]) as s:
            helper = s.get_final_text()
        return [plain.content[0].text, plain.stop_reason or "", streamed, helper]

    recorded = run_experiment(agent, PROMPTS, name="claude", providers=["anthropic"])
    assert all(r.error is None for r in recorded.runs), [r.error for r in recorded.runs]
    made = provider.total
    assert made == 6
    replayed = run_experiment(agent, PROMPTS, name="claude-replay", providers=["anthropic"],
                              replay=recorded.experiment_id)
    assert provider.total == made
    assert [r.output for r in replayed.runs] == [r.output for r in recorded.runs]
    events = _llm_events(store, replayed.runs[1].session_id)
    assert len(events) == 3 and all(e["replayed_from"] for e in events)
    assert events[0]["input"][0] == {"role": "system", "content": "Echo."}


def test_the_nth_identical_request_gets_the_nth_recorded_answer_of_the_same_repeat(
        provider: ProviderStub) -> None:
    client = _openai(provider)

    def agent(prompt: str) -> list[str]:
        return [client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": prompt}],
        ).choices[0].message.content or "" for _ in range(2)]

    recorded = run_experiment(agent, PROMPTS[:1], name="twice", repeats=2, max_concurrency=1,
                              providers=["openai"])
    assert [r.output for r in recorded.runs] == [["echo: hello #1", "echo: hello #2"],
                                                 ["echo: hello #3", "echo: hello #4"]]
    made = provider.total
    replayed = run_experiment(agent, PROMPTS[:1], name="twice-again", repeats=2,
                              providers=["openai"], replay=recorded.experiment_id)
    assert provider.total == made
    assert [r.output for r in replayed.runs] == [r.output for r in recorded.runs]


def test_strict_replay_raises_for_a_call_never_recorded_and_makes_no_request(
        provider: ProviderStub) -> None:
    client = _openai(provider)
    caught: list[str] = []

    def agent(prompt: str) -> str:
        return client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": prompt}],
        ).choices[0].message.content or ""

    def careful(prompt: str) -> str:
        try:
            return agent(prompt)
        except ReplayMissError as exc:  # the library passed it on as it is
            caught.append(str(exc))
            return "missed"

    recorded = run_experiment(agent, PROMPTS, name="base", providers=["openai"])
    made = provider.total
    changed = [PROMPTS[0], Case("hola", name="hola")]
    replayed = run_experiment(agent, changed, name="strict", providers=["openai"],
                              replay=recorded.experiment_id)
    assert provider.total == made
    by_case = {r.case_id: r for r in replayed.runs}
    assert by_case["hello"].error is None
    assert by_case["hola"].error.startswith("ReplayMissError: replay: experiment ")
    assert "recorded no openai call to 'gpt-4o-mini'" in by_case["hola"].error
    assert (replayed.replayed, replayed.replay_misses) == (1, 1)
    run_experiment(careful, changed, name="careful", providers=["openai"],
                   replay=recorded.experiment_id)
    assert len(caught) == 1 and "case 'hola'" in caught[0]
    assert provider.total == made


def test_fallback_makes_exactly_one_request_per_miss_and_records_it(
        provider: ProviderStub, store: Store) -> None:
    client = _openai(provider)

    def agent(prompt: str) -> str:
        first = client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": prompt}])
        second = client.chat.completions.create(
            model="gpt-4o-mini", temperature=0.7 if prompt == "bonjour" else 0,
            messages=[{"role": "user", "content": "and " + prompt}])
        return f"{first.choices[0].message.content} / {second.choices[0].message.content}"

    def agent_v2(prompt: str) -> str:
        return agent(prompt)

    recorded = run_experiment(agent, PROMPTS, name="v1", providers=["openai"])
    made = provider.total
    assert made == 4
    cases = [*PROMPTS, Case("ciao", name="ciao")]
    replayed = run_experiment(agent_v2, cases, name="v2", providers=["openai"],
                              replay=recorded.experiment_id, replay_mode="fallback")
    # Only "ciao"'s two calls were never recorded: exactly two requests.
    assert provider.total == made + 2
    assert (replayed.replayed, replayed.replay_misses) == (4, 2)
    by_case = {r.case_id: r for r in replayed.runs}
    assert by_case["hello"].output == recorded.runs[0].output
    assert by_case["ciao"].output == "echo: ciao #1 / echo: and ciao #1"
    events = _llm_events(store, by_case["ciao"].session_id)
    assert [e["replayed_from"] for e in events] == [None, None]  # made for real, recorded
    assert all(e["cost"] > 0 for e in events)
    # A changed parameter (temperature) is another request: a miss.
    changed = run_experiment(lambda p: agent(p) if p != "hello" else "skip",
                             [Case("bonjour", name="bonjour")], name="v3",
                             providers=["openai"], replay=recorded.experiment_id,
                             replay_mode="fallback")
    assert (changed.replayed, changed.replay_misses) == (2, 0)


def test_replay_matches_what_the_masking_function_recorded(provider: ProviderStub) -> None:
    client = _openai(provider)

    def mask(text: str) -> str:
        return text.replace("secret-42", "<id>")

    def agent(prompt: str) -> str:
        return client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": prompt + " secret-42"}],
        ).choices[0].message.content or ""

    recorded = run_experiment(agent, PROMPTS, name="masked", providers=["openai"],
                              masking_function=mask)
    made = provider.total
    replayed = run_experiment(agent, PROMPTS, name="masked-replay", providers=["openai"],
                              masking_function=mask, replay=recorded.experiment_id)
    assert provider.total == made and replayed.replay_misses == 0
    assert replayed.runs[0].output == "echo: hello <id> #1"  # what was stored, masked


def test_replay_in_another_process_reads_the_recording_from_the_store(
        provider: ProviderStub, support_env: dict[str, str], tmp_path: Path,
        lucidic_home: Path) -> None:
    from helpers import run_python

    code = """
        import json, sys, openai
        from lucidic.evals import Case, run_experiment
        client = openai.OpenAI(max_retries=0)
        def agent(prompt):
            return client.chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": prompt}],
            ).choices[0].message.content
        replay = sys.argv[1] if len(sys.argv) > 1 else None
        result = run_experiment(agent, [Case("hi", name="hi")], name="child",
                                providers=["openai"], replay=replay)
        print(json.dumps({"id": result.experiment_id, "output": result.runs[0].output,
                          "error": result.runs[0].error}))
    """
    first = json.loads(run_python(code, home=lucidic_home, env=support_env).stdout)
    made = provider.total
    second = json.loads(run_python(code, home=lucidic_home, env=support_env,
                                   args=[first["id"]]).stdout)
    assert provider.total == made == 1
    assert second["output"] == first["output"] == "echo: hi #1" and second["error"] is None


@pytest.mark.parametrize("stream", [False, True])
def test_a_replayed_answer_reads_as_the_provider_would_have_sent_it(
        provider: ProviderStub, stream: bool) -> None:
    """The JSON and the events of a replayed answer parse into the same
    objects the recorded answer did, field for field, with the client's own
    models (nothing hand-built on our side survives a shape mismatch)."""
    client = _openai(provider)

    def agent(prompt: str) -> Any:
        if stream:
            chunks = list(client.chat.completions.create(
                model="gpt-4o-mini", stream=True, stream_options={"include_usage": True},
                messages=[{"role": "user", "content": prompt}]))
            return [c.choices[0].delta.content or "" for c in chunks if c.choices] + [
                chunks[-1].usage.completion_tokens, chunks[-1].model,
                [c.choices[0].finish_reason for c in chunks if c.choices][-1]]
        answer = client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": prompt}])
        usage = answer.usage
        return {**answer.model_dump(include={"object", "model", "choices"}),
                "usage": [usage.prompt_tokens, usage.completion_tokens, usage.total_tokens]}

    recorded = run_experiment(agent, PROMPTS[:1], name="shape", providers=["openai"])
    replayed = run_experiment(agent, PROMPTS[:1], name="shape-replay", providers=["openai"],
                              replay=recorded.experiment_id)
    if stream:
        *pieces, tokens, model, finish = replayed.runs[0].output
        *recorded_pieces, recorded_tokens, recorded_model, recorded_finish = \
            recorded.runs[0].output
        assert "".join(pieces) == "".join(recorded_pieces)
        assert (tokens, model, finish) == (recorded_tokens, recorded_model, recorded_finish)
    else:
        assert replayed.runs[0].output == recorded.runs[0].output


def test_evaluators_score_replayed_runs_like_recorded_ones(provider: ProviderStub) -> None:
    client = _openai(provider)

    @evaluator
    def mentions(run: Any) -> bool:
        return str(run.input) in str(run.output) and len(run.llm_calls) == 1

    def agent(prompt: str) -> str:
        return client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": prompt}],
        ).choices[0].message.content or ""

    recorded = run_experiment(agent, PROMPTS, name="scored", providers=["openai"],
                              evaluators=[mentions])
    replayed = run_experiment(agent, PROMPTS, name="scored-replay", providers=["openai"],
                              evaluators=[mentions], replay=recorded.experiment_id)
    assert [r.scores for r in replayed.runs] == [r.scores for r in recorded.runs] == [
        {"mentions": True}, {"mentions": True}]


def test_an_unknown_replay_source_is_refused(provider: ProviderStub) -> None:
    with pytest.raises(Exception, match="no such experiment"):
        run_experiment(lambda p: p, PROMPTS, name="x", replay="not-an-experiment")
    assert provider.total == 0
