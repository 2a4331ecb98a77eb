"""Anthropic Messages ↔ OpenAI chat: requests, both ways.

Everything works on decoded JSON (``dict``). Translation is faithful or refuses: every
field of both SDKs' ``create()`` is mapped, a documented no-op, or a 400 naming it
(``relay.upstream.providers.anthropic_params`` holds the table); content parts are
``relay.upstream.providers.anthropic_parts``. A field neither SDK knows (a provider
extension) is passed on only where named here (``thinking``, ``top_k``, ``cache_control``,
``thinking_blocks``, ``is_error``). Answers, usage and errors:
``relay.upstream.providers.anthropic_answers``; streams:
``relay.upstream.providers.anthropic_stream``.
"""

from __future__ import annotations

from typing import Any

from relay.errors import InvalidRequest
from relay.upstream.providers.anthropic_answers import text_of, tool_arguments
from relay.upstream.providers.anthropic_params import (
    CHAT_REFUSED,
    MESSAGES_REFUSED,
    refuse_unexpressible,
)
from relay.upstream.providers.anthropic_parts import (
    anthropic_blocks,
    openai_parts,
    thinking_history,
)
from relay.upstream.wire_openai import encode

__all__ = [
    "DEFAULT_MAX_TOKENS",
    "TOOL_ERROR_PREFIX",
    "chat_request_to_messages",
    "messages_request_to_chat",
]

# Anthropic requires max_tokens; an OpenAI request may omit it.
DEFAULT_MAX_TOKENS = 4096
_COPIED_SAMPLING = ("temperature", "top_p")
_TO_ANTHROPIC = "an Anthropic model"
_TO_OPENAI = "an OpenAI-compatible model"


# ----------------------------------------------------------------- OpenAI request → Anthropic


def _assistant_blocks(message: dict[str, Any]) -> list[dict[str, Any]]:
    # Signed thinking first: Claude requires it back, ahead of the tool_use it led to.
    blocks = thinking_history(message) + anthropic_blocks(message.get("content"))
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
        if not isinstance(tool, dict):
            continue
        function = tool.get("function")
        if tool.get("type", "function") != "function" or not isinstance(function, dict):
            raise _refuse("tools", f"a {tool.get('type')!r} tool has no Anthropic equivalent")
        converted = {
            "name": function.get("name", ""),
            "input_schema": function.get("parameters") or {"type": "object", "properties": {}},
        }
        if function.get("description"):
            converted["description"] = function["description"]
        # OpenRouter-style cache_control, on the tool or on its function.
        cache_control = tool.get("cache_control") or function.get("cache_control")
        if isinstance(cache_control, dict):
            converted["cache_control"] = cache_control
        result.append(converted)
    return result


# Thinking budgets for OpenAI's reasoning_effort (Anthropic's minimum budget is 1024).
_THINKING_BUDGETS = {"minimal": 1024, "low": 1024, "medium": 4096, "high": 16384}


def _refuse(feature: str, why: str) -> InvalidRequest:
    return InvalidRequest(f"{feature} cannot be sent to {_TO_ANTHROPIC}: {why}", param=feature)


def _check_expressible(payload: dict[str, Any]) -> None:
    """Translation is faithful or refuses: never a silent drop of what the client asked."""
    refuse_unexpressible(payload, CHAT_REFUSED, _TO_ANTHROPIC)
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


def _tool_result(message: dict[str, Any]) -> dict[str, Any]:
    content = message.get("content")
    result: dict[str, Any] = {
        "type": "tool_result",
        "tool_use_id": message.get("tool_call_id", ""),
        # Parts stay blocks so their cache_control survives; a string stays a string.
        "content": anthropic_blocks(content) if isinstance(content, list) else text_of(content),
    }
    if message.get("is_error") is True:  # the extension an OpenAI tool message may carry
        result["is_error"] = True
    return result


def _system(parts: list[Any]) -> str | list[dict[str, Any]]:
    """System text; blocks when a part asks for caching (cache_control must survive)."""
    blocks = [block for content in parts for block in anthropic_blocks(content)]
    if any("cache_control" in block for block in blocks):
        return blocks
    return "\n\n".join(text for content in parts if (text := text_of(content)))


