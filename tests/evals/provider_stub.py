"""A loopback stand-in for the OpenAI and Anthropic APIs that counts the
requests it answers: what replay must not reach. It answers a prompt with
"echo: <the last user message> #n", n counting how often it was asked that
(a tool call when tools are offered), plain or streamed, as the real APIs
shape their bodies and events."""

from __future__ import annotations

import http.server
import json
import threading
from collections import Counter
from typing import Any


def _answer(stub: ProviderStub, prompt: str) -> str:
    with stub.lock:
        stub.asked[prompt] += 1
        return f"echo: {prompt} #{stub.asked[prompt]}"


def _last_text(messages: list[Any]) -> str:
    for message in reversed(messages):
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, str):
            return content
        if isinstance(content, list):
            return " ".join(p.get("text", "") for p in content if isinstance(p, dict))
    return ""


class _Handler(http.server.BaseHTTPRequestHandler):
    stub: ProviderStub

    def log_message(self, *args: Any) -> None:
        pass

    def do_POST(self) -> None:  # noqa: N802 - the http.server hook's name
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        path = self.path.split("?")[0]
        with self.stub.lock:
            self.stub.requests[path] += 1
            self.stub.bodies.append((path, body))
        if path.endswith("/chat/completions"):
            self._chat(body)
        elif path.endswith("/responses"):
            self._responses(body)
        elif path.endswith("/messages"):
            self._messages(body)
        else:
            self._send(404, {"error": {"message": f"no {path}"}})

    def _send(self, status: int, body: Any) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _stream(self, events: list[str]) -> None:
        data = "".join(events).encode()
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _chat(self, body: dict[str, Any]) -> None:
        model = body["model"] + "-2024-07-18"
        text = _answer(self.stub, _last_text(body["messages"]))
        if "impartial evaluator" in str(body["messages"][0].get("content")):
            # lucidic.evals.llm_judge asking: a verdict (low when the output is "bad")
            verdict = 0.1 if "Output:\nbad" in _last_text(body["messages"]) else 0.9
            text = json.dumps({"score": verdict, "reason": f"judged {verdict}"})
        usage = {"prompt_tokens": 11, "completion_tokens": len(text.split()),
                 "total_tokens": 11 + len(text.split())}
        tools = body.get("tools")
        call = None
        if tools:
            call = {"id": "call_1", "type": "function", "function": {
                "name": tools[0]["function"]["name"],
                "arguments": json.dumps({"q": _last_text(body["messages"])})}}
        if body.get("stream"):
            head = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1,
                    "model": model}
            chunks = [{**head, "choices": [{"index": 0, "delta": {"role": "assistant",
                                                                  "content": ""},
                                            "finish_reason": None}]}]
            if call:
                chunks.append({**head, "choices": [{"index": 0, "finish_reason": None,
                                                    "delta": {"tool_calls": [{"index": 0,
                                                                              **call}]}}]})
            else:
                for word in text.split(" "):
                    chunks.append({**head, "choices": [{"index": 0, "finish_reason": None,
                                                        "delta": {"content": word + " "}}]})
            chunks.append({**head, "choices": [{"index": 0, "delta": {},
                                                "finish_reason": "tool_calls" if call
                                                else "stop"}]})
            if (body.get("stream_options") or {}).get("include_usage"):
                chunks.append({**head, "choices": [], "usage": usage})
            self._stream([f"data: {json.dumps(c)}\n\n" for c in chunks] + ["data: [DONE]\n\n"])
            return
        message: dict[str, Any] = {"role": "assistant", "content": None if call else text}
        if call:
            message["tool_calls"] = [call]
        self._send(200, {"id": "chatcmpl-1", "object": "chat.completion", "created": 1,
                         "model": model, "usage": usage, "choices": [{
                             "index": 0, "message": message, "logprobs": None,
                             "finish_reason": "tool_calls" if call else "stop"}]})

    def _responses(self, body: dict[str, Any]) -> None:
        prompt = body["input"] if isinstance(body["input"], str) else _last_text(body["input"])
        text = _answer(self.stub, prompt)
        self._send(200, {
            "id": "resp_1", "object": "response", "created_at": 1, "model": body["model"],
            "status": "completed", "error": None, "incomplete_details": None,
            "instructions": None, "metadata": {}, "parallel_tool_calls": True,
            "temperature": None, "top_p": None, "tool_choice": "auto", "tools": [],
            "output": [{"type": "message", "id": "msg_1", "role": "assistant",
                        "status": "completed", "content": [
                            {"type": "output_text", "text": text, "annotations": []}]}],
            "usage": {"input_tokens": 9, "output_tokens": 4, "total_tokens": 13,
                      "input_tokens_details": {"cached_tokens": 0},
                      "output_tokens_details": {"reasoning_tokens": 0}}})

    def _messages(self, body: dict[str, Any]) -> None:
        model = body["model"]
        text = _answer(self.stub, _last_text(body["messages"]))
        if "impartial evaluator" in str(body.get("system")):
            verdict = 0.1 if "Output:\nbad" in _last_text(body["messages"]) else 0.9
            text = json.dumps({"score": verdict, "reason": f"judged {verdict}"})
        usage = {"input_tokens": 12, "output_tokens": len(text.split()),
                 "cache_read_input_tokens": 0, "cache_creation_input_tokens": 0}
        if body.get("stream"):
            def sse(kind: str, **fields: Any) -> str:
                return f"event: {kind}\ndata: {json.dumps({'type': kind, **fields})}\n\n"
            events = [sse("message_start", message={
                "id": "msg_1", "type": "message", "role": "assistant", "model": model,
                "content": [], "stop_reason": None, "stop_sequence": None,
                "usage": {**usage, "output_tokens": 1}}),
                sse("content_block_start", index=0, content_block={"type": "text", "text": ""})]
            events += [sse("content_block_delta", index=0,
                           delta={"type": "text_delta", "text": word + " "})
                       for word in text.split(" ")]
            events += [sse("content_block_stop", index=0),
                       sse("message_delta", delta={"stop_reason": "end_turn",
                                                   "stop_sequence": None},
                           usage={"output_tokens": usage["output_tokens"]}),
                       sse("message_stop")]
            self._stream(events)
            return
        self._send(200, {"id": "msg_1", "type": "message", "role": "assistant", "model": model,
                         "content": [{"type": "text", "text": text}],
                         "stop_reason": "end_turn", "stop_sequence": None, "usage": usage})


class ProviderStub:
    """The stub server, on a free loopback port, in a thread of this process."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.requests: Counter[str] = Counter()
        self.asked: Counter[str] = Counter()
        self.bodies: list[tuple[str, Any]] = []
        handler = type("Handler", (_Handler,), {"stub": self})
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        # (its loop looks for shutdown() every 0.05 s: the default 0.5 s made
        # each close() wait that long)
        self.thread = threading.Thread(target=self.server.serve_forever,
                                       kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_port}"

    @property
    def total(self) -> int:
        with self.lock:
            return sum(self.requests.values())

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
