"""OpenAI Responses API ↔ chat completions: the request, and a whole answer back.

For upstreams that do not speak the Responses API (Anthropic, most OpenAI-compatible
hosts, the mock), relay translates a ``/v1/responses`` request to a chat completions
request, which the provider then sends as is or translates further (to Anthropic
Messages). Translation is faithful or refuses: a feature chat completions cannot carry
(a hosted tool such as ``web_search``, ``previous_response_id`` that only a provider
storing responses can resolve) is a 400 naming it, never silently dropped. Streams:
``relay.upstream.providers.responses_stream``.
"""

from __future__ import annotations

import time
from typing import Any

from relay.errors import InvalidRequest
from relay.upstream.providers.anthropic_answers import text_of

__all__ = ["chat_answer_to_response", "responses_request_to_chat", "responses_usage"]

_COPIED = ("temperature", "top_p", "parallel_tool_calls", "user", "top_logprobs")


def _refuse(feature: str, why: str = "") -> InvalidRequest:
    detail = f" ({why})" if why else ""
    return InvalidRequest(
        f"{feature} cannot be translated for this model's upstream{detail}", param=feature
    )


def _chat_part(part: Any) -> dict[str, Any]:
    kind = part.get("type") if isinstance(part, dict) else None
    if kind in ("input_text", "output_text", "text"):
        return {"type": "text", "text": part.get("text", "")}
    if kind == "input_image":
        url = part.get("image_url")
        if not url:
            raise _refuse("input_image.file_id", "send the image as image_url")
        image: dict[str, Any] = {"url": url}
        if part.get("detail"):
            image["detail"] = part["detail"]
        return {"type": "image_url", "image_url": image}
    if kind == "input_file":
        # A file_url travels as OpenRouter-style file_data (a URL document for Claude).
        data = part.get("file_data") or part.get("file_url")
        if not data:
            raise _refuse("input_file.file_id", "send the file inline as file_data")
        file = {"file_data": data, "filename": part.get("filename") or "file"}
        return {"type": "file", "file": file}
    raise _refuse(f"input content {kind!r}")


def _content(content: Any) -> Any:
    if isinstance(content, str):
        return content
    parts = [_chat_part(part) for part in content or []]
    if all(part["type"] == "text" for part in parts):
        return "".join(part["text"] for part in parts)
    return parts


def _messages(items: Any) -> list[dict[str, Any]]:
    if isinstance(items, str):
        return [{"role": "user", "content": items}]
    messages: list[dict[str, Any]] = []
    for item in items if isinstance(items, list) else []:
        kind = item.get("type", "message") if isinstance(item, dict) else None
        if kind == "message":
            role = item.get("role", "user")
            messages.append({"role": role, "content": _content(item.get("content"))})
        elif kind == "function_call":
            call = {
                "id": item.get("call_id", ""),
                "type": "function",
                "function": {"name": item.get("name", ""), "arguments": item.get("arguments", "")},
            }
            last = messages[-1] if messages else None
            if last is not None and last["role"] == "assistant" and "tool_calls" in last:
                last["tool_calls"].append(call)
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            output = item.get("output")
            messages.append(
                {
                    "role": "tool",
                    "tool_call_id": item.get("call_id", ""),
                    "content": output if isinstance(output, str) else text_of(output),
                }
            )
        elif kind == "reasoning":
            continue  # earlier reasoning is the upstream's own; chat has no field for it
        else:
            raise _refuse(f"input item {kind!r}")
    return messages


def _tools(tools: list[Any]) -> list[dict[str, Any]]:
    result = []
    for tool in tools:
        kind = tool.get("type") if isinstance(tool, dict) else None
        if kind != "function":
            raise _refuse(f"tool {kind!r}", "only function tools can be translated")
        function = {"name": tool.get("name", ""), "parameters": tool.get("parameters") or {}}
        for name in ("description", "strict"):
            if tool.get(name) is not None:
                function[name] = tool[name]
        result.append({"type": "function", "function": function})
    return result


def _tool_choice(choice: Any) -> Any:
    if isinstance(choice, dict):
        if choice.get("type") != "function":
            raise _refuse(f"tool_choice {choice.get('type')!r}")
        return {"type": "function", "function": {"name": choice.get("name", "")}}
    return choice


def _response_format(text: Any) -> dict[str, Any] | None:
    fmt = text.get("format") if isinstance(text, dict) else None
    if not isinstance(fmt, dict) or fmt.get("type") in (None, "text"):
        return None
    if fmt.get("type") == "json_object":
        return {"type": "json_object"}
    schema = {"name": fmt.get("name", "response"), "schema": fmt.get("schema") or {}}
    if fmt.get("strict") is not None:
        schema["strict"] = fmt["strict"]
    return {"type": "json_schema", "json_schema": schema}


