"""The TCS v8/v9 benchmarks run end to end in --quick mode and write their reports (issue 23):
Hodge quantum walk, mixing time vs persistence (with LM hidden states), sheaf diffusion."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from experiments.bench import hodge, hodge_mixing, sheaf


def read(out: Path) -> dict:
    return json.loads(out.read_text())


def test_hodge_bench_quick(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    worst = hodge.main(["--quick", "--repeats", "1", "--out", str(tmp_path / "h.json")])
    assert worst < hodge.TOL_GOAL
    report = read(tmp_path / "h.json")
    assert report["rows"][0]["reference"] == "eigh"
    assert capsys.readouterr().out.strip().splitlines()[-1] == report["headline"]


def test_mixing_study_quick_with_lm_states(tmp_path: Path, tiny_teacher: Path) -> None:
    rho = hodge_mixing.main(["--quick", "--ckpt", str(tiny_teacher), "--out", str(tmp_path)])
    report = read(tmp_path / "report.json")
    assert -1 <= rho <= 1
    families = {c["family"] for c in report["clouds"]}
    assert {"circle", "torus", "clusters", "noise", "LM block 0"} <= families
    assert Path(report["png"]).stat().st_size > 10_000
    assert {r["verdict"] for r in report["rows"]} <= {"proxy", "not a proxy"}


def test_mixing_study_names_a_missing_checkpoint(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        hodge_mixing.main(["--quick", "--ckpt", str(tmp_path / "nope.ckpt")])
    assert exit_info.value.code == 2
    assert "nope.ckpt: no such file" in capsys.readouterr().err


def test_sheaf_bench_quick(tmp_path: Path) -> None:
    gain = sheaf.main(["--quick", "--repeats", "1", "--threads", "1", "--out", str(tmp_path)])
    report = read(tmp_path / "report.json")
    assert math.isfinite(gain)
    params = [r["params"] for r in report["rows"]]
    assert max(params) - min(params) <= 0.05 * max(params)  # equal parameter counts
    assert {r["backend"] for r in report["timing"]} == {"block", "sparse"}
    kept = [r["kept"] for r in report["pruning"]]
    assert kept == sorted(kept, reverse=True) and kept[-1] < 1.0
