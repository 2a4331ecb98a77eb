"""An uploaded multipart form that a pass-through route forwards upstream.

``/v1/audio/transcriptions``, ``/v1/audio/translations`` and ``/v1/images/edits`` take
OpenAI's multipart forms. relay reads the few text fields it prices by, checks the
files are there, and forwards every part as it came, only the ``model`` field renamed
to the route's upstream model. The body is bounded by ``[server] max_upload_mb``
before it is parsed.
"""

from __future__ import annotations

from starlette.requests import Request

from relay.errors import InvalidRequest
from relay.http.multipart import (
    FormPart,
    encode_form,
    form_boundary,
    form_content_type,
    is_multipart,
    parse_parts,
    text_of,
)
from relay.http.responses import read_body
from relay.state import RelayState
from relay.upstream.routing import Route

__all__ = ["UploadForm", "read_upload"]


class UploadForm:
    """The parts of one request's form, and the body each route is sent."""

    __slots__ = ("parts", "text", "content_type", "_boundary")

    def __init__(self, parts: list[FormPart]):
        self.parts = parts
        self.text = {part.name: text_of(part) for part in parts if part.filename is None}
        # One boundary for every route tried, so that the content type stays the same.
        self._boundary = form_boundary(parts)
        self.content_type = form_content_type(self._boundary)

    def required(self, name: str) -> str:
        value = self.text.get(name)
        if not value:
            raise InvalidRequest(f"the form field {name!r} is required", param=name)
        return value

    def files(self, *names: str) -> list[FormPart]:
        """The file parts under any of ``names`` (``image`` and ``image[]``, say)."""
        return [part for part in self.parts if part.filename is not None and part.name in names]

    def body_for(self, route: Route) -> bytes:
        renamed = [
            FormPart("model", route.upstream_model.encode()) if part.name == "model" else part
            for part in self.parts
        ]
        return encode_form(renamed, self._boundary)


async def read_upload(request: Request, state: RelayState) -> UploadForm:
    """The request's multipart form (400 when it is not one, 413 past ``max_upload_mb``)."""
    content_type = request.headers.get("content-type")
    if not is_multipart(content_type):
        raise InvalidRequest("this route takes a multipart/form-data body")
    body = await read_body(request, state.config.server.max_upload_bytes)
    return UploadForm(parse_parts(body, content_type or ""))
