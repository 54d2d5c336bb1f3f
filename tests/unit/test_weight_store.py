"""SQLite weight store on real database files: round trips, transactions (a killed writer),
checksums (flipped bytes), LRU byte budget, concurrent readers, bad files, CheckpointIO format."""

from __future__ import annotations

import json
import math
import sqlite3
import subprocess
import sys
import threading
from collections import OrderedDict
from pathlib import Path

import pytest
import torch

from lit_models.compression.codecs import DTYPES
from lit_models.compression.quaternion import QuaternionCodec
from lit_models.compression.store import (
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
        with pytest.raises(ChecksumError, match=r"chunk 'target#1' of layer 'target'.*SHA-256"):
            store.load("target")
        with pytest.raises(ChecksumError, match="target#1"):
            list(store.iter_chunks("target"))
        with pytest.raises(ChecksumError, match="target#1"):
            store.verify()


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


def test_bad_files_and_names_get_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="missing.db"):
        WeightStore(tmp_path / "missing.db")
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
        with pytest.raises(LayerNotFoundError, match="no layer 'nope'.*holds 1 layers"):
            store.load("nope")
        with pytest.raises(TypeError, match="layer 'c'.*complex64"):
            store.put("c", torch.zeros(2, dtype=torch.complex64))
        store._db().execute("UPDATE weight_chunks SET dtype='float8' WHERE layer_name='w'")
        with pytest.raises(TypeError, match="layer 'w'.*unknown dtype 'float8'"):
            store.load("w")
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
