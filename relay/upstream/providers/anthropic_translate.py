"""Anthropic Messages ↔ OpenAI chat: requests, both ways.

Everything works on decoded JSON (``dict``) and is forgiving: a field relay does not
understand is dropped rather than refused, since the upstream is the judge of what is
valid. Answers, usage and errors: ``relay.upstream.providers.anthropic_answers``; streams:
``relay.upstream.providers.anthropic_stream``.
"""

from __future__ import annotations

from typing import Any

from relay.errors import InvalidRequest
from relay.upstream.providers.anthropic_answers import text_of, tool_arguments
from relay.upstream.wire_openai import encode

__all__ = ["DEFAULT_MAX_TOKENS", "chat_request_to_messages", "messages_request_to_chat"]

# Anthropic requires max_tokens; an OpenAI request may omit it.
DEFAULT_MAX_TOKENS = 4096
_COPIED_SAMPLING = ("temperature", "top_p")


# ----------------------------------------------------------------- OpenAI request → Anthropic


def _image_source(url: str) -> dict[str, Any]:
    if url.startswith("data:"):
        header, _, data = url.partition(",")
        media_type = header[5:].split(";", 1)[0] or "image/png"
        return {"type": "base64", "media_type": media_type, "data": data}
    return {"type": "url", "url": url}


def _anthropic_blocks(content: Any) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    blocks: list[dict[str, Any]] = []
    for part in content if isinstance(content, list) else []:
        if not isinstance(part, dict):
            continue
        if part.get("type") == "text":
            blocks.append({"type": "text", "text": part.get("text", "")})
        elif part.get("type") == "image_url":
            image = part.get("image_url")
            url = image.get("url", "") if isinstance(image, dict) else str(image or "")
            blocks.append({"type": "image", "source": _image_source(url)})
    return blocks


def _assistant_blocks(message: dict[str, Any]) -> list[dict[str, Any]]:
    blocks = _anthropic_blocks(message.get("content"))
    for call in message.get("tool_calls") or []:
        function = call.get("function") or {}
        blocks.append(
            {
                "type": "tool_use",
                "id": call.get("id", ""),
                "name": function.get("name", ""),
                "input": tool_arguments(function.get("arguments")),
            }
        )
    return blocks


def _append_turn(turns: list[dict[str, Any]], role: str, blocks: list[dict[str, Any]]) -> None:
    """Consecutive messages of one role become one turn (Anthropic alternates roles)."""
    if not blocks:
        return
    if turns and turns[-1]["role"] == role:
        turns[-1]["content"].extend(blocks)
    else:
        turns.append({"role": role, "content": blocks})


def _anthropic_tool_choice(choice: Any, parallel: Any) -> dict[str, Any] | None:
    if choice == "auto" or (choice is None and parallel is False):
        result: dict[str, Any] = {"type": "auto"}
    elif choice == "required":
        result = {"type": "any"}
    elif choice == "none":
        return {"type": "none"}
    elif isinstance(choice, dict):
        result = {"type": "tool", "name": (choice.get("function") or {}).get("name", "")}
    else:
        return None
    if parallel is False:
        result["disable_parallel_tool_use"] = True
    return result


def _anthropic_tools(tools: list[Any]) -> list[dict[str, Any]]:
    result = []
    for tool in tools:
        function = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(function, dict):
            continue
        converted = {
            "name": function.get("name", ""),
            "input_schema": function.get("parameters") or {"type": "object", "properties": {}},
        }
        if function.get("description"):
            converted["description"] = function["description"]
        result.append(converted)
    return result


# Thinking budgets for OpenAI's reasoning_effort (Anthropic's minimum budget is 1024).
_THINKING_BUDGETS = {"minimal": 1024, "low": 1024, "medium": 4096, "high": 16384}


def _refuse(feature: str, why: str) -> InvalidRequest:
    return InvalidRequest(f"{feature} cannot be sent to an Anthropic model: {why}", param=feature)


def _check_expressible(payload: dict[str, Any]) -> None:
    """Translation is faithful or refuses: never a silent drop of what the client asked."""
    if (payload.get("n") or 1) > 1:
        raise _refuse("n", "Claude returns one choice per request")
    if payload.get("logprobs") or payload.get("top_logprobs"):
        raise _refuse("logprobs", "Claude does not return log probabilities")
    if payload.get("seed") is not None:
        raise _refuse("seed", "Claude has no sampling seed")
    fmt = payload.get("response_format")
    if isinstance(fmt, dict) and fmt.get("type") == "json_object":
        raise _refuse("response_format", "use json_schema (Claude has no schemaless JSON mode)")


