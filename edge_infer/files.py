"""Reading untrusted files safely: regular files only, size checked before reading, the head checked before
the rest is read. Used for images and models alike.

A FIFO, a device (/dev/zero), a socket or a directory is refused right after open(), which never blocks
(O_NONBLOCK), so nothing hangs or grows without bound; a huge (or sparse) file is refused by its size.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable

HEAD_BYTES = 32  # what format sniffers get to see before the rest of the file is read

# The messages a user sees for the usual OS errors (strerror's are capitalised and sometimes obscure).
_OS_ERRORS = {
    errno.ENOENT: "file not found",
    errno.ELOOP: "symbolic link loop",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.ENOTDIR: "a component of the path is not a directory",
    errno.ENAMETOOLONG: "file name too long",
    errno.EISDIR: "is a directory",
}


class FileRefused(ValueError):
    """A one-line reason a file can't be read (without the path: the caller adds it where it is shown)."""


def describe_os_error(error: OSError) -> str:
    """One short lower-case line for an OSError, e.g. 'symbolic link loop'."""
    known = _OS_ERRORS.get(error.errno or 0)
    if known:
        return known
    text = error.strerror or str(error) or type(error).__name__
    return f"cannot read ({text[:1].lower() + text[1:]})"


def read_regular_file(
    path: str | os.PathLike[str], max_bytes: int, check_head: Callable[[bytes], object] | None = None
) -> bytes:
    """The whole file, if it is a regular file of 1..max_bytes bytes whose first HEAD_BYTES bytes pass
    check_head (which raises to refuse). Raises FileRefused with a one-line reason otherwise."""
    try:
        fd = os.open(
            path,
            os.O_RDONLY
            | getattr(os, "O_NONBLOCK", 0)
            | getattr(os, "O_NOCTTY", 0)
            | getattr(os, "O_CLOEXEC", 0)
            | getattr(os, "O_BINARY", 0),
        )
    except ValueError:  # "embedded null byte"
        raise FileRefused("the path contains a NUL character") from None
    except OSError as error:
        raise FileRefused(describe_os_error(error)) from None
    try:
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            raise FileRefused("is a directory")
        if not stat.S_ISREG(info.st_mode):
            raise FileRefused("not a regular file (a FIFO, device or socket)")
        if info.st_size > max_bytes:
            raise FileRefused(f"file too large ({info.st_size:,} bytes, limit {max_bytes:,})")
        if info.st_size == 0:
            raise FileRefused("empty file")
    except BaseException:
        os.close(fd)
        raise
    with open(fd, "rb", buffering=0) as file:
        try:
            head = file.read(HEAD_BYTES)
            if check_head is not None:
                check_head(head)
            # The size fstat saw plus one byte, to notice a file that grew meanwhile (then read on, still
            # bounded). Not read(max_bytes + 1) at once: that allocates max_bytes first, ~50 us per small file.
            rest = file.read(info.st_size + 1 - len(head))
            if len(head) + len(rest) > info.st_size:
                rest += file.read(max_bytes + 1 - len(head) - len(rest))
        except OSError as error:
            raise FileRefused(describe_os_error(error)) from None
    data = head + rest
    if len(data) > max_bytes:
        raise FileRefused(f"file too large (over {max_bytes:,} bytes)")
    return data
