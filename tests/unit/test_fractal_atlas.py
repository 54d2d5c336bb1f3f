"""Atlas library: round trips, key-only training, bad files, concurrent writers, two-part code."""

from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import shutil
from pathlib import Path

import pytest
import torch

from datamodules.book_coords import CharVocab
from lit_models.archs.fractal import FractalConfig, FractalDecoder
from lit_models.atlas import (
    AtlasError,
    AtlasLibrary,
    core_state,
    decode_residual,
    dequantize,
    encode_residual,
    evaluate_text,
    fit_key,
    load_core_file,
    quantize_int8,
    save_core_file,
)

TEXT = "the cat sat on the mat; the dog sat on the log.\n"
VOCAB = CharVocab.from_texts([TEXT])
CFG = dict(vocab_size=len(VOCAB), num_books=2, n_embd=16, block_hidden=32, depth=2,
           n_frequencies=8, key_dim=4, update_fraction=0.5)


def make_library(root: Path, **changes) -> tuple[AtlasLibrary, FractalDecoder]:
    torch.manual_seed(0)
    net = FractalDecoder(FractalConfig(**{**CFG, **changes}))
    lib = AtlasLibrary.create(root, net, VOCAB.chars)
    for i in range(2):
        lib.add_book(net.keys.weight[i].detach(), title=f"book{i}", text=TEXT, metrics={"acc": 0.5})
    return lib, net


def file_sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_library_round_trip_reproduces_the_trained_net(tmp_path: Path) -> None:
    lib, net = make_library(tmp_path / "lib", spectral_norm=True)
    net.eval()
    core, vocab = lib.load_core()
    assert vocab.chars == VOCAB.chars and [b["book_id"] for b in lib.books()] == [0, 1]
    x = torch.linspace(0, 1, 20, dtype=torch.float64)
    for i in range(2):
        expected = net(x, torch.full((20,), i))[0]
        torch.testing.assert_close(core(x, z=lib.load_key(i))[0], expected, rtol=1e-5, atol=1e-5)
    assert lib.verify() == []
    with pytest.raises(AtlasError, match="already holds"):
        AtlasLibrary.create(lib.root, net, VOCAB.chars)


def test_fp16_and_int8_core_files_stay_close(tmp_path: Path) -> None:
    lib, _ = make_library(tmp_path / "lib")
    core, _ = lib.load_core()
    config = lib.index()["core"]["config"]
    state = core_state(core)
    int8 = quantize_int8(state)
    assert all(int8[k].dtype == torch.int8 for k, v in state.items() if v.dim() >= 2)
    for name, packed in (("fp16", {k: v.half() for k, v in state.items()}), ("int8", int8)):
        path = save_core_file(tmp_path / f"{name}.safetensors", packed, config, VOCAB.chars)
        smaller, charset, _ = load_core_file(path)
        assert charset == VOCAB.chars
        for key, value in state.items():
            torch.testing.assert_close(core_state(smaller)[key], value, rtol=0, atol=0.02)
    torch.testing.assert_close(dequantize(int8)["in_proj.weight"], state["in_proj.weight"], rtol=0, atol=0.02)


def test_key_only_training_leaves_the_core_bitwise_unchanged(tmp_path: Path) -> None:
    lib, _ = make_library(tmp_path / "lib")
    core_sha = file_sha(lib.core_path)
    core, vocab = lib.load_core()
    before = {k: v.clone() for k, v in core.state_dict().items()}
    ids = vocab.encode("the dog sat on the mat.\n")
    start = evaluate_text(core, ids, z=torch.zeros(4))
    z, losses = fit_key(core, ids, steps=60, lr=0.05, batch_size=32)
    assert len(losses) == 60 and evaluate_text(core, ids, z=z)["loss"] < start["loss"]
    assert all(torch.equal(before[k], v) for k, v in core.state_dict().items())
    entry = lib.add_book(z, title="new", text="the dog sat on the mat.\n")
    assert entry["book_id"] == 2 and file_sha(lib.core_path) == core_sha
    torch.testing.assert_close(lib.load_key(2), z)


