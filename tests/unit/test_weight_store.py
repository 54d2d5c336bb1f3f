"""SQLite weight store on real database files: round trips, transactions (a killed writer),
checksums (flipped bytes, edited metadata, SHA-256 stores of schema 1), LRU byte budget,
concurrent readers, bad files, CheckpointIO format (atomic saves: a full disk, a killed saver)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import re
import resource
import signal
import sqlite3
import subprocess
import sys
import threading
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import xxhash

from lhp.errors import UserError
from lit_models.compression.codecs import DTYPES, tensor_bytes
from lit_models.compression.quaternion import QuaternionCodec
from lit_models.compression.store import (
    READ_SLICE,
    ChecksumError,
    LayerNotFoundError,
    WeightStore,
    WeightStoreError,
)
from lit_models.compression.structurizer import QuaternionStructurizer
from tests.conftest import REPO


def _tensors() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    out = {}
    for i, (name, dtype) in enumerate(DTYPES.items()):
        shape = [(3, 5, 7), (0, 3), (), (13,), (2, 1, 9)][i % 5]
        if dtype.is_floating_point:
            out[name] = torch.randn(shape, generator=gen).to(dtype)
        elif dtype == torch.bool:
            out[name] = torch.randint(0, 2, shape, generator=gen).bool()
        else:
            out[name] = torch.randint(-100 if dtype != torch.uint8 else 0, 100, shape, generator=gen).to(dtype)
    return out


def test_round_trip_every_dtype_and_shape_in_many_chunks(tmp_path: Path) -> None:
    tensors = _tensors()
    with WeightStore(tmp_path / "w.db", "a", chunk_bytes=64) as store:
        store.put_state_dict(tensors)
    with WeightStore(tmp_path / "w.db", "r") as store:
        assert store.names() == sorted(tensors)
        for name, t in tensors.items():
            out = store.load(name)
            assert out.dtype == t.dtype and out.shape == t.shape and torch.equal(out, t), name
            chunks = list(store.iter_chunks(name))
            assert torch.equal(torch.cat(chunks) if chunks else torch.empty(0), t.reshape(-1))
        assert store.info("float64").n_chunks == math.ceil(3 * 5 * 7 * 8 / 64)
        assert store.verify() == store.stats()["chunks"]


def test_tied_tensors_are_stored_once_and_come_back_tied(tmp_path: Path) -> None:
    emb = torch.randn(50, 8)
    with WeightStore(tmp_path / "w.db", "a") as store:
        store.put_state_dict({"wte": emb, "lm_head": emb, "other": emb.clone()})
        assert store.aliases == {"lm_head": "wte"}
        assert store.stats()["stored_bytes"] == 2 * emb.numel() * 4  # wte and other, not lm_head
        out = store.load_state_dict()
        store.delete("lm_head")  # an alias: the layer stays
        assert store.names() == ["other", "wte"]
        store.put_state_dict({"a": emb, "b": emb})
        store.delete("a")  # a layer: its aliases go with it
        assert store.names() == ["other", "wte"] and store.aliases == {}
    assert out["wte"] is out["lm_head"] and torch.equal(out["other"], emb)


def test_compressed_layers_share_one_codebook(tmp_path: Path) -> None:
    sd = {"a": torch.randn(32, 64), "b": torch.randn(16, 40), "bias": torch.randn(16)}
    s = QuaternionStructurizer(QuaternionCodec(dir_bits=6, norm_bits=2), min_numel=64)
    with WeightStore(tmp_path / "q.db", "a") as store:
        summary = s.structure_state_dict(sd, store)
        assert summary["layers"]["bias"]["codec"] == "raw"
        shared = [n for n in store.names(include_shared=True) if n.startswith("__shared__/")]
        assert shared == ["__shared__/quaternion/codebook-d6-s0"]
        assert store.stats()["codecs"] == {"quaternion": 2, "raw": 1}
        assert store.info("a").codec == "quaternion" and store.info("a").shape == (32, 64)
        assert store.info("a").invariants["spectrum"]["n_singular_values"] == 32
    with WeightStore(tmp_path / "q.db", "r") as store:
        a = s.load_layer(store, "a")
        assert a.shape == (32, 64) and float((a - sd["a"]).norm() / sd["a"].norm()) < 0.5
        assert torch.equal(store.load("bias"), sd["bias"])
        store.export_safetensors(tmp_path / "q.safetensors")
    from safetensors.torch import load_file

    assert torch.equal(load_file(tmp_path / "q.safetensors")["a"], a)


def test_transaction_rolls_back_in_process(tmp_path: Path) -> None:
    with WeightStore(tmp_path / "w.db", "a") as store:
        store.put("keep", torch.ones(3))
        with pytest.raises(RuntimeError, match="boom"), store.transaction():
            store.put("keep", torch.zeros(3))
            store.put("new", torch.ones(2))
            raise RuntimeError("boom")
        assert store.names() == ["keep"] and torch.equal(store.load("keep"), torch.ones(3))


WRITER = """
import sys, time, torch
from lit_models.compression.store import WeightStore
store = WeightStore(sys.argv[1], "a", chunk_bytes=4096)
with store.transaction():
    store.put("old", torch.zeros(5000))          # replaces the committed layer
    for i in range(10000):
        store.put(f"new{i}", torch.full((4096,), float(i)))
        if i == 400:  # 6.5 MB written: more than SQLite's page cache, so pages are on disk
            print("writing", flush=True)
        if i >= 400:
            time.sleep(0.01)
