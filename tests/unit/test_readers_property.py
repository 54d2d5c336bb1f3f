"""Every data file reader: any input gives the documented records or one UserError naming the
file, never another exception, a hang or a silent partial read (Hypothesis properties, plus
special files: FIFOs, directories, devices)."""

from __future__ import annotations

import contextlib
import json
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from datamodules.book_coords import BookCoordsDataModule, position_index, read_book
from datamodules.corpora import read_alpaca_file, wiki_lines
from datamodules.jsonl import read_jsonl_records
from datamodules.tokenizers import load_pretrained
from lhp.errors import UserError

FAST = settings(max_examples=60, deadline=None)
KEYS = ("text", "instruction", "input", "output")

scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20)
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=5), inner,
                                             max_size=4), max_leaves=12)
# objects with the record keys and mostly string values: often valid, sometimes not
record_like = st.dictionaries(st.sampled_from(KEYS), st.text(max_size=30) | scalars, min_size=1)
text_records = st.builds(lambda t: {"text": t}, st.text(max_size=40))
alpaca_records = st.builds(
    lambda i, o, inp: {"instruction": i, "output": o, **({} if inp is None else {"input": inp})},
    st.text(max_size=40), st.text(max_size=40), st.none() | st.text(max_size=20))


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("readers")


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _jsonl(values: list[Any], ensure_ascii: bool) -> bytes:
    return "\n".join(json.dumps(v, ensure_ascii=ensure_ascii) for v in values).encode()


def _outcome(read: Callable[[Path], Any], path: Path) -> Any:
    """``read(path)``, or None when it raised a UserError naming ``path``; any other exception
    propagates and fails the property."""
    try:
        return read(path)
    except UserError as err:
        assert str(path) in str(err), f"message does not name the file: {err}"
        return None


def _is_documented_record(rec: Any) -> bool:
    """``text``, or ``instruction``/``output`` (and an optional ``input``), all strings that
    encode as UTF-8 (no unpaired surrogates)."""
    if not isinstance(rec, dict):
        return False
    keys = ["text"] if "text" in rec else ["instruction", "output", *(["input"] if "input" in rec else [])]
    values = [rec.get(k) for k in keys]
    if not all(isinstance(v, str) for v in values):
        return False
    for v in values:
        v.encode("utf-8")  # raises on an unpaired surrogate, failing the property
    return True


# ------------------------------------------------------------------------------------- JSONL
@FAST
@given(data=st.binary(max_size=300) | st.lists(json_values | record_like, max_size=5).map(
    lambda vs: _jsonl(vs, ensure_ascii=False)))
@example(data=b'{"text": "a\\ud800"}')  # unpaired surrogate escape
@example(data=b"[" * 50_000)  # too deeply nested for the json module
@example(data=b'{"text": "caf\xe9"}')  # Latin-1
def test_jsonl_reader_gives_records_or_a_user_error(workdir: Path, data: bytes) -> None:
    records = _outcome(read_jsonl_records, _write(workdir / "any.jsonl", data))
    if records is not None:
        assert records and all(_is_documented_record(r) for r in records)


# ------------------------------------------------------------------------------------ Alpaca
@FAST
@given(value=json_values | st.lists(record_like, max_size=4) | st.lists(alpaca_records, max_size=4))
def test_alpaca_json_reader_gives_records_or_a_user_error(workdir: Path, value: Any) -> None:
    records = _outcome(read_alpaca_file, _write(workdir / "any.json", json.dumps(value).encode()))
    if records is not None:
        assert records and all(set(r) == {"instruction", "input", "output"} for r in records)
        assert all(_is_documented_record(r) for r in records)


@FAST
@given(data=st.binary(max_size=300) | st.lists(json_values | record_like, max_size=5).map(
    lambda vs: _jsonl(vs, ensure_ascii=False)))
def test_alpaca_jsonl_reader_gives_records_or_a_user_error(workdir: Path, data: bytes) -> None:
    records = _outcome(read_alpaca_file, _write(workdir / "any.jsonl", data))
    if records is not None:
        assert records and all(_is_documented_record(r) for r in records)


@FAST
@given(records=st.lists(text_records | alpaca_records, min_size=1, max_size=6),
       ensure_ascii=st.booleans(), form=st.sampled_from(["jsonl", "alpaca.json", "alpaca.jsonl"]))
@example(records=[{"instruction": "a\u2028b\x85c", "output": "d"}], ensure_ascii=False,
         form="alpaca.jsonl")  # line separators that are not newlines
