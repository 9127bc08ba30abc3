"""Reading small files a user names (configs, keys) without ever blocking on them.

``read_regular_file`` opens with O_NONBLOCK, so a FIFO or a device named by
mistake never makes the caller wait for a writer; it then refuses anything but
a regular file (checked on the open descriptor: no check-then-open race) and
reads at most ``max_bytes + 1`` bytes, so an endless file cannot exhaust memory.
Pure of trio and sockets; errors are ``FileProblem`` with a short reason.
"""

from __future__ import annotations

import os
import stat


class FileProblem(Exception):
    """Why a named file cannot be used.

    ``action`` is "open" or "read"; ``str()`` is the short reason: the strerror
    ("No such file or directory"), "a FIFO, not a regular file" or "larger
    than N bytes".
    """

    def __init__(self, action: str, reason: str) -> None:
        super().__init__(reason)
        self.action = action


def file_kind(mode: int) -> str:
    """A person's name for the file type in ``mode`` ("directory", "FIFO", ...)."""
    for test, name in ((stat.S_ISREG, "regular file"), (stat.S_ISDIR, "directory"),
                       (stat.S_ISLNK, "symbolic link"), (stat.S_ISFIFO, "FIFO"),
                       (stat.S_ISCHR, "character device"), (stat.S_ISBLK, "block device"),
                       (stat.S_ISSOCK, "socket")):
        if test(mode):
            return name
    return "special file"


def read_regular_file(path: str, max_bytes: int) -> tuple[bytes, os.stat_result]:
    """The content (at most ``max_bytes``) and status of the regular file at ``path``.

    Raises ``FileProblem`` naming what is wrong: it cannot be opened (the
    strerror), it is not a regular file, or it is larger than ``max_bytes``.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK)
    except OSError as exc:
        raise FileProblem("open", exc.strerror or str(exc)) from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise FileProblem("read", f"a {file_kind(info.st_mode)}, not a regular file")
        chunks = []
        size = 0
        while size <= max_bytes:
            chunk = os.read(fd, max_bytes + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except OSError as exc:
        raise FileProblem("read", exc.strerror or str(exc)) from None
    finally:
        os.close(fd)
    if size > max_bytes:
        raise FileProblem("read", f"larger than {max_bytes} bytes")
    return b"".join(chunks), info
