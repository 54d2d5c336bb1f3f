"""A chunked SQLite weight store: raw little-endian bytes + dtype + shape, never pickle.

Schema (the write-up's, plus what integrity needs)::

    weight_chunks(chunk_id TEXT PRIMARY KEY,        -- "<layer_name>#<chunk_index>"
                  layer_name, chunk_index, n_chunks, tensor_shape (JSON), dtype, byte_offset,
                  checksum,                         -- of metadata + data, verified on read
                  invariants (JSON), compression_info (JSON), created_at, access_count,
                  data BLOB)                        -- raw bytes of the tensor, C order (last)
    metadata(key TEXT PRIMARY KEY, value TEXT)      -- format, schema_version, aliases, ...
    indexes on (layer_name, chunk_index) and access_count

* Each chunk's checksum (xxh3-128, the algorithm named in ``metadata['checksum']``) covers its
  data and every column that changes how the data is decoded (layer, index, offset, shape,
  dtype, codec and its parameters, invariants): editing any of them in the file fails ``verify``
  and every load. Stores of schema version 1 (SHA-256 of the data alone, column ``sha256``)
  still open, verify and accept writes in their own format.
* Every write runs in a transaction (``BEGIN IMMEDIATE`` ... ``COMMIT``): a writer killed
  mid-write leaves the previous state intact (SQLite rolls the partial transaction back).
* Reads stream chunk by chunk (``iter_chunks``) or fill one preallocated tensor (``load``),
  with a byte-budgeted LRU cache of decoded tensors and per-chunk access counts (kept in
  memory and written back by ``flush``/``close`` on writable stores).
* WAL journaling (the default) lets any number of readers work while one process writes.
* A compressed layer is one payload (``codecs.to_payload``) whose ``compression_info`` names its
  codec; ``load`` decodes it. Parts that codecs mark as shared (a quaternion codebook) are
  stored once, as a ``__shared__/<key>`` layer. Tied tensors (one storage under two names, like
  tied input/output embeddings) are stored once, the second name recorded as an alias.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import math
import os
import sqlite3
import sys
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import xxhash

from lhp.errors import UserError
from lit_models.compression.codecs import (
    Encoded,
    decode,
    dtype_from_name,
    dtype_name,
    from_payload,
    tensor_bytes,
    to_payload,
)

FORMAT = "lhp-weight-store"
SCHEMA_VERSION = 2
SQLITE_MAGIC = b"SQLite format 3\x00"
SHARED_PREFIX = "__shared__/"
CHECKSUMS: dict[str, Callable[[], Any]] = {"xxh3_128": xxhash.xxh3_128, "sha256": hashlib.sha256}
DEFAULT_CHECKSUM = "xxh3_128"
# Bytes read from a chunk's BLOB at a time: small enough to stay in cache between the read, the
# copy into the tensor and the checksum, large enough that the per-call cost is negligible.
READ_SLICE = 1 << 18
# The columns a chunk's checksum covers besides its data (schema version >= 2).
META_COLUMNS = ("layer_name", "chunk_index", "n_chunks", "tensor_shape", "dtype", "byte_offset",
                "invariants", "compression_info")
# ``data`` is the last column: SQLite stores a large BLOB in a chain of overflow pages, and any
# column after it could only be read by walking that chain (a 4x slower load, measured).
CHUNK_COLUMNS = ("chunk_id", *META_COLUMNS[:6], "checksum", *META_COLUMNS[6:], "created_at",
                 "access_count", "data")
# Schema version 1: the same table with a SHA-256 of the data alone in column ``sha256``.
CHUNK_COLUMNS_V1 = tuple("sha256" if c == "checksum" else c for c in CHUNK_COLUMNS)
SCHEMA = """
CREATE TABLE weight_chunks (
    chunk_id TEXT PRIMARY KEY,
    layer_name TEXT NOT NULL,
    chunk_index INTEGER NOT NULL,
    n_chunks INTEGER NOT NULL,
    tensor_shape TEXT NOT NULL,
    dtype TEXT NOT NULL,
    byte_offset INTEGER NOT NULL,
    checksum TEXT NOT NULL,
    invariants TEXT,
    compression_info TEXT,
    created_at REAL NOT NULL,
    access_count INTEGER NOT NULL DEFAULT 0,
    data BLOB NOT NULL
);
CREATE INDEX idx_weight_chunks_layer ON weight_chunks(layer_name, chunk_index);
CREATE INDEX idx_weight_chunks_access ON weight_chunks(access_count);
CREATE TABLE metadata (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""

if sys.byteorder != "little":  # the format is little-endian raw bytes
    raise ImportError("lit_models.compression.store supports little-endian hosts only")


class WeightStoreError(UserError):
    """The file is not a (valid) weight store, or a stored chunk is damaged."""


class StoreNotFoundError(WeightStoreError, FileNotFoundError):
    """No file at the path of a store opened read-only."""


class ChecksumError(WeightStoreError):
    """A chunk's bytes or metadata do not match the checksum recorded when it was written."""


def _sqlite_errors(action: str) -> Callable[[Callable], Callable]:
    """Turn an SQLite error of a store method into a ``WeightStoreError`` naming the file."""
    hint = ("nothing was written (the transaction was rolled back); free disk space if it is full"
            if action == "write" else "the file is damaged or not a weight store; restore it "
            "from a good copy")

    def wrap(fn: Callable) -> Callable:
        @functools.wraps(fn)
        def wrapped(self: WeightStore, *args: Any, **kwargs: Any) -> Any:
            try:
                return fn(self, *args, **kwargs)
            except sqlite3.DatabaseError as err:
                raise WeightStoreError(f"{self.path}: cannot {action} ({fn.__name__}): {err}; "
                                       f"{hint}") from err
        return wrapped
    return wrap


class LayerNotFoundError(WeightStoreError, KeyError):
    """No layer of that name (a ``UserError`` and, for older handlers, a ``KeyError``)."""

    def __str__(self) -> str:  # KeyError would quote the whole message
        return str(self.args[0])


@dataclass(frozen=True)
class LayerInfo:
    """What the store knows of a layer without reading its data."""

    name: str
    shape: tuple[int, ...]          # of the decoded tensor
    dtype: str                      # of the decoded tensor
    stored_bytes: int               # bytes of its chunks in the database
    n_chunks: int
    codec: str | None               # None: raw bytes
    invariants: dict[str, Any] | None
    access_count: int


class WeightStore:
    """Chunked SQLite store of named tensors (see the module docstring).

    Args:
        path: database file.
        mode: ``"r"`` (must exist, read-only) or ``"a"`` (create if missing, read/write).
        chunk_bytes: size of a stored chunk (rounded down to whole elements).
        cache_bytes: byte budget of the LRU cache of decoded tensors (0 disables it).
        journal: ``"wal"`` (concurrent readers) or ``"delete"`` (a single self-contained file).
        checksum: algorithm of a new store's checksums (``"xxh3_128"`` or ``"sha256"``); an
            existing store keeps the one recorded in it, which ``self.checksum`` names.
    """

    def __init__(self, path: str | os.PathLike, mode: str = "r", chunk_bytes: int = 1 << 20,
                 cache_bytes: int = 256 << 20, journal: str = "wal",
                 checksum: str = DEFAULT_CHECKSUM) -> None:
        if mode not in ("r", "a"):
            raise ValueError(f"WeightStore mode must be 'r' or 'a', got {mode!r}")
        if not isinstance(chunk_bytes, int) or chunk_bytes < 64:
            raise ValueError(f"WeightStore chunk_bytes must be an int >= 64, got {chunk_bytes!r}")
        if not isinstance(cache_bytes, int) or cache_bytes < 0:
            raise ValueError(f"WeightStore cache_bytes must be an int >= 0, got {cache_bytes!r}")
        if journal not in ("wal", "delete"):
            raise ValueError(f"WeightStore journal must be 'wal' or 'delete', got {journal!r}")
        if checksum not in CHECKSUMS:
            raise ValueError(f"WeightStore checksum must be one of {sorted(CHECKSUMS)}, got {checksum!r}")
        self.path = Path(path)
        self.checksum, self._checksum_column, self._covers_meta = checksum, "checksum", True
        self.mode, self.chunk_bytes, self.cache_bytes = mode, chunk_bytes, cache_bytes
        self._lock = threading.RLock()
        self._depth = 0
        self._cache: OrderedDict[str, torch.Tensor] = OrderedDict()
        self._cached_bytes = 0
        self.cache_hits = self.cache_misses = 0
        self._pending_access: Counter[str] = Counter()
        self._conn = self._open(journal)
        self.aliases: dict[str, str] = self._stored_aliases()

    def _stored_aliases(self) -> dict[str, str]:
        try:
            aliases = json.loads(self.get_metadata("aliases") or "{}")
        except ValueError as err:
            raise WeightStoreError(f"{self.path}: metadata 'aliases' is not JSON ({err}); "
                                   "the file is damaged") from err
        if not isinstance(aliases, dict):
            raise WeightStoreError(f"{self.path}: metadata 'aliases' must be a JSON object, got "
                                   f"{type(aliases).__name__}; the file is damaged")
        return aliases

    # ------------------------------------------------------------------ opening
    def _open(self, journal: str) -> sqlite3.Connection:
        if self.mode == "r" and not self.path.is_file():
            raise StoreNotFoundError(f"weight store not found: {self.path} (check the path)")
        exists = self.path.is_file() and self.path.stat().st_size > 0
        if self.mode == "r" and not exists:
            raise WeightStoreError(f"{self.path}: empty file, not a weight store (an interrupted "
                                   "copy?); pass a file written by WeightStore or SQLiteCheckpointIO")
        if exists:
            with open(self.path, "rb") as fh:
                header = fh.read(100)
            if header[:16] != SQLITE_MAGIC:
                raise WeightStoreError(f"{self.path}: not a weight store (not an SQLite database; "
                                       f"header starts {header[:16]!r}); pass a file written by "
                                       "WeightStore or SQLiteCheckpointIO")
        uri = f"{self.path.absolute().as_uri()}?mode={'ro' if self.mode == 'r' else 'rwc'}"
        conn = None
        try:
            conn = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False,
                                   timeout=30.0)
            if exists:
                self._check_size(conn, header)
                self._check_schema(conn)
            else:
                conn.execute("PRAGMA page_size=65536")  # large BLOBs: fewer overflow pages
            if self.mode == "a":
                conn.execute(f"PRAGMA journal_mode={journal.upper()}")
                conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA mmap_size=0")  # mapped pages would count as RAM twice (bench)
            if not exists:
                with _transaction(conn):
                    for statement in filter(str.strip, SCHEMA.split(";")):
                        conn.execute(statement)
                    conn.executemany("INSERT INTO metadata VALUES (?, ?)", [
                        ("format", FORMAT), ("schema_version", str(SCHEMA_VERSION)),
                        ("checksum", self.checksum), ("created_at", repr(time.time())),
                        ("aliases", "{}")])
        except (sqlite3.DatabaseError, WeightStoreError) as err:
            if conn is not None:
                conn.close()
            if isinstance(err, WeightStoreError):
                raise
            raise WeightStoreError(f"{self.path}: cannot open as a weight store: {err}; the file "
                                   "is damaged or not a weight store") from err
        return conn

    def _check_size(self, conn: sqlite3.Connection, header: bytes) -> None:
        """A file shorter than its header's page count was truncated (ignoring a live WAL)."""
        wal = Path(f"{self.path}-wal")
        if wal.is_file() and wal.stat().st_size > 0:
            return
        page_size = int.from_bytes(header[16:18], "big")
        page_size = 65536 if page_size == 1 else page_size
        pages = int.from_bytes(header[28:32], "big")
        if pages and self.path.stat().st_size < page_size * pages:
            raise WeightStoreError(
                f"{self.path}: truncated weight store ({self.path.stat().st_size} bytes, "
                f"header says {pages} pages of {page_size})")

    def _check_schema(self, conn: sqlite3.Connection) -> None:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        columns = [r[1] for r in conn.execute("PRAGMA table_info(weight_chunks)")]
        meta = dict(conn.execute("SELECT key, value FROM metadata")) if "metadata" in tables else {}
        version = meta.get("schema_version", "")
        expected = {"1": CHUNK_COLUMNS_V1}.get(version, CHUNK_COLUMNS)
        if tuple(columns) != expected or meta.get("format") != FORMAT:
            raise WeightStoreError(
                f"{self.path}: wrong schema for a weight store: expected tables weight_chunks"
                f"{expected} and metadata with format={FORMAT!r}; found tables "
                f"{sorted(tables)}, weight_chunks columns {columns}, format {meta.get('format')!r}")
        if version == "1":  # written before checksums covered metadata: SHA-256 of the data
            self.checksum, self._checksum_column, self._covers_meta = "sha256", "sha256", False
            return
        if version != str(SCHEMA_VERSION):
            raise WeightStoreError(f"{self.path}: unknown schema_version {version!r} (this code "
                                   f"reads 1 to {SCHEMA_VERSION}); a newer release wrote it?")
        if meta.get("checksum") not in CHECKSUMS:
            raise WeightStoreError(
                f"{self.path}: metadata 'checksum' is {meta.get('checksum')!r}, expected one of "
                f"{sorted(CHECKSUMS)}: the chunks cannot be verified; the file is damaged or was "
                "written by other software")
        self.checksum = meta["checksum"]

    def close(self) -> None:
        with self._lock:
            if self._conn is None:
                return
            self.flush()
            self._conn.close()
            self._conn = None

    def __enter__(self) -> WeightStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise WeightStoreError(f"{self.path}: the store is closed")
        return self._conn

    def _writable(self) -> sqlite3.Connection:
        if self.mode != "a":
            raise WeightStoreError(f"{self.path}: opened read-only (mode='r'); use mode='a' to write")
        return self._db()

    def _digest(self, meta: tuple, data: bytes | memoryview) -> str:
        """Checksum of one chunk: its metadata row (``META_COLUMNS``) and its data."""
        h = CHECKSUMS[self.checksum]()
        if self._covers_meta:
            h.update(json.dumps(meta, separators=(",", ":")).encode())
        h.update(data)
        return h.hexdigest()

    # ---------------------------------------------------------------- metadata
    @_sqlite_errors("read")
    def get_metadata(self, key: str) -> str | None:
        with self._lock:
            row = self._db().execute("SELECT value FROM metadata WHERE key=?", (key,)).fetchone()
        return row[0] if row else None

    @_sqlite_errors("write")
    def set_metadata(self, key: str, value: str) -> None:
        with self.transaction():
            self._writable().execute("INSERT OR REPLACE INTO metadata VALUES (?, ?)", (key, value))

    # ------------------------------------------------------------------ writing
    @contextlib.contextmanager
    def transaction(self) -> Iterator[WeightStore]:
        """All writes inside one ``with`` block commit together or not at all (nestable)."""
        with self._lock:
            conn = self._writable()
            if self._depth:
                self._depth += 1
                try:
                    yield self
                finally:
                    self._depth -= 1
                return
            self._depth = 1
            try:
                with _transaction(conn):
                    yield self
            except BaseException as err:
                self.aliases = self._stored_aliases()
                self._cache.clear()
                self._cached_bytes = 0
                if isinstance(err, sqlite3.DatabaseError):  # COMMIT failed (a full disk)
                    raise WeightStoreError(f"{self.path}: cannot commit: {err}; nothing was "
                                           "written, free disk space if it is full") from err
                raise
            finally:
                self._depth = 0

    @_sqlite_errors("write")
    def put(self, name: str, tensor: torch.Tensor, invariants: Mapping[str, Any] | None = None,
            compression_info: Mapping[str, Any] | None = None) -> None:
        """Store ``tensor`` under ``name`` (replacing it) as raw chunks with checksums."""
        if not isinstance(name, str) or not name:
            raise ValueError(f"{self.path}: layer name must be a non-empty string, got {name!r}")
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"{self.path}: layer {name!r} must be a torch.Tensor, got {type(tensor).__name__}")
        dtype = dtype_name(tensor.dtype, f"{self.path}: layer {name!r}")
        raw = tensor_bytes(tensor)
        itemsize = max(tensor.element_size(), 1)
        step = max(self.chunk_bytes // itemsize, 1) * itemsize
        n_chunks = max(math.ceil(raw.nbytes / step), 1)
        shape = json.dumps(list(tensor.shape))
        inv = json.dumps(dict(invariants), allow_nan=True) if invariants is not None else None
        comp = json.dumps(dict(compression_info)) if compression_info is not None else None
        now = time.time()
        with self.transaction():
            conn = self._writable()
            conn.execute("DELETE FROM weight_chunks WHERE layer_name=?", (name,))
            for i in range(n_chunks):
                data = raw[i * step:(i + 1) * step]
                meta = (name, i, n_chunks, shape, dtype, i * step, inv if i == 0 else None,
                        comp if i == 0 else None)
                conn.execute("INSERT INTO weight_chunks VALUES (?,?,?,?,?,?,?,?,?,?,?,0,?)",
                             (f"{name}#{i}", *meta[:6], self._digest(meta, data), *meta[6:],
                              now, data))
            if name in self.aliases:
                self._set_aliases({k: v for k, v in self.aliases.items() if k != name})
        self._evict(name)
        self._pending_access.pop(name, None)  # a replaced layer starts counting afresh

    def put_encoded(self, name: str, encoded: Encoded,
                    invariants: Mapping[str, Any] | None = None) -> None:
        """Store a compressed tensor as one payload; shared parts go to ``__shared__/<key>``."""
        shared = dict(encoded.meta.get("shared", {}))
        own = Encoded(encoded.codec, {k: v for k, v in encoded.parts.items() if k not in shared},
                      encoded.meta)
        payload, info = to_payload(own)
        with self.transaction():
            for part, key in shared.items():
                if not self.has(SHARED_PREFIX + key):
                    self.put(SHARED_PREFIX + key, encoded.parts[part])
                info["parts"].append({"name": part, "ref": SHARED_PREFIX + key})
            self.put(name, torch.frombuffer(bytearray(payload), dtype=torch.uint8)
                     if payload else torch.empty(0, dtype=torch.uint8), invariants, info)

    def put_state_dict(self, state_dict: Mapping[str, torch.Tensor],
                       put: Callable[[str, torch.Tensor], None] | None = None) -> dict[str, str]:
        """Store every tensor in one transaction; a tensor sharing another's storage and view
        (tied weights) becomes an alias of the first name instead of a second copy.

        ``put(name, tensor)`` writes one tensor (default: ``self.put``, raw); returns the aliases.
        """
        unique, tied = split_tied(state_dict)
        aliases = {**self.aliases, **tied}
        with self.transaction():
            for name, tensor in unique.items():
                (put or self.put)(name, tensor)
            self._set_aliases(aliases)
        return aliases

    def _set_aliases(self, aliases: dict[str, str]) -> None:
        self._writable().execute("INSERT OR REPLACE INTO metadata VALUES ('aliases', ?)",
                                 (json.dumps(aliases, sort_keys=True),))
        self.aliases = aliases

    @_sqlite_errors("write")
    def delete(self, name: str) -> None:
        with self.transaction():
            target = self._resolve(name)
            if target != name:
                self._set_aliases({k: v for k, v in self.aliases.items() if k != name})
            else:  # the layer and every alias of it
                self._writable().execute("DELETE FROM weight_chunks WHERE layer_name=?", (name,))
                self._set_aliases({k: v for k, v in self.aliases.items() if v != name})
        self._evict(name)

    # ------------------------------------------------------------------ reading
    @_sqlite_errors("read")
    def names(self, include_shared: bool = False) -> list[str]:
        with self._lock:
            rows = self._db().execute(
                "SELECT layer_name FROM weight_chunks WHERE chunk_index=0").fetchall()
        names = [r[0] for r in rows if include_shared or not r[0].startswith(SHARED_PREFIX)]
        return sorted(names + list(self.aliases))

    @_sqlite_errors("read")
    def has(self, name: str) -> bool:
        with self._lock:
            return self._db().execute(
                "SELECT 1 FROM weight_chunks WHERE layer_name=? AND chunk_index=0",
                (self.aliases.get(name, name),)).fetchone() is not None

    def _resolve(self, name: str) -> str:
        target = self.aliases.get(name, name)
        if not self.has(target):
            stored = self.names()
            raise LayerNotFoundError(
                f"{self.path}: no layer {name!r}; the store holds {len(stored)} layers"
                + (f", e.g. {stored[:5]}" if stored else ""))
        return target

    @_sqlite_errors("read")
    def _head(self, name: str) -> tuple:
        with self._lock:
            return self._db().execute(
                "SELECT tensor_shape, dtype, n_chunks, invariants, compression_info "
                "FROM weight_chunks WHERE layer_name=? AND chunk_index=0", (name,)).fetchone()

    @_sqlite_errors("read")
    def info(self, name: str) -> LayerInfo:
        target = self._resolve(name)
        shape, dtype, n_chunks, inv, comp = self._head(target)
        with self._lock:
            stored, access = self._db().execute(
                "SELECT SUM(LENGTH(data)), SUM(access_count) FROM weight_chunks WHERE layer_name=?",
                (target,)).fetchone()
        comp = json.loads(comp) if comp else None
        if comp:
            shape, dtype = comp["meta"]["shape"], comp["meta"]["dtype"]
        else:
            shape = json.loads(shape)
        return LayerInfo(name, tuple(shape), dtype, int(stored), int(n_chunks),
                         comp["codec"] if comp else None, json.loads(inv) if inv else None,
                         int(access) + self._pending_access[target])

    def iter_chunks(self, name: str, verify: bool = True) -> Iterator[torch.Tensor]:
        """Stream a layer's stored tensor as flat chunks (checksummed), in order.

        Raw layers yield 1-D tensors of consecutive elements; compressed layers yield their
        payload bytes (uint8). Concatenated, the chunks are the flattened stored tensor.
        """
        target = self._resolve(name)
        torch_dtype = None
        for meta, data in self._chunk_rows(target, verify):
            torch_dtype = torch_dtype or self._decoding(target, meta)[1]
            yield _frombytes(data, torch_dtype)

    def _decoding(self, name: str, head: tuple) -> tuple[tuple[int, ...], torch.dtype, dict | None]:
        """Shape, dtype and compression info of a layer from its chunk-0 metadata row."""
        try:
            shape = tuple(json.loads(head[3]))
            torch_dtype = dtype_from_name(head[4], f"{self.path}: layer {name!r}")
            comp = json.loads(head[7]) if head[7] else None
        except (TypeError, ValueError) as err:
            raise WeightStoreError(f"{self.path}: layer {name!r} has unreadable metadata: {err}; "
                                   "the file is damaged") from err
        return shape, torch_dtype, comp

    def _chunk_rows(self, name: str, verify: bool) -> Iterator[tuple[tuple, bytes]]:
        """A layer's chunks in order as (metadata row, data), each checked against its checksum
        before it is used; chunk 0's row describes the layer (shape, dtype, codec)."""
        columns = ", ".join(META_COLUMNS)
        with self._lock, contextlib.closing(self._db().cursor()) as cursor:
            count, n_chunks = 0, None
            try:
                cursor.execute(f"SELECT chunk_id, {columns}, {self._checksum_column}, data FROM "
                               "weight_chunks WHERE layer_name=? ORDER BY chunk_index", (name,))
                for chunk_id, *meta, digest, data in cursor:
                    if meta[1] != count or meta[2] != (n_chunks or meta[2]):
                        break
                    if not isinstance(data, bytes):
                        raise WeightStoreError(f"{self.path}: chunk {chunk_id!r} of layer {name!r} "
                                               f"holds {type(data).__name__}, not bytes; the file "
                                               "is damaged")
                    if verify and self._digest(tuple(meta), data) != digest:
                        raise ChecksumError(
                            f"{self.path}: chunk {chunk_id!r} of layer {name!r} fails its "
                            f"{self.checksum} check: its bytes or metadata (shape, dtype, codec) "
                            "were modified or damaged; restore the file from a good copy")
                    n_chunks = meta[2]
                    count += 1
                    yield tuple(meta), data
            except sqlite3.DatabaseError as err:
                raise WeightStoreError(f"{self.path}: cannot read layer {name!r}: {err}; the "
                                       "file is damaged") from err
        if count != n_chunks:
            raise WeightStoreError(f"{self.path}: layer {name!r} is incomplete: found {count} "
                                   f"of {n_chunks or '?'} chunks")
        self._pending_access[name] += 1

    def _chunk_plan(self, name: str) -> list[tuple]:
        """A layer's chunks in order as (rowid, chunk_id, metadata row, checksum, data length),
        read without their data (``data`` is the last column and ``length`` does not read it)."""
        columns = ", ".join(META_COLUMNS)
        with self._lock:
            try:
                rows = self._db().execute(
                    f"SELECT rowid, chunk_id, {columns}, {self._checksum_column}, length(data), "
                    "typeof(data) FROM weight_chunks WHERE layer_name=? ORDER BY chunk_index",
                    (name,)).fetchall()
            except sqlite3.DatabaseError as err:
                raise WeightStoreError(f"{self.path}: cannot read layer {name!r}: {err}; the "
                                       "file is damaged") from err
        plan, n_chunks = [], None
        for rowid, chunk_id, *meta, digest, length, kind in rows:
            if meta[1] != len(plan) or meta[2] != (n_chunks or meta[2]):
                break
            if kind != "blob":
                raise WeightStoreError(f"{self.path}: chunk {chunk_id!r} of layer {name!r} holds "
                                       f"{kind}, not bytes; the file is damaged")
            n_chunks = meta[2]
            plan.append((rowid, chunk_id, tuple(meta), digest, int(length)))
        if len(plan) != n_chunks:
            raise WeightStoreError(f"{self.path}: layer {name!r} is incomplete: found {len(plan)} "
                                   f"of {n_chunks or '?'} chunks")
        return plan

    def _checksum_failure(self, name: str, chunk_id: str) -> ChecksumError:
        return ChecksumError(
            f"{self.path}: chunk {chunk_id!r} of layer {name!r} fails its {self.checksum} check: "
            "its bytes or metadata (shape, dtype, codec) were modified or damaged; restore the "
            "file from a good copy")

    def _check_chunks(self, name: str, plan: list[tuple]) -> None:
        """Read and verify chunks one by one (raising ``ChecksumError`` at the first bad one):
        run before reporting a layout error, so an edited shape or offset names its chunk."""
        for rowid, chunk_id, meta, digest, _ in plan:
            with self._lock, self._db().blobopen("weight_chunks", "data", rowid,
                                                 readonly=True) as blob:
                data = blob.read()
            if self._digest(meta, data) != digest:
                raise self._checksum_failure(name, chunk_id)

    def load_stored(self, name: str, verify: bool = True) -> tuple[torch.Tensor, dict | None]:
        """The stored tensor (raw, or a compressed layer's payload bytes) and its compression info.

        One tensor is allocated from chunk 0's metadata and each chunk's BLOB is read into it
        (``Connection.blobopen``, in slices of ``READ_SLICE`` bytes: SQLite reads the overflow
        pages straight into the slice, which is checksummed while it is in cache); the layout
        (offsets, total size) is checked against the metadata first, so no bytes land outside
        the tensor, and a chunk whose metadata was edited fails its checksum before any layout
        error is reported.
        """
        target = self._resolve(name)
        plan = self._chunk_plan(target)
        try:
            shape, torch_dtype, comp = self._decoding(target, plan[0][2])
            storage = torch.uint8 if torch_dtype == torch.bool else torch_dtype
            nbytes = math.prod(shape) * torch.empty((), dtype=storage).element_size()
            offsets = [m[5] for _, _, m, _, _ in plan]
            layout_ok = (offsets == [sum(p[4] for p in plan[:i]) for i in range(len(plan))]
                         and sum(p[4] for p in plan) == nbytes)
        except WeightStoreError:
            if verify:
                self._check_chunks(target, plan)
            raise
        if not layout_ok:
            if verify:
                self._check_chunks(target, plan)
            raise WeightStoreError(f"{self.path}: layer {target!r} holds {sum(p[4] for p in plan)} "
                                   f"bytes at offsets {offsets[:4]}..., its shape {list(shape)} and "
                                   f"dtype {plan[0][2][4]} need {nbytes} in consecutive chunks")
        out = torch.empty(math.prod(shape), dtype=storage)
        buf = out.view(torch.uint8).numpy() if out.numel() else np.empty(0, np.uint8)
        hasher = CHECKSUMS[self.checksum]
        with self._lock:
            conn = self._db()
            for rowid, chunk_id, meta, digest, length in plan:
                h = hasher() if verify else None
                if h is not None and self._covers_meta:
                    h.update(json.dumps(meta, separators=(",", ":")).encode())
                offset = meta[5]
                try:
                    with conn.blobopen("weight_chunks", "data", rowid, readonly=True) as blob:
                        if len(blob) != length:
                            raise WeightStoreError(f"{self.path}: chunk {chunk_id!r} of layer "
                                                   f"{target!r} changed while it was read")
                        for at in range(0, length, READ_SLICE):
                            data = blob.read(READ_SLICE)
                            buf[offset + at:offset + at + len(data)] = np.frombuffer(data, np.uint8)
                            if h is not None:
                                h.update(data)
                except sqlite3.DatabaseError as err:
                    raise WeightStoreError(f"{self.path}: cannot read layer {target!r}: {err}; "
                                           "the file is damaged") from err
                if h is not None and h.hexdigest() != digest:
                    raise self._checksum_failure(target, chunk_id)
            self._pending_access[target] += 1
        out = out.reshape(shape)
        return (out.to(torch.bool) if torch_dtype == torch.bool else out), comp

    def load(self, name: str, verify: bool = True) -> torch.Tensor:
        """The (decoded) tensor. Cached tensors are shared: clone before modifying in place."""
        target = self._resolve(name)
        with self._lock:
            if target in self._cache:
                self._cache.move_to_end(target)
                self.cache_hits += 1
                self._pending_access[target] += 1
                return self._cache[target]
            self.cache_misses += 1
        stored, comp = self.load_stored(target, verify)
        tensor = stored if comp is None else decode(self._encoded(stored, comp, verify))
        self._remember(target, tensor)
        return tensor

    def _encoded(self, payload: torch.Tensor, comp: dict, verify: bool) -> Encoded:
        refs = [p for p in comp["parts"] if "ref" in p]
        own = {**comp, "parts": [p for p in comp["parts"] if "ref" not in p]}
        enc = from_payload(memoryview(payload.numpy()), own)
        for p in refs:
            enc.parts[p["name"]] = self.load(p["ref"], verify)
        return enc

    def load_encoded(self, name: str) -> Encoded | None:
        """A compressed layer's ``Encoded`` (codes, codebooks, ...); None for a raw layer."""
        stored, comp = self.load_stored(name)
        return None if comp is None else self._encoded(stored, comp, True)

    def load_state_dict(self, names: list[str] | None = None, verify: bool = True,
                        lazy: bool = False) -> dict[str, torch.Tensor] | LazyStateDict:
        """All (or the given) layers; aliases come back as the same tensor object (tied).

        ``lazy=True`` returns a read-only mapping that reads and verifies each layer at its
        first access (a damaged chunk raises ``ChecksumError`` there), while the store is open.
        A full load asks the kernel to read the file ahead (``posix_fadvise`` WILLNEED), and
        reads the layers in the order they lie in the file.
        """
        wanted = names if names is not None else self.names()
        if lazy:
            return LazyStateDict(self, wanted, verify)
        if names is None:
            self._read_ahead()
        targets = {name: self._resolve(name) for name in wanted}
        with self._lock:
            first = dict(self._db().execute(
                "SELECT layer_name, rowid FROM weight_chunks WHERE chunk_index=0"))
        by_target = {t: self.load(t, verify)
                     for t in sorted(set(targets.values()), key=lambda t: first.get(t, 0))}
        return {name: by_target[targets[name]] for name in wanted}

    def _read_ahead(self) -> None:
        """Tell the kernel the whole file will be read (a no-op where unsupported)."""
        with contextlib.suppress(AttributeError, OSError):
            fd = os.open(self.path, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_WILLNEED)
            finally:
                os.close(fd)

    def load_into(self, module: torch.nn.Module, strict: bool = True) -> None:
        """Copy the stored weights into ``module``, naming this file and every mismatch (missing,
        unexpected or differently shaped layers) when they were written for another model."""
        expected = module.state_dict()
        stored = set(self.names())
        missing = sorted(set(expected) - stored)
        unexpected = sorted(stored - set(expected))
        shapes = {k: (self.info(k).shape, tuple(expected[k].shape)) for k in sorted(stored & set(expected))
                  if self.info(k).shape != tuple(expected[k].shape)}
        if shapes or (strict and (missing or unexpected)):
            raise WeightStoreError(
                f"{self.path}: weights do not fit {type(module).__name__} (written by another "
                f"model?): missing {missing[:5]}, unexpected {unexpected[:5]}, "
                f"shape mismatch (stored, expected) {dict(list(shapes.items())[:5])}")
        module.load_state_dict(self.load_state_dict(sorted(stored & set(expected))), strict=False)

    # -------------------------------------------------------------------- cache
    def _remember(self, name: str, tensor: torch.Tensor) -> None:
        size = tensor.numel() * tensor.element_size()
        with self._lock:
            if self.cache_bytes == 0 or size > self.cache_bytes:
                return
            self._evict(name)
            self._cache[name] = tensor
            self._cached_bytes += size
            while self._cached_bytes > self.cache_bytes:
                _, old = self._cache.popitem(last=False)
                self._cached_bytes -= old.numel() * old.element_size()

    def _evict(self, name: str) -> None:
        with self._lock:
            old = self._cache.pop(name, None)
            if old is not None:
                self._cached_bytes -= old.numel() * old.element_size()

    @property
    def cached(self) -> list[str]:
        """Names in the LRU cache, least recently used first."""
        return list(self._cache)

    @property
    def cached_bytes(self) -> int:
        return self._cached_bytes

    # --------------------------------------------------------- maintenance/stats
    @_sqlite_errors("write")
    def flush(self) -> None:
        """Write the in-memory access counts back (writable stores; read-only ones keep them)."""
        if self.mode != "a" or not self._pending_access or self._conn is None:
            return
        with self.transaction():
            self._writable().executemany(
                "UPDATE weight_chunks SET access_count = access_count + ? WHERE layer_name=?",
                [(n, name) for name, n in self._pending_access.items()])
        self._pending_access.clear()

    @_sqlite_errors("verify")
    def verify(self) -> int:
        """Check SQLite's own page structure (``PRAGMA quick_check``: a damaged b-tree page can
        leave every chunk readable today and lose rows tomorrow), then every chunk's checksum
        (raises ``ChecksumError`` naming the first bad chunk)."""
        with self._lock:
            problems = [row[0] for row in self._conn.execute("PRAGMA quick_check")]
        if problems != ["ok"]:
            raise WeightStoreError(f"{self.path}: the SQLite file is damaged "
                                   f"({' '.join(' '.join(problems[:3]).split())}); restore it from a copy")
        return sum(sum(1 for _ in self._chunk_rows(name, verify=True))
                   for name in self.names(include_shared=True) if name not in self.aliases)

    @_sqlite_errors("read")
    def stats(self) -> dict[str, Any]:
        """Database statistics: layers, chunks, bytes, codecs, accesses, cache."""
        with self._lock:
            conn = self._db()
            n_chunks, stored = conn.execute(
                "SELECT COUNT(*), COALESCE(SUM(LENGTH(data)), 0) FROM weight_chunks").fetchone()
            heads = conn.execute("SELECT layer_name, tensor_shape, dtype, compression_info "
                                 "FROM weight_chunks WHERE chunk_index=0").fetchall()
            access = dict(conn.execute("SELECT layer_name, SUM(access_count) FROM weight_chunks "
                                       "GROUP BY layer_name").fetchall())
        codecs: Counter[str] = Counter()
        logical = 0
        for name, shape, dtype, comp in heads:
            if name.startswith(SHARED_PREFIX):
                continue
            info = json.loads(comp) if comp else None
            codecs[info["codec"] if info else "raw"] += 1
            if info:
                shape, dtype = info["meta"]["shape"], info["meta"]["dtype"]
            else:
                shape = json.loads(shape)
            itemsize = torch.empty((), dtype=dtype_from_name(dtype, name)).element_size()
            logical += math.prod(shape) * itemsize
        for name, n in self._pending_access.items():
            access[name] = access.get(name, 0) + n
        top = sorted(access.items(), key=lambda kv: -kv[1])[:5]
        file_bytes = sum(p.stat().st_size for p in (self.path, Path(f"{self.path}-wal"))
                         if p.is_file())
        return {
            "path": str(self.path), "file_bytes": file_bytes, "layers": sum(codecs.values()),
            "aliases": len(self.aliases), "chunks": int(n_chunks), "stored_bytes": int(stored),
            "logical_bytes": logical, "compression_ratio": logical / stored if stored else None,
            "codecs": dict(codecs), "total_accesses": int(sum(access.values())),
            "most_accessed": top, "cache": {"entries": len(self._cache), "bytes": self._cached_bytes,
                                            "budget": self.cache_bytes, "hits": self.cache_hits,
                                            "misses": self.cache_misses},
        }

    def export_safetensors(self, path: str | os.PathLike, names: list[str] | None = None) -> Path:
        """Write the decoded tensors to a safetensors file through the platform's one writer
        (``lit_models.exporting``: atomic, tied tensors stored once with their aliases)."""
        from lit_models.exporting.safetensors_dir import write_safetensors

        return write_safetensors(self.load_state_dict(names), path,
                                 {"source": str(self.path), "format": FORMAT})


class LazyStateDict(Mapping[str, torch.Tensor]):
    """Layers of an open store, each read and verified at its first access and kept after it
    (tied names share one tensor). Corruption surfaces as ``ChecksumError`` at that access."""

    def __init__(self, store: WeightStore, names: list[str], verify: bool = True) -> None:
        self._store, self._names, self._verify = store, list(names), verify
        self._targets = {name: store._resolve(name) for name in self._names}
        self._loaded: dict[str, torch.Tensor] = {}

    def __getitem__(self, name: str) -> torch.Tensor:
        target = self._targets[name]  # KeyError for names not in the mapping
        if target not in self._loaded:
            self._loaded[target] = self._store.load(target, self._verify)
        return self._loaded[target]

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)

    @property
    def loaded(self) -> list[str]:
        """Stored layers read so far."""
        return list(self._loaded)


