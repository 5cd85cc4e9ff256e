"""The one exception type muzarr raises for anything a user can fix."""

import errno
import os
from collections.abc import Iterator
from contextlib import contextmanager


class MuzarrError(Exception):
    """Bad input, configuration or store: the message says what was wrong, where, and what to do.

    The command-line tools print it as one line and exit with status 2; library callers
    catch it like any other exception.
    """


def printable(text: object) -> str:
    """``text`` as it may appear in one line of output: control characters (a newline in a clip id, a
    label or a file name, which a user's CSV can hold) written as Python escapes them (``\\n``), all
    else as it is, accents included."""
    text = str(text)
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


_REMEDIES = {
    errno.ENOSPC: "free some space there and run the same command again to resume",
    errno.EDQUOT: "free some space (or raise the quota) there and run the same command again to resume",
    errno.EROFS: "remount it read-write, or choose {other}",
    errno.EACCES: "make it writable by this user, or choose {other}",
    errno.EPERM: "make it writable by this user, or choose {other}",
}


def write_failure(error: BaseException, where: str, *, other: str = "another --out") -> MuzarrError | None:
    """The one-line error for an OSError that means ``where`` cannot be written (full, read-only,
    forbidden), naming the file when the error does; None for any other error. ``other`` is what
    the user can choose instead (the command's option for the place)."""
    if not isinstance(error, OSError):
        return None
    code = errno.EACCES if isinstance(error, PermissionError) and error.errno is None else error.errno
    if code not in _REMEDIES:
        return None
    remedy = _REMEDIES[code].format(other=other)
    return MuzarrError(f"cannot write {error.filename or where}: {os.strerror(code)}: {remedy}")


@contextmanager
def write_errors(where: str, *, other: str = "another --out") -> Iterator[None]:
    """Turn an OSError meaning ``where`` cannot be written (see :func:`write_failure`) into its one line."""
    try:
        yield
    except OSError as error:
        failure = write_failure(error, where, other=other)
        if failure is None:
            raise
        raise failure from None
