"""The GPU check suite (issue 20): the orchestrator's contract, and every check in --tiny mode on
the CPU so that the suite cannot rot. A check whose module or function does not exist yet is
'missing' and passes; a check that exists and fails fails this test."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from experiments.bench import gpu_suite


def good_check(device: torch.device, tiny: bool):
    yield "first", 1.0, "s"
    yield "second", 2.5, "x"


def failing_check(device: torch.device, tiny: bool):
    yield "before the failure", 3.0, "s"
    raise RuntimeError("boom")


def test_orchestrator_prints_as_it_goes_reports_failures_and_missing_checks(
        capsys: pytest.CaptureFixture) -> None:
    checks = [f"{__name__}:failing_check", "experiments.bench.no_such_bench:gpu_checks",
              f"{__name__}:no_such_function", f"{__name__}:good_check"]
    results = gpu_suite.run_suite(checks, torch.device("cpu"), tiny=True, budget_s=60)
    assert [r["status"] for r in results] == ["failed", "missing", "missing", "ok"]
    assert results[0]["figures"] == [{"name": "before the failure", "value": 3.0, "unit": "s"}]
    assert "RuntimeError: boom" in results[0]["error"]
    assert [f["value"] for f in results[3]["figures"]] == [1.0, 2.5]
    out = capsys.readouterr().out
    assert out.index("before the failure") < out.index("FAILED") < out.index("second: 2.5 x")
    line = gpu_suite.summary(results, torch.device("cpu"), 1.0)
    assert "3 figures from 4 checks" in line and "1 failed (test_gpu_suite:failing_check)" in line
    skipped = gpu_suite.run_suite([f"{__name__}:good_check"] * 2, torch.device("cpu"), True, budget_s=-1)
    assert [r["status"] for r in skipped] == ["skipped", "skipped"]


def test_suite_names_the_other_issues_checks_and_knows_peaks() -> None:
    for name in ("vram_estimate", "persistence", "strategies"):
        assert f"experiments.bench.{name}:gpu_checks" in gpu_suite.CHECKS
    assert gpu_suite.peak_flops(torch.device("cpu")) is None


def test_tiny_suite_runs_every_check_on_cpu(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    code = gpu_suite.main(["--tiny", "--out", str(tmp_path / "suite.json")])
    lines = capsys.readouterr().out.strip().splitlines()
    report = json.loads((tmp_path / "suite.json").read_text())
    failed = {r["check"]: r.get("error") for r in report["results"] if r["status"] == "failed"}
    assert not failed and code == 0
    assert lines[-1].startswith("gpu suite on cpu:")
    ok = {r["check"] for r in report["results"] if r["status"] == "ok"}
    mine = {"experiments.bench.geo_attention:gpu_checks", "experiments.bench.compile:gpu_checks",
            *(f"experiments.bench.gpu_suite:{n}" for n in ("generation_checks", "training_checks",
                                                           "checkpointing_checks"))}
    assert mine <= ok