def test_corrupted_or_truncated_files_give_clear_errors(tmp_path: Path) -> None:
    lib, _ = make_library(tmp_path / "lib")
    key = lib.root / lib.book(1)["key_file"]
    key.write_bytes(key.read_bytes()[:20])
    with pytest.raises(AtlasError, match=r"00001.safetensors: corrupted or truncated key file"):
        lib.load_key(1)
    lib.load_key(0)  # the other books are untouched
    assert len(lib.verify()) == 1
    lib.core_path.write_bytes(lib.core_path.read_bytes()[:-10])
    with pytest.raises(AtlasError, match="truncated or replaced core"):
        lib.load_core()
    lib.index_path.write_text('{"format": "fractal-atlas/1", "books": [')
    with pytest.raises(AtlasError, match="index.json: corrupted index"):
        lib.books()
    with pytest.raises(AtlasError, match="not an atlas library"):
        AtlasLibrary(tmp_path / "nowhere").books()


@pytest.mark.parametrize(("change", "what"), [({"n_embd": 8}, "config"), ({}, "core weights")])
def test_a_key_of_another_core_is_refused(tmp_path: Path, change: dict, what: str) -> None:
    lib, _ = make_library(tmp_path / "lib")
    torch.manual_seed(1)
    other = AtlasLibrary.create(tmp_path / "other", FractalDecoder(FractalConfig(**{**CFG, **change})),
                                VOCAB.chars)
    foreign = lib.root / lib.book(0)["key_file"]
    with pytest.raises(AtlasError, match=f"key belongs to a different core \\({what} hash"):
        other.check_key(foreign)


def test_a_key_of_another_vocabulary_is_refused(tmp_path: Path) -> None:
    lib, _ = make_library(tmp_path / "lib")
    net = FractalDecoder(FractalConfig(**{**CFG, "vocab_size": len(VOCAB) + 1}))
    other = AtlasLibrary.create(tmp_path / "other", net, [*VOCAB.chars, "Z"])
    with pytest.raises(AtlasError, match="character vocabulary hash"):
        other.check_key(lib.root / lib.book(0)["key_file"])


def _writer(root: str, worker: int, n: int) -> None:
    lib = AtlasLibrary(root)
    for i in range(n):
        lib.add_book(torch.full((4,), float(worker)), title=f"w{worker}-{i}", text=TEXT)


def test_concurrent_writers_keep_the_library_consistent(tmp_path: Path) -> None:
    lib, _ = make_library(tmp_path / "lib")
    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=_writer, args=(str(lib.root), w, 15)) for w in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    books = lib.books()
    assert len(books) == 2 + 30
    assert sorted(b["book_id"] for b in books) == list(range(32))
    assert {b["title"] for b in books} >= {f"w{w}-{i}" for w in range(2) for i in range(15)}
    assert lib.verify() == []
    for b in books[2:]:
        assert float(lib.load_key(b["book_id"])[0]) == float(b["title"][1])
    assert not list(lib.root.rglob("*.tmp"))
    json.loads(lib.index_path.read_text())


def test_failed_add_leaves_the_library_as_it_was(tmp_path: Path) -> None:
    lib, _ = make_library(tmp_path / "lib")
    snapshot = tmp_path / "snapshot"
    shutil.copytree(lib.root, snapshot)
    with pytest.raises(AtlasError, match="key of shape"):
        lib.add_book(torch.zeros(7), title="bad", text=TEXT)
    for path in snapshot.rglob("*"):
        if path.is_file():
            assert path.read_bytes() == (lib.root / path.relative_to(snapshot)).read_bytes(), path


def test_two_part_code_decodes_to_the_identical_text(tmp_path: Path) -> None:
    lib, _ = make_library(tmp_path / "lib")
    core, vocab = lib.load_core()
    ids = vocab.encode(TEXT * 3)
    data, ideal = encode_residual(core, ids, z=lib.load_key(0), batch_size=16)
    fresh, _ = lib.load_core()
    assert torch.equal(decode_residual(fresh, data, z=lib.load_key(0), batch_size=16), ids)
    assert 0 < ideal <= 8 * len(data)
    with pytest.raises(AtlasError, match="bad magic"):
        decode_residual(fresh, b"nope" + data[4:], z=lib.load_key(0))