def test_valid_records_round_trip(workdir: Path, records: list[dict], ensure_ascii: bool,
                                  form: str) -> None:
    """Written as documented, read back unchanged (Alpaca readers: ``input`` defaults to "")."""
    if form == "jsonl":
        path = _write(workdir / "valid.jsonl", _jsonl(records, ensure_ascii) + b"\n")
        assert read_jsonl_records(path) == records
        return
    records = [r for r in records if "text" not in r] or [{"instruction": "i", "output": "o"}]
    data = (json.dumps(records, ensure_ascii=ensure_ascii).encode() if form == "alpaca.json"
            else _jsonl(records, ensure_ascii))
    got = read_alpaca_file(_write(workdir / f"valid.{form.split('.')[1]}", data))
    assert got == [{"input": "", **r} for r in records]


# ------------------------------------------------------------------------------------- books
@FAST
@given(text=st.text(min_size=1, max_size=300))
@example(text="\ufeff")  # only a byte-order mark: an empty book
@example(text="a")  # one character: x = 0
def test_book_positions_lie_in_unit_interval_and_map_back(workdir: Path, text: str) -> None:
    path = _write(workdir / "book.txt", text.encode("utf-8"))
    book = text.removeprefix("\ufeff")
    if not book:
        with pytest.raises(UserError, match="empty book"):
            read_book(path)
        return
    dm = BookCoordsDataModule([str(path)])
    coords, targets = dm.dataset.coords, dm.dataset.targets
    assert coords.min() >= 0 and coords.max() <= 1 and coords[0] == 0
    assert len(book) == 1 or (coords[-1] == 1 and bool((coords.diff() > 0).all()))
    index = position_index(coords, len(book))
    assert index.tolist() == list(range(len(book)))
    assert dm.vocab.decode(targets[index]) == book


@FAST
@given(data=st.binary(max_size=200))
def test_book_reader_gives_text_or_a_user_error(workdir: Path, data: bytes) -> None:
    text = _outcome(read_book, _write(workdir / "bytes.txt", data))
    if text is not None:
        assert text and data.decode("utf-8").removeprefix("\ufeff") == text


# ----------------------------------------------------------------------------- special files
def _wiki(path: Path) -> list[str]:
    return wiki_lines({"path": str(path.parent)}, "train")


READERS: dict[str, tuple[str, Callable[[Path], Any]]] = {
    "jsonl": ("data.jsonl", read_jsonl_records),
    "alpaca-json": ("data.json", read_alpaca_file),
    "alpaca-jsonl": ("data.jsonl", read_alpaca_file),
    "book": ("book.txt", read_book),
    "wiki": ("train.txt", _wiki),
    "tokenizer": ("tokenizer.json", load_pretrained),
}
SPECIAL = {"fifo": "a named pipe (FIFO)", "device": "a character device", "directory": "a directory"}


def _make_special(path: Path, kind: str) -> None:
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "device":
        path.symlink_to("/dev/null")
    else:
        path.mkdir()


def _call_with_timeout(read: Callable[[Path], Any], path: Path) -> BaseException | None:
    """The exception ``read(path)`` raises (None if none); a read still blocked after 10 s is
    released (a writer opens and closes the FIFO) and fails the test instead of hanging it."""
    out: dict[str, BaseException] = {}

    def run() -> None:
        try:
            read(path)
        except BaseException as err:  # noqa: BLE001 - handed to the test
            out["err"] = err

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(10)
    if thread.is_alive():
        with contextlib.suppress(OSError):
            os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
        thread.join(10)
        pytest.fail(f"reading {path} blocked")
    return out.get("err")


# a directory given as tokenizer path is searched for tokenizer.json, by design
CASES = [(r, k) for r in sorted(READERS) for k in sorted(SPECIAL) if (r, k) != ("tokenizer", "directory")]


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs POSIX FIFOs and /dev/null")
@pytest.mark.parametrize(("reader", "kind"), CASES)
def test_special_files_are_refused_with_their_path(tmp_path: Path, reader: str, kind: str) -> None:
    """A FIFO would block (or a device never end): only regular files are read."""
    name, read = READERS[reader]
    path = tmp_path / name
    _make_special(path, kind)
    err = _call_with_timeout(read, path)
    assert isinstance(err, UserError), f"expected a UserError, got {err!r}"
    assert f"{path}: is {SPECIAL[kind]}, not a regular file" in str(err)
