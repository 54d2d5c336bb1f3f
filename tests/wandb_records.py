"""Read an offline W&B run back: ``run-*.wandb`` is a LevelDB-style log of W&B's own protobuf
``Record`` messages (a 7-byte ``:W&B`` header, 32 KiB blocks, 7-byte record headers: crc, length,
type FULL/FIRST/MIDDLE/LAST). wandb 0.31 ships no reader, so this is the few lines it takes."""

from __future__ import annotations

import struct
import time
from pathlib import Path
from typing import Any

BLOCK, HEADER = 32768, 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def records(path: str | Path) -> list[Any]:
    from wandb.proto import wandb_internal_pb2 as pb

    data = Path(path).read_bytes()
    if data[:4] != b":W&B":
        raise ValueError(f"{path}: not a W&B run file")
    pos, buf, out = HEADER, b"", []
    while pos + HEADER <= len(data):
        space = BLOCK - pos % BLOCK
        if space < HEADER:  # block trailer padding
            pos += space
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + HEADER])
        if pos + HEADER + length > len(data):  # the writer is mid-record
            break
        chunk = data[pos + HEADER:pos + HEADER + length]
        pos += HEADER + length
        if kind == FULL:
            out.append(chunk)
        elif kind == FIRST:
            buf = chunk
        elif kind == MIDDLE:
            buf += chunk
        elif kind == LAST:
            out.append(buf + chunk)
        else:
            break
    return [pb.Record.FromString(c) for c in out]


def finished_records(path: Path, timeout_s: float = 60.0) -> list[Any]:
    """The records once W&B's writer process has flushed the run's ``exit`` record (it writes
    asynchronously, after ``wandb.finish`` has returned)."""
    from google.protobuf.message import DecodeError

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            recs = records(path)
            if any(r.WhichOneof("record_type") == "exit" for r in recs):
                return recs
        except DecodeError:
            pass  # a record still being written
        if time.monotonic() > deadline:
            raise AssertionError(f"{path}: no complete W&B run after {timeout_s} s")
        time.sleep(0.2)


def summarize(run_dir: str | Path) -> dict[str, Any]:
    """``{"run": RunRecord, "config_keys": [...], "config": {key: json}, "summary": {key: json}}``
    of the single offline run under ``run_dir``."""
    files = sorted(Path(run_dir).glob("wandb/offline-run-*/run-*.wandb"))
    if len(files) != 1:
        raise AssertionError(f"expected one offline W&B run under {run_dir}, found {files}")
    out: dict[str, Any] = {"run": None, "config_keys": [], "config": {}, "summary": {}}
    for rec in finished_records(files[0]):
        kind = rec.WhichOneof("record_type")
        if kind == "run":
            out["run"] = rec.run
        elif kind == "config":
            for item in rec.config.update:
                key = item.key or "/".join(item.nested_key)
                out["config_keys"].append(key)
                out["config"][key] = item.value_json
        elif kind == "summary":
            for item in rec.summary.update:
                out["summary"][item.key or "/".join(item.nested_key)] = item.value_json
    return out
