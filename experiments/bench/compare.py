"""Wall time of ``lhp compare`` (table and plots) over many synthetic run directories.

    lhp bench compare [--runs 200] [--seeds 4] [--train-rows 200] [--val-rows 10]
        [--repeats 3] [--out report.json]

Each run directory is what a training run leaves: ``.hydra/config.yaml`` (the real composed
``experiment=smoke_tiny`` config, saved unresolved as Hydra does, with learning rate, weight
decay and depth varied: ``runs / seeds`` groups, the learning rate a sweep) and a Lightning-style
``csv/version_0/metrics.csv`` (the real column set; one row per train step, validation rows
apart, blanks elsewhere). The timed call is the whole report in-process: find, read, group,
tabulate, then CSV, HTML and every plot (median of ``--repeats``). Goal (issue 17): < 5 s for
200 runs. The last line is the figure.
"""

from __future__ import annotations

import csv
import itertools
import math
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml
from omegaconf import OmegaConf, open_dict

from analysis.compare import compare, write_report
from analysis.plots import default_panels
from experiments.bench import common
from lhp.errors import entry_point

GOAL_S = 5.0
LRS = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2)
WEIGHT_DECAYS = (0.0, 0.01, 0.03, 0.1, 0.3)
LAYERS = (2, 4)
TRAIN_COLUMNS = ("lr-AdamW/pg1", "lr-AdamW/pg2", "throughput/train/device_tokens_per_sec",
                 "throughput/train/samples", "train/loss", "train/loss_ce", "train/tokens_seen")
VAL_COLUMNS = ("val/bpc", "val/loss", "val/ppl")


def base_config() -> dict:
    """The composed smoke_tiny train config, as ``.hydra/config.yaml`` holds it."""
    from experiments.utils import compose_config

    cfg = compose_config("train", ["experiment=smoke_tiny"], "/tmp/unused")
    with open_dict(cfg):
        cfg.pop("hydra")
    return OmegaConf.to_container(cfg, resolve=False)


def write_runs(root: Path, runs: int, seeds: int, train_rows: int, val_rows: int) -> None:
    """``runs`` run directories, ``<root>/lr<lr>_wd<wd>_L<layers>/seed<s>``."""
    config = base_config()
    rng = np.random.default_rng(0)
    header = sorted(("epoch", "step", *TRAIN_COLUMNS, *VAL_COLUMNS))
    grid = itertools.islice(itertools.cycle(itertools.product(LRS, WEIGHT_DECAYS, LAYERS)),
                            math.ceil(runs / seeds))
    for i, (lr, wd, layers) in enumerate(grid):
        for seed in range(1, seeds + 1):
            if i * seeds + seed > runs:
                return
            run = root / f"lr{lr:g}_wd{wd:g}_L{layers}" / f"seed{seed}"
            (run / ".hydra").mkdir(parents=True)
            (run / "csv" / "version_0").mkdir(parents=True)
            config.update(seed=seed)
            config["model"]["optimizer"].update(lr=lr, weight_decay=wd)
            config["model"]["arch_config"]["n_layer"] = layers
            (run / ".hydra" / "config.yaml").write_text(yaml.dump(config, Dumper=yaml.CSafeDumper))
            floor = 2.0 + abs(math.log10(lr / 1e-3)) * 0.3 + wd + 0.05 * seed
            steps = np.arange(train_rows)
            loss = floor + 3.0 * np.exp(-steps / 40) + rng.normal(0, 0.05, train_rows)
            with open(run / "csv" / "version_0" / "metrics.csv", "w", newline="") as fh:
                writer = csv.DictWriter(fh, fieldnames=header)
                writer.writeheader()
                for step in steps.tolist():
                    writer.writerow({"epoch": 0, "step": step, "lr-AdamW/pg1": lr,
                                     "lr-AdamW/pg2": lr, "throughput/train/samples": 8 * step,
                                     "throughput/train/device_tokens_per_sec": 3000.0,
                                     "train/loss": loss[step], "train/loss_ce": loss[step],
                                     "train/tokens_seen": 256.0 * (step + 1)})
                    if (step + 1) % max(train_rows // val_rows, 1) == 0:
                        val = float(loss[max(step - 5, 0):step + 1].mean()) + 0.1
                        writer.writerow({"epoch": 0, "step": step, "val/loss": val,
                                         "val/ppl": math.exp(val), "val/bpc": val / math.log(2)})


def timed(root: Path, out: Path) -> dict[str, float]:
    """One full report: seconds to load and tabulate, then to write CSV, HTML and plots."""
    t0 = time.perf_counter()
    comparison = compare([root], ["val/loss", "val/ppl"])
    t1 = time.perf_counter()
    files = write_report(comparison, out, default_panels(comparison.metrics))
    t2 = time.perf_counter()
    return {"load_table_s": t1 - t0, "report_plots_s": t2 - t1, "total_s": t2 - t0,
            "runs": len(comparison.runs), "groups": len(comparison.groups),
            "pngs": sum(f.suffix == ".png" for f in files)}


@entry_point
def main(argv: list[str] | None = None) -> float:
    parser = common.bench_parser(__doc__.split("\n")[0], repeats=3)
    parser.add_argument("--runs", type=int, default=200, help="run directories")
    parser.add_argument("--seeds", type=int, default=4, help="seeds per configuration")
    parser.add_argument("--train-rows", type=int, default=200, help="train rows per run")
    parser.add_argument("--val-rows", type=int, default=10, help="validation rows per run")
    args = common.parse_args(parser, argv)
    with tempfile.TemporaryDirectory(prefix="bench_compare_") as tmp:
        root, out = Path(tmp) / "runs", Path(tmp) / "report"
        t0 = time.perf_counter()
        write_runs(root, args.runs, args.seeds, args.train_rows, args.val_rows)
        print(f"wrote {args.runs} run directories in {time.perf_counter() - t0:.1f} s")
        timed(root, out / "warmup")  # imports matplotlib, warms the page cache
        rows = [{"repeat": i, **timed(root, out / str(i))}
                for i in common.progress(range(1, args.repeats + 1), "compare")]
        sizes = {p.name: p.stat().st_size for p in (out / "1").iterdir()}
    median = statistics.median(r["total_s"] for r in rows)
    columns = [("repeat", "repeat", ""), ("runs", "runs", ""), ("groups", "groups", ""),
               ("pngs", "PNGs", ""), ("load_table_s", "load + table s", ".2f"),
               ("report_plots_s", "CSV + HTML + plots s", ".2f"), ("total_s", "total s", ".2f")]
    common.report(rows, f"lhp compare of {rows[0]['runs']} runs ({rows[0]['groups']} groups x "
                        f"{args.seeds} seeds, {args.train_rows}+{args.val_rows} rows each): "
                        f"{median:.2f} s median (goal < {GOAL_S:.0f} s)", args.out,
                  columns=columns, notes=[f"output sizes (bytes): {sizes}"],
                  meta={"median_s": median})
    return median


if __name__ == "__main__":
    main()
