"""experiments.tcs_stream end to end on a tiny checkpoint trained here (BPE tokenizer) and on a
tiny random Hugging Face model (character fallback): events, plot, W&B image, tokens/s."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from experiments.tcs_stream import tcs_stream
from experiments.train import train
from lhp.errors import UserError
from lit_models.embedder import StatefulEmbedder
from tests.conftest import REPO, compose_config

ANALYZER = ["analyzer.window=64", "analyzer.chunk_points=16", "analyzer.landmarks=16",
            "text_chunk_chars=300", "num_threads=1", "cache.path=null"]  # memory-only cache


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 4-step gpt_wikitext2_tiny run (BPE tokenizer stored in the checkpoint)."""
    root = tmp_path_factory.mktemp("tcs_ckpt")
    cfg = compose_config("train", ["experiment=gpt_wikitext2_tiny", "trainer.max_steps=4",
                                   "test=false", "logger=csv", "trainer.limit_val_batches=1"],
                         root / "run", data_dir=root / "data")
    train(cfg)
    return root / "run" / "checkpoints" / "last.ckpt"


@pytest.fixture
def text_file(tmp_path: Path) -> Path:
    text = (REPO / "tests/fixtures/wikitext_tiny/valid.txt").read_text()[:2500]
    path = tmp_path / "text.txt"
    path.write_text(text)
    return path


def test_stream_on_platform_checkpoint(tiny_ckpt: Path, text_file: Path, tmp_path: Path) -> None:
    cfg = compose_config("tcs_stream", [f"ckpt_path={tiny_ckpt}", f"text_path={text_file}",
                                        *ANALYZER], tmp_path / "out")
    summary, objects = tcs_stream(cfg)
    emb: StatefulEmbedder = objects["embedder"]
    assert summary["tokens"] == len(emb.tokenizer.encode(text_file.read_text()))
    assert summary["tokens_per_s"] > 0 and summary["evictions"] > 0  # 32-token context
    trace = objects["trace"]
    assert trace.positions == list(range(16, summary["tokens"] + 1, 16))
    assert summary["windows_analysed"] == len(trace.positions)
    out = tmp_path / "out"
    assert (out / "betti.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    events = json.loads((out / "events.json").read_text())
    assert len(events) == summary["events"]
    assert all(0 < e["char_position"] <= summary["characters"] for e in events)
    assert list(out.glob("wandb/offline-run-*/files/media/images/tcs/betti*.png"))


def test_topology_cache_bench_quick_reads_a_book_twice(tiny_ckpt: Path, capsys) -> None:
    """``lhp bench topology_cache --quick`` on the tiny checkpoint: the second read of the book
    is answered from the disk tier."""
    from experiments.bench import topology_cache

    if not topology_cache.default_book().is_file():
        pytest.skip(f"no book at {topology_cache.default_book()} (set LHP_DATA_ROOT)")
    rate = topology_cache.main(["--quick", "--ckpt", str(tiny_ckpt)])
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert rate == 1.0 and last.startswith("tcs_stream over alice_in_wonderland.txt read twice: "
                                           "hit rate 100.0% on the second read (first 0.0%)")


def test_stream_on_hf_model_with_char_fallback(tmp_path: Path, text_file: Path) -> None:
    import torch
    transformers = pytest.importorskip("transformers", reason="needs the optional 'hf' extra: pip install -e '.[hf]'")
    GPT2Config, GPT2LMHeadModel = transformers.GPT2Config, transformers.GPT2LMHeadModel

    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(vocab_size=300, n_positions=64, n_embd=16, n_layer=2, n_head=2,
                               bos_token_id=0, eos_token_id=0)).save_pretrained(tmp_path / "hf")
    cfg = compose_config("tcs_stream", [f"hf_path={tmp_path / 'hf'}", f"text_path={text_file}",
                                        "max_chars=500", "logger=csv", "embedder.dtype=float16",
                                        *ANALYZER], tmp_path / "out")
    summary, objects = tcs_stream(cfg)
    assert summary["tokens"] == summary["characters"] == 500  # one token per character
    assert (tmp_path / "out" / "betti.png").is_file()


@pytest.mark.parametrize("overrides, error, match", [
    ([], ValueError, "exactly one of ckpt_path"),
    (["ckpt_path=a.ckpt", "hf_path=b"], ValueError, "exactly one of ckpt_path"),
    (["hf_path=/nonexistent"], UserError, "text_path"),
])
def test_bad_inputs_are_named(tmp_path: Path, overrides: list[str], error: type,
                              match: str) -> None:
    text = tmp_path / "t.txt"
    text.write_text("some text")
    path = "/nonexistent.txt" if match == "text_path" else text
    cfg = compose_config("tcs_stream", [f"text_path={path}", "logger=csv", *overrides],
                         tmp_path / "out")
    with pytest.raises(error, match=match):
        tcs_stream(cfg)


def test_boundary_study_runs_and_scores(tiny_ckpt: Path, tmp_path: Path) -> None:
    from experiments import tcs_boundary

    lines = (REPO / "tests/fixtures/wikitext_tiny/train.txt").read_text().splitlines(True)
    (tmp_path / "books").mkdir()
    (tmp_path / "wikitext-2").mkdir()
    files = [tmp_path / "books" / b for b in tcs_boundary.BOOKS]
    for i, path in enumerate([*files, tmp_path / "wikitext-2" / "test.txt"]):
        path.write_text("".join(lines[i * 40:(i + 1) * 40]))
    out = tmp_path / "res.json"
    res = tcs_boundary.main(["--ckpt", str(tiny_ckpt), "--data-dir", str(tmp_path),
                             "--segments", "5", "--segment-chars", "300", "--window", "16",
                             "--chunk", "4", "--landmarks", "16", "--tolerance", "8",
                             "--seeds", "0", "--out", str(out)])
    run = res["runs"][0]
    assert len(run["boundaries_tokens"]) == 4 and sorted(run["boundaries_tokens"]) == \
        run["boundaries_tokens"]
    assert all(a != b for a, b in zip(run["segment_sources"], run["segment_sources"][1:],
                                      strict=False))
    for name in ("betti", "betti_shuffled", "cosine"):
        for setting in ("threshold", "top_k"):
            r = run["results"][name][setting]
            assert 0 <= r["precision"] <= 1 and 0 <= r["recall"] <= 1 and r["hits"] <= 4
    assert json.loads(out.read_text())["runs"][0]["tokens"] == run["tokens"]


def test_boundary_scoring_is_one_to_one() -> None:
    import numpy as np

    from experiments.tcs_boundary import score

    r = score(np.array([10, 12, 50, 200]), np.array([11, 100, 205]), tol=5)
    # 10 and 12 both near 11: only one hit; 200 hits 205; 50 misses
    assert (r["hits"], r["precision"], r["recall"]) == (2, 0.5, 2 / 3)
    assert score(np.array([]), np.array([3]), tol=1)["f1"] == 0.0
