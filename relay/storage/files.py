"""Files relay keeps on disk are private to its user: files 0600, folders 0700.

The database holds account names, emails and usage; its ``-wal`` and ``-shm`` files hold
the same pages; ``<database>.secret`` keys the audit chain and the key cache; archives hold
usage history. None of them is for other local users, whatever the umask. SQLite creates
``-wal`` and ``-shm`` with the database file's own mode, so a database file created 0600
keeps its journal files 0600 too.

Files that already exist with group or world access (made by an older relay) are
tightened once, with a warning. Folders relay did not create (the one the database sits
in, say ``/var/lib``) are left alone; the ones it creates are 0700.
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

__all__ = [
    "FILE_MODE",
    "FOLDER_MODE",
    "create_private_file",
    "make_private_dir",
    "open_private",
    "secure_existing",
]

FILE_MODE = 0o600
FOLDER_MODE = 0o700

log = logging.getLogger("relay.storage")


def make_private_dir(path: Path) -> None:
    """Create ``path`` and its missing parents 0700; existing folders are left as they are."""
    missing = [folder for folder in (path, *path.parents) if not folder.exists()]
    for folder in reversed(missing):
        folder.mkdir(mode=FOLDER_MODE, exist_ok=True)


def open_private(path: Path, flags: int = os.O_WRONLY | os.O_CREAT | os.O_TRUNC) -> int:
    """``os.open`` with mode 0600 for a new file (the umask may only narrow it)."""
    fd = os.open(path, flags, FILE_MODE)
    if flags & os.O_CREAT:
        os.fchmod(fd, FILE_MODE)  # an existing file keeps its mode through os.open
    return fd


def secure_existing(*paths: Path) -> None:
    """Drop group and world access from each file (or folder) that exists."""
    for path in paths:
        try:
            mode = stat.S_IMODE(path.stat().st_mode)
        except FileNotFoundError:
            continue
        if mode & 0o077:
            log.warning("%s was open to other users (mode %o); now owner-only", path, mode)
            path.chmod(mode & 0o700)


def create_private_file(path: Path) -> None:
    """Create an empty 0600 file at ``path`` unless one exists (then tighten it)."""
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE))
    except FileExistsError:
        secure_existing(path)
