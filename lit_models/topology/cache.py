"""A 3-tier cache of persistence diagrams for repeated topology queries (TCS v8 checklist).

Tiers, in lookup order:

1. memory: an LRU of ``memory_items`` diagrams (``collections.OrderedDict``);
2. a Bloom filter over the keys of the disk tier (opt-in, ``bloom=True``): a "no" skips the
   SQLite query, a "maybe" asks it. Built at open from the stored keys, so keys written later
   by *another* process are false negatives (a recomputation, never a wrong answer);
3. disk: one SQLite table (the platform's database engine, as the weight store) of
   checksummed rows, shared between runs.

The Bloom filter is off by default: measured (``lhp bench topology_cache``, 5,000 stored
diagrams), it cuts the lookup of a miss from 556 to 22 us, but building it costs ~190 ms per
open (a scan of the stored keys: the saving of 355 misses) and a miss then costs ~1,000x more
in computation (a streaming window: 0.8-2 s here), so it never paid end to end; see
docs/tcs-v9.md.

Key: ``xxh3_128`` of the points' dtype, shape and bytes (C order), the engine parameters
(JSON, sorted keys) and ``engine_version()``: the versions of this module's format, of GUDHI,
giotto-ph, scipy, numpy and torch. Any upgrade changes every key, and at open a database
written by another engine version is emptied, so no stale answer survives an upgrade. xxh3 is
not cryptographic; it is ~100x faster than BLAKE2 here (0.09 vs 9.7 ms for a 1000 x 768
float64 window), and a cache is not an authentication boundary (an accidental 128-bit
collision is not a practical risk).

Values are data, never code: the pairs as raw little-endian float64 bytes plus a JSON header
(no pickle). Safety of the disk tier: a file that is not SQLite, a SQLite database with other
tables or another schema (a foreign database), or one SQLite reports as damaged (at open or on
any later query) is moved aside (``<path>.corrupt-<time>``, nothing is deleted) and a new cache
is created; a row whose checksum does not match its contents (a tampered row) is deleted and
recomputed, never served. Each event is counted in ``stats()`` and logged as a warning. (No
``PRAGMA quick_check`` at open: it reads the whole file, ~0.4 s per 80 MB here, and the row
checksums already guard every answer.)
"""

from __future__ import annotations

import importlib.metadata
import json
import logging
import math
import sqlite3
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import xxhash

from lit_models.topology.diagrams import Diagram

log = logging.getLogger(__name__)
FORMAT = "lhp-topology-cache"
SCHEMA_VERSION = "1"
CODE_VERSION = "1"  # bump when the engine's answers change without a library upgrade
ENGINE_LIBRARIES = ("gudhi", "giotto-ph", "scipy", "numpy", "torch")
SQLITE_MAGIC = b"SQLite format 3\x00"
SCHEMA = """
CREATE TABLE diagrams (key BLOB PRIMARY KEY, header TEXT NOT NULL, data BLOB NOT NULL,
                       checksum BLOB NOT NULL) WITHOUT ROWID;
CREATE TABLE cache_meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
"""
TABLES = {"diagrams": ["key", "header", "data", "checksum"], "cache_meta": ["name", "value"]}
BLOOM_BITS = 2**23  # 1 MiB of bits: ~1% false positives at 800k keys with 7 hashes
BLOOM_HASHES = 7


