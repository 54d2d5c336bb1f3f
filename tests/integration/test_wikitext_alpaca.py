"""WikiText + Alpaca datamodule on fixture files of the real formats."""

from __future__ import annotations

import json
import logging
import re
import shutil
import time
from pathlib import Path

import pytest
import torch

from datamodules.corpora import load_hub
from datamodules.jsonl import DataFormatError
from datamodules.wikitext_alpaca import WikiTextAlpacaDataModule
from lhp.errors import UserError
from tests.conftest import REPO

FIX = REPO / "tests" / "fixtures"
WIKI = {"path": str(FIX / "wikitext_tiny"), "max_samples": None, "word_level": True}
ALPACA = {"paths": [str(FIX / "alpaca_tiny.json")], "val_fraction": 0.15, "test_fraction": 0.15,
          "split_seed": 0, "response_only_loss": False}


def make(tmp_path: Path, **kw) -> WikiTextAlpacaDataModule:
    args = {"wiki": WIKI, "alpaca": ALPACA, "tokenizer": {"kind": "byte"}, "block_size": 64,
            "batch_size": 4, "cache_dir": str(tmp_path / "cache")}
    dm = WikiTextAlpacaDataModule(**{**args, **kw})
    dm.setup("fit")
    return dm


def test_eval_sets_are_separate_and_cover_every_token(tmp_path: Path) -> None:
    dm = make(tmp_path)
    assert dm.eval_set_names == ["wiki", "alpaca"]
    wiki_val, alpaca_val = dm.eval_datasets("val")
    stream = dm._data["wiki_val"]
    targets = sum(int((wiki_val[i]["labels"] != -100).sum()) for i in range(len(wiki_val)))
    assert targets == stream.numel() - 1  # padded last block: nothing dropped
    text = (FIX / "wikitext_tiny" / "valid.txt").read_text()
    words = sum(len(line.split()) + 1 for line in text.split("\n")[:-1])
    assert dm.eval_set_stats["val"]["wiki"]["words"] == words
    records = json.loads((FIX / "alpaca_tiny.json").read_text())
    unique = {(r["instruction"], r["input"]) for r in records}  # duplicates are dropped
    assert len(alpaca_val) == round(len(unique) * 0.15)


def test_alpaca_prompt_format_and_response_only_labels(tmp_path: Path) -> None:
    dm = make(tmp_path, alpaca={**ALPACA, "response_only_loss": True}, block_size=256)
    ds = dm.eval_datasets("val")[1]
    tok = dm.tokenizer
    for i in range(len(ds)):
        item = ds[i]
        assert item["attention_mask"].sum() < 256, "fixture records fit in one block"
        text = tok.decode(item["input_ids"][item["attention_mask"].bool()].tolist())
        assert text.startswith("### Instruction:\n")
        target = tok.decode(item["labels"][item["labels"] != -100].tolist())
        prompt_end = text.index("### Response:\n") + len("### Response:\n")
        assert target == text[prompt_end:] + "\n"  # response + <eos>, prompt excluded
        assert "### Input:" not in text or "\n\n### Input:\n" in text


def test_empty_input_section_is_omitted(tmp_path: Path) -> None:
    dm = make(tmp_path)
    texts = [dm.tokenizer.decode(dm.eval_datasets("test")[1][i]["input_ids"].tolist())
             for i in range(len(dm.eval_datasets("test")[1]))]
    assert any("### Input:" not in t for t in texts) and any("### Input:" in t for t in texts)


@pytest.mark.parametrize("ratio", [0.25, 0.75])
def test_mix_ratio_sets_training_proportions(tmp_path: Path, ratio: float) -> None:
    dm = make(tmp_path, mix_ratio=ratio, block_size=16)
    wiki, alpaca = dm.train_dataset().parts
    assert len(alpaca) / (len(wiki) + len(alpaca)) == pytest.approx(ratio, abs=0.02)