def _output_config(fmt: Any) -> dict[str, Any] | None:
    """``response_format`` json_schema → Anthropic structured output (``output_config``)."""
    if not isinstance(fmt, dict) or fmt.get("type") != "json_schema":
        return None
    schema = (fmt.get("json_schema") or {}).get("schema") or {}
    return {"format": {"type": "json_schema", "schema": schema}}


def _thinking(effort: Any, max_tokens: int) -> dict[str, Any] | None:
    if not isinstance(effort, str) or effort == "none":
        return None
    budget = _THINKING_BUDGETS.get(effort)
    if budget is None:
        raise _refuse("reasoning_effort", f"unknown effort {effort!r}")
    if budget >= max_tokens:
        raise _refuse("reasoning_effort", f"its thinking budget needs max_tokens > {budget}")
    return {"type": "enabled", "budget_tokens": budget}


def chat_request_to_messages(payload: dict[str, Any], upstream_model: str) -> dict[str, Any]:
    """An OpenAI chat completions request → an Anthropic Messages request."""
    _check_expressible(payload)
    system: list[str] = []
    turns: list[dict[str, Any]] = []
    for message in payload.get("messages") or []:
        role = message.get("role")
        if role in ("system", "developer"):
            system.append(text_of(message.get("content")))
        elif role == "assistant":
            _append_turn(turns, "assistant", _assistant_blocks(message))
        elif role in ("tool", "function"):
            result = {
                "type": "tool_result",
                "tool_use_id": message.get("tool_call_id", ""),
                "content": text_of(message.get("content")),
            }
            _append_turn(turns, "user", [result])
        else:
            _append_turn(turns, "user", _anthropic_blocks(message.get("content")))
    request: dict[str, Any] = {
        "model": upstream_model,
        "max_tokens": payload.get("max_completion_tokens")
        or payload.get("max_tokens")
        or DEFAULT_MAX_TOKENS,
        "messages": turns,
    }
    if system:
        request["system"] = "\n\n".join(part for part in system if part)
    for name in _COPIED_SAMPLING:
        if payload.get(name) is not None:
            request[name] = payload[name]
    if isinstance(request.get("temperature"), int | float):
        request["temperature"] = min(request["temperature"], 1)  # Anthropic's range is 0-1
    stop = payload.get("stop")
    if stop:
        request["stop_sequences"] = [stop] if isinstance(stop, str) else list(stop)
    if payload.get("tools"):
        request["tools"] = _anthropic_tools(payload["tools"])
    choice = _anthropic_tool_choice(payload.get("tool_choice"), payload.get("parallel_tool_calls"))
    if choice is not None and payload.get("tools"):
        request["tool_choice"] = choice
    if isinstance(payload.get("user"), str):
        request["metadata"] = {"user_id": payload["user"]}
    output_config = _output_config(payload.get("response_format"))
    if output_config is not None:
        request["output_config"] = output_config
    thinking = payload.get("thinking") or _thinking(
        payload.get("reasoning_effort"), request["max_tokens"]
    )
    if thinking:
        request["thinking"] = thinking
    if payload.get("stream"):
        request["stream"] = True
    return request


# ----------------------------------------------------------------- Anthropic request → OpenAI


def _image_url(source: dict[str, Any]) -> str:
    if source.get("type") == "base64":
        return f"data:{source.get('media_type', 'image/png')};base64,{source.get('data', '')}"
    return str(source.get("url", ""))


def _openai_parts(blocks: list[Any]) -> list[dict[str, Any]]:
    parts: list[dict[str, Any]] = []
    for block in blocks:
        if not isinstance(block, dict):
            continue
        if block.get("type") == "text":
            parts.append({"type": "text", "text": block.get("text", "")})
        elif block.get("type") == "image" and isinstance(block.get("source"), dict):
            parts.append({"type": "image_url", "image_url": {"url": _image_url(block["source"])}})
    return parts


