"""The ``lhp`` command: one surface over every entry point and benchmark."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from experiments import cli
from tests.conftest import REPO

LHP = Path(sys.executable).parent / "lhp"  # the console script of `pip install -e .`


def lhp(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(LHP), *args], cwd=REPO, capture_output=True, text=True, timeout=300)


def test_help_lists_every_command_on_one_line() -> None:
    done = lhp("--help")
    assert done.returncode == 0, done.stderr
    rows = [line.split(None, 1) for line in done.stdout.splitlines() if line.startswith("  ")]
    assert rows == [[name, command.help] for name, command in cli.COMMANDS.items()]
    assert {"train", "study", "atlas", "h2q", "tcs-stream", "bench"} <= set(cli.COMMANDS)


def test_hydra_app_prints_hydra_help() -> None:
    done = lhp("train", "--help")
    assert done.returncode == 0, done.stderr
    assert "Powered by Hydra" in done.stdout and "experiment" in done.stdout


def test_study_list_is_the_same_as_python_m() -> None:
    done = lhp("study", "--list")
    module = subprocess.run([sys.executable, "-m", "experiments.study", "--list"], cwd=REPO,
                            capture_output=True, text=True, timeout=300)
    assert done.returncode == module.returncode == 0, done.stderr
    assert done.stdout == module.stdout and "smoke_seeds:" in done.stdout


def test_unknown_command_is_one_line_and_exit_2() -> None:
    done = lhp("no-such-command")
    assert done.returncode == 2
    assert done.stderr.splitlines() == [done.stderr.strip()]
    assert done.stderr.startswith("error: unknown command 'no-such-command'; one of: train,")


def test_unquoted_run_directory_override_says_how_to_quote(tmp_path: Path) -> None:
    path = tmp_path / "lr=5e-3,n_layer=4" / "last.ckpt"  # a run directory of an identity
    done = lhp("evaluate", f"ckpt_path={path}")
    assert done.returncode == 2
    assert done.stderr.splitlines() == [done.stderr.strip()]
    assert f"""must be quoted, e.g. ckpt_path="'{path}'\"""" in done.stderr


def test_bench_help_lists_benchmarks_without_helpers(capsys: pytest.CaptureFixture) -> None:
    assert cli.main(["bench", "--help"]) == 0
    out = capsys.readouterr().out
    assert "  persistence " in out and "  weight_store " in out and " common " not in out
    with pytest.raises(SystemExit) as err:
        cli.main(["bench", "nope"])
    assert err.value.code == 2
    assert capsys.readouterr().err.startswith("error: unknown benchmark 'nope'")


def test_bench_runs_a_benchmark_and_writes_its_report(tmp_path: Path,
                                                      capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "persistence.json"
    assert cli.main(["bench", "persistence", "--quick", "--repeats", "1", "--out", str(out)]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    written = json.loads(out.read_text())
    assert last.startswith("worst engine/fastest-direct ratio: ") and written["headline"] == last
    assert written["worst_ratio"] > 0 and len(written["rows"]) >= 5


def test_bad_benchmark_flag_exits_2(capsys: pytest.CaptureFixture) -> None:
    assert cli.main(["bench", "persistence", "--repeats", "0"]) == 2
    assert "--repeats must be >= 1" in capsys.readouterr().err


def test_a_command_registers_once() -> None:
    with pytest.raises(ValueError, match="registered twice"):
        cli.register("train", "experiments.train", "again")
