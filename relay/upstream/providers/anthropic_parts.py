"""Content parts (OpenAI) ↔ content blocks (Anthropic): text, images, documents, thinking.

Faithful or refused: a part one dialect cannot express in the other is a 400 naming it,
never dropped. The documented exceptions, each an optimisation or something only the
originating provider can read (docs/architecture.md §6.6):

- ``cache_control`` on Anthropic blocks is dropped towards an OpenAI-compatible upstream
  (those cache prompts by themselves); OpenAI-dialect parts may carry it
  (OpenRouter's extension) and it reaches Claude unchanged.
- ``redacted_thinking`` blocks (encrypted, only Claude can read them) and unsigned
  ``reasoning_content`` (Claude rejects thinking without its signature, and ignores
  earlier turns' thinking anyway) are not sent to the other dialect.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

from relay.errors import InvalidRequest

__all__ = ["anthropic_blocks", "openai_parts", "thinking_history"]

_PDF = "application/pdf"


def _refuse_part(name: str, why: str) -> InvalidRequest:
    return InvalidRequest(f"{name} cannot be translated: {why}", param=name)


def _with_cache_control(block: dict[str, Any], part: dict[str, Any]) -> dict[str, Any]:
    if isinstance(part.get("cache_control"), dict):
        block["cache_control"] = part["cache_control"]
    return block


# ----------------------------------------------------------------- OpenAI parts → Anthropic


def _image_source(url: str) -> dict[str, Any]:
    if url.startswith("data:"):
        header, _, data = url.partition(",")
        media_type = header[5:].split(";", 1)[0] or "image/png"
        return {"type": "base64", "media_type": media_type, "data": data}
    return {"type": "url", "url": url}


def _document(file: dict[str, Any]) -> dict[str, Any]:
    """An OpenAI ``file`` part → an Anthropic ``document`` (or ``image``) block."""
    if file.get("file_id"):
        raise _refuse_part(
            "file_id", "an OpenAI file id means nothing to Anthropic; send file_data"
        )
    data = file.get("file_data")
    if not isinstance(data, str) or not data:
        raise _refuse_part("file", "it has no file_data")
    block: dict[str, Any]
    if data.startswith(("http://", "https://")):
        block = {"type": "document", "source": {"type": "url", "url": data}}
    elif not data.startswith("data:"):  # bare base64: OpenAI takes PDFs only
        block = {"type": "document", "source": {"type": "base64", "media_type": _PDF, "data": data}}
    else:
        header, _, payload = data.partition(",")
        media_type = header[5:].split(";", 1)[0]
        if media_type.startswith("image/"):
            return {"type": "image", "source": _image_source(data)}
        if media_type.startswith("text/"):
            text = _decoded_text(payload) if ";base64" in header else payload
            source = {"type": "text", "media_type": "text/plain", "data": text}
        elif media_type == _PDF:
            source = {"type": "base64", "media_type": _PDF, "data": payload}
        else:
            raise _refuse_part("file", f"Claude reads PDF, text and image files, not {media_type}")
        block = {"type": "document", "source": source}
    if isinstance(file.get("filename"), str):
        block["title"] = file["filename"]
    return block


def _decoded_text(payload: str) -> str:
    try:
        return base64.b64decode(payload, validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        raise _refuse_part("file", "its text file_data is not base64 of UTF-8 text") from None


def anthropic_blocks(content: Any) -> list[dict[str, Any]]:
    """An OpenAI message's content (a string or parts) → Anthropic content blocks."""
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    blocks: list[dict[str, Any]] = []
    for part in content if isinstance(content, list) else []:
        if not isinstance(part, dict):
            continue
        kind = part.get("type")
        if kind == "text":
            blocks.append({"type": "text", "text": part.get("text", "")})
        elif kind == "refusal":  # an assistant's earlier refusal is its text
            blocks.append({"type": "text", "text": part.get("refusal", "")})
        elif kind == "image_url":
            image = part.get("image_url")
            url = image.get("url", "") if isinstance(image, dict) else str(image or "")
            blocks.append({"type": "image", "source": _image_source(url)})
        elif kind == "file":
            file = part.get("file")
            blocks.append(_document(file if isinstance(file, dict) else {}))
        elif kind == "input_audio":
            raise _refuse_part("input_audio", "Claude does not read audio")
        else:
            raise _refuse_part(f"content part {kind!r}", "it has no Anthropic equivalent")
        _with_cache_control(blocks[-1], part)
    return blocks


def thinking_history(message: dict[str, Any]) -> list[dict[str, Any]]:
    """An OpenAI-shaped assistant turn's signed thinking → Anthropic thinking blocks.

    Claude needs its signed thinking back on tool-use turns; OpenAI-dialect clients carry
    it as ``thinking_blocks`` (the LiteLLM/OpenRouter extension relay's answers use).
    """
    blocks = []
    for block in message.get("thinking_blocks") or []:
        if isinstance(block, dict) and block.get("type") in ("thinking", "redacted_thinking"):
            blocks.append(block)
    return blocks


# ----------------------------------------------------------------- Anthropic blocks → OpenAI


def _image_url(source: dict[str, Any]) -> str:
    if source.get("type") == "base64":
        return f"data:{source.get('media_type', 'image/png')};base64,{source.get('data', '')}"
    if source.get("type") == "url":
        return str(source.get("url", ""))
    raise _refuse_part("file_id", "an Anthropic file id means nothing to an OpenAI upstream")


def _file_part(block: dict[str, Any]) -> list[dict[str, Any]]:
    """An Anthropic ``document`` → an OpenAI ``file`` part (or text parts)."""
    found = block.get("source")
    source: dict[str, Any] = found if isinstance(found, dict) else {}
    kind = source.get("type")
    if kind == "text":
        return [{"type": "text", "text": str(source.get("data", ""))}]
    if kind == "content":
        inner = source.get("content")
        return openai_parts(inner if isinstance(inner, list) else [{"type": "text", "text": inner}])
    if kind == "base64":
        data = f"data:{source.get('media_type', _PDF)};base64,{source.get('data', '')}"
    elif kind == "url":
        data = str(source.get("url", ""))  # OpenRouter-style; a strict upstream judges it
    else:
        raise _refuse_part("file_id", "an Anthropic file id means nothing to an OpenAI upstream")
    filename = block.get("title") if isinstance(block.get("title"), str) else "document.pdf"
    return [{"type": "file", "file": {"file_data": data, "filename": filename}}]


def openai_parts(blocks: list[Any]) -> list[dict[str, Any]]:
    """Anthropic user content blocks → OpenAI content parts (``cache_control`` dropped)."""
    parts: list[dict[str, Any]] = []
    for block in blocks:
        if not isinstance(block, dict):
            continue
        kind = block.get("type")
        if kind == "text":
            parts.append({"type": "text", "text": block.get("text", "")})
        elif kind == "image" and isinstance(block.get("source"), dict):
            parts.append({"type": "image_url", "image_url": {"url": _image_url(block["source"])}})
        elif kind == "document":
            parts.extend(_file_part(block))
        else:
            raise _refuse_part(f"content block {kind!r}", "OpenAI models have no equivalent")
    return parts
