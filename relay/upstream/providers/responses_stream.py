"""Chat completion chunks → the Responses API's typed stream events.

``ChatToResponsesStream`` takes an OpenAI chat stream (asked with ``include_usage``; an
Anthropic upstream's stream has already been translated to one) and emits what the
Responses API sends: ``response.created``, ``response.in_progress``, per output item
``response.output_item.added`` … ``.done`` with the text, reasoning or function-call
argument deltas between, and ``response.completed`` (or ``response.incomplete``) with
the whole response and its usage. Every event carries its ``sequence_number``.
"""

from __future__ import annotations

import time
from typing import Any

import msgspec

from relay.upstream.providers.anthropic_stream import SseBuffer, sse_event
from relay.upstream.providers.responses_translate import (
    function_item,
    message_item,
    reasoning_item,
    response_envelope,
    responses_usage,
)

__all__ = ["ChatToResponsesStream"]


class _Item:
    """One output item being streamed: its position, kind and what it gathered so far."""

    __slots__ = ("index", "kind", "id", "text", "call")

    def __init__(self, index: int, kind: str, item_id: str, call: dict[str, Any] | None = None):
        self.index = index
        self.kind = kind
        self.id = item_id
        self.text = ""
        self.call = call or {}

    def view(self, status: str) -> dict[str, Any]:
        if self.kind == "message":
            return message_item(self.id, self.text, status)
        if self.kind == "reasoning":
            return reasoning_item(self.id, self.text)
        call = {**self.call, "function": {**self.call.get("function", {}), "arguments": self.text}}
        return function_item(self.id, call, status)


class ChatToResponsesStream:
    def __init__(self, sent: bytes = b"") -> None:
        self._events = SseBuffer()
        self._sequence = 0
        self._started = False
        self._id = ""
        self._model = ""
        self._created = int(time.time())
        self._items: list[_Item] = []
        self._open: _Item | None = None
        self._calls: dict[int, _Item] = {}  # chat tool call index → its item
        self._finish_reason: str | None = None
        self._usage: dict[str, Any] = {}
        self.done = False

    def feed(self, chunk: bytes) -> bytes:
        out: list[bytes] = []
        for event in self._events.feed(chunk):
            if self.done:
                break
            if event.data == b"[DONE]":
                out.extend(self._complete())
                continue
            try:
                payload = msgspec.json.decode(event.data)
            except msgspec.DecodeError:
                continue
            if isinstance(payload, dict):
                out.extend(self._translate(payload))
        return b"".join(out)

    def finish(self) -> bytes:
        """An upstream that ended after its finish_reason but without ``[DONE]``."""
        if self.done or self._finish_reason is None:
            return b""
        return b"".join(self._complete())

    def _event(self, kind: str, fields: dict[str, Any]) -> bytes:
        payload = {"type": kind, "sequence_number": self._sequence, **fields}
        self._sequence += 1
        return sse_event(kind, payload)

    def _response(self, status: str) -> dict[str, Any]:
        output = [] if status == "in_progress" else [item.view("completed") for item in self._items]
        return response_envelope(f"resp_{self._id}", self._model, self._created, status, output)

    def _start(self, payload: dict[str, Any]) -> list[bytes]:
        self._started = True
        self._id = str(payload.get("id") or "")
        self._model = str(payload.get("model") or "")
        response = self._response("in_progress")
        return [
            self._event("response.created", {"response": response}),
            self._event("response.in_progress", {"response": response}),
        ]

    def _translate(self, payload: dict[str, Any]) -> list[bytes]:
        if isinstance(payload.get("error"), dict):
            error = payload["error"]
            return [
                self._event(
                    "error",
                    {"code": error.get("code"), "message": error.get("message", ""), "param": None},
                )
            ]
        out = [] if self._started else self._start(payload)
        if isinstance(payload.get("usage"), dict):
            self._usage = payload["usage"]
        for choice in payload.get("choices") or []:
            delta = choice.get("delta") or {}
            if delta.get("reasoning_content"):
                out.extend(self._text("reasoning", delta["reasoning_content"]))
            if delta.get("content"):
                out.extend(self._text("message", delta["content"]))
            for call in delta.get("tool_calls") or []:
                out.extend(self._tool_call(call))
            if choice.get("finish_reason"):
                self._finish_reason = choice["finish_reason"]
        return out

    def _add(self, kind: str, call: dict[str, Any] | None = None) -> tuple[_Item, list[bytes]]:
        out = self._close_open()
        index = len(self._items)
        prefix = {"message": "msg", "reasoning": "rs", "function_call": "fc"}[kind]
        item = _Item(index, kind, f"{prefix}_{self._id}_{index}", call)
        self._items.append(item)
        self._open = item
        out.append(
            self._event(
                "response.output_item.added",
                {"output_index": index, "item": item.view("in_progress")},
            )
        )
        if kind == "message":
            part = {"type": "output_text", "text": "", "annotations": []}
            out.append(self._event("response.content_part.added", self._part_fields(item, part)))
        return item, out

    def _part_fields(self, item: _Item, part: dict[str, Any]) -> dict[str, Any]:
        return {"item_id": item.id, "output_index": item.index, "content_index": 0, "part": part}

    def _text(self, kind: str, text: str) -> list[bytes]:
        out: list[bytes] = []
        item = self._open
        if item is None or item.kind != kind:
            item, out = self._add(kind)
        item.text += text
        fields = {"item_id": item.id, "output_index": item.index, "content_index": 0, "delta": text}
        if kind == "message":
            out.append(self._event("response.output_text.delta", {**fields, "logprobs": []}))
        else:
            out.append(self._event("response.reasoning_text.delta", fields))
        return out

    def _tool_call(self, call: dict[str, Any]) -> list[bytes]:
        position = int(call.get("index", 0))
        out: list[bytes] = []
        item = self._calls.get(position)
        if item is None:
            item, out = self._add("function_call", call)
            self._calls[position] = item
        arguments = (call.get("function") or {}).get("arguments")
        if arguments:
            item.text += arguments
            fields = {"item_id": item.id, "output_index": item.index, "delta": arguments}
            out.append(self._event("response.function_call_arguments.delta", fields))
        return out

    def _close_open(self) -> list[bytes]:
        item, self._open = self._open, None
        if item is None:
            return []
        out: list[bytes] = []
        if item.kind == "message":
            fields = {"item_id": item.id, "output_index": item.index, "content_index": 0}
            out.append(
                self._event(
                    "response.output_text.done", {**fields, "text": item.text, "logprobs": []}
                )
            )
            part = {"type": "output_text", "text": item.text, "annotations": []}
            out.append(self._event("response.content_part.done", self._part_fields(item, part)))
        elif item.kind == "reasoning":
            fields = {"item_id": item.id, "output_index": item.index, "content_index": 0}
            out.append(self._event("response.reasoning_text.done", {**fields, "text": item.text}))
        else:
            fields = {
                "item_id": item.id,
                "output_index": item.index,
                "name": item.call.get("function", {}).get("name", ""),
                "arguments": item.text,
            }
            out.append(self._event("response.function_call_arguments.done", fields))
        done = {"output_index": item.index, "item": item.view("completed")}
        out.append(self._event("response.output_item.done", done))
        return out

    def _complete(self) -> list[bytes]:
        self.done = True
        out = [] if self._started else self._start({})
        out.extend(self._close_open())
        status = "incomplete" if self._finish_reason == "length" else "completed"
        response = self._response(status)
        response["usage"] = responses_usage(self._usage)
        out.append(self._event(f"response.{status}", {"response": response}))
        return out
