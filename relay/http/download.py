"""A download streamed from an async generator, its failures before the first byte kept
as ordinary error answers.

A ``StreamingResponse`` sends its status line before the body's first piece is made, so a
failure there would be a 200 with an empty body. Here the first piece is made before the
response exists: a failure to start (storage down) raises in the handler and answers as
any error does; after it, a failure ends the body short (the format must make that
visible: a zip without its central directory).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from starlette.responses import StreamingResponse

__all__ = ["streamed_download"]


async def streamed_download(
    pieces: AsyncIterator[bytes], *, filename: str, media_type: str
) -> StreamingResponse:
    first = await anext(pieces)

    async def body() -> AsyncIterator[bytes]:
        yield first
        async for piece in pieces:
            yield piece

    headers = {"content-disposition": f'attachment; filename="{filename}"'}
    return StreamingResponse(body(), media_type=media_type, headers=headers)
