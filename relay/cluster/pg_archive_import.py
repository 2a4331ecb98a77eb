"""``relay migrate``: the embedded archive files into PostgreSQL, beside their records.

In cluster mode archives live in PostgreSQL (``archive_chunks``, relay.cluster.pg_retention),
so the files a stopped embedded relay kept beside its database (``<database>.archives/``)
are stored there too, inside the migration's one transaction, each checked against its
record's size and SHA-256 first. A missing or different file is a problem of the report (the
migration does not commit): its rows were deleted from the hot table when it was archived,
so the file is their only copy.
"""

from __future__ import annotations

import asyncio
import hashlib
import sqlite3
from pathlib import Path
from typing import Any

from relay.storage.schema_cluster_jobs import ARCHIVE_CHUNK_BYTES

__all__ = ["import_archives"]


async def import_archives(source: sqlite3.Connection, target: Any, folder: Path) -> list[str]:
    """Store every archive file the ``archives`` table names; the problems found."""
    problems: list[str] = []
    records = source.execute("SELECT name, bytes, sha256 FROM archives ORDER BY name").fetchall()
    for name, size, sha256 in records:
        path = folder / str(name)
        if not await asyncio.to_thread(path.is_file):
            problems.append(f"archive {name}: no file {path} (copy the archive folder back)")
            continue
        digest = hashlib.sha256()
        stored = 0
        with path.open("rb") as file:
            while piece := await asyncio.to_thread(file.read, ARCHIVE_CHUNK_BYTES):
                digest.update(piece)
                await target.execute(
                    "INSERT INTO archive_chunks (name, seq, data) VALUES ($1, $2, $3)",
                    name,
                    stored // ARCHIVE_CHUNK_BYTES,
                    piece,
                )
                stored += len(piece)
        if (stored, digest.hexdigest()) != (size, sha256):
            problems.append(f"archive {name}: the file differs from its record (size or sha256)")
    return problems
