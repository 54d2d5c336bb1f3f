"""The 3-tier topology cache: keys, tiers, persistence across instances, and damaged or foreign
databases (moved aside and rebuilt, never served)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np
import pytest

from lit_models.topology import StreamingAnalyzer, TopologyCache, compute_persistence
from lit_models.topology import cache as cache_mod
from lit_models.topology.cache import cache_key, decode_diagram, encode_diagram


def _cloud(seed: int = 0, n: int = 40) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, 3))


def _diagram(x: np.ndarray):
    return compute_persistence(x, max_dim=1, method="ripser")


def test_key_covers_bytes_dtype_shape_params_and_engine() -> None:
    x = _cloud()
    base = cache_key(x, {"m": 1}, "v1")
    assert cache_key(x.copy(), {"m": 1}, "v1") == base  # content, not identity
    y = x.copy()
    y[3, 1] = np.nextafter(y[3, 1], np.inf)
    variants = [cache_key(y, {"m": 1}, "v1"), cache_key(x.astype(np.float32), {"m": 1}, "v1"),
                cache_key(x.reshape(20, 6), {"m": 1}, "v1"), cache_key(x, {"m": 2}, "v1"),
                cache_key(x, {"m": 1}, "v2"), cache_key(np.asfortranarray(x) * 1.0, {"m": 1}, "v1")]
    assert all(v != base for v in variants[:5]) and variants[5] == base
    assert "giotto-ph=" in cache_mod.engine_version() and "gudhi=" in cache_mod.engine_version()


def test_diagram_round_trip_is_exact() -> None:
    d = _diagram(_cloud())
    back = decode_diagram(*encode_diagram(d))
    assert (back.max_dim, back.method, back.n_points) == (d.max_dim, d.method, d.n_points)
    for k in d.dims:
        np.testing.assert_array_equal(back[k], d[k])


def test_tiers_and_persistence_across_instances(tmp_path: Path) -> None:
    path = tmp_path / "topo.db"
    x, calls = _cloud(), []

    def compute():
        calls.append(1)
        return _diagram(x)

    with TopologyCache(path, memory_items=4) as c:
        first = c.get_or_compute(x, {"q": 1}, compute)
        again = c.get_or_compute(x, {"q": 1}, compute)
        assert again is first and len(calls) == 1
        s = c.stats()
        assert (s["misses"], s["memory_hits"], s["disk_hits"], s["hit_rate"]) == (1, 1, 0, 0.5)
    with TopologyCache(path, memory_items=4, bloom=True) as c:  # fresh memory: from disk
        d = c.get_or_compute(x, {"q": 1}, compute)
        assert len(calls) == 1 and c.stats()["disk_hits"] == 1
        np.testing.assert_array_equal(d[1], first[1])
        c.get_or_compute(_cloud(1), {"q": 1}, lambda: _diagram(_cloud(1)))
        assert c.stats()["bloom_skips"] == 1  # the Bloom filter answered the miss


def test_memory_lru_evicts_oldest() -> None:
    c = TopologyCache(None, memory_items=2)
    keys = [bytes([i]) * 16 for i in range(3)]
    d = _diagram(_cloud())
    for k in keys:
        c.put(k, d)
    assert c.get(keys[0]) is None and c.get(keys[2]) is d


def test_engine_upgrade_empties_the_disk_tier(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "topo.db"
    x = _cloud()
    with TopologyCache(path) as c:
        c.put(cache_key(x, {}, c.version), _diagram(x))
    monkeypatch.setattr(cache_mod, "CODE_VERSION", "upgraded")
    with TopologyCache(path) as c:
        assert c._conn.execute("SELECT COUNT(*) FROM diagrams").fetchone()[0] == 0


def _foreign_db(path: Path) -> None:
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE users (name TEXT)")
    conn.execute("INSERT INTO users VALUES ('kept')")
    conn.commit()
    conn.close()


def _wrong_schema(path: Path) -> None:
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE diagrams (key BLOB PRIMARY KEY, value TEXT)")
    conn.execute("CREATE TABLE cache_meta (name TEXT PRIMARY KEY, value TEXT)")
    conn.commit()
    conn.close()


def _wrong_format(path: Path) -> None:
    with TopologyCache(path):
        pass
    conn = sqlite3.connect(path)
    conn.execute("UPDATE cache_meta SET value = 'someone-else' WHERE name = 'format'")
    conn.commit()
    conn.close()


@pytest.mark.parametrize("make", [lambda p: p.write_bytes(b"not a database at all" * 50),
                                  lambda p: p.write_bytes(b"SQLite format 3\x00" + bytes(200)),
                                  _foreign_db, _wrong_schema, _wrong_format],
                         ids=["garbage", "bad-sqlite-header", "foreign-db", "wrong-schema",
                              "wrong-format"])
def test_corrupt_or_foreign_database_is_moved_aside_and_rebuilt(tmp_path: Path, make) -> None:
    path = tmp_path / "topo.db"
    make(path)
    before = path.read_bytes()
    x = _cloud()
    with TopologyCache(path) as c:
        assert c.stats()["rebuilt"] == 1 and c.rebuilt_reason
        d = c.get_or_compute(x, {}, lambda: _diagram(x))
        assert c.stats()["misses"] == 1
        np.testing.assert_array_equal(d[0], _diagram(x)[0])
    aside = [p for p in tmp_path.iterdir() if ".corrupt-" in p.name and not p.name.endswith(
        ("-wal", "-shm"))]
    assert len(aside) == 1 and aside[0].read_bytes() == before  # nothing of theirs is lost
    with TopologyCache(path) as c:  # the rebuilt file is a valid cache now
        assert c.stats()["rebuilt"] == 0 and c.get_or_compute(x, {}, lambda: None) is not None


def test_tampered_row_is_never_served(tmp_path: Path) -> None:
    path = tmp_path / "topo.db"
    x = _cloud()
    truth = _diagram(x)
    with TopologyCache(path) as c:
        c.put(cache_key(x, {}, c.version), truth)
    conn = sqlite3.connect(path)
    data = bytearray(conn.execute("SELECT data FROM diagrams").fetchone()[0])
    data[8:16] = np.float64(123.0).tobytes()  # one death changed, header and checksum kept
    conn.execute("UPDATE diagrams SET data = ?", (bytes(data),))
    conn.commit()
    conn.close()
    with TopologyCache(path) as c:
        d = c.get_or_compute(x, {}, lambda: _diagram(x))
        s = c.stats()
        assert (s["corrupt_rows"], s["disk_hits"], s["misses"]) == (1, 0, 1)
        np.testing.assert_array_equal(d[0], truth[0])
    with TopologyCache(path) as c:  # recomputed and stored again, valid
        c.get_or_compute(x, {}, lambda: None)
        assert (c.stats()["disk_hits"], c.stats()["corrupt_rows"]) == (1, 0)


def test_bloom_filter_has_no_false_negatives() -> None:
    bloom = cache_mod.BloomFilter(bits=4096, hashes=5)
    keys = [np.random.default_rng(i).bytes(16) for i in range(300)]
    for k in keys:
        bloom.add(k)
    assert all(k in bloom for k in keys)
    others = [np.random.default_rng(1000 + i).bytes(16) for i in range(300)]
    assert sum(k in bloom for k in others) < 300  # not everything (the filter filters)


def test_streaming_with_cache_gives_the_same_events(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(size=(150, 3)), rng.normal(size=(150, 3)) * 0.1 + 5.0])
    kwargs = dict(window=80, chunk_points=20, max_latency_ms=float("inf"), landmarks=24)
    plain = StreamingAnalyzer(**kwargs).push_batch(x)
    c = TopologyCache(tmp_path / "s.db")
    first = StreamingAnalyzer(**kwargs, cache=c).push_batch(x)
    c.clear_memory()
    second = StreamingAnalyzer(**kwargs, cache=c).push_batch(x)
    assert plain == first == second and plain
    s = c.stats()
    assert s["disk_hits"] == s["misses"] == s["lookups"] / 2
