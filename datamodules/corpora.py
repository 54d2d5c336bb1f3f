"""Loading the raw text of corpora: local files or the Hugging Face hub (``datasets``).

WikiText-style text: one article line per line, files ``train.txt``/``valid.txt``/``test.txt``
in a directory, or a hub dataset with a ``text`` column. Alpaca-style instructions: ``.json``
(a list) or ``.jsonl`` records with ``instruction``/``input``/``output``, or a hub dataset.
Every problem raises an error naming the path (and record index) and how to fix it.
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

from datamodules.jsonl import DataFormatError

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
    """``datasets.load_dataset`` with a fast, clear failure instead of a ~20 s retry loop.

    Builders that read local files (``json``, ``text``, ``csv``...) skip the network check, so
    tests exercise this real loader on local files of the same format.
    """
    import datasets

    local_builder = hub_id in ("json", "text", "csv", "parquet", "arrow")
    offline = os.environ.get("HF_DATASETS_OFFLINE") == "1" or os.environ.get("HF_HUB_OFFLINE") == "1"
    if not local_builder and not offline and not _hub_reachable():
        raise ConnectionError(
            f"the Hugging Face hub is unreachable, so dataset {hub_id!r} cannot be downloaded; "
            "use local files instead (data.*.path=...), or set HF_DATASETS_OFFLINE=1 to use a "
            "copy already in your HF cache"
        )
    try:
        return datasets.load_dataset(hub_id, hub_config, split=split, **kwargs)
    except Exception as err:
        hint = " (offline mode: is it in your HF cache?)" if offline else ""
        raise ConnectionError(
            f"could not load hub dataset {hub_id!r} config {hub_config!r} split {split!r}{hint}: "
            f"{err}; use local files instead (data.*.path=...)"
        ) from err


def wiki_lines(source: Mapping[str, Any], split: str) -> list[str]:
    """Lines (without their newline) of one split of a WikiText-style corpus."""
    if source.get("path"):
        path = Path(source["path"]) / WIKI_SPLITS[split]
        if not path.is_file():
            raise FileNotFoundError(
                f"{path} not found: expected a directory with {', '.join(WIKI_SPLITS.values())} "
                "(e.g. ../shared/data/wikitext-2, or set LHP_DATA_ROOT / data.wiki.path)"
            )
        try:
            return path.read_text(encoding="utf-8").split("\n")[:-1]
        except UnicodeDecodeError as err:
            raise DataFormatError(f"{path}: not UTF-8 text ({err})") from None
    if source.get("hub_id"):
        ds = load_hub(source["hub_id"], source.get("hub_config"), HUB_SPLITS[split],
                      **dict(source.get("hub_kwargs") or {}))
        return [line.removesuffix("\n") for line in ds["text"]]
    raise ValueError("data.wiki needs either 'path' (local directory) or 'hub_id'")


def _check_alpaca(record: Any, where: str) -> dict[str, str]:
    if not isinstance(record, dict):
        raise DataFormatError(f"{where}: record is a {type(record).__name__}; expected an object")
    for key in ("instruction", "input", "output"):
        if key == "input" and key not in record:
            continue
        if key not in record:
            raise DataFormatError(f"{where}: record is missing the key {key!r}; expected "
                                  "'instruction', 'output' and optional 'input' strings")
        if not isinstance(record[key], str):
            raise DataFormatError(f"{where}: key {key!r} is a {type(record[key]).__name__}; "
                                  "expected a string")
    return {k: record.get(k, "") for k in ("instruction", "input", "output")}


def read_alpaca_file(path: str | Path) -> list[dict[str, str]]:
    """Records of a ``.json`` list or ``.jsonl`` file, validated with file and record index."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: expected an Alpaca .json/.jsonl file "
                                "(e.g. ../shared/data/alpaca/alpaca_data_sample.json)")
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".jsonl":
        rows = []
        for i, line in enumerate(text.splitlines(), start=1):
            if line.strip():
                try:
                    rows.append((f"{path}:{i}", json.loads(line)))
                except json.JSONDecodeError as err:
                    raise DataFormatError(f"{path}:{i}: invalid JSON ({err.msg})") from None
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise DataFormatError(f"{path}:{err.lineno}: invalid JSON ({err.msg})") from None
        if not isinstance(data, list):
            raise DataFormatError(f"{path}: expected a JSON list of records")
        rows = [(f"{path}: record {i}", rec) for i, rec in enumerate(data)]
    return [_check_alpaca(rec, where) for where, rec in rows]


def alpaca_splits(source: Mapping[str, Any], val_fraction: float, test_fraction: float,
                  split_seed: int) -> dict[str, list[dict[str, str]]]:
    """Deduplicated (by instruction + input) records split deterministically into train/val/test.

    Hub datasets with a single split (tatsu-lab/alpaca) are split the same way.
    """
    if source.get("paths"):
        records = [r for p in source["paths"] for r in read_alpaca_file(p)]
    elif source.get("hub_id"):
        ds = load_hub(source["hub_id"], source.get("hub_config"), "train",
                      **dict(source.get("hub_kwargs") or {}))
        records = [_check_alpaca(r, f"{source['hub_id']} record {i}") for i, r in enumerate(ds)]
    else:
        raise ValueError("data.alpaca needs either 'paths' (local files) or 'hub_id'")
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
