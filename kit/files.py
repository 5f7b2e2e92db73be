"""Durable file writes: every file the product writes goes through :func:`write_atomic`.

A reader (HAProxy, a restarted agent) sees the old content or the new, never a torn file, and
after a crash or power loss the rename is not undone while the data is lost: the content is
fsynced before the rename and the directory after it (what ext4 and XFS need for a rename to be
durable). A secret is never readable by others, not even for an instant: the temporary file is
created with its final mode, before a byte is written.
"""
from __future__ import annotations

import os
import secrets
from pathlib import Path

SECRET = 0o600
PUBLIC = 0o644


def write_atomic(path: Path | str, data: str | bytes, mode: int = SECRET, *,
                 sync_directory: bool = True, sync_file: bool = True) -> None:
    """Replace ``path`` with ``data`` (str is written as UTF-8) and file mode ``mode``.

    The content goes to a new temporary file in the same directory (created exclusively with
    ``mode``), is fsynced, renamed over ``path``, then the directory is fsynced. On any error
    the temporary file is removed and ``path`` is left as it was. ``sync_directory=False``
    skips the last step for a caller that writes many files into one directory and then calls
    :func:`fsync_directory` once; ``sync_file=False`` skips the content's fsync too, for one
    that makes many new files durable at once (``os.sync()``, then :func:`fsync_directory`).
    """
    path = Path(path)
    payload = data.encode() if isinstance(data, str) else data
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    descriptor = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    try:
        try:
            os.fchmod(descriptor, mode)  # the umask may have taken bits away; set it exactly
            view = memoryview(payload)
            while view:
                view = view[os.write(descriptor, view):]
            if sync_file:
                os.fsync(descriptor)
        finally:
            os.close(descriptor)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if sync_directory:
        fsync_directory(path.parent)


def fsync_directory(directory: Path | str) -> None:
    """Make the names in ``directory`` (new files, renames, symlinks) durable."""
    descriptor = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def replace_durably(source: Path | str, target: Path | str) -> None:
    """``os.replace`` (a file or a symlink), then fsync the target's directory."""
    os.replace(source, target)
    fsync_directory(Path(target).parent)
