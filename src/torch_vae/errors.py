"""User-facing errors: the CLI prints these as one line and exits non-zero, without a traceback."""

import errno
import os
import re


class TorchVaeError(Exception):
    """An error caused by user input (flags, files, checkpoints, datasets).

    The message says what is wrong and how to fix it.
    """


class TrainingInterrupted(TorchVaeError):
    """Training stopped on SIGINT, SIGTERM or SIGHUP after saving its state; the message says
    how to resume. ``exit_code`` is the shell's convention for the signal: 128 + its number."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


def describe_os_error(exc: OSError) -> str:
    """One line for a failed read or write: what, where, what to do, and what was kept. A
    temporary file that torch-vae writes a file through (``.NAME.XXXXXXXX.tmp``) is named as
    the file it was for."""
    name = exc.filename
    if isinstance(name, str | os.PathLike):
        temporary = re.fullmatch(r"\.(.+)\.[A-Za-z0-9_]{8}\.tmp", os.path.basename(name))
        if temporary:
            name = os.path.join(os.path.dirname(name), temporary.group(1))
    where = f" {name}" if name else ""
    full = exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS)
    hint = {
        errno.ENOSPC: "free some space or write somewhere else",
        errno.EDQUOT: "free some space or write somewhere else",
        errno.EROFS: "choose a writable folder",
        errno.EACCES: "check its permissions or choose another folder",
        errno.EPERM: "check its permissions or choose another folder",
        errno.ENOTDIR: "a file is in the way of a folder; choose another path",
        errno.EISDIR: "it is a folder; give a file name",
        errno.EFBIG: "a limit on the size of files (ulimit -f, or the file system's): raise "
        "it or write somewhere else",
    }.get(exc.errno, "check the path")
    return (
        f"cannot {'write' if full else 'access'}{where}: {exc.strerror or exc} ({hint}); "
        "files written before are "
        "intact, and none is left half-written"
    )


def first_line(exc: BaseException, limit: int = 200, with_type: bool = True) -> str:
    """The first line of the exception's message (after its type, ``with_type``), for a
    one-line error; its type alone when it has no message."""
    lines = str(exc).strip().splitlines()
    if not lines:
        return type(exc).__name__
    return f"{type(exc).__name__}: {lines[0][:limit]}" if with_type else lines[0][:limit]
