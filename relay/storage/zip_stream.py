"""A zip archive written entry by entry and handed out in pieces, in bounded memory.

The bytes are exactly those ``zipfile.ZipFile`` writes to a ``BytesIO`` with ``writestr``
(the export's format before it was streamed): ``zipfile`` writes each local header before
the entry's data and, on a seekable file, seeks back to fill in the CRC and sizes once the
entry is complete. So the file it writes to here (``_Window``) is seekable over the
current entry only; an entry is handed out once ``zipfile`` has closed it, from a spooled
temporary file (in memory up to ``SPOOL_BYTES``, on disk beyond), ``CHUNK_BYTES`` at a
time. An entry's content is given as a spool too (``add_spooled``): its size is then known
before its header is written, as ``writestr`` knows it, so the same entries get the same
ZIP64 fields.

Until ``finish`` writes the central directory the archive is incomplete: a reader that
gets the pieces up to a failure has no end-of-central-directory record and refuses it.
"""

from __future__ import annotations

import tempfile
import zipfile
from collections.abc import Iterator
from typing import IO

__all__ = ["CHUNK_BYTES", "SPOOL_BYTES", "ZipStream", "new_spool"]

CHUNK_BYTES = 64 * 1024
SPOOL_BYTES = 1 << 20


def new_spool() -> IO[bytes]:
    """A temporary file in memory until it outgrows ``SPOOL_BYTES``, then on disk."""
    return tempfile.SpooledTemporaryFile(max_size=SPOOL_BYTES)  # noqa: SIM115 (closed by owner)


class _Window:
    """The archive as ``zipfile`` sees it: a seekable file whose bytes before the current
    entry have been handed out already (``zipfile`` never seeks back past that entry)."""

    def __init__(self) -> None:
        self._handed_out = 0
        self._spool = new_spool()

    def write(self, data: bytes) -> int:
        return self._spool.write(data)

    def tell(self) -> int:
        return self._handed_out + self._spool.tell()

    def seek(self, offset: int, whence: int = 0) -> int:
        if whence != 0 or offset < self._handed_out:
            raise OSError("a zip stream cannot seek back past the entry being written")
        self._spool.seek(offset - self._handed_out)
        return offset

    def flush(self) -> None:
        self._spool.flush()

    def take(self) -> Iterator[bytes]:
        """Everything written since the last take, a chunk at a time, then forgotten."""
        end = self._spool.tell()
        self._spool.seek(0)
        left = end
        while left > 0:
            chunk = self._spool.read(min(CHUNK_BYTES, left))
            left -= len(chunk)
            yield chunk
        self._spool.seek(0)
        self._spool.truncate()
        self._handed_out += end

    def close(self) -> None:
        self._spool.close()


class ZipStream:
    """Entries added one at a time (blocking calls: run them off the event loop when they
    compress much), each followed by ``take()`` for its bytes; ``finish()`` closes it."""

    def __init__(self, *, date_time: tuple[int, int, int, int, int, int]) -> None:
        self._window = _Window()
        # The same default compression as the export always had; level None = zlib's default.
        self._zip = zipfile.ZipFile(self._window, "w", compression=zipfile.ZIP_DEFLATED)
        self._date_time = date_time

    def _info(self, name: str, size: int, *, stored: bool) -> zipfile.ZipInfo:
        # As ``writestr`` builds it for a name, with this archive's one timestamp.
        info = zipfile.ZipInfo(filename=name, date_time=self._date_time)
        info.compress_type = zipfile.ZIP_STORED if stored else zipfile.ZIP_DEFLATED
        info.external_attr = 0o600 << 16
        info.file_size = size
        return info

    def add_bytes(self, name: str, data: bytes, *, stored: bool = False) -> None:
        self._zip.writestr(self._info(name, len(data), stored=stored), data)

    def add_spooled(self, name: str, spool: IO[bytes], *, stored: bool = False) -> None:
        """The entry ``name`` with the spool's content (read from its start)."""
        size = spool.seek(0, 2)
        spool.seek(0)
        with self._zip.open(self._info(name, size, stored=stored), mode="w") as entry:
            while chunk := spool.read(CHUNK_BYTES):
                entry.write(chunk)

    def take(self) -> Iterator[bytes]:
        return self._window.take()

    def finish(self) -> Iterator[bytes]:
        """The central directory and end record: the archive is complete after these."""
        self._zip.close()
        return self._window.take()

    def close(self) -> None:
        """Drop the temporary file (after ``finish``, or instead of it on a failure)."""
        # An unfinished archive stays unfinished: ZipFile's __del__ would write its end.
        self._zip.fp = None
        self._window.close()
