"""Every request field, both ways: carried, ignored on purpose, or refused by name.

The table is the single source of truth for docs/architecture.md §6.6 and for
tests/test_translate_fields.py, which enumerates the fields of the installed SDKs'
``create()`` typed dicts: a field a new SDK adds fails that test until it is classified here.

- **Mapped**: the field (or its meaning) reaches the other dialect; see
  ``relay.upstream.providers.anthropic_translate``.
- **Ignored** (a documented no-op): it only tunes the originating provider's own service
  (caching hints, workspaces, dashboards) and changes nothing in the answer.
- **Refused**: set to anything but its neutral value, it is answered with 400 naming it,
  because the other provider cannot honour it and dropping it would change the answer.
"""

from __future__ import annotations

from typing import Any

from relay.errors import InvalidRequest

__all__ = [
    "CHAT_IGNORED",
    "CHAT_MAPPED",
    "CHAT_REFUSED",
    "MESSAGES_IGNORED",
    "MESSAGES_MAPPED",
    "MESSAGES_REFUSED",
    "refuse_unexpressible",
]

# ------------------------------------------------ OpenAI chat request → Anthropic Messages

CHAT_MAPPED = frozenset(
    {
        "model",
        "messages",
        "max_tokens",
        "max_completion_tokens",
        "temperature",  # clamped to Anthropic's 0-1
        "top_p",
        "stop",  # → stop_sequences
        "stream",
        "stream_options",  # include_usage: relay's own usage-only chunk
        "tools",
        "tool_choice",
        "parallel_tool_calls",  # → tool_choice.disable_parallel_tool_use
        "user",  # → metadata.user_id
        "safety_identifier",  # → metadata.user_id when there is no user
        "response_format",  # json_schema → output_config.format; json_object refused
        "reasoning_effort",  # → thinking budget
    }
)
CHAT_IGNORED = {
    "metadata": "tags for OpenAI's stored-completions dashboard",
    "prediction": "a latency optimisation (predicted outputs); the answer is the same",
    "prompt_cache_key": "a caching hint; Claude caches by the cache_control parts carried",
    "prompt_cache_options": "a caching hint; Claude caches by the cache_control parts carried",
    "prompt_cache_retention": "a caching hint; Claude caches by the cache_control parts carried",
}
CHAT_REFUSED = {
    "n": "Claude returns one choice per request",
    "logprobs": "Claude does not return log probabilities",
    "top_logprobs": "Claude does not return log probabilities",
    "seed": "Claude has no sampling seed",
    "logit_bias": "Claude has no token biases",
    "frequency_penalty": "Claude has no repetition penalties",
    "presence_penalty": "Claude has no repetition penalties",
    "audio": "Claude does not answer in audio",
    "modalities": "Claude answers in text only",
    "functions": "use tools (the legacy functions field is not translated)",
    "function_call": "use tool_choice (the legacy function_call field is not translated)",
    "store": "Claude does not store completions for retrieval",
    "service_tier": "only auto/default have an Anthropic equivalent",
    "verbosity": "Claude has no verbosity setting",
    "web_search_options": "use Anthropic's web search tool natively on /v1/messages",
    "moderation": "Claude runs no configurable moderation",
}

# ------------------------------------------------ Anthropic Messages request → OpenAI chat

MESSAGES_MAPPED = frozenset(
    {
        "model",
        "messages",
        "max_tokens",
        "system",
        "temperature",
        "top_p",
        "stop_sequences",  # → stop
        "stream",  # with stream_options.include_usage
        "tools",  # custom tools; server tools are refused by type
        "tool_choice",
        "metadata",  # user_id → user
        "output_config",  # format → response_format json_schema, effort → reasoning_effort
        "thinking",  # enabled budget → reasoning_effort
    }
)
MESSAGES_IGNORED = {
    "cache_control": "a caching hint: OpenAI-compatible upstreams cache prompts by themselves",
    "service_tier": "Anthropic capacity tiers; the OpenAI upstream serves its default tier",
    "speed": "an Anthropic inference speed mode; the answer is the same",
    "diagnostics": "Anthropic prompt-cache diagnostics",
    "workspace_id": "selects an Anthropic workspace, meaningless to another provider",
    "user_profile_id": "Anthropic-side attribution, meaningless to another provider",
}
MESSAGES_REFUSED = {
    "top_k": "OpenAI models have no top_k sampling",
    "container": "code execution containers exist only at Anthropic",
    "inference_geo": "the OpenAI-compatible upstream's region cannot be chosen per request",
    "mcp_servers": "MCP connectors exist only at Anthropic",
    "context_management": "context editing exists only at Anthropic",
}

# The values that ask for nothing: sending them is the same as leaving the field out.
_NEUTRAL: dict[str, tuple[Any, ...]] = {
    "n": (1,),
    "modalities": (["text"],),
    "service_tier": ("auto", "default"),
    "verbosity": ("medium",),
    "frequency_penalty": (0,),
    "presence_penalty": (0,),
}


def _asks_for_something(name: str, value: Any) -> bool:
    if value is None or value is False or value == {} or value == []:
        return False
    return value not in _NEUTRAL.get(name, ())


def refuse_unexpressible(payload: dict[str, Any], refused: dict[str, str], target: str) -> None:
    """400 naming the first field set that ``target`` cannot honour (never a silent drop)."""
    for name, why in refused.items():
        if _asks_for_something(name, payload.get(name)):
            raise InvalidRequest(f"{name} cannot be sent to {target}: {why}", param=name)