def responses_request_to_chat(payload: dict[str, Any], upstream_model: str) -> dict[str, Any]:
    """A Responses API request → a chat completions request (400 on what cannot go)."""
    if payload.get("previous_response_id"):
        raise _refuse("previous_response_id", "only providers that store responses resolve it")
    if payload.get("background"):
        raise _refuse("background")
    messages: list[dict[str, Any]] = []
    if payload.get("instructions"):
        messages.append({"role": "system", "content": text_of(payload["instructions"])})
    messages.extend(_messages(payload.get("input")))
    request: dict[str, Any] = {"model": upstream_model, "messages": messages}
    if payload.get("max_output_tokens") is not None:
        request["max_completion_tokens"] = payload["max_output_tokens"]
    for name in _COPIED:
        if payload.get(name) is not None:
            request[name] = payload[name]
    if payload.get("tools"):
        request["tools"] = _tools(payload["tools"])
    if payload.get("tool_choice") is not None and payload.get("tools"):
        request["tool_choice"] = _tool_choice(payload["tool_choice"])
    response_format = _response_format(payload.get("text"))
    if response_format is not None:
        request["response_format"] = response_format
    effort = (payload.get("reasoning") or {}).get("effort")
    if effort:
        request["reasoning_effort"] = effort
    if payload.get("stream"):
        request["stream"] = True
        request["stream_options"] = {"include_usage": True}
    return request


def responses_usage(usage: dict[str, Any]) -> dict[str, Any]:
    """Chat usage → Responses usage (reasoning tokens kept)."""
    prompt = usage.get("prompt_tokens") or 0
    completion = usage.get("completion_tokens") or 0
    prompt_details = usage.get("prompt_tokens_details") or {}
    output_details = usage.get("completion_tokens_details") or {}
    return {
        "input_tokens": prompt,
        "input_tokens_details": {
            "cached_tokens": prompt_details.get("cached_tokens") or 0,
            "cache_write_tokens": prompt_details.get("cache_write_tokens") or 0,
        },
        "output_tokens": completion,
        "output_tokens_details": {"reasoning_tokens": output_details.get("reasoning_tokens") or 0},
        "total_tokens": prompt + completion,
    }


def response_envelope(
    response_id: str, model: str, created: int, status: str, output: list[dict[str, Any]]
) -> dict[str, Any]:
    """A response object with the fields the SDKs require."""
    return {
        "id": response_id,
        "object": "response",
        "created_at": created,
        "status": status,
        "model": model,
        "output": output,
        "parallel_tool_calls": True,
        "tool_choice": "auto",
        "tools": [],
        "error": None,
        "incomplete_details": {"reason": "max_output_tokens"} if status == "incomplete" else None,
    }


def message_item(item_id: str, text: str, status: str = "completed") -> dict[str, Any]:
    part = {"type": "output_text", "text": text, "annotations": []}
    return {
        "type": "message",
        "id": item_id,
        "status": status,
        "role": "assistant",
        "content": [part] if text or status == "completed" else [],
    }


def reasoning_item(item_id: str, text: str) -> dict[str, Any]:
    return {
        "type": "reasoning",
        "id": item_id,
        "summary": [],
        "content": [{"type": "reasoning_text", "text": text}],
    }


def function_item(item_id: str, call: dict[str, Any], status: str = "completed") -> dict[str, Any]:
    function = call.get("function") or {}
    return {
        "type": "function_call",
        "id": item_id,
        "call_id": call.get("id", ""),
        "name": function.get("name", ""),
        "arguments": function.get("arguments", ""),
        "status": status,
    }


def chat_answer_to_response(answer: dict[str, Any]) -> dict[str, Any]:
    """A chat completion → a Responses API response object."""
    choice = (answer.get("choices") or [{}])[0]
    reply = choice.get("message") or {}
    base = str(answer.get("id") or "")
    output: list[dict[str, Any]] = []
    if reply.get("reasoning_content"):
        output.append(reasoning_item(f"rs_{base}", reply["reasoning_content"]))
    text = text_of(reply.get("content"))
    if text or not reply.get("tool_calls"):
        output.append(message_item(f"msg_{base}", text))
    for index, call in enumerate(reply.get("tool_calls") or []):
        output.append(function_item(f"fc_{base}_{index}", call))
    status = "incomplete" if choice.get("finish_reason") == "length" else "completed"
    response = response_envelope(
        f"resp_{base}",
        str(answer.get("model") or ""),
        int(answer.get("created") or time.time()),
        status,
        output,
    )
    response["usage"] = responses_usage(answer.get("usage") or {})
    return response
