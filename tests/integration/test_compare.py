"""``lhp compare``: two tiny real runs tabulated and plotted from their directories alone, groups
of seeds as mean ± std, every kind of bad input as a note, and the offline W&B run."""

from __future__ import annotations

import csv
import json
import shutil
import statistics
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf, open_dict

from analysis.compare import compare
from analysis.plots import curve
from experiments.compare import main as compare_main
from experiments.study import main as study_main
from experiments.study import read_run_metrics
from experiments.train import train
from tests.conftest import compose_config

PNG = b"\x89PNG\r\n\x1a\n"
TINY = ["experiment=smoke_tiny", "logger=csv", "trainer.max_steps=10",
        "trainer.val_check_interval=5", "test=false"]
LR = {"a": 6e-4, "b": 5e-3}


def _save_hydra_config(cfg: object, out: Path) -> None:
    """What ``@hydra.main`` saves and an in-process run does not: the composed config."""
    task = OmegaConf.create(OmegaConf.to_container(cfg, resolve=False))
    with open_dict(task):
        task.pop("hydra")
    (out / ".hydra").mkdir(parents=True)
    OmegaConf.save(task, out / ".hydra" / "config.yaml")


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> Path:
    """Two 10-step smoke_tiny runs that differ only in the learning rate: <root>/a, <root>/b."""
    root = tmp_path_factory.mktemp("compare")
    for name, lr in LR.items():
        cfg = compose_config("train", [*TINY, f"model.optimizer.lr={lr}"], root / name, data_dir)
        train(cfg)
        _save_hydra_config(cfg, root / name)
    return root


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _own_val_losses(run: Path) -> list[float]:
    return [float(r["val/loss"]) for r in _rows(next(run.glob("csv/version_*/metrics.csv")))
            if r.get("val/loss")]


