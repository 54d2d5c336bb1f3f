"""A Lightning ``CheckpointIO`` that writes training checkpoints into the SQLite weight store.

    Trainer(plugins=[SQLiteCheckpointIO()])         # or, in config: +plugins=sqlite_checkpoint

Every tensor of the checkpoint (weights, optimizer moments, RNG states) becomes a layer of the
store, named by its path (``state_dict/net.wte.weight``, ``optimizer_states/0/state/3/exp_avg``),
with a checksum per chunk (xxh3-128 over data and metadata); tied tensors are stored once. Everything else (loop counters, callback
states, hyper-parameters) is kept as tagged JSON in ``metadata['checkpoint']``: dicts with
non-string keys, tuples, ``torch.Size``/``dtype``/``device`` and bytes are tagged so they come
back as they were; any other type is refused with its path (never pickle).

A checkpoint is written atomically: to a temporary file in the destination directory
(``.<name>.tmp-<host>-<pid>``), fsynced, then ``os.replace``d onto the final name, so the previous
checkpoint at that path stays intact until the new one is complete; a failed write (a full disk)
deletes the partial file and raises a ``UserError`` naming the checkpoint. Temporary files (and
their SQLite journals) left by a writer that was killed mid-save are removed, with a warning in
the log, the first time the plugin saves or loads in that directory.
``read_checkpoint`` loads such a file without a Trainer (``experiments.utils.load_checkpoint``
uses it for SQLite files, so evaluate/generate/resume accept them).
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import os
import re
import shutil
import socket
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import CheckpointIO

from lhp.errors import UserError
from lit_models.compression.store import WeightStore, WeightStoreError

try:
    import resource
except ImportError:  # pragma: no cover - not on Windows
    resource = None

log = logging.getLogger(__name__)

CHECKPOINT_KEY = "checkpoint"
# ``.<checkpoint name>.tmp-[<host>-]<pid>`` and its SQLite sidecars (no host: older releases)
_TEMP = re.compile(r"^\.(?P<name>.+)\.tmp-(?:(?P<host>[A-Za-z0-9._]+)-)?(?P<pid>\d+)"
                   r"(?:-journal|-wal|-shm)?$")
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
            dtype = getattr(torch, value, None)
            if not isinstance(dtype, torch.dtype):  # a file names data, never an attribute
                raise ValueError(f"unknown dtype {value!r}")
            return dtype
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


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9.]", "_", socket.gethostname()) or "localhost"


def _temp_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{_host()}-{os.getpid()}")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def remove_stale_temp_files(directory: str | os.PathLike) -> list[Path]:
    """Delete the temporary checkpoints (and SQLite journals) that writers on this host left in
    ``directory`` when they died mid-save (SIGKILL, OOM killer); a live writer's files stay."""
    try:
        entries = sorted(Path(directory).iterdir())
    except OSError:  # no directory yet: nothing to clean
        return []
    removed = []
    for entry in entries:
        match = _TEMP.match(entry.name)
        if match is None or match["host"] not in (None, _host()) or _pid_alive(int(match["pid"])):
            continue
        with contextlib.suppress(FileNotFoundError):  # another process cleaned it first
            entry.unlink()
            removed.append(entry)
            log.warning("removed %s: a temporary checkpoint file of writer PID %s, which is no "
                        "longer running (killed mid-save)", entry, match["pid"])
    return removed


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class CheckpointWriteError(UserError):
    """A checkpoint could not be written (full disk, file-size limit, permissions)."""


def _reason(err: BaseException, directory: Path) -> str:
    """Why a write failed: the OS or SQLite error, the free space, a file-size limit."""
    cause = err.__cause__ if isinstance(err, WeightStoreError) and err.__cause__ else err
    if isinstance(cause, OSError) and cause.errno is not None:
        why = f"{os.strerror(cause.errno)} (errno {cause.errno})"
    else:
        why = f"{cause} ({getattr(cause, 'sqlite_errorname', type(cause).__name__)})"
    with contextlib.suppress(OSError):
        why += f"; {shutil.disk_usage(directory).free / 1e6:.1f} MB free on its disk"
    limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0] if resource else None
    if limit not in (None, getattr(resource, "RLIM_INFINITY", None)):
        why += f"; file-size limit (ulimit -f) {limit} bytes"
    return why