def chat_request_to_messages(payload: dict[str, Any], upstream_model: str) -> dict[str, Any]:
    """An OpenAI chat completions request → an Anthropic Messages request."""
    _check_expressible(payload)
    system: list[Any] = []
    turns: list[dict[str, Any]] = []
    for message in payload.get("messages") or []:
        role = message.get("role")
        if role in ("system", "developer"):
            system.append(message.get("content"))
        elif role == "assistant":
            _append_turn(turns, "assistant", _assistant_blocks(message))
        elif role in ("tool", "function"):
            _append_turn(turns, "user", [_tool_result(message)])
        else:
            _append_turn(turns, "user", anthropic_blocks(message.get("content")))
    request: dict[str, Any] = {
        "model": upstream_model,
        "max_tokens": payload.get("max_completion_tokens")
        or payload.get("max_tokens")
        or DEFAULT_MAX_TOKENS,
        "messages": turns,
    }
    if system and (system_content := _system(system)):
        request["system"] = system_content
    for name in (*_COPIED_SAMPLING, "top_k"):  # top_k: OpenRouter's extension
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
    user = payload.get("user") or payload.get("safety_identifier")
    if isinstance(user, str):
        request["metadata"] = {"user_id": user}
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

# How an Anthropic tool_result's is_error reaches an OpenAI model (docs/architecture.md §6.6).
TOOL_ERROR_PREFIX = "Error: "


def _reasoning_effort(thinking: Any, output_config: Any) -> str | None:
    """``thinking`` budget (or ``output_config.effort``) → OpenAI ``reasoning_effort``.

    Adaptive thinking leaves the effort to the model, as an OpenAI request without
    ``reasoning_effort`` does; disabled thinking asks for nothing.
    """
    effort = output_config.get("effort") if isinstance(output_config, dict) else None
    if isinstance(effort, str):
        return effort if effort in ("low", "medium", "high") else "high"  # max, xhigh
    if isinstance(thinking, dict) and thinking.get("type") == "enabled":
        budget = thinking.get("budget_tokens") or 0
        return "high" if budget >= 16384 else "medium" if budget >= 4096 else "low"
    return None


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
            text = text_of(inner)
            # OpenAI tool messages have no error flag: the model reads it in the content.
            if block.get("is_error") is True:
                text = f"{TOOL_ERROR_PREFIX}{text}"
            messages.append(
                {"role": "tool", "tool_call_id": block.get("tool_use_id", ""), "content": text}
            )
            # Images a tool returned can only reach an OpenAI model as user content.
            if isinstance(inner, list):
                rest.extend(
                    part for part in inner if isinstance(part, dict) and part.get("type") == "image"
                )
        else:
            rest.append(block)
    parts = openai_parts(rest)
    if parts:
        all_text = all(part["type"] == "text" for part in parts)
        joined = "".join(part["text"] for part in parts) if all_text else None
        messages.append({"role": "user", "content": joined if joined is not None else parts})
    return messages


def _assistant_message(content: Any) -> dict[str, Any]:
    if isinstance(content, str):
        return {"role": "assistant", "content": content}
    text = ""
    reasoning = ""
    calls = []
    for block in content if isinstance(content, list) else []:
        if not isinstance(block, dict):
            continue
        kind = block.get("type")
        if kind == "text":
            text += block.get("text", "")
        elif kind == "thinking":
            reasoning += block.get("thinking", "")
        elif kind == "redacted_thinking":
            continue  # encrypted for Claude alone: nothing another model could read
        elif kind == "tool_use":
            arguments = encode(block.get("input") or {}).decode()
            calls.append(
                {
                    "id": block.get("id", ""),
                    "type": "function",
                    "function": {"name": block.get("name", ""), "arguments": arguments},
                }
            )
        else:
            raise InvalidRequest(
                f"content block {kind!r} cannot be sent to {_TO_OPENAI}", param="messages"
            )
    message: dict[str, Any] = {"role": "assistant", "content": text or None}
    if reasoning:
        message["reasoning_content"] = reasoning
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
        if not isinstance(tool, dict):
            continue
        # Server tools (web search, code execution...) have a "type" and no input_schema.
        if "input_schema" not in tool:
            raise InvalidRequest(
                f"tool type {tool.get('type')!r} cannot be sent to {_TO_OPENAI}: "
                "it runs only at Anthropic",
                param="tools",
            )
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
    refuse_unexpressible(payload, MESSAGES_REFUSED, _TO_OPENAI)
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
    effort = _reasoning_effort(payload.get("thinking"), payload.get("output_config"))
    if effort is not None:
        request["reasoning_effort"] = effort
    if payload.get("stream"):
        request["stream"] = True
        request["stream_options"] = {"include_usage": True}
    return request