"""


def test_killed_writer_leaves_previous_state_intact(tmp_path: Path) -> None:
    path = tmp_path / "w.db"
    old = torch.randn(5000)
    with WeightStore(path, "a", chunk_bytes=4096) as store:
        store.put("old", old)
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "writing", proc.stderr.read()
    finally:
        proc.kill()  # SIGKILL mid-transaction: no cleanup code runs
        proc.wait(timeout=30)
    assert proc.returncode < 0
    assert Path(f"{path}-wal").stat().st_size > 0, "the writer had written pages when killed"
    with WeightStore(path, "r") as store:
        assert store.names() == ["old"]
        assert torch.equal(store.load("old"), old)
        assert store.verify() == math.ceil(5000 * 4 / 4096)
    with WeightStore(path, "a") as store:  # and it is writable again
        store.put("after", torch.ones(2))
        assert store.names() == ["after", "old"]


def test_flipped_byte_fails_the_checksum_naming_the_chunk(tmp_path: Path) -> None:
    path = tmp_path / "w.db"
    marker = torch.frombuffer(bytearray(b"H2Q-CHECKSUM-TEST" * 64), dtype=torch.uint8)
    with WeightStore(path, "a", chunk_bytes=512) as store:
        store.put("good", torch.arange(100, dtype=torch.float32))
        store.put("target", marker.clone())
    raw = bytearray(path.read_bytes())
    at = raw.index(b"H2Q-CHECKSUM-TEST" * 4, 600)  # inside the second chunk of "target"
    raw[at + 5] ^= 0xFF
    path.write_bytes(bytes(raw))
    with WeightStore(path, "r") as store:
        assert torch.equal(store.load("good"), torch.arange(100, dtype=torch.float32))
        with pytest.raises(ChecksumError, match=r"w.db: chunk 'target#1' of layer 'target'.*xxh3_128"):
            store.load("target")
        with pytest.raises(ChecksumError, match="target#1"):
            list(store.iter_chunks("target"))
        with pytest.raises(ChecksumError, match="target#1"):
            store.verify()
        with pytest.raises(UserError, match="target#1"):
            store.load_state_dict()
        lazy = store.load_state_dict(lazy=True)  # nothing read yet: detected at first access
        assert sorted(lazy) == ["good", "target"] and lazy.loaded == []
        assert torch.equal(lazy["good"], torch.arange(100, dtype=torch.float32))
        with pytest.raises(ChecksumError, match=r"chunk 'target#1' of layer 'target'"):
            lazy["target"]
        assert lazy.loaded == ["good"]


def _streamed(store: WeightStore, name: str) -> bytes:
    """A layer's bytes through the row-by-row cursor path (``iter_chunks``), the reader that
    ``load`` used before it read BLOBs into the tensor in place."""
    return b"".join(tensor_bytes(chunk).tobytes() for chunk in store.iter_chunks(name))


@pytest.mark.parametrize("chunk_bytes", [64, 1000, 1 << 20])
def test_in_place_reader_is_bit_identical_to_the_streamed_chunks(tmp_path: Path, chunk_bytes: int
                                                                 ) -> None:
    tensors = _tensors()
    gen = torch.Generator().manual_seed(1)
    rows = 300 if chunk_bytes > READ_SLICE else 30  # the large chunks: several read slices each
    tensors["big"] = torch.randn(rows, 257, generator=gen)
    tensors["nan_payloads"] = torch.tensor([float("nan"), -0.0, float("inf")]).view(torch.int32
                                                                                     ).add(7).view(torch.float32)
    tensors["tied"] = tensors["big"]
    with WeightStore(tmp_path / "w.db", "a", chunk_bytes=chunk_bytes) as store:
        store.put_state_dict(tensors)
    with WeightStore(tmp_path / "w.db", "r", cache_bytes=0) as store:
        eager, lazy = store.load_state_dict(), store.load_state_dict(lazy=True)
        assert eager["tied"] is eager["big"] and lazy["tied"] is lazy["big"]
        for name, t in tensors.items():
            for got in (eager[name], lazy[name], store.load(name, verify=False)):
                assert got.dtype == t.dtype and got.shape == t.shape
                assert tensor_bytes(got).tobytes() == tensor_bytes(t).tobytes() == _streamed(store, name)


def test_new_stores_checksum_metadata_and_data_with_xxh3(tmp_path: Path) -> None:
    """The format: metadata names the algorithm; a chunk's checksum is xxh3-128 of its metadata
    row (compact JSON of ``META_COLUMNS``) followed by its data."""
    with WeightStore(tmp_path / "w.db", "a", chunk_bytes=64) as store:
        store.put("w", torch.arange(40, dtype=torch.float32), invariants={"n": 1})
        assert store.get_metadata("checksum") == store.checksum == "xxh3_128"
        rows = store._db().execute("SELECT layer_name, chunk_index, n_chunks, tensor_shape, dtype, "
                                   "byte_offset, invariants, compression_info, checksum, data "
                                   "FROM weight_chunks ORDER BY chunk_index").fetchall()
    assert len(rows) == 3
    for *meta, digest, data in rows:
        expected = xxhash.xxh3_128(json.dumps(meta, separators=(",", ":")).encode() + data)
        assert digest == expected.hexdigest()


def _legacy_store(path: Path, tensors: dict[str, torch.Tensor], chunk_bytes: int = 64) -> None:
    """A store as schema version 1 wrote it: column ``sha256``, a SHA-256 of the data alone."""
    with sqlite3.connect(path) as conn:
        conn.executescript(SCHEMA_V1)
        conn.executemany("INSERT INTO metadata VALUES (?, ?)", [
            ("format", "lhp-weight-store"), ("schema_version", "1"), ("aliases", "{}")])
        for name, t in tensors.items():
            raw = tensor_bytes(t)
            n = max(math.ceil(raw.nbytes / chunk_bytes), 1)
            for i in range(n):
                data = bytes(raw[i * chunk_bytes:(i + 1) * chunk_bytes])
                conn.execute("INSERT INTO weight_chunks VALUES (?,?,?,?,?,?,?,?,?,?,?,0,?)",
                             (f"{name}#{i}", name, i, n, json.dumps(list(t.shape)), str(t.dtype)[6:],
                              i * chunk_bytes, hashlib.sha256(data).hexdigest(), None, None, 0.0, data))


SCHEMA_V1 = """
CREATE TABLE weight_chunks (chunk_id TEXT PRIMARY KEY, layer_name TEXT NOT NULL,
    chunk_index INTEGER NOT NULL, n_chunks INTEGER NOT NULL, tensor_shape TEXT NOT NULL,
    dtype TEXT NOT NULL, byte_offset INTEGER NOT NULL, sha256 TEXT NOT NULL, invariants TEXT,
    compression_info TEXT, created_at REAL NOT NULL, access_count INTEGER NOT NULL DEFAULT 0,
    data BLOB NOT NULL);
