"""Getting started: the base URL clients use and copyable curl / Python / Node snippets.

The base URL is ``[server] public_url`` when the operator set it (relay behind a proxy
or on a public name), else the address this page was reached at. A snippet carries the
real secret only on the page right after the key was created (it is shown once); every
other page uses an environment variable.
"""

from __future__ import annotations

import json
from collections.abc import Iterable

import msgspec
from starlette.requests import Request

from relay.config import Config
from relay.identity.accounts import ApiKey
from relay.upstream.routing import Model

__all__ = ["ENV_VAR", "Snippet", "base_url", "model_names", "pick_model", "public_root", "snippets"]

ENV_VAR = "RELAY_API_KEY"


class Snippet(msgspec.Struct, frozen=True):
    id: str  # the element id a Copy button points at
    title: str
    language: str
    code: str


def public_root(config: Config, request: Request) -> str:
    """Where people and clients reach relay: ``public_url``, else this request's origin."""
    public = config.server.public_url
    return public.rstrip("/") if public else str(request.base_url).rstrip("/")


def base_url(config: Config, request: Request) -> str:
    """``…/v1`` as clients should call it."""
    return public_root(config, request) + "/v1"


def pick_model(models: dict[str, Model], key: ApiKey | None) -> Model | None:
    """The key's first allowed model; for an unrestricted key, the first available chat one."""
    if key is not None and key.models:
        return models.get(key.models[0])
    chat = [m for name, m in sorted(models.items()) if m.config.kind == "chat"]
    ready = [m for m in chat if m.available]
    found = ready or chat
    return found[0] if found else None


def _quote(text: str) -> str:
    return json.dumps(text)


def snippets(url: str, model: Model | None, secret: str | None = None) -> list[Snippet]:
    """curl, Python (openai) and Node (openai) calls of ``model`` through relay."""
    name = model.name if model is not None else "MODEL"
    kind = model.config.kind if model is not None else "chat"
    key_shell = secret or f"${ENV_VAR}"
    key_py = _quote(secret) if secret else f'os.environ["{ENV_VAR}"]'
    key_js = _quote(secret) if secret else f"process.env.{ENV_VAR}"
    body: dict[str, object]
    if kind == "embedding":
        path, body = "embeddings", {"model": name, "input": "Hello"}
        py_call = f'client.embeddings.create(model={_quote(name)}, input="Hello")'
        py_show = "print(reply.data[0].embedding[:4])"
        js_call = f'client.embeddings.create({{ model: {_quote(name)}, input: "Hello" }})'
        js_show = "console.log(reply.data[0].embedding.slice(0, 4));"
    else:
        message = {"role": "user", "content": "Hello"}
        path, body = "chat/completions", {"model": name, "messages": [message]}
        py_call = (
            f"client.chat.completions.create(\n    model={_quote(name)},\n"
            '    messages=[{"role": "user", "content": "Hello"}],\n)'
        )
        py_show = "print(reply.choices[0].message.content)"
        js_call = (
            f"client.chat.completions.create({{\n  model: {_quote(name)},\n"
            '  messages: [{ role: "user", content: "Hello" }],\n})'
        )
        js_show = "console.log(reply.choices[0].message.content);"
    curl = (
        f"curl {url}/{path} \\\n"
        f'  -H "Authorization: Bearer {key_shell}" \\\n'
        '  -H "Content-Type: application/json" \\\n'
        f"  -d '{json.dumps(body)}'"
    )
    python = (
        ("import os\n" if not secret else "")
        + "from openai import OpenAI\n\n"
        + f"client = OpenAI(base_url={_quote(url)}, api_key={key_py})\n"
        + f"reply = {py_call}\n{py_show}"
    )
    node = (
        'import OpenAI from "openai";\n\n'
        f"const client = new OpenAI({{ baseURL: {_quote(url)}, apiKey: {key_js} }});\n"
        f"const reply = await {js_call};\n{js_show}"
    )
    return [
        Snippet("snippet-curl", "curl", "shell", curl),
        Snippet("snippet-python", "Python (openai)", "python", python),
        Snippet("snippet-node", "Node (openai)", "javascript", node),
    ]


def model_names(models: Iterable[Model]) -> list[str]:
    return sorted(model.name for model in models)
