"""Strict JSONL reading, record formatting, and the synthetic mock corpus."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from datamodules import files, jsonl
from datamodules.jsonl import (
    DataFormatError,
    format_record,
    read_jsonl_records,
    write_mock_corpus,
)
from lhp.errors import UserError


def _write(tmp_path: Path, content: str | bytes, name: str = "data.jsonl") -> Path:
    path = tmp_path / name
    path.write_bytes(content.encode("utf-8") if isinstance(content, str) else content)
    return path


def test_reads_text_and_instruction_records_skipping_blank_lines(tmp_path: Path) -> None:
    path = _write(tmp_path, '{"text": "hello"}\n\n   \n'
                  '{"instruction": "Do it.", "input": "x", "output": "done"}\n'
                  '{"instruction": "Go.", "output": "ok"}\r\n')
    assert read_jsonl_records(path) == [
        {"text": "hello"},
        {"instruction": "Do it.", "input": "x", "output": "done"},
        {"instruction": "Go.", "output": "ok"},
    ]


def test_accepts_str_path_and_bom(tmp_path: Path) -> None:
    path = _write(tmp_path, b'\xef\xbb\xbf{"text": "a"}')
    assert read_jsonl_records(str(path)) == [{"text": "a"}]


GOOD = '{"text": "ok"}\n'

# (file content, 1-based line of the error or None, pattern the message must also contain)
BAD_CASES = {
    "malformed_json": (GOOD + '{"text": "unterminated}\n', 2, r"invalid JSON \(.+\)"),
    "trailing_garbage": (GOOD + GOOD + '{"text": "a"} x\n', 3, "invalid JSON"),
    "not_object_list": (GOOD + '["text"]\n', 2, "array, not an object"),
    "not_object_str": ('"just a string"\n', 1, "string, not an object"),
    "missing_text": (GOOD + '{"body": "x"}\n', 2, "no 'text' or 'instruction'"),
    "missing_output": (GOOD + GOOD + '{"instruction": "x"}\n', 3, "missing the key 'output'"),
    "missing_instruction": ('{"output": "x"}\n', 1, "missing the key 'instruction'"),
    "text_wrong_type": (GOOD + '{"text": 5}\n', 2, "'text' is a int, not a string"),
    "input_wrong_type": ('{"instruction": "a", "input": null, "output": "b"}\n', 1,
                         "'input' is a NoneType"),
    "output_wrong_type": ('\n\n{"instruction": "a", "output": ["b"]}\n', 3, "'output' is a list"),
}


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_bad_lines_name_file_and_line(tmp_path: Path, case: str) -> None:
    content, line, pattern = BAD_CASES[case]
    path = _write(tmp_path, content, name=f"{case}.jsonl")
    with pytest.raises(DataFormatError, match=rf"{re.escape(str(path))}:{line}: .*{pattern}") as e:
        read_jsonl_records(path)
    assert "expected" in str(e.value)
    assert isinstance(e.value, UserError)


def test_non_utf8_names_line_and_byte_offset(tmp_path: Path) -> None:
    """Latin-1 bytes: file, line, the byte and its offset in the file, and that it must be UTF-8."""
    path = _write(tmp_path, GOOD.encode() * 3 + b'{"text": "caf\xe9"}\n' + GOOD.encode())
    offset = 3 * len(GOOD) + len('{"text": "caf')
    with pytest.raises(UserError, match=rf"{re.escape(str(path))}:4: not UTF-8 text \(byte 0xe9 "
                       rf"at byte offset {offset}\); expected UTF-8"):
        read_jsonl_records(path)


@pytest.mark.parametrize(("line", "pattern"), [
    ("[" * 100_000, "nested too deeply"),
    ('{"text": ' + "1" * 5000 + "}", "a number too long to read"),
], ids=["deep-nesting", "huge-integer"])
def test_pathological_json_names_file_and_line(tmp_path: Path, line: str, pattern: str) -> None:
    path = _write(tmp_path, GOOD + line + "\n")
    with pytest.raises(UserError, match=rf"{re.escape(str(path))}:2: unreadable JSON \(.*{pattern}"):
        read_jsonl_records(path)


def test_unpaired_surrogate_escape_is_refused(tmp_path: Path) -> None:
    """JSON's \\ud800 is no character: such a record could not be tokenized later."""
    path = _write(tmp_path, GOOD + '{"instruction": "a", "output": "x\\ud800y"}\n')
    with pytest.raises(UserError, match=rf"{re.escape(str(path))}:2: key 'output' holds an "
                       r"unpaired surrogate '\\ud800' at character 1"):
        read_jsonl_records(path)


