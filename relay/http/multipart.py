"""``multipart/form-data`` request bodies (what the OpenAI SDK sends to ``videos.create``).

Parsed with the standard library's MIME parser (no extra dependency) from a body that
``read_body`` already bounded in size. Text fields come back as strings; a file part is
reported by name so that a route can refuse what it cannot forward, naming the field.
"""

from __future__ import annotations

import email.parser
import email.policy
from typing import NamedTuple

from relay.errors import InvalidRequest

__all__ = ["FormFields", "is_multipart", "parse_form"]


class FormFields(NamedTuple):
    text: dict[str, str]
    files: list[str]  # names of the parts that carried a file


def is_multipart(content_type: str | None) -> bool:
    return (content_type or "").lower().startswith("multipart/form-data")


def parse_form(body: bytes, content_type: str) -> FormFields:
    """The form's fields; 400 when the body is not a well-formed multipart form."""
    head = b"Content-Type: " + content_type.encode("latin-1") + b"\r\n\r\n"
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + body)
    if not message.is_multipart():
        raise InvalidRequest("Request body is not a valid multipart/form-data form")
    text: dict[str, str] = {}
    files: list[str] = []
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if not isinstance(name, str) or not name:
            continue
        payload = part.get_payload(decode=True)
        data = payload if isinstance(payload, bytes) else b""
        if part.get_filename() is not None:
            files.append(name)
            continue
        try:
            text[name] = data.decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidRequest(f"Form field {name!r} is not UTF-8 text", param=name) from None
    return FormFields(text, files)
