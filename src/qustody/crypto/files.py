"""Files that hold secrets or state that must survive a crash: written whole or
not at all, readable only by their owner.

Shared by every key file (token signing, audit log signing, the local
keyring and its master key) and the audit witness's state.
"""

from __future__ import annotations

import os
from pathlib import Path

from qustody.domain.errors import ConfigurationError


def fsync_dir(directory: Path) -> None:
    """Make a rename or link in ``directory`` durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_new_file(path: Path, content: bytes) -> Path:
    """Write ``content`` to a fresh 0600 temporary file next to ``path``,
    fsynced; return the temporary path."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{os.urandom(6).hex()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        view = memoryview(content)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    os.close(fd)
    return tmp


def replace_atomically(path: Path, content: bytes) -> None:
    """Replace ``path`` with ``content`` (0600): readers see the old file or the new."""
    tmp = write_new_file(path, content)
    try:
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def create_private(path: Path, content: bytes) -> bool:
    """Create ``path`` (0600, parents 0700) holding ``content`` unless it exists.

    Atomic (``link`` of a complete temporary file): processes racing to create
    it agree on one file, and none sees it half-written. Returns whether this
    call created it.
    """
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = write_new_file(path, content)
    try:
        os.link(tmp, path)
    except FileExistsError:
        return False  # another process won the race; its file stands
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(path.parent)
    return True


def check_private(path: Path, what: str) -> None:
    """Refuse a secret file that other users can read or write."""
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        raise ConfigurationError(
            f"{what} {path} is readable by other users (mode {mode:o}); run: chmod 600 {path}"
        )
