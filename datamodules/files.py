"""Atomic file writes, and checked reads of data files.

Writes go through a temp file and a rename, so a reader never sees a half-written corpus,
tokenizer or cache. Reads accept regular files only (a FIFO or a device would hang or never
end) and turn every problem (missing file, not UTF-8, bad JSON, a huge line) into one
``DataFormatError`` (a ``UserError``) naming the file and line.
"""

from __future__ import annotations

import itertools
import json
import os
import stat
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

from lhp.errors import UserError


def write_atomic(path: str | os.PathLike[str], write: Callable[[BinaryIO], object]) -> Path:
    """Call ``write(fh)`` on a temp file in the target's directory, fsync, then ``os.replace``.

    On any error the temp file is removed and an existing target is left untouched; concurrent
    writers leave one complete file. The directory is fsynced too where the platform allows,
    so the rename itself survives a crash.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    try:
        dir_fd = os.open(path.parent, os.O_RDONLY)
    except OSError:
        return path
    try:
        os.fsync(dir_fd)
    except OSError:
        pass  # not supported on every platform/filesystem
    finally:
        os.close(dir_fd)
    return path


# --------------------------------------------------------------------------- checked reading
MAX_RECORD_BYTES = 64 * 2**20
"""Longest line a line-by-line reader accepts (64 MiB): a JSONL record or text line longer than
this is refused (with its file and line) instead of being read whole into memory; raise it here
if a corpus truly has longer lines."""

_SPECIAL_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a named pipe (FIFO)"),
                  (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                  (stat.S_ISSOCK, "a socket"))


class DataFormatError(UserError):
    """A data file is missing, not a regular file, not UTF-8 or malformed; the message names the
    file (and line, record or key) and what was expected."""


def _refuse_special(path: Path, mode: int, expected: str) -> None:
    """Only regular files are data: a FIFO or a device would block or never end."""
    if not stat.S_ISREG(mode):
        kind = next((name for test, name in _SPECIAL_KINDS if test(mode)), "not a regular file")
        raise DataFormatError(f"{path}: is {kind}, not a regular file; expected {expected}")


def open_regular(path: str | os.PathLike[str], expected: str) -> BinaryIO:
    """Open a regular file for binary reading, refusing (``DataFormatError`` naming ``path``) a
    missing or unreadable path and special files (directories, FIFOs, devices, sockets).

    The path is checked with ``os.stat`` before opening, and the opened descriptor again (it is
    opened non-blocking, so a FIFO swapped in between cannot hang the open).
    ``expected`` says what the file should be ("a JSONL file ...") for the message.
    """
    path = Path(path)
    try:
        _refuse_special(path, os.stat(path).st_mode, expected)
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        raise DataFormatError(f"{path}: file does not exist; expected {expected}") from None
    except OSError as err:
        raise DataFormatError(f"{path}: cannot be read ({err.strerror}); expected {expected}") from None
    try:
        _refuse_special(path, os.fstat(fd).st_mode, expected)
    except BaseException:
        os.close(fd)
        raise
    return os.fdopen(fd, "rb")


def utf8_error(path: str | os.PathLike[str], data: bytes, err: UnicodeDecodeError,
               line: int = 1, offset: int = 0) -> DataFormatError:
    """The error for ``data`` (read from ``path`` at byte ``offset``, starting on ``line``)
    failing to decode: names the file, line, byte offset and byte."""
    line += data.count(b"\n", 0, err.start)
    byte = data[err.start : err.start + 1].hex()
    return DataFormatError(
        f"{path}:{line}: not UTF-8 text (byte 0x{byte} at byte offset {offset + err.start}); "
        "expected UTF-8 encoded text: re-save the file as UTF-8 (e.g. iconv -f latin1 -t utf-8)"
    )


def read_text(path: str | os.PathLike[str], expected: str) -> str:
    """The whole text of a regular UTF-8 file, exactly as on disk (no newline translation, a
    byte-order mark kept); every problem is a ``DataFormatError`` naming the file."""
    with open_regular(path, expected) as fh:
        data = fh.read()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise utf8_error(path, data, err) from None


def iter_lines(path: str | os.PathLike[str], expected: str) -> Iterator[tuple[int, str]]:
    """``(line number, line)`` of a regular UTF-8 file, read one line at a time and split on
    ``\\n`` only (the newline is dropped; a ``\\r`` before it is kept). A leading byte-order mark
    is dropped. A line over ``MAX_RECORD_BYTES`` or one that is not UTF-8 is a
    ``DataFormatError`` naming the file and line."""
    limit = MAX_RECORD_BYTES
    with open_regular(path, expected) as fh:
        offset = 0
        for lineno in itertools.count(1):
            raw = fh.readline(limit + 1)
            if not raw:
                return
            if len(raw) > limit and not raw.endswith(b"\n"):
                raise DataFormatError(
                    f"{path}:{lineno}: line is longer than {limit:,} bytes (the limit of one "
                    f"record, datamodules.files.MAX_RECORD_BYTES); expected {expected}")
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise utf8_error(path, raw, err, lineno, offset) from None
            offset += len(raw)
            if lineno == 1:
                line = line.removeprefix("\ufeff")
            yield lineno, line.removesuffix("\n")


def parse_json(text: str, path: str | os.PathLike[str], expected: str,
               line: int | None = None) -> Any:
    """``json.loads(text)`` of a whole file (``line`` None) or of its line ``line``; invalid,
    too deeply nested or oversized-number JSON is a ``DataFormatError`` naming file and line."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        where = f"{path}:{err.lineno if line is None else line}"
        raise DataFormatError(f"{where}: invalid JSON ({err.msg} at column {err.colno}); "
                              f"expected {expected}") from None
    except (RecursionError, ValueError) as err:  # nesting too deep; integer over 4300 digits
        where = f"{path}" if line is None else f"{path}:{line}"
        problem = ("nested too deeply" if isinstance(err, RecursionError)
                   else f"a number too long to read: {err}".split(";")[0])
        raise DataFormatError(f"{where}: unreadable JSON ({problem}); expected {expected}") from None
