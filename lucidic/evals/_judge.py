"""An evaluator that asks a model.

The judge's own LLM call is recorded in a session of its own (tagged
``evaluator``), and the score it gives names that session, so a run's score
leads to the exact prompt and answer that produced it, and back.
"""

from __future__ import annotations

import inspect
import json
import re
from typing import Any

from .._records import to_jsonable
from .._scores import Score
from ..errors import InvalidOperationError
from ._evaluators import Evaluator, Run

PROVIDERS = ("openai", "anthropic")

_SYSTEM = (
    "You are an impartial evaluator of an AI agent's work. You are given a rubric, the "
    "input the agent received, the expected answer when there is one, and the agent's "
    "output. Judge the output against the rubric only. Answer with one JSON object and "
    'nothing else: {"score": <a number from 0 to 1>, "reason": "<one or two sentences>"}.'
)
_JSON_OBJECT = re.compile(r"\{.*\}", re.DOTALL)


def llm_judge(rubric_text: str, *, model: str, provider: str = "openai",
              name: str | None = None, threshold: float | None = None,
              client: Any = None) -> Evaluator:
    """An evaluator that asks ``model`` (of ``provider``: openai or anthropic)
    to score a run's output against ``rubric_text`` from 0 to 1, with a
    reason. ``client`` is the provider's client to use (default: a new one
    configured from the environment, as the provider's library does)."""
    if not isinstance(rubric_text, str) or not rubric_text.strip():
        raise InvalidOperationError("llm_judge needs the rubric as non-empty text")
    if not isinstance(model, str) or not model:
        raise InvalidOperationError("llm_judge needs model=, the name of the model to ask")
    if provider not in PROVIDERS:
        raise InvalidOperationError(f"llm_judge's provider must be one of {PROVIDERS}, not "
                                    f"{provider!r}")
    judge_name = name or "llm_judge"

    def judge(run: Run) -> Score:
        return _judge(run, judge_name, rubric_text, model, provider, client)

    return Evaluator(judge, name=judge_name, threshold=threshold,
                     description={"judge": {"rubric": rubric_text, "model": model,
                                            "provider": provider}})


def judge_messages(rubric_text: str, run: Run) -> list[dict[str, str]]:
    parts = [f"Rubric:\n{rubric_text}", f"Input:\n{_shown(run.input)}"]
    if run.expected is not None:
        parts.append(f"Expected:\n{_shown(run.expected)}")
    if run.error is not None:
        parts.append(f"The agent failed with: {run.error}")
    parts.append(f"Output:\n{_shown(run.output)}")
    return [{"role": "system", "content": _SYSTEM},
            {"role": "user", "content": "\n\n".join(parts)}]


def _shown(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(to_jsonable(value), ensure_ascii=False, sort_keys=True)


def _judge(run: Run, name: str, rubric_text: str, model: str, provider: str,
           client: Any) -> Score:
    from .. import _api
    from ..plugins import start_llm_call, suppress_llm_calls

    messages = judge_messages(rubric_text, run)
    with _api.session(f"judge {name} of {run.session_id}", tags=["evaluator"],
                      task=f"evaluate session {run.session_id}") as judge_session:
        # Recorded here, once, whether or not the provider's plugin is active.
        call = start_llm_call(provider, request_model=model, input=messages,
                              description=f"judge {name}")
        with suppress_llm_calls("lucidic.evals.llm_judge"):
            try:
                create, arguments = _endpoint(provider, client)
                if call is not None:
                    call.annotate(arguments=arguments)
                text, fields = _ask(provider, create, model, messages, arguments)
            except BaseException as exc:
                if call is not None:
                    call.fail(exc)
                raise
        if call is not None:
            call.finish(output={"role": "assistant", "content": text}, **fields)
        value, reason = parse_verdict(text)
    return Score(name, value, reason, evaluator_session_id=judge_session)


def _endpoint(provider: str, client: Any) -> tuple[Any, dict[str, Any]]:
    """The provider's create call (on ``client``, or a client made from the
    environment), and the arguments the judge passes it beside the model and
    the messages: recorded on the judge's event, as a plugin records a call's."""
    if provider == "anthropic":
        if client is None:
            import anthropic

            client = anthropic.Anthropic()
        create = client.messages.create
        return create, {"max_tokens": 512, **_steady(create)}
    if client is None:
        import openai

        client = openai.OpenAI()
    create = client.chat.completions.create
    return create, _steady(create)


def _ask(provider: str, create: Any, model: str, messages: list[dict[str, str]],
         arguments: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    if provider == "anthropic":
        message = create(model=model, system=messages[0]["content"], messages=messages[1:],
                         **arguments)
        text = "".join(getattr(b, "text", "") for b in message.content or ())
        usage = message.usage
        return text, {"model": message.model, "input_tokens": usage.input_tokens,
                      "output_tokens": usage.output_tokens}
    completion = create(model=model, messages=messages, **arguments)
    text = completion.choices[0].message.content or ""
    usage = completion.usage
    return text, {"model": completion.model,
                  "input_tokens": getattr(usage, "prompt_tokens", None),
                  "output_tokens": getattr(usage, "completion_tokens", None)}


def _steady(create: Any) -> dict[str, Any]:
    """temperature=0 where the client still takes it (newer Anthropic clients
    do not: their models choose)."""
    try:
        accepted = inspect.signature(create).parameters
    except (TypeError, ValueError):
        return {}
    return {"temperature": 0} if "temperature" in accepted or any(
        p.kind is inspect.Parameter.VAR_KEYWORD for p in accepted.values()) else {}


def parse_verdict(text: str) -> tuple[float, str | None]:
    """The score and reason in a judge's answer; InvalidOperationError (with
    the answer) when it holds no score from 0 to 1."""
    match = _JSON_OBJECT.search(text or "")
    verdict: Any = None
    if match:
        try:
            verdict = json.loads(match.group(0))
        except ValueError:
            verdict = None
    if not isinstance(verdict, dict):
        raise InvalidOperationError(f"the judge's answer holds no JSON verdict: {text[:300]!r}")
    score = verdict.get("score")
    if isinstance(score, bool) or not isinstance(score, (int, float)) or not 0 <= score <= 1:
        raise InvalidOperationError(f"the judge's score must be a number from 0 to 1: "
                                    f"{text[:300]!r}")
    reason = verdict.get("reason")
    return float(score), reason if isinstance(reason, str) else None
