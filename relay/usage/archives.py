"""Archive files on disk: rows streamed into gzip JSON Lines, then published durably.

A file is written under a temporary name and fsynced, then renamed into place and its
folder fsynced, so after a crash an archive either exists whole or not at all.
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import os
from pathlib import Path
from typing import IO

import msgspec

from relay.storage.db import Database
from relay.storage.files import open_private
from relay.usage.queries import RowRange, iter_pages

__all__ = ["publish", "write_jsonl_gz"]

_encode = msgspec.json.Encoder().encode


async def write_jsonl_gz(db: Database, rows: RowRange, tmp: Path) -> int:
    """Write the rows as gzip JSON Lines to ``tmp`` (fsynced); return how many."""
    count = 0
    fd = await asyncio.to_thread(open_private, tmp)
    raw: IO[bytes] = os.fdopen(fd, "wb")
    try:
        with gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as packed:
            async for page in iter_pages(db, rows):
                data = b"".join(_encode(dict(row)) + b"\n" for row in page)
                await asyncio.to_thread(packed.write, data)
                count += len(page)
        await asyncio.to_thread(_sync, raw)
    finally:
        raw.close()
    return count


def _sync(raw: IO[bytes]) -> None:
    raw.flush()
    os.fsync(raw.fileno())


def publish(tmp: Path, path: Path) -> tuple[str, int]:
    """Rename the finished file into place durably; return its SHA-256 and size."""
    with tmp.open("rb") as f:
        digest = hashlib.file_digest(f, "sha256").hexdigest()
    os.replace(tmp, path)
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)  # the rename itself must survive a crash
    finally:
        os.close(folder)
    return digest, path.stat().st_size