def engine_version() -> str:
    """The cache format and the versions of the libraries that compute the diagrams."""
    libs = []
    for name in ENGINE_LIBRARIES:
        try:
            libs.append(f"{name}={importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            libs.append(f"{name}=absent")
    return ";".join([f"code={CODE_VERSION}", *libs])


def cache_key(points: np.ndarray, params: Mapping[str, Any], version: str | None = None) -> bytes:
    """16-byte key of a query: the points' dtype, shape and bytes, the parameters, the engine."""
    a = np.ascontiguousarray(points)
    h = xxhash.xxh3_128()
    header = {"dtype": a.dtype.str, "shape": list(a.shape), "params": dict(params),
              "engine": version if version is not None else engine_version()}
    h.update(json.dumps(header, sort_keys=True, default=str).encode())
    h.update(memoryview(a).cast("B"))
    return h.digest()


def encode_diagram(d: Diagram) -> tuple[str, bytes]:
    """(JSON header, float64 little-endian pair bytes) of a diagram."""
    header = {"max_dim": d.max_dim, "method": d.method, "approximate": d.approximate,
              "n_points": d.n_points, "notes": list(d.notes),
              "counts": [len(d[k]) for k in d.dims]}
    data = b"".join(np.ascontiguousarray(d[k], dtype="<f8").tobytes() for k in d.dims)
    return json.dumps(header, sort_keys=True), data


def decode_diagram(header: str, data: bytes) -> Diagram:
    """Inverse of ``encode_diagram``; ValueError on anything inconsistent."""
    h = json.loads(header)
    counts = [int(c) for c in h["counts"]]
    flat = np.frombuffer(data, dtype="<f8")
    if len(counts) != int(h["max_dim"]) + 1 or len(flat) != 2 * sum(counts):
        raise ValueError("diagram header does not match its data")
    ends = np.cumsum([0, *counts]) * 2
    pairs = {k: flat[ends[k]:ends[k + 1]].reshape(-1, 2).astype(np.float64)
             for k in range(len(counts))}
    return Diagram(pairs, max_dim=int(h["max_dim"]), method=str(h["method"]),
                   approximate=bool(h["approximate"]), n_points=int(h["n_points"]),
                   notes=tuple(str(n) for n in h["notes"]))


def _row_checksum(key: bytes, header: str, data: bytes) -> bytes:
    h = xxhash.xxh3_128(key)
    h.update(header.encode())
    h.update(data)
    return h.digest()


class BloomFilter:
    """A plain bit-array Bloom filter over 16-byte keys that already are hashes: the bit
    positions are ``h1 + i * h2`` (mod m) from the key's two 64-bit halves (double hashing)."""

    def __init__(self, bits: int = BLOOM_BITS, hashes: int = BLOOM_HASHES) -> None:
        self.bits, self.hashes = int(bits), int(hashes)
        self._array = bytearray((self.bits + 7) // 8)

    def _positions(self, key: bytes) -> list[int]:
        h1 = int.from_bytes(key[:8], "little")
        h2 = int.from_bytes(key[8:16], "little") | 1
        return [(h1 + i * h2) % self.bits for i in range(self.hashes)]

    def add(self, key: bytes) -> None:
        for p in self._positions(key):
            self._array[p >> 3] |= 1 << (p & 7)

    def __contains__(self, key: bytes) -> bool:
        return all(self._array[p >> 3] >> (p & 7) & 1 for p in self._positions(key))


class TopologyCache:
    """Memory LRU -> (Bloom filter) -> SQLite cache of diagrams; see the module docstring.

    ``path=None``: memory tier only. ``get_or_compute(points, params, compute)`` is the one
    call most users need; ``stats()`` reports hits per tier, the hit rate and latencies.
    """

    def __init__(self, path: str | Path | None = None, memory_items: int = 256,
                 bloom: bool = False, bloom_bits: int = BLOOM_BITS) -> None:
        if not isinstance(memory_items, int) or memory_items < 0:
            raise ValueError(f"memory_items must be an int >= 0, got {memory_items!r}")
        self.path = Path(path) if path is not None else None
        self.memory_items = memory_items
        self.version = engine_version()
        self._memory: OrderedDict[bytes, Diagram] = OrderedDict()
        self._bloom_bits = bloom_bits if bloom and self.path is not None else 0
        self.bloom: BloomFilter | None = None
        self.counts = {"lookups": 0, "memory_hits": 0, "disk_hits": 0, "misses": 0,
                       "bloom_skips": 0, "corrupt_rows": 0, "rebuilt": 0}
        self.rebuilt_reason: str | None = None
        self._ms: dict[str, list[float]] = {"memory_hit": [], "disk_hit": [], "miss": [],
                                            "compute": [], "key": []}
        self._conn = self._open() if self.path is not None else None

    # ------------------------------------------------------------------ disk tier
    def _open(self) -> sqlite3.Connection:
        assert self.path is not None
        self.path.parent.mkdir(parents=True, exist_ok=True)
        problem = self._foreign_or_corrupt()
        if problem:
            self._move_aside(problem)
        conn = self._connect()
        try:
            self._prepare(conn)
        except sqlite3.DatabaseError as err:  # damaged beyond what the checks above caught
            conn.close()
            self._move_aside(f"cannot be used as a topology cache: {err}")
            conn = self._connect()
            self._prepare(conn)
        if self._bloom_bits:
            self.bloom = BloomFilter(self._bloom_bits)
            for (key,) in conn.execute("SELECT key FROM diagrams"):
                self.bloom.add(bytes(key))
        return conn

    def _recover(self, err: sqlite3.DatabaseError) -> None:
        """The database failed under a query: set it aside and continue with a new one."""
        if self._conn is not None:
            self._conn.close()
        self._move_aside(f"failed a query ({err})")
        self._conn = self._open()

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, timeout=30.0,
                               check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        return conn

    def _prepare(self, conn: sqlite3.Connection) -> None:
        tables = {r[0] for r in conn.execute(
            "SELECT name FROM sqlite_master WHERE type='table' AND name NOT LIKE 'sqlite_%'")}
        if not tables:
            conn.execute("BEGIN IMMEDIATE")
            for statement in filter(str.strip, SCHEMA.split(";")):
                conn.execute(statement)
            conn.executemany("INSERT INTO cache_meta VALUES (?, ?)", [
                ("format", FORMAT), ("schema_version", SCHEMA_VERSION), ("engine", self.version)])
            conn.execute("COMMIT")
            return
        meta = dict(conn.execute("SELECT name, value FROM cache_meta"))
        if meta.get("engine") != self.version:  # an upgrade: every stored answer is stale
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("DELETE FROM diagrams")
            conn.execute("INSERT OR REPLACE INTO cache_meta VALUES ('engine', ?)", (self.version,))
            conn.execute("COMMIT")
            log.info("%s: written by engine %s, now %s: emptied", self.path,
                     meta.get("engine"), self.version)

    def _foreign_or_corrupt(self) -> str | None:
        """Why the file at ``path`` cannot be this cache (None: absent, empty, or fine)."""
        if not self.path.exists():
            return None
        if not self.path.is_file():
            return "not a regular file"
        if self.path.stat().st_size == 0:
            return None
        with open(self.path, "rb") as fh:
            if fh.read(16) != SQLITE_MAGIC:
                return "not an SQLite database"
        try:
            conn = sqlite3.connect(f"{self.path.absolute().as_uri()}?mode=ro", uri=True)
            try:
                names = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE "
                                                    "type='table' AND name NOT LIKE 'sqlite_%'")]
                tables = {t: [c[0] for c in conn.execute(
                    "SELECT name FROM pragma_table_info(?) ORDER BY cid", (t,))] for t in names}
                if tables != TABLES:
                    return (f"a foreign SQLite database (tables {sorted(tables)}, expected "
                            f"{sorted(TABLES)} with their columns)")
                meta = dict(conn.execute("SELECT name, value FROM cache_meta"))
                if (meta.get("format"), meta.get("schema_version")) != (FORMAT, SCHEMA_VERSION):
                    return (f"format {meta.get('format')!r} schema {meta.get('schema_version')!r}"
                            f", expected {FORMAT!r} schema {SCHEMA_VERSION!r}")
            finally:
                conn.close()
        except sqlite3.DatabaseError as err:
            return f"unreadable as SQLite ({err})"
        return None

    def _move_aside(self, why: str) -> None:
        aside = self.path.with_name(f"{self.path.name}.corrupt-{time.strftime('%Y%m%dT%H%M%S')}"
                                    f"-{time.time_ns() % 10**9:09d}")
        for suffix in ("-wal", "-shm"):
            side = Path(f"{self.path}{suffix}")
            if side.exists():
                side.rename(Path(f"{aside}{suffix}"))
        self.path.rename(aside)
        self.counts["rebuilt"] += 1
        self.rebuilt_reason = why
        log.warning("topology cache %s %s: moved to %s, a new cache is created there", self.path,
                    why, aside.name)

    # ------------------------------------------------------------------ lookups
    def key(self, points: np.ndarray, params: Mapping[str, Any]) -> bytes:
        t0 = time.perf_counter()
        k = cache_key(points, params, self.version)
        self._ms["key"].append((time.perf_counter() - t0) * 1000.0)
        return k

    def get(self, key: bytes) -> Diagram | None:
        """The cached diagram of ``key`` from the fastest tier that has it, or None."""
        t0 = time.perf_counter()
        self.counts["lookups"] += 1
        hit = self._memory.get(key)
        if hit is not None:
            self._memory.move_to_end(key)
            self.counts["memory_hits"] += 1
            self._ms["memory_hit"].append((time.perf_counter() - t0) * 1000.0)
            return hit
        diagram = self._disk_get(key)
        if diagram is None:
            self.counts["misses"] += 1
            self._ms["miss"].append((time.perf_counter() - t0) * 1000.0)
            return None
        self.counts["disk_hits"] += 1
        self._remember(key, diagram)
        self._ms["disk_hit"].append((time.perf_counter() - t0) * 1000.0)
        return diagram

    def _disk_get(self, key: bytes) -> Diagram | None:
        if self._conn is None:
            return None
        if self.bloom is not None and key not in self.bloom:
            self.counts["bloom_skips"] += 1
            return None
        try:
            row = self._conn.execute("SELECT header, data, checksum FROM diagrams WHERE key = ?",
                                     (key,)).fetchone()
        except sqlite3.DatabaseError as err:
            self._recover(err)
            return None
        if row is None:
            return None
        header, data, checksum = row[0], bytes(row[1]), bytes(row[2])
        try:
            if _row_checksum(key, header, data) != checksum:
                raise ValueError("checksum mismatch")
            return decode_diagram(header, data)
        except (ValueError, KeyError, TypeError) as err:  # tampered or damaged: never served
            self.counts["corrupt_rows"] += 1
            log.warning("topology cache %s: row %s is damaged (%s): deleted, recomputed",
                        self.path, key.hex(), err)
            self._conn.execute("DELETE FROM diagrams WHERE key = ?", (key,))
            return None

    def put(self, key: bytes, diagram: Diagram) -> None:
        """Store ``diagram`` under ``key`` in memory and, with a path, on disk."""
        self._remember(key, diagram)
        if self._conn is None:
            return
        header, data = encode_diagram(diagram)
        row = (key, header, data, _row_checksum(key, header, data))
        try:
            self._conn.execute("INSERT OR REPLACE INTO diagrams VALUES (?, ?, ?, ?)", row)
        except sqlite3.DatabaseError as err:
            self._recover(err)
            self._conn.execute("INSERT OR REPLACE INTO diagrams VALUES (?, ?, ?, ?)", row)
        if self.bloom is not None:
            self.bloom.add(key)

    def _remember(self, key: bytes, diagram: Diagram) -> None:
        if self.memory_items == 0:
            return
        self._memory[key] = diagram
        self._memory.move_to_end(key)
        while len(self._memory) > self.memory_items:
            self._memory.popitem(last=False)

    def get_or_compute(self, points: np.ndarray, params: Mapping[str, Any],
                       compute: Callable[[], Diagram]) -> Diagram:
        """The diagram of (``points``, ``params``): cached, or ``compute()`` and stored."""
        key = self.key(points, params)
        hit = self.get(key)
        if hit is not None:
            return hit
        t0 = time.perf_counter()
        diagram = compute()
        self._ms["compute"].append((time.perf_counter() - t0) * 1000.0)
        self.put(key, diagram)
        return diagram

    def clear_memory(self) -> None:
        """Empty the memory tier (the disk tier stays)."""
        self._memory.clear()

    # ------------------------------------------------------------------ reporting
    def stats(self) -> dict[str, float]:
        """Counts per tier, ``hit_rate`` (memory + disk hits / lookups) and mean latencies (ms):
        ``ms_memory_hit``, ``ms_disk_hit``, ``ms_miss`` (the lookup that found nothing),
        ``ms_compute`` (the computation after a miss), ``ms_key`` (hashing)."""
        c = dict(self.counts)
        hits = c["memory_hits"] + c["disk_hits"]
        out: dict[str, float] = {**c, "hit_rate": hits / c["lookups"] if c["lookups"] else math.nan}
        for name, values in self._ms.items():
            out[f"ms_{name}"] = float(np.mean(values)) if values else math.nan
        return out

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def __enter__(self) -> TopologyCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
