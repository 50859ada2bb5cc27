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
            if check_head is not None:
                check_head(file.read(HEAD_BYTES))
                file.seek(0)  # then read it whole into one buffer (head + rest would copy a 256 MiB file)
            # The size fstat saw plus one byte, to notice a file that grew meanwhile (then read on, still
            # bounded). Not read(max_bytes + 1) at once: that allocates max_bytes first, ~50 us per small file.
            data = file.read(info.st_size + 1)
            if len(data) > info.st_size:
                data += file.read(max_bytes + 1 - len(data))
        except OSError as error:
            raise FileRefused(describe_os_error(error)) from None
    if len(data) > max_bytes:
        raise FileRefused(f"file too large (over {max_bytes:,} bytes)")
    return data


# -- writing: never over what is there ----------------------------------------------------------------

_NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
_NEW_FILE |= getattr(os, "O_BINARY", 0)


def _write_new(name: str, data: bytes, dir_fd: int | None) -> bool:
    """Create `name` (relative to dir_fd) and write data into it; False if the name is taken (by anything: a
    file, a dangling symlink, a FIFO). O_EXCL never opens what is there, so nothing is followed or
    truncated; a file this call created and could not finish is removed."""
    try:
        fd = os.open(name, _NEW_FILE, 0o666, dir_fd=dir_fd)
    except FileExistsError:
        return False
    try:
        with open(fd, "wb", closefd=True) as file:
            file.write(data)
    except BaseException:
        os.unlink(name, dir_fd=dir_fd)
        raise
    return True


def save_new_file(
    directory: str | os.PathLike[str], stem: str, suffix: str, data: bytes, first_count: int = 1
) -> tuple[str, int]:
    """Write data to a new file directory/<stem><suffix>, or <stem>-2<suffix>, -3, ... (the first free name,
    from number first_count on); return its name and number. Never replaces or writes through anything already there.
    OSError if the directory can't be written."""
    flags = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_CLOEXEC", 0)
    dir_fd = os.open(directory, flags) if os.open in os.supports_dir_fd else None
    try:
        count = max(1, first_count)
        while True:
            name = f"{stem}{suffix}" if count == 1 else f"{stem}-{count}{suffix}"
            if _write_new(name if dir_fd is not None else os.path.join(directory, name), data, dir_fd):
                return name, count
            count += 1
    finally:
        if dir_fd is not None:
            os.close(dir_fd)


def replace_file(path: str | os.PathLike[str], data: bytes) -> None:
    """Write data to path as a whole: into a new file beside it, renamed over it at the end. So an existing
    file is replaced only by a complete one, a symlink at path is replaced (never written through), and a
    FIFO, device or directory at path is refused (FileRefused) instead of blocking or being clobbered."""
    path = os.fspath(path)
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        pass
    else:
        if stat.S_ISDIR(info.st_mode):
            raise FileRefused("is a directory")
        if not (stat.S_ISREG(info.st_mode) or stat.S_ISLNK(info.st_mode)):
            raise FileRefused("not a regular file (a FIFO, device or socket)")
    directory, name = os.path.split(path)
    temporary = os.path.join(directory, f".{name[:200]}.{os.getpid()}.{os.urandom(4).hex()}.tmp")
    if not _write_new(temporary, data, None):
        raise FileRefused("a temporary file of that name exists; try again")
    try:
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise
