"""The fuzz corpus (tests/reliability/corpus.py) against every reader: one clear error each."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.reliability.runner import BAD, run_cases, summary


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> list:
    return run_cases(tmp_path_factory.mktemp("fuzz"))


def test_corpus_is_large_and_covers_every_format(results: list) -> None:
    assert len(results) >= 200
    formats = {r.case.fmt for r in results}
    for fmt in ("checkpoint", "sqlite-checkpoint", "sqlite", "safetensors", "atlas-core",
                "atlas-index", "jsonl", "alpaca", "book", "tokenizer", "tokenizer-spec", "study",
                "override"):
        assert fmt in formats, fmt


def test_every_malformed_input_ends_in_one_clear_error(results: list) -> None:
    bad = [r for r in results if r.outcome in BAD]
    assert not bad, summary(results)


def test_hostile_inputs_never_run_code(results: list, tmp_path: Path) -> None:
    hostile = [r for r in results if "hostile" in r.case.name or "target" in r.case.name]
    assert len(hostile) >= 20
    assert all(r.outcome == "clear" for r in hostile), summary(hostile)