def _user_messages(content: Any) -> list[dict[str, Any]]:
    """One Anthropic user turn → OpenAI ``tool`` messages first, then the user's own parts."""
    if isinstance(content, str):
        return [{"role": "user", "content": content}]
    blocks = content if isinstance(content, list) else []
    messages: list[dict[str, Any]] = []
    rest: list[Any] = []
    for block in blocks:
        if isinstance(block, dict) and block.get("type") == "tool_result":
            inner = block.get("content")
            messages.append(
                {
                    "role": "tool",
                    "tool_call_id": block.get("tool_use_id", ""),
                    "content": text_of(inner),
                }
            )
            # Images a tool returned can only reach an OpenAI model as user content.
            if isinstance(inner, list):
                rest.extend(
                    part for part in inner if isinstance(part, dict) and part.get("type") == "image"
                )
        else:
            rest.append(block)
    parts = _openai_parts(rest)
    if parts:
        all_text = all(part["type"] == "text" for part in parts)
        text = "".join(part["text"] for part in parts) if all_text else None
        messages.append({"role": "user", "content": text if text is not None else parts})
    return messages


def _assistant_message(content: Any) -> dict[str, Any]:
    if isinstance(content, str):
        return {"role": "assistant", "content": content}
    text = ""
    calls = []
    for block in content if isinstance(content, list) else []:
        if not isinstance(block, dict):
            continue
        if block.get("type") == "text":
            text += block.get("text", "")
        elif block.get("type") == "tool_use":
            arguments = encode(block.get("input") or {}).decode()
            calls.append(
                {
                    "id": block.get("id", ""),
                    "type": "function",
                    "function": {"name": block.get("name", ""), "arguments": arguments},
                }
            )
    message: dict[str, Any] = {"role": "assistant", "content": text or None}
    if calls:
        message["tool_calls"] = calls
    return message


def _openai_tool_choice(choice: dict[str, Any]) -> Any:
    kind = choice.get("type")
    if kind == "any":
        return "required"
    if kind == "tool":
        return {"type": "function", "function": {"name": choice.get("name", "")}}
    return "none" if kind == "none" else "auto"


def _openai_tools(tools: list[Any]) -> list[dict[str, Any]]:
    result = []
    for tool in tools:
        # Server tools (web search, code execution...) have a "type" and no input_schema.
        if not isinstance(tool, dict) or "input_schema" not in tool:
            continue
        function: dict[str, Any] = {
            "name": tool.get("name", ""),
            "parameters": tool["input_schema"],
        }
        if tool.get("description"):
            function["description"] = tool["description"]
        result.append({"type": "function", "function": function})
    return result


def messages_request_to_chat(payload: dict[str, Any], upstream_model: str) -> dict[str, Any]:
    """An Anthropic Messages request → an OpenAI chat completions request."""
    messages: list[dict[str, Any]] = []
    system = text_of(payload.get("system"))
    if system:
        messages.append({"role": "system", "content": system})
    for turn in payload.get("messages") or []:
        if turn.get("role") == "assistant":
            messages.append(_assistant_message(turn.get("content")))
        else:
            messages.extend(_user_messages(turn.get("content")))
    request: dict[str, Any] = {"model": upstream_model, "messages": messages}
    if payload.get("max_tokens") is not None:
        request["max_tokens"] = payload["max_tokens"]
    for name in _COPIED_SAMPLING:
        if payload.get(name) is not None:
            request[name] = payload[name]
    if payload.get("stop_sequences"):
        request["stop"] = payload["stop_sequences"]
    tools = _openai_tools(payload.get("tools") or [])
    if tools:
        request["tools"] = tools
        choice = payload.get("tool_choice")
        if isinstance(choice, dict):
            request["tool_choice"] = _openai_tool_choice(choice)
            if choice.get("disable_parallel_tool_use"):
                request["parallel_tool_calls"] = False
    user = (payload.get("metadata") or {}).get("user_id")
    if isinstance(user, str):
        request["user"] = user
    fmt = (payload.get("output_config") or {}).get("format")
    if isinstance(fmt, dict) and fmt.get("type") == "json_schema":
        json_schema = {"name": "output", "schema": fmt.get("schema") or {}}
        request["response_format"] = {"type": "json_schema", "json_schema": json_schema}
    thinking = payload.get("thinking")
    if isinstance(thinking, dict) and thinking.get("type") == "enabled":
        budget = thinking.get("budget_tokens") or 0
        request["reasoning_effort"] = (
            "high" if budget >= 16384 else "medium" if budget >= 4096 else "low"
        )
    if payload.get("stream"):
        request["stream"] = True
        request["stream_options"] = {"include_usage": True}
    return request
