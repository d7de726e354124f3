"""LLM inputs and outputs as a conversation: messages of a role, each a list
of parts (text, tool call, tool result, thinking, image, or raw JSON).

Recorded messages come in each provider's own shape (OpenAI chat and
Responses items, Anthropic content blocks, the normalised output the
provider plugins record); whatever is not recognised is shown as JSON, so
nothing recorded is hidden.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from ..store import SCREENSHOT_PATH

_IMAGE_DATA = re.compile(r"^data:image/(png|jpeg|jpg|gif|webp);base64,([A-Za-z0-9+/=\s]+)$")
_BASE64 = re.compile(r"^[A-Za-z0-9+/=\s]+$")
#: A screenshot the server keeps: its path and a URL-safe object key.
_STORED_SCREENSHOT = re.compile("^" + re.escape(SCREENSHOT_PATH) + r"[A-Za-z0-9_-]{16,128}$")
_IMAGE_MAGIC = {"iVBOR": "png", "/9j/": "jpeg", "R0lGOD": "gif", "UklGR": "webp"}


@dataclass
class Part:
    kind: str                  # text, tool_call, tool_result, thinking, image, json
    text: str = ""
    name: str | None = None    # a tool's name, a tool result's call id
    data: Any = None           # pretty JSON for tool arguments and raw parts


@dataclass
class Message:
    role: str
    parts: list[Part] = field(default_factory=list)
    note: str | None = None    # finish reason, refusal flag and the like


def image_src(value: Any) -> str | None:
    """A ``data:`` URL for an image recorded as base64 (bare or as a data URL),
    built only from base64 characters; the path of a screenshot the server
    keeps (served by it, same origin, to the signed-in viewer); None for
    anything else."""
    if not isinstance(value, str) or len(value) < 8:
        return None
    value = value.strip()
    if _STORED_SCREENSHOT.match(value):
        return str(value)
    match = _IMAGE_DATA.match(value)
    if match:
        kind, payload = match.group(1), match.group(2)
        return f"data:image/{'jpeg' if kind == 'jpg' else kind};base64,{''.join(payload.split())}"
    if _BASE64.match(value):
        for magic, kind in _IMAGE_MAGIC.items():
            if value.startswith(magic):
                return f"data:image/{kind};base64,{''.join(value.split())}"
    return None


def pretty(value: Any) -> str:
    """A value as readable text: JSON strings parsed and indented."""
    if isinstance(value, str):
        stripped = value.strip()
        if stripped[:1] in ("{", "[") and len(stripped) < 2_000_000:
            try:
                return json.dumps(json.loads(stripped), indent=2, ensure_ascii=False)
            except ValueError:
                return value
        return value
    return json.dumps(value, indent=2, ensure_ascii=False, default=str)


def _text(value: Any) -> str:
    return value if isinstance(value, str) else pretty(value)


def _content_parts(content: Any) -> list[Part]:
    if content is None:
        return []
    if isinstance(content, str):
        return [Part("text", content)] if content else []
    if isinstance(content, dict):
        content = [content]
    if not isinstance(content, list):
        return [Part("json", pretty(content))]
    parts: list[Part] = []
    for block in content:
        parts.extend(_block(block))
    return parts


def _block(block: Any) -> list[Part]:
    if isinstance(block, str):
        return [Part("text", block)]
    if not isinstance(block, dict):
        return [Part("json", pretty(block))]
    kind = block.get("type")
    if kind in ("text", "input_text", "output_text") and isinstance(block.get("text"), str):
        return [Part("text", block["text"])]
    if kind in ("thinking", "reasoning", "redacted_thinking"):
        text = block.get("thinking") or block.get("text") or _summary(block.get("summary"))
        return [Part("thinking", _text(text) if text else "[redacted thinking]")]
    if kind in ("tool_use", "function_call", "server_tool_use"):
        return [Part("tool_call", name=block.get("name"),
                     text=pretty(block.get("input", block.get("arguments"))))]
    if kind in ("tool_result", "function_call_output"):
        inner = block.get("content", block.get("output"))
        nested = _content_parts(inner) if isinstance(inner, list) else []
        text = "\n".join(p.text for p in nested if p.kind == "text") if nested else _text(inner)
        return [Part("tool_result", name=block.get("tool_use_id") or block.get("call_id"),
                     text=text or "")]
    if kind in ("image", "image_url", "input_image"):
        src = _image_of(block)
        return [Part("image", text=src)] if src else [Part("json", pretty(block))]
    if kind == "message":
        return _content_parts(block.get("content"))
    return [Part("json", pretty(block))]


def _summary(summary: Any) -> str:
    if isinstance(summary, list):
        return "\n".join(s.get("text", "") for s in summary if isinstance(s, dict))
    return ""


def _image_of(block: dict[str, Any]) -> str | None:
    url = block.get("image_url")
    if isinstance(url, dict):
        url = url.get("url")
    if isinstance(url, str):
        return image_src(url)
    source = block.get("source")
    if isinstance(source, dict) and source.get("type") == "base64":
        return image_src(f"data:{source.get('media_type', 'image/png')};base64,"
                         f"{source.get('data', '')}")
    return None


def _tool_calls(calls: Any) -> list[Part]:
    parts = []
    for call in calls if isinstance(calls, list) else []:
        if not isinstance(call, dict):
            parts.append(Part("json", pretty(call)))
            continue
        inner = call.get("function")
        function: dict[str, Any] = inner if isinstance(inner, dict) else call
        parts.append(Part("tool_call", name=function.get("name") or call.get("type"),
                          text=pretty(function.get("arguments", function.get("input", "")))))
    return parts


def _message(item: Any, default_role: str) -> Message:
    if isinstance(item, str):
        return Message(default_role, [Part("text", item)])
    if not isinstance(item, dict):
        return Message(default_role, [Part("json", pretty(item))])
    kind = item.get("type")
    if "role" not in item and kind in ("function_call", "function_call_output", "reasoning"):
        role = {"function_call": "assistant", "function_call_output": "tool",
                "reasoning": "assistant"}[kind]
        return Message(role, _block(item))
    role = str(item.get("role") or default_role)
    parts: list[Part] = []
    for key in ("thinking", "reasoning"):
        if isinstance(item.get(key), str) and item[key]:
            parts.append(Part("thinking", item[key]))
    parts.extend(_content_parts(item.get("content")))
    if isinstance(item.get("refusal"), str) and item["refusal"]:
        parts.append(Part("text", item["refusal"], name="refusal"))
    parts.extend(_tool_calls(item.get("tool_calls")))
    if role == "tool" and item.get("tool_call_id"):
        parts = [Part("tool_result", name=item["tool_call_id"],
                      text="\n".join(p.text for p in parts))]
    known = {"role", "content", "thinking", "reasoning", "refusal", "tool_calls",
             "tool_call_id", "finish_reason", "name", "type", "id", "status"}
    rest = {k: v for k, v in item.items() if k not in known}
    if rest:
        parts.append(Part("json", pretty(rest)))
    note = item.get("finish_reason")
    return Message(role, parts, note=f"finish reason: {note}" if note else None)


def conversation(value: Any, default_role: str = "user") -> list[Message]:
    """Recorded LLM input or output as messages, in order."""
    if value is None:
        return []
    if isinstance(value, list):
        return [_message(item, default_role) for item in value]
    return [_message(value, default_role)]
