"""Studies: variants x seeds as training subprocesses, resumable, summarized per variant."""

from __future__ import annotations

import csv
import json
import math
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from experiments.study import available_studies, check_composes, load_study
from experiments.study import main as study_main
from tests.conftest import REPO

# smoke_seeds (learned vs rope, 2560 tokens per run) on one seed, plus a variant that cannot
# build its model (n_head=3 does not divide n_embd=64).
STUDY_ARGS = ["seeds=[1]", "variants.bad=[model.arch_config.n_head=3]"]


def _launch(out: Path, data: Path) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "experiments.study", "smoke_seeds", f"output_dir={out}",
           *STUDY_ARGS, "--", "logger=csv", "trainer.limit_test_batches=4",
           f"paths.data_dir={data}"]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)


def _files(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_mtime_ns, p.stat().st_size)
            for p in root.rglob("*") if p.is_file()}


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Launch, then pretend rope was interrupted after its checkpoint, then launch again."""
    root = tmp_path_factory.mktemp("study")
    out, data = root / "out", root / "data"
    first = _launch(out, data)
    state = {"out": out, "first": first, "md": (out / "summary.md").read_text(),
             "rows": _rows(out / "summary.csv"),
             "learned": json.loads((out / "learned/seed1/result.json").read_text()),
             "learned_files": _files(out / "learned"),
             "dirs": sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_dir()
                            and ".hydra" not in p.parts and "csv" not in p.parts
                            and "checkpoints" not in p.parts)}
    (out / "rope/seed1/result.json").unlink()
    state["second"] = _launch(out, data)
    return state


def test_failed_variant_is_reported_and_the_others_run(study: dict) -> None:
    first, out = study["first"], study["out"]
    assert first.returncode == 1, first.stderr[-3000:]
    assert "bad seed=1: FAILED (exit 1)" in first.stdout
    assert "1 of 3 runs FAILED" in first.stdout
    failed = (out / "bad/seed1/failed.txt").read_text()
    assert "divisible by n_head=3" in failed and "model.arch_config.n_head=3" in failed
    assert not (out / "bad/seed1/result.json").exists()
    for variant in ("learned", "rope"):
        assert f"{variant} seed=1: done in" in first.stdout
        assert (out / variant / "seed1/study_run.log").is_file()
        assert (out / variant / "seed1/checkpoints/last.ckpt").is_file()


def test_result_json_has_final_metrics_and_the_exact_command(study: dict) -> None:
    result, out = study["learned"], study["out"]
    for key in ("val/loss", "val/ppl", "val/bpc", "test/loss", "test/ppl", "test/bpc"):
        assert math.isfinite(result["metrics"][key]), key
    assert result["params"] > 0
    assert result["tokens_seen"] == 2560  # 10 steps x 8 x 32 tokens: the study's token budget
    assert result["tokens_per_sec"] > 0 and result["wall_s"] > 0
    assert result["resumed_from"] is None
    cmd = result["command"]
    assert cmd[:3] == [sys.executable, "-m", "experiments.train"]
    for arg in ("experiment=smoke_tiny", "seed=1", "callbacks.token_budget.max_tokens=2560",
                "group=study_smoke_seeds", "tags=[study,smoke_seeds,learned]",
                "run_name=smoke_seeds_learned", f"hydra.run.dir={out / 'learned/seed1'}",
                "logger=csv"):
        assert arg in cmd, arg


def test_summary_has_one_row_per_variant(study: dict) -> None:
    rows = {row["variant"]: row for row in study["rows"]}
    assert list(rows) == ["learned", "rope", "bad"]
    assert [rows[v]["n_seeds"] for v in rows] == ["1", "1", "0"]
    for variant in ("learned", "rope"):
        row = rows[variant]
        for key in ("val/loss", "val/ppl", "test/loss", "test/bpc", "tokens_per_sec"):
            assert math.isfinite(float(row[f"{key}_mean"])), (variant, key)
            assert row[f"{key}_std"] == ""  # one seed: no spread
        assert float(row["params_mean"]) > 0
    assert float(rows["rope"]["params_mean"]) != float(rows["learned"]["params_mean"])
    assert rows["bad"]["val/loss_mean"] == ""
    # the key that differs between variants is a column (names and paths are not)
    assert rows["rope"]["model.arch_config.pos_embedding"] == "rope"
    assert rows["learned"]["model.arch_config.pos_embedding"] == "learned"
    assert "run_name" not in rows["rope"]

    md = study["md"]
    assert "# Study `smoke_seeds`" in md and "Hypothesis" in md  # name and description
    assert "| learned | 1 | " in md and " ± — |" in md and "| bad | 0 |" in md
    assert "bad/seed1 (failed)" in md
    assert study["learned"]["command_str"] in md
    # the plots of `lhp compare`, linked from the summary
    for name in ("curves.png", "headline.png"):
        assert (study["out"] / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"![{name[:-4]}]({name})" in md
    # the markdown table is printed last
    assert study["first"].stdout.rstrip().splitlines()[-1].startswith("| bad | 0 |")


def test_relaunch_skips_done_resumes_interrupted_retries_failed(study: dict) -> None:
    second, out = study["second"], study["out"]
    assert second.returncode == 1, second.stderr[-3000:]
    assert "learned seed=1: skipping, done" in second.stdout
    assert _files(out / "learned") == study["learned_files"], "a finished run was touched"
    assert "rope seed=1: resuming from" in second.stdout
    rope = json.loads((out / "rope/seed1/result.json").read_text())
    assert rope["resumed_from"] == str(out / "rope/seed1/checkpoints/last.ckpt")
    assert f"ckpt_path={rope['resumed_from']}" in rope["command"]
    assert "bad seed=1: running (retrying a failed run)" in second.stdout
    assert (out / "bad/seed1/failed.txt").is_file()
    dirs = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_dir()
                  and ".hydra" not in p.parts and "csv" not in p.parts
                  and "checkpoints" not in p.parts)
    assert dirs == study["dirs"]


def test_aggregate_only_rewrites_the_summary(study: dict, capsys: pytest.CaptureFixture) -> None:
    out = study["out"]
    (out / "summary.md").unlink()
    (out / "summary.csv").unlink()
    before = _files(out / "learned")
    assert study_main(["smoke_seeds", f"output_dir={out}", *STUDY_ARGS, "--aggregate-only"]) == 0
    assert [r["variant"] for r in _rows(out / "summary.csv")] == ["learned", "rope", "bad"]
    assert (out / "summary.md").is_file()
    assert capsys.readouterr().out.rstrip().splitlines()[-1].startswith("| bad | 0 |")
    assert _files(out / "learned") == before


def test_mean_and_sample_std_over_seeds(tmp_path: Path) -> None:
    """Aggregation alone, on hand-written results: mean ± sample std (ddof=1), — for n=1."""
    spec = tmp_path / "toy.yaml"
    spec.write_text("experiment: smoke_tiny\nseeds: [1, 2, 3]\n"
                    "variants: {a: [], b: [model.arch_config.n_layer=1]}\n")
    out = tmp_path / "out"
    losses = {("a", 1): 2.0, ("a", 2): 2.5, ("a", 3): 3.0, ("b", 1): 4.0}
    for (variant, seed), loss in losses.items():
        run = out / variant / f"seed{seed}"
        run.mkdir(parents=True)
        (run / "result.json").write_text(json.dumps({
            "seed": seed, "metrics": {"val/loss": loss, "val/wiki_loss": loss + 1,
                                      "test/word_ppl": 100.0 + seed},
            "params": 1000, "tokens_seen": 64, "tokens_per_sec": 10.0 * seed,
            "command_str": f"train {variant} {seed}"}))
    assert study_main([str(spec), f"output_dir={out}", "--aggregate-only"]) == 0
    rows = {row["variant"]: row for row in _rows(out / "summary.csv")}
    assert rows["a"]["n_seeds"] == "3" and rows["a"]["seeds"] == "1 2 3"
    assert float(rows["a"]["val/loss_mean"]) == pytest.approx(2.5)
    assert float(rows["a"]["val/loss_std"]) == pytest.approx(statistics.stdev([2.0, 2.5, 3.0]))
    assert float(rows["a"]["val/wiki_loss_mean"]) == pytest.approx(3.5)
    assert float(rows["a"]["tokens_per_sec_mean"]) == pytest.approx(20.0)
    assert rows["b"]["n_seeds"] == "1" and rows["b"]["val/loss_std"] == ""
    md = (out / "summary.md").read_text()
    header = next(line for line in md.splitlines() if line.startswith("| variant"))
    assert header.split(" | ")[2:6] == ["val/loss", "val/wiki_loss", "test/word_ppl", "params"]
    assert "| a | 3 | 2.5000 ± 0.5000 |" in md
    assert "| b | 1 | 4.0000 ± — |" in md
    assert "b/seed2 (not run yet)" in md and "train a 1" in md


@pytest.mark.parametrize("args, message", [
    (["nope"], "unknown study 'nope'; available in"),
    (["smoke_seeds", "seeds=[]"], "key 'seeds': must be a non-empty list of ints"),
    (["smoke_seeds", "token_budget=1.5"], "key 'token_budget': must be a positive int"),
    (["smoke_seeds", "token_budget=lots"], "key 'token_budget': must be a positive int"),
    (["smoke_seeds", "seed=3"], "override 'seed=3': expected key=value with key one of"),
    (["smoke_seeds", "--", "seed=4"], "sets 'seed', which the study sets for every run"),
    (["smoke_seeds", "variants.x=[model.arch_config.n_layerz=2]"],
     "key 'variants.x': the train config does not compose"),
])
def test_invalid_study_config_fails_early_naming_the_key(
        args: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "out"
    cut = args.index("--") if "--" in args else len(args)
    assert study_main([*args[:cut], f"output_dir={out}", *args[cut:]]) == 2
    err = capsys.readouterr().err
    assert message in err
    if args[0] == "nope":
        assert "smoke_seeds" in err
    else:
        assert "smoke_seeds.yaml" in err or "after `--`" in err
    assert not out.exists(), "nothing may run or be written for an invalid study"


def test_missing_variants_names_the_file(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    spec = tmp_path / "novariants.yaml"
    spec.write_text("experiment: smoke_tiny\nseeds: [1]\ntoken_budget: 100\n")
    assert study_main([str(spec)]) == 2
    assert f"{spec}: missing required key 'variants'" in capsys.readouterr().err


def test_dry_run_prints_every_command(capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    assert study_main(["smoke_seeds", f"output_dir={tmp_path}", "--dry-run"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 4  # 2 variants x 2 seeds, seed-major
    assert "seed=1" in lines[1] and "model.arch_config.pos_embedding=rope" in lines[1]
    assert all("callbacks.token_budget.max_tokens=2560" in line for line in lines)
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("name", available_studies())
def test_every_committed_study_validates_and_composes(name: str) -> None:
    """A typo in a study file fails here, not hours into a sweep (compose only, no training)."""
    study = load_study(name)
    assert study.variants and study.seeds
    check_composes(study)
