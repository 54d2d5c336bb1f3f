"""WikiText + Alpaca datamodule on fixture files of the real formats."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch

from datamodules.corpora import load_hub
from datamodules.jsonl import DataFormatError
from datamodules.wikitext_alpaca import WikiTextAlpacaDataModule
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
    make(tmp_path, block_size=32)  # another config: another cache file
    assert len(list((tmp_path / "cache").glob("tokenized-*.pt"))) == 2


def test_missing_wiki_dir_names_path(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nowhere"):
        make(tmp_path, wiki={**WIKI, "path": str(tmp_path / "nowhere")})


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
    with pytest.raises(ConnectionError, match="local files"):
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