def test_tokenized_cache_is_reused_and_a_corrupt_one_rebuilt(tmp_path: Path, capsys) -> None:
    make(tmp_path)
    assert "written to cache" in capsys.readouterr().out
    (cache,) = (tmp_path / "cache").glob("tokenized-*.pt")
    mtime = cache.stat().st_mtime_ns
    make(tmp_path)
    assert "Using tokenized cache" in capsys.readouterr().out
    assert cache.stat().st_mtime_ns == mtime
    cache.write_bytes(b"garbage")
    dm = make(tmp_path)
    assert "written to cache" in capsys.readouterr().out
    assert dm._data["wiki_train"].numel() > 0
    blob = cache.read_bytes()
    cache.write_bytes(blob[: len(blob) // 2])  # a truncated cache
    assert torch.equal(make(tmp_path)._data["wiki_train"], dm._data["wiki_train"])
    assert "written to cache" in capsys.readouterr().out
    make(tmp_path, block_size=32)  # another config: another cache file
    assert len(list((tmp_path / "cache").glob("tokenized-*.pt"))) == 2


def _garble(data: dict[str, torch.Tensor], case: str) -> dict[str, torch.Tensor]:
    data = dict(data)
    if case == "missing-tensor":
        del data["alpaca_val_ids"]
    elif case == "ids-out-of-vocab":
        data["wiki_train"] = data["wiki_train"].clone()
        data["wiki_train"][3] = 10**6
    elif case == "wrong-shape":
        data["alpaca_train_ids"] = data["alpaca_train_ids"][:, :5]
    elif case == "not-a-tensor":
        data["wiki_val"] = data["wiki_val"].tolist()
    return data


@pytest.mark.parametrize("case", ["missing-tensor", "ids-out-of-vocab", "wrong-shape", "not-a-tensor"])
def test_cache_of_the_wrong_structure_is_rebuilt(tmp_path: Path, case: str,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    """A cache under the right key but with garbled contents would crash (or corrupt) training
    later: it is treated as stale, with one warning naming the file, and rebuilt."""
    dm = make(tmp_path)
    key = dm._cache_key()
    (cache,) = (tmp_path / "cache").glob("tokenized-*.pt")
    torch.save({"key": key, "data": _garble(dm._data, case)}, cache)
    caplog.set_level(logging.WARNING, logger="datamodules.wikitext_alpaca")
    again = make(tmp_path)
    warnings = [r.message for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and str(cache) in warnings[0] and "rebuilding" in warnings[0]
    assert again._data.keys() == dm._data.keys()
    assert all(torch.equal(again._data[k], v) for k, v in dm._data.items())
    assert len(again.train_dataset()) == len(dm.train_dataset())


def test_missing_wiki_dir_names_path(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"nowhere/train.txt: file does not exist; expected a "
                       r"directory with train.txt, valid.txt, test.txt"):
        make(tmp_path, wiki={**WIKI, "path": str(tmp_path / "nowhere")})


def _latin1_wiki(tmp_path: Path) -> Path:
    wiki = tmp_path / "wiki"
    shutil.copytree(FIX / "wikitext_tiny", wiki)
    (wiki / "valid.txt").write_bytes(b" = Title = \n caf\xe9 au lait\n")
    return wiki / "valid.txt"


def _latin1_alpaca(tmp_path: Path) -> Path:
    path = tmp_path / "latin1.json"
    path.write_bytes(b'[\n{"instruction": "a", "input": "", "output": "caf\xe9"}\n]')
    return path


@pytest.mark.parametrize(("make_file", "line", "offset"), [
    (_latin1_wiki, 2, len(" = Title = \n caf")),
    (_latin1_alpaca, 2, len('[\n{"instruction": "a", "input": "", "output": "caf')),
], ids=["wiki", "alpaca"])
def test_latin1_file_names_file_line_and_offset(tmp_path: Path, make_file, line: int,
                                               offset: int) -> None:
    path = make_file(tmp_path)
    kw = ({"wiki": {**WIKI, "path": str(path.parent)}} if path.suffix == ".txt"
          else {"alpaca": {**ALPACA, "paths": [str(path)]}})
    with pytest.raises(UserError, match=rf"{re.escape(str(path))}:{line}: not UTF-8 text \(byte "
                       rf"0xe9 at byte offset {offset}\); expected UTF-8"):
        make(tmp_path, **kw)


@pytest.mark.parametrize(("name", "content"), [("empty.json", "[]"), ("empty.jsonl", "\n \n")])
def test_alpaca_file_without_records_is_refused(tmp_path: Path, name: str, content: str) -> None:
    """No silent WikiText-only run: an empty instruction file would change what val/loss means."""
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(UserError, match=rf"{re.escape(str(path))}: file holds no records"):
        make(tmp_path, alpaca={**ALPACA, "paths": [str(path)]})


def test_alpaca_too_small_for_a_training_split_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "two.json"
    records = [{"instruction": f"q{i}", "input": "", "output": "a"} for i in range(2)]
    path.write_text(json.dumps(records + records))  # duplicates do not count
    with pytest.raises(UserError, match=rf"{re.escape(str(path))}: 2 distinct record\(s\) .* leave "
                       r"none for training after 1 test and 1 validation"):
        make(tmp_path, alpaca={**ALPACA, "paths": [str(path)]})


def test_empty_wiki_split_is_refused(tmp_path: Path) -> None:
    wiki = tmp_path / "wiki"
    shutil.copytree(FIX / "wikitext_tiny", wiki)
    (wiki / "test.txt").write_bytes(b"")
    with pytest.raises(UserError, match=rf"{re.escape(str(wiki / 'test.txt'))}: file is empty"):
        make(tmp_path, wiki={**WIKI, "path": str(wiki)})


def test_unterminated_last_wiki_line_is_kept(tmp_path: Path) -> None:
    wiki = tmp_path / "wiki"
    shutil.copytree(FIX / "wikitext_tiny", wiki)
    (wiki / "valid.txt").write_bytes(b" first line \r\n last line without newline")
    dm = make(tmp_path, wiki={**WIKI, "path": str(wiki)}, alpaca=None)
    assert dm._raw()["wiki_val"] == [" first line ", " last line without newline"]


def test_bpe_without_vocab_size_names_the_key(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"data.tokenizer.vocab_size is missing"):
        make(tmp_path, tokenizer={"kind": "bpe"})


def test_byte_tokenizer_with_bpe_keys_names_the_key(tmp_path: Path) -> None:
    """`data.tokenizer.kind=byte` over the BPE default keeps vocab_size: refused at once."""
    with pytest.raises(UserError, match=r"data.tokenizer.vocab_size is not valid for "
                       r"data.tokenizer.kind=byte"):
        WikiTextAlpacaDataModule(wiki=WIKI, alpaca=ALPACA, tokenizer={"kind": "byte", "vocab_size": 8192})


@pytest.mark.parametrize(("record", "match"), [
    ({"instruction": "x"}, "record 1: record is missing the key 'output'"),
    ({"instruction": "x", "output": 3}, "record 1: key 'output' is a int"),
    ("just a string", "record 1: record is a str"),
])
def test_bad_alpaca_record_names_file_and_index(tmp_path: Path, record, match: str) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"instruction": "a", "input": "", "output": "b"}, record]))
    with pytest.raises(DataFormatError, match=f"bad.json: {match}"):
        make(tmp_path, alpaca={**ALPACA, "paths": [str(bad)]})


def test_unreachable_hub_fails_fast_with_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    start = time.perf_counter()
    with pytest.raises(UserError, match="local files"):
        load_hub("Salesforce/wikitext", "wikitext-103-raw-v1", "validation")
    assert time.perf_counter() - start < 10


def test_hub_loader_reads_local_files_of_the_same_format(tmp_path: Path) -> None:
    """The real datasets.load_dataset path, on a local text file shaped like the hub's."""
    dm = make(tmp_path, alpaca=None, wiki={
        "hub_id": "text", "hub_config": None, "word_level": False, "max_samples": None,
        "hub_kwargs": {"data_files": {s: str(FIX / "wikitext_tiny" / f)
                                      for s, f in (("train", "train.txt"),
                                                   ("validation", "valid.txt"),
                                                   ("test", "test.txt"))},
                       "cache_dir": str(tmp_path / "hf")}})
    local = make(tmp_path / "local", alpaca=None, wiki={**WIKI, "word_level": False})
    assert torch.equal(dm._data["wiki_val"], local._data["wiki_val"])
