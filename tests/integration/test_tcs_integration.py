"""The integration metrics' benchmark and the intrinsic-dimension anchor run end to end in
--quick mode (issue 24): the callback's cost per metric, and the ID profile of a tiny GPT trained
with the id_profile checkpoints (table, verdict, figure)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from experiments import tcs_id_profile
from experiments.bench import topology_callback


def test_topology_callback_bench_quick_times_each_integration_metric(capsys) -> None:
    ratio = topology_callback.main(["--quick", "--steps", "2", "--rounds", "1", "--threads", "1",
                                    "--experiment", "smoke_tiny",
                                    "--integration", "twonn,mle,lz,te,recon"])
    out = capsys.readouterr().out.strip().splitlines()
    assert math.isfinite(ratio) and ratio > 1
    assert out[-1].startswith("estimated with/without callback with integration ['twonn', 'mle', "
                              "'lz', 'te', 'recon'] training time = ")
    costs = [line for line in out if line.startswith("integration metric ")]
    assert [line.split()[2].rstrip(":") for line in costs] == ["twonn", "mle", "lz", "te", "recon"]
    assert all("training steps" in line for line in costs)


def test_bench_rejects_unknown_integration_metric() -> None:
    with pytest.raises(SystemExit):
        topology_callback.main(["--quick", "--integration", "twonn,phi"])


def test_id_profile_quick(tmp_path: Path, capsys) -> None:
    report = tcs_id_profile.main(["--quick", "--out", str(tmp_path)])
    out = capsys.readouterr().out.strip().splitlines()
    assert out[-1] == report["headline"] and "hunchback" in out[-1]
    # step 0 (fresh init) + the checkpoints at steps 5 and 10; embedding + 2 blocks each
    assert [(r["step"], r["layer"]) for r in report["rows"]][:3] == [
        (0, "embed"), (0, "block 1"), (0, "block 2")]
    assert sorted({r["step"] for r in report["rows"]}) == [0, 5, 10]
    assert report["width"] == 64
    for row in report["rows"]:
        assert 0 < row["twonn"] < 64 and 0 < row["mle"] < 64 and 1 <= row["pca90"] <= 64
    v = report["verdict"]
    assert v["step"] == 10 and len(v["profile"]) == 3 and isinstance(v["hunchback"], bool)
    assert (tmp_path / "id_profile.png").stat().st_size > 10_000
    assert "| step | embed | block 1 | block 2 |" in (tmp_path / "profile.md").read_text()
    assert json.loads((tmp_path / "report.json").read_text())["verdict"] == v


def test_id_profile_without_checkpoints_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as exc:  # entry_point: one line, exit code 2
        tcs_id_profile.main(["--run", str(tmp_path)])
    assert exc.value.code == 2
