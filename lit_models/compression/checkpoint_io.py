"""A Lightning ``CheckpointIO`` that writes training checkpoints into the SQLite weight store.

    Trainer(plugins=[SQLiteCheckpointIO()])         # or, in config: +plugins=sqlite_checkpoint

Every tensor of the checkpoint (weights, optimizer moments, RNG states) becomes a layer of the
store, named by its path (``state_dict/net.wte.weight``, ``optimizer_states/0/state/3/exp_avg``),
with SHA-256 per chunk; tied tensors are stored once. Everything else (loop counters, callback
states, hyper-parameters) is kept as tagged JSON in ``metadata['checkpoint']``: dicts with
non-string keys, tuples, ``torch.Size``/``dtype``/``device`` and bytes are tagged so they come
back as they were; any other type is refused with its path (never pickle).

A checkpoint is written to a temporary file next to the target and renamed over it, so the
previous checkpoint at that path stays intact until the new one is complete.
``read_checkpoint`` loads such a file without a Trainer (``experiments.utils.load_checkpoint``
uses it for SQLite files, so evaluate/generate/resume accept them).
"""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import CheckpointIO

from lit_models.compression.store import WeightStore, WeightStoreError

CHECKPOINT_KEY = "checkpoint"
_TAGS = ("__tensor__", "__tuple__", "__dict__", "__size__", "__dtype__", "__device__", "__bytes__")


def _encode(obj: Any, path: str, tensors: dict[str, torch.Tensor]) -> Any:
    """JSON-able skeleton of ``obj``; tensors are moved to ``tensors`` under their path."""
    if isinstance(obj, torch.Tensor):
        name = path if path not in tensors else f"{path}#{len(tensors)}"  # keys holding "/"
        tensors[name] = obj
        return {"__tensor__": name}
    if obj is None or isinstance(obj, bool | int | float | str):
        return obj
    if isinstance(obj, torch.Size):
        return {"__size__": list(obj)}
    if isinstance(obj, torch.dtype):
        return {"__dtype__": str(obj).removeprefix("torch.")}
    if isinstance(obj, torch.device):
        return {"__device__": str(obj)}
    if isinstance(obj, bytes):
        return {"__bytes__": base64.b64encode(obj).decode("ascii")}
    if isinstance(obj, tuple):
        return {"__tuple__": [_encode(v, f"{path}/{i}", tensors) for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [_encode(v, f"{path}/{i}", tensors) for i, v in enumerate(obj)]
    if isinstance(obj, dict):
        if all(isinstance(k, str) and k not in _TAGS for k in obj):
            return {k: _encode(v, f"{path}/{k}", tensors) for k, v in obj.items()}
        return {"__dict__": [[_encode(k, f"{path}/<key>", {}), _encode(v, f"{path}/{k}", tensors)]
                             for k, v in obj.items()]}
    raise TypeError(f"checkpoint entry {path or '/'} has type {type(obj).__name__}, which the "
                    "SQLite checkpoint format does not store (tensors, numbers, strings, None, "
                    "lists, tuples, dicts, torch.Size/dtype/device and bytes only; never pickle)")


def _decode(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, list):
        return [_decode(v, tensors) for v in obj]
    if not isinstance(obj, dict):
        return obj
    if len(obj) == 1:
        (tag, value), = obj.items()
        if tag == "__tensor__":
            return tensors[value]
        if tag == "__tuple__":
            return tuple(_decode(v, tensors) for v in value)
        if tag == "__dict__":
            return {_hashable(_decode(k, tensors)): _decode(v, tensors) for k, v in value}
        if tag == "__size__":
            return torch.Size(value)
        if tag == "__dtype__":
            return getattr(torch, value)
        if tag == "__device__":
            return torch.device(value)
        if tag == "__bytes__":
            return base64.b64decode(value)
    return {k: _decode(v, tensors) for k, v in obj.items()}


def _hashable(key: Any) -> Any:
    return tuple(_hashable(k) for k in key) if isinstance(key, list | tuple) else key


def _local(path: str | os.PathLike) -> Path:
    if "://" in str(path):
        raise ValueError(f"SQLiteCheckpointIO writes local files only, got {path}")
    return Path(path)


def _sidecars(path: Path) -> list[Path]:
    return [Path(f"{path}{suffix}") for suffix in ("-wal", "-shm", "-journal")]


def write_checkpoint(checkpoint: dict[str, Any], path: str | os.PathLike,
                     chunk_bytes: int = 4 << 20) -> Path:
    """Write ``checkpoint`` as a weight store at ``path`` (temp file + atomic rename)."""
    path = _local(path)
    tensors: dict[str, torch.Tensor] = {}
    skeleton = json.dumps(_encode(checkpoint, "", tensors), allow_nan=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    for p in (tmp, *_sidecars(tmp)):
        p.unlink(missing_ok=True)
    try:
        with WeightStore(tmp, "a", chunk_bytes=chunk_bytes, cache_bytes=0, journal="delete") as store, \
                store.transaction():
            store.put_state_dict({name.lstrip("/"): t for name, t in tensors.items()})
            store.set_metadata(CHECKPOINT_KEY, skeleton)
        for p in _sidecars(path):  # a stale WAL of the old file must not meet the new one
            p.unlink(missing_ok=True)
        os.replace(tmp, path)
    finally:
        for p in (tmp, *_sidecars(tmp)):
            p.unlink(missing_ok=True)
    return path


def read_checkpoint(path: str | os.PathLike, map_location: Any = None) -> dict[str, Any]:
    """Load a checkpoint written by ``write_checkpoint`` (tensors on CPU unless ``map_location``
    is a device or device string)."""
    path = _local(path)
    with WeightStore(path, "r", cache_bytes=0) as store:
        skeleton = store.get_metadata(CHECKPOINT_KEY)
        if skeleton is None:
            raise WeightStoreError(f"{path}: a weight store, but not a checkpoint "
                                   f"(no metadata[{CHECKPOINT_KEY!r}])")
        stored = store.load_state_dict()
    if isinstance(map_location, str | torch.device):
        stored = {k: v.to(map_location) for k, v in stored.items()}
    return _decode(json.loads(skeleton), {"/" + k: v for k, v in stored.items()})


class SQLiteCheckpointIO(CheckpointIO):
    """Lightning plugin: checkpoints as chunked, checksummed SQLite weight stores.

    Args:
        chunk_bytes: size of a stored chunk (large chunks: fewer rows, faster full loads).
    """

    def __init__(self, chunk_bytes: int = 4 << 20) -> None:
        if not isinstance(chunk_bytes, int) or chunk_bytes < 64:
            raise ValueError(f"SQLiteCheckpointIO chunk_bytes must be an int >= 64, got {chunk_bytes!r}")
        self.chunk_bytes = chunk_bytes

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | os.PathLike,
                        storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"SQLiteCheckpointIO.save_checkpoint takes no storage_options, "
                            f"got {storage_options!r}")
        write_checkpoint(checkpoint, path, self.chunk_bytes)

    def load_checkpoint(self, path: str | os.PathLike, map_location: Any | None = None,
                        weights_only: bool | None = None) -> dict[str, Any]:
        # weights_only: this format can only hold tensors and plain values, so it always is.
        if not Path(path).is_file():
            raise FileNotFoundError(f"checkpoint not found: {path}")
        return read_checkpoint(path, map_location)

    def remove_checkpoint(self, path: str | os.PathLike) -> None:
        path = _local(path)
        for p in (path, *_sidecars(path)):
            p.unlink(missing_ok=True)
