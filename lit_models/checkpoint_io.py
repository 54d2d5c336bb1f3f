"""The default ``CheckpointIO``: atomic, checksummed ``torch.save`` checkpoints.

    Trainer(plugins=[AtomicCheckpointIO()])    # conf/trainer/default.yaml sets it for every run

Lightning's ``TorchCheckpointIO`` writes through fsspec, which stages the file in the system
temp dir and copies it over: a full disk or a kill mid-copy leaves a truncated file under the
final name. Here the checkpoint is written to a temporary file in the destination directory,
flushed and fsynced, then renamed over the final name (and the directory fsynced): the
file under the final name is always complete, either the previous one or the new one.

Every checkpoint also stores a weights digest (``lit_models.integrity``), verified on load.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pickle
import tempfile
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.utilities.types import _PATH
from lightning.pytorch.plugins.io import TorchCheckpointIO

from lhp.errors import UserError
from lit_models.integrity import INTEGRITY_KEY, integrity_block, verify_integrity


class _RecordingWriter:
    """File wrapper that remembers the ``OSError`` of a failed write: ``torch.save`` reports it
    only as an opaque ``RuntimeError`` from its zip writer."""

    def __init__(self, fh: Any) -> None:
        self.fh = fh
        self.error: OSError | None = None

    def write(self, data: bytes) -> int:
        try:
            return self.fh.write(data)
        except OSError as err:
            self.error = err
            raise

    def flush(self) -> None:
        self.fh.flush()


def _fsync_dir(directory: Path) -> None:
    """Make the rename durable (not possible on every platform/filesystem: then skipped)."""
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` to a temp file beside ``path``, fsync, then rename over ``path``.

    On failure the temporary file is removed, ``path`` is left as it was, and an ``OSError`` (a
    full disk, a read-only directory, a file size limit) becomes a ``UserError`` naming both.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        for stale in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):  # left by a killed save
            stale.unlink(missing_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as err:
        raise UserError(f"cannot write checkpoint {path}: {err}; check the directory exists "
                        "and is writable") from err
    tmp = Path(tmp_name)
    writer = None
    try:
        with os.fdopen(fd, "wb") as fh:
            writer = _RecordingWriter(fh)
            torch.save(obj, writer)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        tmp.unlink(missing_ok=True)
        os_error = writer.error if writer is not None and writer.error is not None else err
        if isinstance(os_error, OSError):
            raise UserError(f"cannot write checkpoint {path}: {os_error}; nothing was written under "
                            "that name (a previous file there is intact): free disk space or "
                            "choose another paths.output_dir, then resume") from err
        raise
    _fsync_dir(path.parent)


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` with atomic local writes, a weights digest, and safe loading.

    Remote paths (``s3://...``) go through Lightning's fsspec writer unchanged (object stores
    publish a file only once it is complete). Loading always uses ``weights_only=True``.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: _PATH,
                        storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__}.save_checkpoint does not take storage_options")
        checkpoint = {**checkpoint, INTEGRITY_KEY: integrity_block(checkpoint.get("state_dict") or {})}
        if "://" in str(path):
            super().save_checkpoint(checkpoint, path)
            return
        atomic_torch_save(checkpoint, path)

    def load_checkpoint(self, path: _PATH, map_location: Any | None = None,
                        weights_only: bool | None = None) -> dict[str, Any]:
        """Load with ``weights_only=True`` (the argument is accepted for Lightning's API only)
        and verify the weights digest; SQLite weight-store files are read as well."""
        if "://" not in str(path):
            from lit_models.compression.store import is_weight_store

            if not Path(path).is_file():
                raise FileNotFoundError(f"checkpoint not found: {path}")
            if is_weight_store(path):
                from lit_models.compression.checkpoint_io import read_checkpoint

                return read_checkpoint(path, map_location=map_location)
        try:
            checkpoint = super().load_checkpoint(path, map_location=map_location, weights_only=True)
        except pickle.UnpicklingError as err:
            raise UserError(f"cannot load checkpoint {path}: it holds objects other than tensors "
                            "and plain containers, which are refused (checkpoints are data, never "
                            "code); use a checkpoint written by this platform") from err
        except (RuntimeError, EOFError, OSError) as err:
            if isinstance(err, FileNotFoundError):
                raise
            raise UserError(f"cannot load checkpoint {path}: {' '.join(str(err).split())}; the file "
                            "is truncated or corrupt: use another checkpoint of the run") from err
        verify_integrity(checkpoint, path)
        return checkpoint