@contextlib.contextmanager
def _transaction(conn: sqlite3.Connection) -> Iterator[None]:
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:  # SQLite may have rolled back itself (SQLITE_FULL)
            conn.execute("ROLLBACK")
        raise


def storage_key(t: torch.Tensor) -> tuple | None:
    """Identity of a tensor's memory and view: equal keys mean the same values (tied weights)."""
    if t.numel() == 0 or t.device.type == "meta":
        return None
    return (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), tuple(t.stride()),
            t.dtype)


def split_tied(tensors: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """``(unique, aliases)``: a tensor sharing an earlier one's memory and view (tied weights)
    becomes ``aliases[name] = first name`` instead of a second copy."""
    unique: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    first: dict[tuple, str] = {}
    for name, t in tensors.items():
        key = storage_key(t)
        if key is not None and key in first:
            aliases[name] = first[key]
            continue
        if key is not None:
            first[key] = name
        unique[name] = t
    return unique, aliases


def _frombytes(data: bytes, dtype: torch.dtype) -> torch.Tensor:
    storage = torch.uint8 if dtype == torch.bool else dtype
    out = torch.frombuffer(bytearray(data), dtype=storage) if data else torch.empty(0, dtype=storage)
    return out.to(torch.bool) if dtype == torch.bool else out


def is_weight_store(path: str | os.PathLike) -> bool:
    """Cheap test used by loaders: does the file start with the SQLite header?"""
    try:
        with open(path, "rb") as fh:
            return fh.read(16) == SQLITE_MAGIC
    except OSError:
        return False
