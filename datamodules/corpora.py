"""Loading the raw text of corpora: local files or the Hugging Face hub (``datasets``).

WikiText-style text: one article line per line, files ``train.txt``/``valid.txt``/``test.txt``
in a directory, or a hub dataset with a ``text`` column. Alpaca-style instructions: ``.json``
(a list) or ``.jsonl`` records with ``instruction``/``input``/``output``, or a hub dataset.
Every problem raises a ``UserError`` naming the path (and line or record index) and how to fix
it; only regular UTF-8 files are read.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import socket
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from datamodules.files import DataFormatError, parse_json, read_text
from datamodules.jsonl import check_strings, iter_json_lines, json_kind
from lhp.errors import UserError

WIKI_SPLITS = {"train": "train.txt", "val": "valid.txt", "test": "test.txt"}
HUB_SPLITS = {"train": "train", "val": "validation", "test": "test"}
HUB_HOST = ("huggingface.co", 443)


def _hub_reachable(timeout: float = 3.0) -> bool:
    try:
        socket.create_connection(HUB_HOST, timeout=timeout).close()
        return True
    except OSError:
        return False


def load_hub(hub_id: str, hub_config: str | None, split: str, **kwargs: Any) -> Any:
    """``datasets.load_dataset`` with a fast, clear failure (a ``UserError``) instead of a ~20 s
    retry loop.

    Builders that read local files (``json``, ``text``, ``csv``...) skip the network check, so
    tests exercise this real loader on local files of the same format.
    """
    import datasets

    local_builder = hub_id in ("json", "text", "csv", "parquet", "arrow")
    offline = os.environ.get("HF_DATASETS_OFFLINE") == "1" or os.environ.get("HF_HUB_OFFLINE") == "1"
    if not local_builder and not offline and not _hub_reachable():
        raise UserError(
            f"the Hugging Face hub is unreachable, so dataset {hub_id!r} cannot be downloaded; "
            "use local files instead (data.*.path=...), or set HF_DATASETS_OFFLINE=1 to use a "
            "copy already in your HF cache"
        )
    try:
        return datasets.load_dataset(hub_id, hub_config, split=split, **kwargs)
    except Exception as err:
        hint = " (offline mode: is it in your HF cache?)" if offline else ""
        raise UserError(
            f"could not load hub dataset {hub_id!r} config {hub_config!r} split {split!r}{hint}: "
            f"{err}; use local files instead (data.*.path=...)"
        ) from err


def wiki_lines(source: Mapping[str, Any], split: str) -> list[str]:
    """Lines (without their newline; ``\r\n`` and ``\r`` count as newlines) of one split of a
    WikiText-style corpus. A missing, special, non-UTF-8 or empty file is a ``DataFormatError``."""
    if source.get("path"):
        path = Path(source["path"]) / WIKI_SPLITS[split]
        text = read_text(path, f"a directory with {', '.join(WIKI_SPLITS.values())} (e.g. "
                               "../shared/data/wikitext-2, or set LHP_DATA_ROOT / data.wiki.path)")
        lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
        if lines[-1] == "":
            lines.pop()  # the text after the last newline; an unterminated last line is kept
        if not lines:
            raise DataFormatError(f"{path}: file is empty; expected one text line per line "
                                  "(an empty split would make its metrics meaningless)")
        return lines
    if source.get("hub_id"):
        ds = load_hub(source["hub_id"], source.get("hub_config"), HUB_SPLITS[split],
                      **dict(source.get("hub_kwargs") or {}))
        return [line.removesuffix("\n") for line in ds["text"]]
    raise UserError("data.wiki needs either 'path' (local directory) or 'hub_id'")


_ALPACA_KEYS = ("instruction", "input", "output")
_EXPECTED_ALPACA = "an object with strings 'instruction', 'output' and optional 'input'"


def _check_alpaca(record: Any, where: str) -> dict[str, str]:
    if not isinstance(record, dict):
        raise DataFormatError(f"{where}: record is a {type(record).__name__}; "
                              f"expected {_EXPECTED_ALPACA}")
    for key in ("instruction", "output"):
        if key not in record:
            raise DataFormatError(f"{where}: record is missing the key {key!r}; "
                                  f"expected {_EXPECTED_ALPACA}")
    check_strings(record, _ALPACA_KEYS, where)
    return {k: record.get(k, "") for k in _ALPACA_KEYS}


def read_alpaca_file(path: str | Path) -> list[dict[str, str]]:
    """Records of a ``.json`` list or ``.jsonl`` file, validated with file and record index
    (``.json``: 0-based record index, ``.jsonl``: line). A file without records is refused:
    it would silently leave the instruction corpus out of training and of ``val/loss``."""
    path = Path(path)
    expected = ("an Alpaca .json list or .jsonl file of instruction records (e.g. "
                "../shared/data/alpaca/alpaca_data_sample.json)")
    if path.suffix == ".jsonl":
        rows = [(f"{path}:{i}", rec) for i, rec in iter_json_lines(path, expected, _EXPECTED_ALPACA)]
    else:
        data = parse_json(read_text(path, expected).removeprefix("\ufeff"), path,
                          f"a JSON list of records, each {_EXPECTED_ALPACA}")
        if not isinstance(data, list):
            raise DataFormatError(f"{path}: the file is a JSON {json_kind(data)}; expected a "
                                  f"JSON list of records, each {_EXPECTED_ALPACA}")
        rows = [(f"{path}: record {i}", rec) for i, rec in enumerate(data)]
    if not rows:
        raise DataFormatError(f"{path}: file holds no records; expected at least one record, "
                              f"{_EXPECTED_ALPACA} (or set data.alpaca=null to train without it)")
    return [_check_alpaca(rec, where) for where, rec in rows]


def alpaca_splits(source: Mapping[str, Any], val_fraction: float, test_fraction: float,
                  split_seed: int) -> dict[str, list[dict[str, str]]]:
    """Deduplicated (by instruction + input) records split deterministically into train/val/test.

    Hub datasets with a single split (tatsu-lab/alpaca) are split the same way. Too few records
    to leave any for training is an error naming the source.
    """
    if source.get("paths"):
        records = [r for p in source["paths"] for r in read_alpaca_file(p)]
        origin = ", ".join(str(p) for p in source["paths"])
    elif source.get("hub_id"):
        ds = load_hub(source["hub_id"], source.get("hub_config"), "train",
                      **dict(source.get("hub_kwargs") or {}))
        records = [_check_alpaca(r, f"{source['hub_id']} record {i}") for i, r in enumerate(ds)]
        origin = f"hub dataset {source['hub_id']!r}"
    else:
        raise UserError("data.alpaca needs either 'paths' (local files) or 'hub_id'")
    seen: set[tuple[str, str]] = set()
    unique = []
    for rec in records:
        key = (rec["instruction"], rec["input"])
        if key not in seen:
            seen.add(key)
            unique.append(rec)
    random.Random(split_seed).shuffle(unique)
    n_test = max(1, round(len(unique) * test_fraction))
    n_val = max(1, round(len(unique) * val_fraction))
    if len(unique) <= n_test + n_val:
        raise DataFormatError(
            f"{origin}: {len(unique)} distinct record(s) (by instruction + input) leave none for "
            f"training after {n_test} test and {n_val} validation record(s); expected at least "
            f"{n_test + n_val + 1}: add records, lower data.alpaca.val_fraction/test_fraction, "
            "or set data.alpaca=null")
    return {"test": unique[:n_test], "val": unique[n_test : n_test + n_val],
            "train": unique[n_test + n_val :]}


def fingerprint(*parts: Any) -> str:
    """Short stable hash of JSON-able parts (config values, texts) for cache keys."""
    h = hashlib.sha256()
    for part in parts:
        if isinstance(part, Sequence) and not isinstance(part, str | bytes):
            for item in part:
                h.update(json.dumps(item, sort_keys=True, ensure_ascii=False).encode())
                h.update(b"\x00")
        else:
            h.update(json.dumps(part, sort_keys=True, ensure_ascii=False, default=str).encode())
        h.update(b"\x01")
    return h.hexdigest()[:16]