CREATE INDEX idx_weight_chunks_layer ON weight_chunks(layer_name, chunk_index);
CREATE INDEX idx_weight_chunks_access ON weight_chunks(access_count);
CREATE TABLE metadata (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


def test_sha256_stores_of_schema_1_still_verify_load_and_take_writes(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    w = torch.randn(50)
    _legacy_store(path, {"w": w, "b": torch.arange(7)})
    with WeightStore(path, "r") as store:
        assert store.checksum == "sha256" and store.verify() == math.ceil(200 / 64) + 1
        assert torch.equal(store.load("w"), w)
    with WeightStore(path, "a") as store:  # written in its own format, still one algorithm
        store.put("new", torch.ones(3))
    with WeightStore(path, "r") as store:
        assert store.get_metadata("schema_version") == "1" and store.verify() == 6
        assert torch.equal(store.load("new"), torch.ones(3))
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE weight_chunks SET data = zeroblob(64) WHERE chunk_id='w#1'")
    with WeightStore(path, "r") as store, pytest.raises(ChecksumError, match="'w#1'.*sha256"):
        store.load("w")


# Edits of a layer's metadata rows that do not touch its data; the first two passed ``verify``
# and loaded silently wrong tensors before checksums covered metadata.
METADATA_EDITS = {
    "shape": "UPDATE weight_chunks SET tensor_shape='[10, 10]' WHERE layer_name='w'",
    "dtype": "UPDATE weight_chunks SET dtype='int32' WHERE layer_name='w'",
    "shape of chunk 0 only": "UPDATE weight_chunks SET tensor_shape='[4, 25]' WHERE chunk_id='w#0'",
    "codec parameters": "UPDATE weight_chunks SET compression_info = replace(compression_info, "
                        "'\"shape\": [32, 64]', '\"shape\": [64, 32]') WHERE layer_name='w'",
    "byte offset": "UPDATE weight_chunks SET byte_offset = byte_offset + 4 WHERE chunk_id='w#1'",
}


@pytest.mark.parametrize("edit", sorted(METADATA_EDITS))
def test_edited_layer_metadata_fails_verify_and_every_load(tmp_path: Path, edit: str) -> None:
    path = tmp_path / "w.db"
    with WeightStore(path, "a", chunk_bytes=256) as store:
        if edit == "codec parameters":
            s = QuaternionStructurizer(QuaternionCodec(dir_bits=6, norm_bits=2), min_numel=64)
            s.structure_state_dict({"w": torch.randn(32, 64)}, store)
        else:
            store.put("w", torch.randn(100))
        store.put("other", torch.ones(3))
        assert store._db().execute(METADATA_EDITS[edit]).rowcount >= 1
    with WeightStore(path, "r") as store:
        assert torch.equal(store.load("other"), torch.ones(3))
        message = rf"{re.escape(str(path))}: chunk 'w#\d' of layer 'w' fails its xxh3_128 check"
        for load in (store.verify, lambda: store.load("w"), lambda: list(store.iter_chunks("w")),
                     store.load_state_dict, lambda: store.load_stored("w")):
            with pytest.raises(ChecksumError, match=message) as info:
                load()
            assert isinstance(info.value, UserError)


def test_lru_cache_respects_its_byte_budget(tmp_path: Path) -> None:
    layer = torch.randn(256)  # 1 KiB each
    with WeightStore(tmp_path / "w.db", "a", cache_bytes=2600) as store:
        for name in "abcd":
            store.put(name, layer + ord(name))
        store.put("huge", torch.randn(1024))
        for name in "abc":
            store.load(name)
        assert store.cached == ["b", "c"] and store.cached_bytes == 2048
        store.load("b")  # hit: b becomes most recent
        assert store.cache_hits == 1 and store.cached == ["c", "b"]
        store.load("d")
        assert store.cached == ["b", "d"]
        store.load("huge")  # larger than the budget: never cached
        assert "huge" not in store.cached and store.cached_bytes <= 2600
        first = store.load("b")
        assert store.load("b") is first  # cached tensors are shared (documented)
        store.put("b", torch.zeros(256))  # a write invalidates the cached entry
        assert torch.equal(store.load("b"), torch.zeros(256))
        assert store.info("b").access_count == 1
        assert store.info("a").access_count == 1
    with WeightStore(tmp_path / "w.db", "r") as store:  # counts were flushed on close
        assert store.info("d").access_count == 1 and store.stats()["total_accesses"] == 5


def test_concurrent_readers_while_a_writer_commits(tmp_path: Path) -> None:
    path = tmp_path / "w.db"
    base = {f"l{i}": torch.randn(2048) for i in range(4)}
    with WeightStore(path, "a", chunk_bytes=1024) as store:
        store.put_state_dict(base)
    errors: list[BaseException] = []

    def read() -> None:
        try:
            with WeightStore(path, "r", cache_bytes=0) as reader:
                for _ in range(20):
                    for name, t in base.items():
                        assert torch.equal(reader.load(name), t)
        except BaseException as err:  # noqa: BLE001 (reported below)
            errors.append(err)

    threads = [threading.Thread(target=read) for _ in range(3)]
    for t in threads:
        t.start()
    with WeightStore(path, "a") as writer:
        for i in range(20):
            writer.put(f"extra{i}", torch.randn(4096))
    for t in threads:
        t.join()
    assert not errors, errors[0]


def _edited_store(path: Path, sql: str) -> None:
    with WeightStore(path, "a", journal="delete") as store:
        store.put("w", torch.ones(4))
        store._db().execute(sql)


def _damaged_page(path: Path) -> None:
    """A store whose weight_chunks table page (page 2 of 64 KiB pages) is overwritten."""
    with WeightStore(path, "a", journal="delete") as store:
        store.put_state_dict({f"l{i}": torch.randn(64) for i in range(50)})
    raw = bytearray(path.read_bytes())
    raw[65536:65536 + 4096] = bytes(range(256)) * 16
    path.write_bytes(bytes(raw))


NOT_STORES = {
    "empty": lambda p: p.write_bytes(b""),
    "text": lambda p: p.write_text("step,loss\n1,2.5\n"),
    "sqlite header only": lambda p: p.write_bytes(b"SQLite format 3\x00" + bytes(84)),
    "wrong schema": lambda p: sqlite3.connect(p).execute("CREATE TABLE t (x)").connection.close(),
    "no checksum algorithm": lambda p: _edited_store(p, "DELETE FROM metadata WHERE key='checksum'"),
    "unknown checksum algorithm": lambda p: _edited_store(
        p, "UPDATE metadata SET value='md5' WHERE key='checksum'"),
    "newer schema": lambda p: _edited_store(p, "UPDATE metadata SET value='3' WHERE key='schema_version'"),
    "damaged aliases": lambda p: _edited_store(p, "UPDATE metadata SET value='{x' WHERE key='aliases'"),
    "text in a data cell": lambda p: _edited_store(p, "UPDATE weight_chunks SET data='zzz'"),
    "damaged page": _damaged_page,
}


@pytest.mark.parametrize("kind", sorted(NOT_STORES))
def test_files_that_are_not_stores_raise_a_user_error_naming_the_file(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "bad.db"
    NOT_STORES[kind](path)
    with pytest.raises(UserError, match=re.escape(str(path))), WeightStore(path, "r") as store:
        store.verify()
        store.load_state_dict()


def test_bad_files_and_names_get_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="missing.db") as info:
        WeightStore(tmp_path / "missing.db")
    assert isinstance(info.value, UserError)
    junk = tmp_path / "junk.db"
    junk.write_bytes(bytes(range(256)) * 40)
    with pytest.raises(WeightStoreError, match="junk.db.*not an SQLite database"):
        WeightStore(junk)
    other = tmp_path / "other.db"
    with sqlite3.connect(other) as conn:
        conn.execute("CREATE TABLE weights (name TEXT, data BLOB)")
    with pytest.raises(WeightStoreError, match="other.db: wrong schema.*weight_chunks"):
        WeightStore(other)
    good = tmp_path / "good.db"
    with WeightStore(good, "a", journal="delete") as store:
        store.put("w", torch.randn(100_000))
    truncated = tmp_path / "truncated.db"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(WeightStoreError, match="truncated.db: truncated"):
        WeightStore(truncated)
    with WeightStore(good, "a") as store:
        with pytest.raises(LayerNotFoundError, match="no layer 'nope'.*holds 1 layers") as info:
            store.load("nope")
        assert isinstance(info.value, UserError) and isinstance(info.value, KeyError)
        with pytest.raises(TypeError, match="layer 'c'.*complex64"):
            store.put("c", torch.zeros(2, dtype=torch.complex64))
        store._db().execute("UPDATE weight_chunks SET dtype='float8' WHERE layer_name='w'")
        with pytest.raises(ChecksumError, match="good.db: chunk 'w#0' of layer 'w'"):
            store.load("w")
        with pytest.raises(WeightStoreError, match="good.db: layer 'w'.*unknown dtype 'float8'"):
            store.load("w", verify=False)
    with WeightStore(good, "r") as store, pytest.raises(WeightStoreError, match="read-only"):
        store.put("x", torch.ones(1))


def test_checkpoint_format_round_trips_lightning_types(tmp_path: Path) -> None:
    from lit_models.compression.checkpoint_io import SQLiteCheckpointIO

    w = torch.randn(6, 4)
    ckpt = {
        "state_dict": OrderedDict(wte=w, lm_head=w, step=torch.tensor(3)),
        "optimizer_states": [{"state": {0: {"exp_avg": torch.ones(2), "step": torch.tensor(5.0)}},
                              "param_groups": [{"lr": 1e-3, "betas": (0.9, 0.95), "params": [0]}]}],
        "rng": (3, tuple(range(5)), None), "size": torch.Size([2, 3]), "dtype": torch.bfloat16,
        "blob": b"\x00\xff", "best": float("inf"), "a/b": torch.zeros(1), "a": {"b": torch.ones(1)},
        "hparams": {"arch": "gpt", "nested": {"x": [1, 2.5, "s", True]}},
    }
    io = SQLiteCheckpointIO(chunk_bytes=64)
    path = tmp_path / "last.ckpt"
    io.save_checkpoint(ckpt, path)
    out = io.load_checkpoint(path)
    assert out["state_dict"]["wte"] is out["state_dict"]["lm_head"]
    assert torch.equal(out["state_dict"]["wte"], w) and out["state_dict"]["step"].item() == 3
    assert out["optimizer_states"][0]["state"][0]["step"].item() == 5.0
    assert out["optimizer_states"][0]["param_groups"][0]["betas"] == (0.9, 0.95)
    assert out["rng"] == (3, (0, 1, 2, 3, 4), None) and out["size"] == torch.Size([2, 3])
    assert out["dtype"] is torch.bfloat16 and out["blob"] == b"\x00\xff" and out["best"] == math.inf
    assert torch.equal(out["a/b"], torch.zeros(1)) and torch.equal(out["a"]["b"], torch.ones(1))
    assert out["hparams"] == ckpt["hparams"]
    before = path.read_bytes()
    with pytest.raises(TypeError, match=r"/hparams/bad has type PosixPath"):
        io.save_checkpoint({**ckpt, "hparams": {"bad": Path("x")}}, path)
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]
    with WeightStore(path) as store:
        meta = json.loads(store.get_metadata("checkpoint"))
    assert meta["hparams"]["arch"] == "gpt"
    io.remove_checkpoint(path)
    assert not path.exists()


@contextlib.contextmanager
def _file_size_limit(nbytes: int) -> Iterator[None]:
    """Writes past ``nbytes`` fail with EFBIG (SIGXFSZ ignored), as they would on a full disk."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (nbytes, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, old_handler)


def test_a_save_that_fills_the_disk_keeps_the_old_checkpoint_and_no_temp_file(tmp_path: Path) -> None:
    from lit_models.compression.checkpoint_io import SQLiteCheckpointIO

    io = SQLiteCheckpointIO()
    path = tmp_path / "last.ckpt"
    io.save_checkpoint({"step": 1, "w": torch.ones(3)}, path)
    before = path.read_bytes()
    with _file_size_limit(1 << 20), pytest.raises(
            UserError, match=rf"could not write checkpoint {re.escape(str(path))}: .*file-size limit"):
        io.save_checkpoint({"step": 2, "w": torch.randn(1 << 20)}, path)  # 4 MB
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]
    assert io.load_checkpoint(path)["step"] == 1


KILLED_SAVER = """
import os, signal, sys, threading, time, torch
from pathlib import Path
from lit_models.compression.checkpoint_io import SQLiteCheckpointIO
directory = Path(sys.argv[1])
def kill_mid_save():  # SIGKILL once the temp file has 8 MB and its rollback journal exists
    while True:
        names = [p.name for p in directory.iterdir()]
        tmp = [directory / n for n in names if ".tmp-" in n and not n.endswith("-journal")]
        if any(n.endswith("-journal") for n in names) and tmp and tmp[0].stat().st_size > 8 << 20:
            os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(0.001)
threading.Thread(target=kill_mid_save, daemon=True).start()
SQLiteCheckpointIO(chunk_bytes=1 << 20).save_checkpoint(
    {"state_dict": {f"w{i}": torch.full((1 << 18,), float(i)) for i in range(64)}},
    directory / "last.ckpt")
"""


def test_a_killed_saver_keeps_the_old_checkpoint_and_the_next_start_removes_its_files(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from lit_models.compression.checkpoint_io import SQLiteCheckpointIO

    path = tmp_path / "last.ckpt"
    SQLiteCheckpointIO().save_checkpoint({"step": 1, "w": torch.ones(3)}, path)
    proc = subprocess.run([sys.executable, "-c", KILLED_SAVER, str(tmp_path)], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    left = sorted(p.name for p in tmp_path.iterdir() if p.name != "last.ckpt")
    assert len(left) == 2 and left[1] == left[0] + "-journal", left
    dead_pid = left[0].rsplit("-", 1)[1]
    live = tmp_path / f".last.ckpt.tmp-{os.getpid()}"  # a writer that is still running
    live.write_bytes(b"")
    caplog.set_level(logging.WARNING, logger="lit_models.compression.checkpoint_io")
    io = SQLiteCheckpointIO()
    assert io.load_checkpoint(path)["step"] == 1  # the first load in the directory cleans it
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live.name, "last.ckpt"])
    removed = [r.getMessage() for r in caplog.records if "no longer running" in r.getMessage()]
    assert len(removed) == 2 and all(f"writer PID {dead_pid}," in m for m in removed), removed
    io.save_checkpoint({"step": 2}, path)
    assert io.load_checkpoint(path)["step"] == 2
