"""Atlas end to end: train-core (Lightning) -> library -> add-book -> reconstruct -> two-part code."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
import torch

from experiments import atlas
from experiments.bench import atlas_compression
from lit_models.atlas import AtlasLibrary
from lit_models.atlas_workflow import train_core
from lit_models.coordinate_decoder import CoordinateDecoder
from tests.conftest import REPO

FIXTURES = REPO / "tests" / "fixtures" / "wikitext_tiny"
# A tiny V5 core that memorizes 200 characters of two books in 150 full-batch steps.
OVERRIDES = ["trainer.max_steps=150", "trainer.val_check_interval=75", "data.batch_size=400",
             "model.arch_config.n_embd=64", "model.arch_config.block_hidden=128",
             "model.optimizer.lr=1e-2", "extras.print_config=false"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("atlas")
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny model: one thread is much faster on a busy machine
    os.environ["PROJECT_ROOT"] = str(REPO)
    try:
        lib, metrics = train_core(
            root / "lib", [str(FIXTURES / "valid.txt"), str(FIXTURES / "test.txt")],
            train_fn=atlas.hydra_train, run_dir=root / "run", titles=["valid", "test"], max_chars=200,
            experiment="fractal_book_tiny", overrides=[*OVERRIDES, f"paths.log_dir={root}/logs"])
    finally:
        torch.set_num_threads(before)
    return {"root": root, "lib": lib, "metrics": metrics, "run": root / "run"}


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_training_logs_reconstruction_and_exports_exact_books(trained: dict, capsys) -> None:
    m = trained["metrics"]
    assert m["val/recon_wrong"] == 0 and m["val/recon_acc"] == 1.0 and m["test/recon_wrong"] == 0
    assert m["val/bpc"] == pytest.approx(m["val/loss"] / 0.6931471805599453, rel=1e-5)
    assert "val/book1_recon_wrong" in m
    lib: AtlasLibrary = trained["lib"]
    assert [b["acc"] for b in lib.books()] == [1.0, 1.0]
    for book_id in (0, 1):
        assert atlas.main(["reconstruct", "--library", str(lib.root), "--book-id", str(book_id), "--check"]) == 0
    assert "exact: yes (sha256 matches)" in capsys.readouterr().out


def test_run_leaves_pictures_checkpoint_and_wandb_images(trained: dict) -> None:
    run: Path = trained["run"]
    assert (run / "pictures" / "trajectory.png").stat().st_size > 1000
    assert (run / "pictures" / "accuracy_along_book.png").stat().st_size > 1000
    assert list((run / "wandb").glob("offline-run-*/files/media/images/pictures/*.png"))
    header = next(run.glob("csv/version_*/metrics.csv")).read_text().splitlines()[0].split(",")
    for column in ("train/loss", "train/char_acc", "val/recon_acc", "val/recon_wrong",
                   "throughput/train/device_tokens_per_sec"):
        assert column in header
    ckpt = next((run / "checkpoints").glob("step*.ckpt"))
    module = CoordinateDecoder.load_from_checkpoint(ckpt, map_location="cpu", weights_only=True)
    assert module.charset == AtlasLibrary(trained["lib"].root).load_core()[1].chars
    assert module.tokens_seen == 150 * 400


def test_add_book_trains_only_a_key_and_bad_books_change_nothing(trained: dict, tmp_path: Path,
                                                                capsys) -> None:
    lib: AtlasLibrary = trained["lib"]
    known = set(lib.load_core()[1].chars)
    text = "".join(c for c in (FIXTURES / "valid.txt").read_text()[200:900] if c in known)[:300]
    new = tmp_path / "new.txt"
    new.write_text(text)
    core_sha, index_before = sha(lib.core_path), lib.index_path.read_text()
    bad = tmp_path / "bad.txt"
    bad.write_text("unknown characters: \u00e9\u00e8")
    with pytest.raises(SystemExit) as err:
        atlas.main(["add-book", "--library", str(lib.root), "--book", str(bad)])
    assert err.value.code == 2
    assert "not in the frozen vocabulary" in capsys.readouterr().err
    assert lib.index_path.read_text() == index_before
    assert atlas.main(["add-book", "--library", str(lib.root), "--book", str(new), "--steps", "50"]) == 0
    assert sha(lib.core_path) == core_sha
    assert lib.books()[-1]["n_chars"] == 300 and lib.verify() == []
    assert atlas.main(["list", "--library", str(lib.root)]) == 0
    assert "consistent: yes" in capsys.readouterr().out
    assert atlas.main(["picture", "--library", str(lib.root), "--book-id", "0",
                       "--out", str(tmp_path / "pics")]) == 0
    assert (tmp_path / "pics" / "trajectory.png").is_file()


def test_compression_bench_decodes_every_book_and_compares_compressors(trained: dict, tmp_path: Path,
                                                                     capsys) -> None:
    rows = atlas_compression.run(AtlasLibrary(trained["lib"].root), tmp_path / "bench", batch_size=64)
    out = capsys.readouterr().out
    assert len(rows) >= 2 and out.strip().splitlines()[-1].startswith("all ")
    assert json.loads((tmp_path / "bench" / "report.json").read_text())["headline"].startswith("all ")
    for row in rows:
        for key in ("gzip -9", "bzip2 -9", "xz -9e", "zstd -19", "atlas_fp16", "atlas_int8", "ideal_fp16"):
            assert row[key] > 0
        assert row["residual_int8"] == (tmp_path / "bench" / "residual").joinpath(
            f"{rows.index(row)}.int8.bin").stat().st_size
        assert row["alone_int8"] > row["atlas_int8"]
    assert (tmp_path / "bench" / "books" / "0.txt").read_text() == (FIXTURES / "valid.txt").read_text()[:200]


@pytest.mark.slow
def test_key_dimension_bench_runs_end_to_end(tmp_path: Path, capsys) -> None:
    from experiments.bench import atlas_keys

    code = atlas_keys.main([
        "--key-dims", "4,8", "--master", str(FIXTURES / "valid.txt"), "--master", str(FIXTURES / "test.txt"),
        "--master-max-chars", "200,200", "--new-book", str(FIXTURES / "train.txt"), "--new-max-chars", "200",
        "--steps", "20", "--experiment", "fractal_book_tiny", "--out", str(tmp_path / "keys"), "--",
        "logger=csv", "trainer.max_steps=10", "extras.print_config=false", f"paths.log_dir={tmp_path}/logs"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert code == 0 and lines[-1].startswith("best key alone: key_dim ")
    assert any(line.startswith("| 8 | 16 |") for line in lines)
