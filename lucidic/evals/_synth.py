"""Provider answers rebuilt from a recorded LLM event, as the provider's API
would have sent them: a JSON body, or the server-sent events of a stream.

A recorded event holds the answer as Lucidic records it (the assistant's
text, tool calls and thinking, the finish reason, token counts), which is
what the client libraries read back out of a response; everything else in
the bodies below is what the APIs always send, so the libraries parse them
as they parse the real thing.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

#: Streamed text is cut into pieces this long (a stream of one piece would
#: hide bugs in code that joins them).
_PIECE = 24


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _messages(output: Any) -> list[dict[str, Any]]:
    """The recorded output as a list of assistant messages (one per choice)."""
    if isinstance(output, list):
        return [m if isinstance(m, dict) else {"content": str(m)} for m in output] or [{}]
    if isinstance(output, dict):
        return [output]
    if isinstance(output, str):
        return [{"content": output}]
    return [{}]


def _pieces(text: str) -> Iterator[str]:
    for start in range(0, len(text), _PIECE):
        yield text[start:start + _PIECE]


def _arguments_text(arguments: Any) -> str:
    return arguments if isinstance(arguments, str) else _json(arguments if arguments is not None
                                                              else {})


def _tokens(event: dict[str, Any], name: str) -> int:
    value = event.get(name)
    return int(value) if isinstance(value, (int, float)) else 0


# -- OpenAI chat completions -------------------------------------------------------------

def _chat_usage(event: dict[str, Any]) -> dict[str, Any]:
    prompt, completion = _tokens(event, "input_tokens"), _tokens(event, "output_tokens")
    return {"prompt_tokens": prompt, "completion_tokens": completion,
            "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": _tokens(event, "cached_tokens")},
            "completion_tokens_details": {"reasoning_tokens": _tokens(event, "reasoning_tokens")}}


def _finish(message: dict[str, Any]) -> str:
    reason = message.get("finish_reason")
    if isinstance(reason, str) and reason:
        return reason
    return "tool_calls" if message.get("tool_calls") else "stop"


def _chat_tool_calls(message: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"id": call.get("id") or f"call_replay_{i}", "type": "function",
             "function": {"name": call.get("name") or "", "arguments":
                          _arguments_text(call.get("arguments"))}}
            for i, call in enumerate(message.get("tool_calls") or ())]


def openai_chat(event: dict[str, Any], model: str, replay_id: str) -> dict[str, Any]:
    choices = []
    for index, message in enumerate(_messages(event.get("output"))):
        body: dict[str, Any] = {"role": "assistant", "content": message.get("content"),
                                "refusal": message.get("refusal")}
        calls = _chat_tool_calls(message)
        if calls:
            body["tool_calls"] = calls
        choices.append({"index": index, "message": body, "finish_reason": _finish(message),
                        "logprobs": None})
    return {"id": f"chatcmpl-{replay_id}", "object": "chat.completion", "created": int(time.time()),
            "model": model, "choices": choices, "usage": _chat_usage(event)}


def openai_chat_stream(event: dict[str, Any], model: str, replay_id: str,
                       include_usage: bool) -> Iterator[bytes]:
    head = {"id": f"chatcmpl-{replay_id}", "object": "chat.completion.chunk",
            "created": int(time.time()), "model": model}

    def chunk(choices: list[dict[str, Any]], **extra: Any) -> bytes:
        return f"data: {_json({**head, 'choices': choices, **extra})}\n\n".encode()

    for index, message in enumerate(_messages(event.get("output"))):
        yield chunk([{"index": index, "delta": {"role": "assistant", "content": ""},
                      "finish_reason": None}])
        for piece in _pieces(message.get("content") or ""):
            yield chunk([{"index": index, "delta": {"content": piece}, "finish_reason": None}])
        for piece in _pieces(message.get("refusal") or ""):
            yield chunk([{"index": index, "delta": {"refusal": piece}, "finish_reason": None}])
        for position, call in enumerate(_chat_tool_calls(message)):
            yield chunk([{"index": index, "finish_reason": None, "delta": {"tool_calls": [
                {"index": position, **call}]}}])
        yield chunk([{"index": index, "delta": {}, "finish_reason": _finish(message)}])
    if include_usage:
        yield chunk([], usage=_chat_usage(event))
    yield b"data: [DONE]\n\n"


# -- OpenAI Responses API -----------------------------------------------------------------

def _response_items(event: dict[str, Any], replay_id: str) -> list[dict[str, Any]]:
    message = _messages(event.get("output"))[0]
    items: list[dict[str, Any]] = []
    if message.get("reasoning"):
        items.append({"type": "reasoning", "id": f"rs_{replay_id}", "summary": [
            {"type": "summary_text", "text": message["reasoning"]}]})
    if message.get("content") or not message.get("tool_calls"):
        items.append({"type": "message", "id": f"msg_{replay_id}", "role": "assistant",
                      "status": "completed", "content": [
                          {"type": "output_text", "text": message.get("content") or "",
                           "annotations": []}]})
    for i, call in enumerate(message.get("tool_calls") or ()):
        items.append({"type": "function_call", "id": f"fc_{replay_id}_{i}",
                      "call_id": call.get("id") or f"call_replay_{i}",
                      "name": call.get("name") or "",
                      "arguments": _arguments_text(call.get("arguments")),
                      "status": "completed"})
    return items


def openai_response(event: dict[str, Any], model: str, replay_id: str,
                    *, status: str = "completed", items: list[dict[str, Any]] | None = None
                    ) -> dict[str, Any]:
    inputs, outputs = _tokens(event, "input_tokens"), _tokens(event, "output_tokens")
    return {
        "id": f"resp_{replay_id}", "object": "response", "created_at": int(time.time()),
        "model": model, "status": status,
        "output": _response_items(event, replay_id) if items is None else items,
        "usage": {"input_tokens": inputs, "output_tokens": outputs,
                  "total_tokens": inputs + outputs,
                  "input_tokens_details": {"cached_tokens": _tokens(event, "cached_tokens")},
                  "output_tokens_details": {
                      "reasoning_tokens": _tokens(event, "reasoning_tokens")}},
        "error": None, "incomplete_details": None, "instructions": None, "metadata": {},
        "parallel_tool_calls": True, "temperature": None, "top_p": None,
        "tool_choice": "auto", "tools": [], "text": {"format": {"type": "text"}},
    }


def openai_response_stream(event: dict[str, Any], model: str, replay_id: str) -> Iterator[bytes]:
    sequence = iter(range(1_000_000))

    def sse(kind: str, **fields: Any) -> bytes:
        data = {"type": kind, "sequence_number": next(sequence), **fields}
        return f"event: {kind}\ndata: {_json(data)}\n\n".encode()

    items = _response_items(event, replay_id)
    for kind in ("response.created", "response.in_progress"):
        yield sse(kind, response=openai_response(event, model, replay_id, status="in_progress",
                                                 items=[]))
    for index, item in enumerate(items):
        if item["type"] == "message":
            text = item["content"][0]["text"]
            yield sse("response.output_item.added", output_index=index,
                      item={**item, "status": "in_progress", "content": []})
            yield sse("response.content_part.added", item_id=item["id"], output_index=index,
                      content_index=0, part={"type": "output_text", "text": "",
                                             "annotations": []})
            for piece in _pieces(text):
                yield sse("response.output_text.delta", item_id=item["id"], output_index=index,
                          content_index=0, delta=piece, logprobs=[])
            yield sse("response.output_text.done", item_id=item["id"], output_index=index,
                      content_index=0, text=text, logprobs=[])
            yield sse("response.content_part.done", item_id=item["id"], output_index=index,
                      content_index=0, part=item["content"][0])
        elif item["type"] == "function_call":
            yield sse("response.output_item.added", output_index=index,
                      item={**item, "status": "in_progress", "arguments": ""})
            yield sse("response.function_call_arguments.delta", item_id=item["id"],
                      output_index=index, delta=item["arguments"])
            yield sse("response.function_call_arguments.done", item_id=item["id"],
                      output_index=index, arguments=item["arguments"])
        else:
            yield sse("response.output_item.added", output_index=index, item=item)
        yield sse("response.output_item.done", output_index=index, item=item)
    yield sse("response.completed", response=openai_response(event, model, replay_id,
                                                             items=items))


# -- Anthropic messages ---------------------------------------------------------------------

def _anthropic_blocks(event: dict[str, Any], replay_id: str) -> list[dict[str, Any]]:
    message = _messages(event.get("output"))[0]
    blocks: list[dict[str, Any]] = []
    if message.get("thinking"):
        blocks.append({"type": "thinking", "thinking": message["thinking"], "signature": ""})
    if message.get("content"):
        blocks.append({"type": "text", "text": message["content"]})
    for i, call in enumerate(message.get("tool_calls") or ()):
        arguments = call.get("arguments")
        if isinstance(arguments, str):
            try:
                arguments = json.loads(arguments)
            except ValueError:
                arguments = {}
        blocks.append({"type": "tool_use", "id": call.get("id") or f"toolu_replay_{i}",
                       "name": call.get("name") or "",
                       "input": arguments if isinstance(arguments, dict) else {}})
    return blocks


def _anthropic_usage(event: dict[str, Any]) -> dict[str, Any]:
    read, written = _tokens(event, "cached_tokens"), _tokens(event, "cache_write_tokens")
    # Lucidic's input_tokens include the cache reads and writes; Anthropic's do not.
    return {"input_tokens": max(0, _tokens(event, "input_tokens") - read - written),
            "output_tokens": _tokens(event, "output_tokens"),
            "cache_read_input_tokens": read, "cache_creation_input_tokens": written}


def _stop_reason(event: dict[str, Any], blocks: list[dict[str, Any]]) -> str:
    reason = _messages(event.get("output"))[0].get("finish_reason")
    if isinstance(reason, str) and reason:
        return reason
    return "tool_use" if any(b["type"] == "tool_use" for b in blocks) else "end_turn"


def anthropic_message(event: dict[str, Any], model: str, replay_id: str) -> dict[str, Any]:
    blocks = _anthropic_blocks(event, replay_id)
    return {"id": f"msg_{replay_id}", "type": "message", "role": "assistant", "model": model,
            "content": blocks, "stop_reason": _stop_reason(event, blocks),
            "stop_sequence": None, "usage": _anthropic_usage(event)}


def anthropic_message_stream(event: dict[str, Any], model: str,
                             replay_id: str) -> Iterator[bytes]:
    def sse(kind: str, **fields: Any) -> bytes:
        return f"event: {kind}\ndata: {_json({'type': kind, **fields})}\n\n".encode()

    blocks = _anthropic_blocks(event, replay_id)
    usage = _anthropic_usage(event)
    yield sse("message_start", message={
        "id": f"msg_{replay_id}", "type": "message", "role": "assistant", "model": model,
        "content": [], "stop_reason": None, "stop_sequence": None,
        "usage": {**usage, "output_tokens": 1}})
    for index, block in enumerate(blocks):
        if block["type"] == "text":
            yield sse("content_block_start", index=index,
                      content_block={"type": "text", "text": ""})
            for piece in _pieces(block["text"]):
                yield sse("content_block_delta", index=index,
                          delta={"type": "text_delta", "text": piece})
        elif block["type"] == "thinking":
            yield sse("content_block_start", index=index,
                      content_block={"type": "thinking", "thinking": "", "signature": ""})
            for piece in _pieces(block["thinking"]):
                yield sse("content_block_delta", index=index,
                          delta={"type": "thinking_delta", "thinking": piece})
        else:
            yield sse("content_block_start", index=index,
                      content_block={**block, "input": {}})
            yield sse("content_block_delta", index=index,
                      delta={"type": "input_json_delta", "partial_json": _json(block["input"])})
        yield sse("content_block_stop", index=index)
    yield sse("message_delta", delta={"stop_reason": _stop_reason(event, blocks),
                                      "stop_sequence": None},
              usage={"output_tokens": usage["output_tokens"]})
    yield sse("message_stop")