def test_overlong_line_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Lines are read with a cap (files.MAX_RECORD_BYTES, 64 MiB): never a whole huge line."""
    monkeypatch.setattr(files, "MAX_RECORD_BYTES", 64)
    exact = json.dumps({"text": "x" * 51}) + "\n"  # 64 bytes with its newline
    path = _write(tmp_path, exact + json.dumps({"text": "y" * 60}) + "\n")
    with pytest.raises(UserError, match=rf"{re.escape(str(path))}:2: line is longer than 64 bytes"):
        read_jsonl_records(path)
    assert read_jsonl_records(_write(tmp_path, exact, "ok.jsonl")) == [{"text": "x" * 51}]


def test_missing_file_suggests_mock_data(tmp_path: Path) -> None:
    path = tmp_path / "nope.jsonl"
    with pytest.raises(DataFormatError, match=r"nope\.jsonl.*does not exist") as e:
        read_jsonl_records(path)
    assert "data.create_mock_data=true" in str(e.value)


def test_directory_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "adir.jsonl"
    path.mkdir()
    with pytest.raises(DataFormatError, match=r"adir\.jsonl: is a directory"):
        read_jsonl_records(path)


@pytest.mark.parametrize("content", ["", "\n\n  \n"])
def test_empty_file_is_rejected(tmp_path: Path, content: str) -> None:
    path = _write(tmp_path, content, name="empty.jsonl")
    with pytest.raises(DataFormatError, match=r"empty\.jsonl.*no records"):
        read_jsonl_records(path)


def test_format_record_text() -> None:
    assert format_record({"text": "just text"}) == "just text"


def test_format_record_with_input() -> None:
    rec = {"instruction": "Add the two numbers.", "input": "3 and 4", "output": "7"}
    assert format_record(rec) == (
        "### Instruction:\nAdd the two numbers.\n\n### Input:\n3 and 4\n\n### Response:\n7"
    )


@pytest.mark.parametrize("extra", [{}, {"input": ""}, {"input": "  \n"}])
def test_format_record_without_input(extra: dict[str, str]) -> None:
    rec = {"instruction": "Name a color.", "output": "red", **extra}
    assert format_record(rec) == "### Instruction:\nName a color.\n\n### Response:\nred"


def test_format_record_rejects_unknown_record() -> None:
    with pytest.raises(ValueError):
        format_record({"body": "x"})


def _leftovers(directory: Path, keep: Path) -> list[Path]:
    return [p for p in directory.iterdir() if p != keep]


def test_mock_corpus_is_reproducible_and_valid(tmp_path: Path) -> None:
    a = write_mock_corpus(tmp_path / "a" / "nested" / "corpus.jsonl", 300, seed=7)
    b = write_mock_corpus(tmp_path / "b.jsonl", 300, seed=7)
    c = write_mock_corpus(tmp_path / "c.jsonl", 300, seed=8)
    assert isinstance(a, Path) and a.is_file()
    assert a.read_bytes() == b.read_bytes()
    assert a.read_bytes() != c.read_bytes()
    assert _leftovers(a.parent, a) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b.jsonl", "c.jsonl"]

    records = read_jsonl_records(a)
    assert len(records) == len(a.read_text().splitlines()) == 300
    texts = [r for r in records if "text" in r]
    instructions = [r for r in records if "instruction" in r]
    assert texts and instructions
    assert 0.10 <= len(instructions) / len(records) <= 0.20
    assert any(r.get("input") == "" for r in instructions)
    for rec in records:
        text = format_record(rec)
        assert 40 <= len(text) <= 450
        assert text.isascii()
    joined = " ".join(format_record(r) for r in records)
    assert "where is" in joined and " plus " in joined and " are " in joined


def test_mock_corpus_stories_are_answerable(tmp_path: Path) -> None:
    """The answer to 'where is X?' is the last place the story put X."""
    path = write_mock_corpus(tmp_path / "c.jsonl", 200, seed=3)
    checked = 0
    for rec in read_jsonl_records(path):
        m = re.fullmatch(r"(.*) where is (\w+)\? (\w+)\.", rec.get("text", ""))
        if not m:
            continue
        story, person, answer = m.groups()
        moves = re.findall(rf"\b{person} \w+ to the (\w+)\.", story)
        assert moves[-1] == answer
        checked += 1
    assert checked > 10


def test_mock_corpus_overwrites_atomically(tmp_path: Path) -> None:
    path = tmp_path / "corpus.jsonl"
    path.write_text("old\n")
    write_mock_corpus(path, 5, seed=0)
    assert len(read_jsonl_records(path)) == 5
    assert _leftovers(tmp_path, path) == []


def test_failed_write_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(src: object, dst: object) -> None:
        raise OSError("disk on fire")

    monkeypatch.setattr(jsonl.os, "replace", boom)
    path = tmp_path / "out" / "corpus.jsonl"
    with pytest.raises(OSError, match="disk on fire"):
        write_mock_corpus(path, 20, seed=1)
    assert not path.exists()
    assert list(path.parent.iterdir()) == []


def test_failed_write_keeps_previous_file(tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "corpus.jsonl"
    path.write_text(json.dumps({"text": "previous"}) + "\n")
    def boom(src: object, dst: object) -> None:
        raise OSError("x")

    monkeypatch.setattr(jsonl.os, "replace", boom)
    with pytest.raises(OSError):
        write_mock_corpus(path, 20, seed=1)
    assert read_jsonl_records(path) == [{"text": "previous"}]
    assert _leftovers(tmp_path, path) == []


@pytest.mark.parametrize("n", [0, -3, 2.5, True])
def test_mock_corpus_validates_num_records(tmp_path: Path, n: object) -> None:
    with pytest.raises(ValueError, match="num_records"):
        write_mock_corpus(tmp_path / "x.jsonl", n, seed=0)  # type: ignore[arg-type]
    assert not any(tmp_path.iterdir())


def test_single_record_corpus(tmp_path: Path) -> None:
    path = write_mock_corpus(tmp_path / "one.jsonl", 1, seed=0)
    assert len(read_jsonl_records(path)) == 1
    assert os.path.getsize(path) > 0