def _write_run(path: Path, config: dict, rows: list[dict[str, object]]) -> Path:
    """A hand-written run directory: .hydra/config.yaml and one metrics.csv."""
    (path / ".hydra").mkdir(parents=True)
    (path / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))
    (path / "csv" / "version_0").mkdir(parents=True)
    fields = sorted({k for row in rows for k in row} | {"step", "epoch"})
    with open(path / "csv" / "version_0" / "metrics.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    return path


def test_table_holds_each_runs_own_best_and_final(runs: Path, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "report"
    assert compare_main([str(runs / "*"), "--out", str(out)]) == 0
    stdout = capsys.readouterr().out
    rows = _rows(out / "compare.csv")
    assert [Path(r["path"]).name for r in rows] == sorted(LR, key=lambda n: min(
        _own_val_losses(runs / n)))  # sorted by best val/loss
    for row in rows:
        own = _own_val_losses(Path(row["path"]))
        assert len(own) == 2 and own[0] != own[1]
        assert float(row["val/loss_best"]) == min(own)
        assert float(row["val/loss_final"]) == own[-1]
        assert float(row["model.optimizer.lr"]) == LR[row["run"]]
        assert f"| {row['run']} | {row['model.optimizer.lr']} | {min(own):.4f} |" in stdout
    # the one key that differs; paths, names and run locations differ too but are no columns
    assert list(rows[0]) == ["run", "model.optimizer.lr", "val/loss_best", "val/loss_final", "path"]
    for name in ("curves.png", "headline.png"):
        assert (out / name).read_bytes()[:8] == PNG and (out / name).stat().st_size < 200_000
    page = (out / "compare.html").read_text()
    assert page.count("data:image/png;base64,") == 2 and "model.optimizer.lr" in page


def test_tokens_axis_and_explicit_grouping(runs: Path, tmp_path: Path) -> None:
    out = tmp_path / "report"
    assert compare_main([str(runs), "--out", str(out), "--x", "tokens", "--group-by", "lr",
                         "--metrics", "val/loss,val/ppl"]) == 0
    assert (out / "curves.png").read_bytes()[:8] == PNG
    assert {"val/ppl_best", "val/ppl_final"} <= set(_rows(out / "compare.csv")[0])


def test_flops_axis_on_real_runs(runs: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """A token model logs train/flops: every run is on the axis, at FLOPs = tokens x a constant."""
    assert compare_main([str(runs), "--out", str(tmp_path), "--x", "flops"]) == 0
    assert "warning:" not in capsys.readouterr().err
    for run in compare([runs]).runs:
        flops, tokens = (curve([run], "val/loss", x=x)[0] for x in ("flops", "tokens"))
        assert flops.size == 2 and (flops / tokens) == pytest.approx(flops[0] / tokens[0])


def test_seeds_of_a_group_give_mean_and_sample_std(tmp_path: Path) -> None:
    finals = {1: 2.0, 2: 2.5, 3: 3.0}
    for seed, loss in finals.items():
        _write_run(tmp_path / f"lr1/seed{seed}", {"seed": seed, "model": {"lr": 0.1}},
                   [{"step": 0, "val/loss": loss + 1}, {"step": 10, "val/loss": loss}])
    _write_run(tmp_path / "lr2/seed1", {"seed": 1, "model": {"lr": 0.2}},
               [{"step": 10, "val/loss": 9.0}])
    comparison = compare([tmp_path])
    table = comparison.table
    assert table.grouped and [r.label for r in table.rows] == ["lr1", "lr2"]
    assert table.config_keys == ["model.lr"]  # seed is the n, not a key
    mean, std = table.rows[0].stats["val/loss_final"]
    assert mean == pytest.approx(2.5) and std == pytest.approx(statistics.stdev(finals.values()))
    md = table.markdown()
    assert "| lr1 | 3 | 0.1 | 2.5000 ± 0.5000 | 2.5000 ± 0.5000 |" in md
    assert "| lr2 | 1 | 0.2 | 9.0000 ± — |" in md
    fields, records = table.records()
    assert records[0]["seeds"] == "1 2 3" and "val/loss_best_std" in fields
    assert [g.label for g in compare([tmp_path], group_by="run").groups][:2] == [
        "lr1/seed1", "lr1/seed2"]


def _not_a_run(root: Path, good: Path) -> tuple[list[str], str]:
    (root / "notes").mkdir()
    (root / "notes" / "readme.txt").write_text("hello")
    return [str(root / "notes")], "notes: not a run directory"


def _still_running(root: Path, good: Path) -> tuple[list[str], str]:
    shutil.copytree(good / ".hydra", root / "running" / ".hydra")
    header = (next(good.glob("csv/version_*/metrics.csv")).read_text().splitlines()[0])
    (root / "running/csv/version_0").mkdir(parents=True)
    (root / "running/csv/version_0/metrics.csv").write_text(header + "\n")
    return [str(root / "running")], "running: no metrics logged yet"


def _corrupt_csv(root: Path, good: Path) -> tuple[list[str], str]:
    run = _write_run(root / "corrupt", {"seed": 7}, [{"step": 1, "val/loss": 3.25}])
    with open(run / "csv/version_0/metrics.csv", "ab") as fh:
        fh.write(b"\x00\xff\xfe garbage,\x81\n1,2,3,4,5,6\nnot,a\n")
    return [str(run)], "corrupt CSV: 3 of 4 rows unreadable"


def _disjoint_metrics(root: Path, good: Path) -> tuple[list[str], str]:
    run = _write_run(root / "other", {"seed": 7}, [{"step": 1, "val/other": 1.0}])
    return [str(run)], "metric 'val/loss' is not logged by 1 of 2 runs (other)"


def _glob_matching_nothing(root: Path, good: Path) -> tuple[list[str], str]:
    return [str(root / "nothing_*")], "nothing_*: the pattern matched nothing"


@pytest.mark.parametrize("case", [_not_a_run, _still_running, _corrupt_csv, _disjoint_metrics,
                                  _glob_matching_nothing])
def test_bad_input_is_one_line_and_the_report_is_still_made(
        case, runs: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    args, message = case(tmp_path, runs / "a")
    out = tmp_path / "report"
    assert compare_main([str(runs / "a"), *args, "--out", str(out), "--group-by", "run"]) == 0
    err = capsys.readouterr().err
    warnings = [line for line in err.splitlines() if line.startswith("warning: ")]
    assert len(warnings) == 1 and message in warnings[0], err
    rows = {r["run"]: r for r in _rows(out / "compare.csv")}
    assert float(rows["a"]["val/loss_best"]) == min(_own_val_losses(runs / "a"))
    assert (out / "curves.png").is_file() and message in (out / "compare.md").read_text()
    if case is _corrupt_csv:
        assert float(rows["corrupt"]["val/loss_final"]) == 3.25  # the readable row is kept
    if case in (_still_running, _disjoint_metrics):
        assert rows[Path(args[0]).name]["val/loss_best"] == ""


def test_nothing_at_all_is_an_error(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit) as done:
        compare_main([str(tmp_path / "nope_*"), str(tmp_path / "empty"), "--out",
                      str(tmp_path / "report")])
    assert done.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: nothing to compare: ") and "\n" not in err
    assert "nope_*: the pattern matched nothing" in err and "empty: not a run directory" in err
    assert not (tmp_path / "report").exists()


def test_unknown_group_key_names_the_keys_that_differ(runs: Path, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit):
        compare_main([str(runs), "--group-by", "lrr", "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert "--group-by 'lrr' is in no run's config; keys that differ: model.optimizer.lr" in err


def test_wandb_logs_an_offline_run(runs: Path, tmp_path: Path,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WANDB_MODE", "offline")
    out = tmp_path / "report"
    assert compare_main([str(runs), "--out", str(out), "--wandb"]) == 0
    run_dirs = list((out / "wandb").glob("offline-run-*"))
    assert len(run_dirs) == 1 and list(run_dirs[0].glob("*.wandb"))
    media = {p.name.split("_")[0] for p in run_dirs[0].rglob("files/media/**/*") if p.is_file()}
    assert {"curves", "headline", "table"} <= {m.split(".")[0] for m in media}, media


# --------------------------------------------------------------------------- training FLOPs

# train/flops logged at steps 9, 19, 29 (cumulative); val/bpc between and on those steps
FLOPS_ROWS = [{"step": 9, "train/flops": 100.0, "train/loss": 3.0},
              {"step": 14, "val/bpc": 5.0},
              {"step": 19, "train/flops": 200.0, "train/loss": 2.5},
              {"step": 29, "train/flops": 300.0, "train/loss": 2.0, "val/bpc": 4.0}]


def test_flops_axis_is_train_flops_interpolated_at_each_step(tmp_path: Path) -> None:
    run = _write_run(tmp_path / "new", {"seed": 1}, [{"step": 4, "val/bpc": 6.0}, *FLOPS_ROWS])
    runs = compare([run], ["val/bpc"]).runs
    xs, mean, low, high = curve(runs, "val/bpc", x="flops")
    # step 4: halfway from 0 FLOPs (before step 0) to step 9's; step 14: halfway 9 -> 19
    assert xs.tolist() == pytest.approx([50.0, 150.0, 300.0])
    assert mean.tolist() == [6.0, 5.0, 4.0] and low is None and high is None
    assert curve(runs, "train/loss", x="flops")[0].tolist() == pytest.approx([100, 200, 300])


def test_runs_without_train_flops_are_left_off_the_flops_axis_with_a_note(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    new = _write_run(tmp_path / "new", {"seed": 1}, FLOPS_ROWS)
    old = _write_run(tmp_path / "old", {"seed": 2},
                     [{k: v for k, v in row.items() if k != "train/flops"} for row in FLOPS_ROWS])
    out = tmp_path / "report"
    assert compare_main([str(new), str(old), "--x", "flops", "--metrics", "val/bpc",
                         "--group-by", "run", "--out", str(out)]) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines()
                if line.startswith("warning: ")]
    assert warnings == ["warning: --x flops: 1 runs have no train/flops (old); left out of the "
                        "curves"]
    assert (out / "curves.png").read_bytes()[:8] == PNG
    assert {r["run"]: float(r["val/bpc_best"]) for r in _rows(out / "compare.csv")} == {
        "new": 4.0, "old": 4.0}  # the table keeps the run
    runs = compare([new, old], ["val/bpc"]).runs
    xs, mean, low, _ = curve(runs, "val/bpc", x="flops")  # the new run's alone
    assert xs.tolist() == pytest.approx([150.0, 300.0]) and low is None
    assert len(curve(runs, "val/bpc", x="step")[0]) == 2 and curve(runs, "val/bpc")[2] is not None


def test_study_summary_has_best_val_flops_and_the_flops_image(tmp_path: Path) -> None:
    """Results written before train/flops was recorded (no "flops" in result.json) still get
    best val and FLOPs from the runs' CSV logs; a run without train/flops gets a note."""
    spec = tmp_path / "toy.yaml"
    spec.write_text("experiment: smoke_tiny\nseeds: [1, 2]\nvariants: {a: [], b: []}\n")
    out = tmp_path / "out"
    scale = {("a", 1): 1.0, ("a", 2): 2.0, ("b", 1): 1.0}
    for (variant, seed), k in scale.items():
        rows = [{**row, **{c: v * k for c, v in row.items() if c in ("train/flops", "val/bpc")}}
                for row in FLOPS_ROWS]
        rows.append({"step": 39, "val/bpc": 4.5 * k})  # the last val is not the best
        if variant == "b":
            rows = [{c: v for c, v in row.items() if c != "train/flops"} for row in rows]
        run = _write_run(out / variant / f"seed{seed}", {"seed": seed}, rows)
        (run / "result.json").write_text(json.dumps({
            "seed": seed, "metrics": {"val/bpc": 4.5 * k, "test/bpc": 4.2 * k},
            "params": 1000, "tokens_seen": 64, "tokens_per_sec": 10.0,
            "command_str": f"train {variant} {seed}"}))
    assert read_run_metrics(out / "a" / "seed2")["flops"] == 600.0
    assert study_main([str(spec), f"output_dir={out}", "--aggregate-only"]) == 0
    rows = {row["variant"]: row for row in _rows(out / "summary.csv")}
    assert float(rows["a"]["val/bpc_mean"]) == pytest.approx(4.5 * 1.5)  # the last values
    assert float(rows["a"]["val/bpc_best_mean"]) == pytest.approx(4.0 * 1.5)
    assert float(rows["a"]["val/bpc_best_std"]) == pytest.approx(statistics.stdev([4.0, 8.0]))
    assert float(rows["a"]["flops_mean"]) == pytest.approx(450.0)
    assert rows["b"]["flops_mean"] == "" and float(rows["b"]["val/bpc_best_mean"]) == 4.0
    assert "test/bpc_best_mean" not in rows["a"]  # best is a val column only
    md = (out / "summary.md").read_text()
    header = next(line for line in md.splitlines() if line.startswith("| variant"))
    assert header.split(" | ")[2:] == ["val/bpc", "best val/bpc", "test/bpc", "params",
                                       "tokens_seen", "tokens/s", "flops |"]
    assert "| a | 2 | 6.7500 ± 3.1820 | 6.0000 ± 2.8284 | " in md and "| 450 ± 212 |" in md
    assert (out / "val_bpc_flops.png").read_bytes()[:8] == PNG
    assert "![val_bpc_flops](val_bpc_flops.png)" in md
    assert "Note: b/seed1: no train/flops logged; left out of val_bpc_flops.png" in md
