"""``multipart/form-data`` request bodies (what the OpenAI SDK sends to ``videos.create``,
``audio.transcriptions.create`` and ``images.edit``).

Parsed with the standard library's MIME parser (no extra dependency) from a body that
``read_body`` already bounded in size. ``parse_form`` gives text fields as strings and
names the file parts, so that a route can refuse what it cannot forward; ``parse_parts``
keeps every part (files included) and ``encode_form`` writes them out again, so that a
pass-through route can change a field (the upstream's model name) and forward the rest.
"""

from __future__ import annotations

import email.parser
import email.policy
import secrets
from typing import NamedTuple

from relay.errors import InvalidRequest

__all__ = [
    "FormFields",
    "FormPart",
    "encode_form",
    "form_boundary",
    "form_content_type",
    "is_multipart",
    "parse_form",
    "parse_parts",
    "text_of",
]


class FormFields(NamedTuple):
    text: dict[str, str]
    files: list[str]  # names of the parts that carried a file


class FormPart(NamedTuple):
    name: str
    data: bytes
    filename: str | None = None  # None: a text field
    content_type: str | None = None


def is_multipart(content_type: str | None) -> bool:
    return (content_type or "").lower().startswith("multipart/form-data")


def parse_parts(body: bytes, content_type: str) -> list[FormPart]:
    """Every named part in order; 400 when the body is not a well-formed multipart form."""
    head = b"Content-Type: " + content_type.encode("latin-1") + b"\r\n\r\n"
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + body)
    if not message.is_multipart():
        raise InvalidRequest("Request body is not a valid multipart/form-data form")
    parts: list[FormPart] = []
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if not isinstance(name, str) or not name:
            continue
        payload = part.get_payload(decode=True)
        data = payload if isinstance(payload, bytes) else b""
        filename = part.get_filename()
        if filename is None:
            parts.append(FormPart(name, data))
        else:
            parts.append(FormPart(name, data, filename, part.get_content_type()))
    return parts


def parse_form(body: bytes, content_type: str) -> FormFields:
    """The form's text fields and the names of its file parts (400 when malformed)."""
    text: dict[str, str] = {}
    files: list[str] = []
    for part in parse_parts(body, content_type):
        if part.filename is not None:
            files.append(part.name)
            continue
        text[part.name] = text_of(part)
    return FormFields(text, files)


def text_of(part: FormPart) -> str:
    """A text field's value; 400 when it is not UTF-8."""
    try:
        return part.data.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidRequest(
            f"Form field {part.name!r} is not UTF-8 text", param=part.name
        ) from None


def _quoted(value: str) -> str:
    """A header parameter value: quotes and line breaks cannot end it early."""
    cleaned = value.replace("\\", "\\\\").replace('"', '\\"').replace("\r", " ").replace("\n", " ")
    return f'"{cleaned}"'


def form_boundary(parts: list[FormPart]) -> str:
    """A fresh boundary found in no part's data (2**-128 odds, but checking is cheap)."""
    while True:
        boundary = "relay-" + secrets.token_hex(16)
        if not any(boundary.encode() in part.data for part in parts):
            return boundary


def form_content_type(boundary: str) -> str:
    return f"multipart/form-data; boundary={boundary}"


def encode_form(parts: list[FormPart], boundary: str) -> bytes:
    """``parts`` as a multipart/form-data body delimited by ``boundary``."""
    out: list[bytes] = []
    for part in parts:
        disposition = f"form-data; name={_quoted(part.name)}"
        head = [f"--{boundary}"]
        if part.filename is not None:
            disposition += f"; filename={_quoted(part.filename)}"
            head += [f"Content-Disposition: {disposition}"]
            head += [f"Content-Type: {part.content_type or 'application/octet-stream'}"]
        else:
            head += [f"Content-Disposition: {disposition}"]
        out.append(("\r\n".join(head) + "\r\n\r\n").encode("utf-8") + part.data + b"\r\n")
    out.append(f"--{boundary}--\r\n".encode())
    return b"".join(out)
