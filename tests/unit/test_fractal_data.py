"""Coordinate datamodule: vocabulary, unknown characters, bad books, batches, ordered sweeps."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate

from datamodules.book_coords import UNKNOWN_ID, BookCoordsDataModule, CharVocab, read_book
from lhp.errors import UserError
from tests.conftest import CONF

FIXTURE = CONF.parent / "tests" / "fixtures" / "wikitext_tiny" / "valid.txt"


def write(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_bytes(text.encode("utf-8"))
    return str(path)


def test_data_config_builds_coordinate_batches(make_cfg) -> None:
    cfg = make_cfg(["data=book_coords", f"data.books=[{FIXTURE}]", "data.max_chars=500",
                    "data.batch_size=32"])
    dm = instantiate(cfg.data, _convert_="all")
    batch = next(iter(dm.train_dataloader()))
    assert set(batch) == {"coords", "targets", "book_id"}
    assert batch["coords"].dtype == torch.float64 and batch["coords"].shape == (32,)
    assert batch["targets"].dtype == torch.long and (batch["book_id"] == 0).all()
    assert dm.vocab_size == len(set(read_book(FIXTURE, 500))) + 1


def test_several_books_share_a_vocabulary_and_the_sweep_covers_every_character(tmp_path: Path) -> None:
    a, b = write(tmp_path, "a.txt", "abcabc\n"), write(tmp_path, "b.txt", "xyz" * 10)
    dm = BookCoordsDataModule([a, b], max_chars=[None, 20], batch_size=8, eval_batch_size=7)
    assert dm.num_books == 2 and dm.book_lengths == [7, 20] and dm.titles == ["a", "b"]
    assert dm.charset == sorted(set("abc\nxyz"))
    batches = list(dm.val_dataloader())
    coords = torch.cat([x["coords"] for x in batches])
    books = torch.cat([x["book_id"] for x in batches])
    targets = torch.cat([x["targets"] for x in batches])
    assert books.tolist() == [0] * 7 + [1] * 20
    assert coords[0] == 0 and coords[6] == 1 and coords[7] == 0 and coords[-1] == 1
    assert dm.vocab.decode(targets[:7]) == "abcabc\n"
    shuffled = torch.cat([x["targets"] for x in dm.train_dataloader()])
    assert sorted(shuffled.tolist()) == sorted(targets.tolist())  # every position once per epoch


def test_frozen_vocabulary_names_unknown_characters(tmp_path: Path) -> None:
    path = write(tmp_path, "new.txt", "abc\nabQ")
    with pytest.raises(UserError, match=r"new.txt:2:3: character 'Q' is not in the frozen vocabulary"):
        BookCoordsDataModule([path], charset=list("abc\n"))
    dm = BookCoordsDataModule([path], charset=list("abc\n"), unknown="unk")
    assert dm.unknown_counts == [1] and int(dm.ids[0][-1]) == UNKNOWN_ID


@pytest.mark.parametrize(("content", "match"), [
    (b"", "bad.txt: empty book"),
    (b"\xef\xbb\xbf", "bad.txt: empty book"),  # only a byte-order mark
    (b"line one\ncaf\xe9", r"bad.txt:2: not UTF-8 text \(byte 0xe9 at byte offset 12\)"),
    (b"\xff\xfe\x00binary", r"bad.txt:1: not UTF-8 text \(byte 0xff at byte offset 0\)"),
])
def test_bad_books_are_user_errors_naming_the_file(tmp_path: Path, content: bytes, match: str) -> None:
    path = tmp_path / "bad.txt"
    path.write_bytes(content)
    with pytest.raises(UserError, match=match):
        BookCoordsDataModule([str(path)])


def test_missing_book_is_a_user_error_naming_it(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"missing.txt: file does not exist; expected a UTF-8 text file"):
        BookCoordsDataModule([str(tmp_path / "missing.txt")])


def test_text_is_kept_exactly(tmp_path: Path) -> None:
    path = write(tmp_path, "crlf.txt", "\ufeffline one\r\nline two\r\n")
    assert read_book(path) == "line one\r\nline two\r\n"
    vocab = CharVocab.from_texts([read_book(path)])
    assert vocab.decode(vocab.encode(read_book(path))) == read_book(path)


def test_bad_arguments_are_named(tmp_path: Path) -> None:
    path = write(tmp_path, "a.txt", "abc")
    with pytest.raises(UserError, match="data.books"):
        BookCoordsDataModule([])
    with pytest.raises(UserError, match="data.max_chars"):
        BookCoordsDataModule([path], max_chars=[1, 2])
    with pytest.raises(UserError, match="data.batch_size"):
        BookCoordsDataModule([path], batch_size=0)
    with pytest.raises(UserError, match="data.titles"):
        BookCoordsDataModule([path], titles=["a", "b"])