def write_checkpoint(checkpoint: dict[str, Any], path: str | os.PathLike,
                     chunk_bytes: int = 4 << 20) -> Path:
    """Write ``checkpoint`` as a weight store at ``path``, atomically: a temporary file in the
    same directory, fsync, ``os.replace``. On failure the temporary file is deleted, whatever was
    at ``path`` is untouched, and a ``CheckpointWriteError`` says which checkpoint and why."""
    path = _local(path)
    tensors: dict[str, torch.Tensor] = {}
    skeleton = json.dumps(_encode(checkpoint, "", tensors), allow_nan=True)
    tmp = _temp_path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        for p in (tmp, *_sidecars(tmp)):
            p.unlink(missing_ok=True)
        with WeightStore(tmp, "a", chunk_bytes=chunk_bytes, cache_bytes=0, journal="delete") as store, \
                store.transaction():
            store.put_state_dict({name.lstrip("/"): t for name, t in tensors.items()})
            store.set_metadata(CHECKPOINT_KEY, skeleton)
        _fsync(tmp)
        for p in _sidecars(path):  # a stale WAL of the old file must not meet the new one
            p.unlink(missing_ok=True)
        os.replace(tmp, path)
        with contextlib.suppress(OSError):  # make the rename durable (not every OS can)
            _fsync(path.parent)
    except (OSError, WeightStoreError) as err:
        raise CheckpointWriteError(
            f"could not write checkpoint {path}: {_reason(err, path.parent)}; the partial temporary file was "
            "removed and any previous checkpoint at that path is unchanged. Free disk space (or "
            "raise the file-size limit) and save again") from err
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
    try:
        return _decode(json.loads(skeleton), {"/" + k: v for k, v in stored.items()})
    except (KeyError, TypeError, ValueError) as err:
        raise WeightStoreError(f"{path}: metadata[{CHECKPOINT_KEY!r}] is damaged ({err!r}); "
                               "restore the checkpoint from a good copy") from err


class SQLiteCheckpointIO(CheckpointIO):
    """Lightning plugin: checkpoints as chunked, checksummed SQLite weight stores.

    The first save or load in a directory removes the temporary files that killed writers left
    there (``remove_stale_temp_files``).

    Args:
        chunk_bytes: size of a stored chunk (large chunks: fewer rows, faster full loads).
    """

    def __init__(self, chunk_bytes: int = 4 << 20) -> None:
        if not isinstance(chunk_bytes, int) or chunk_bytes < 64:
            raise ValueError(f"SQLiteCheckpointIO chunk_bytes must be an int >= 64, got {chunk_bytes!r}")
        self.chunk_bytes = chunk_bytes
        self._cleaned: set[Path] = set()

    def _clean_once(self, path: str | os.PathLike) -> None:
        directory = _local(path).parent.absolute()
        if directory not in self._cleaned:
            remove_stale_temp_files(directory)
            self._cleaned.add(directory)

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | os.PathLike,
                        storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"SQLiteCheckpointIO.save_checkpoint takes no storage_options, "
                            f"got {storage_options!r}")
        self._clean_once(path)
        write_checkpoint(checkpoint, path, self.chunk_bytes)

    def load_checkpoint(self, path: str | os.PathLike, map_location: Any | None = None,
                        weights_only: bool | None = None) -> dict[str, Any]:
        # weights_only: this format can only hold tensors and plain values, so it always is.
        self._clean_once(path)
        if not Path(path).is_file():
            raise FileNotFoundError(f"checkpoint not found: {path}")
        return read_checkpoint(path, map_location)

    def remove_checkpoint(self, path: str | os.PathLike) -> None:
        path = _local(path)
        for p in (path, *_sidecars(path)):
            p.unlink(missing_ok=True)
