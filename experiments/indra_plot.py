"""Training monitor of IndraQuantum runs (the write-up's notebook) as one PNG, offline:

    lhp indra-plot logs/study/indra_kd_seeds/full_recipe/seed1 [more runs...]
        [--out indra_monitor.png] [--smooth 20]

(or ``python -m experiments.indra_plot ...``). Each argument is a run directory (its
``csv/version_*/metrics.csv``, every version, so resumed runs plot whole) or a ``metrics.csv``.
Panels: total loss (train, and val where logged); CE vs KD (with the curriculum's ``kd/weight``); phase/magnitude stability (the student's mean
magnitude salience and phase dispersion against the teacher's confidence and normalised
entropy they are aligned to); the phase/magnitude alignment losses. Several runs overlay.
"""

from __future__ import annotations

import argparse
import csv
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

from lhp.errors import entry_point

Series = dict[str, tuple[np.ndarray, np.ndarray]]
PANELS = (
    ("Total loss", ["train/loss", "val/loss"], None),
    ("CE vs KD", ["train/loss_ce", "train/loss_kd"], "kd/weight"),
    ("Phase / magnitude stability", ["train/mag_salience", "train/phase_dispersion",
                                     "train/teacher_confidence", "train/teacher_entropy"], None),
    ("Phase / magnitude alignment losses", ["train/loss_phase", "train/loss_mag"], None),
)


def metrics_files(target: Path) -> list[Path]:
    if target.is_file():
        return [target]
    files = sorted(target.glob("csv/version_*/metrics.csv"),
                   key=lambda p: int(p.parent.name.split("_")[-1]))
    if not files:
        raise FileNotFoundError(f"no csv/version_*/metrics.csv under {target} (logger=csv or "
                                "logger=many writes them); or pass a metrics.csv")
    return files


def read_series(target: Path) -> Series:
    """column -> (steps, values) over every CSV version of a run (later versions win a step)."""
    points: dict[str, dict[int, float]] = defaultdict(dict)
    for file in metrics_files(target):
        with open(file, newline="", encoding="utf-8") as fh:
            for row in csv.DictReader(fh):
                step = row.get("step")
                if not step:
                    continue
                for key, text in row.items():
                    if key in ("step", "epoch") or not text:
                        continue
                    try:
                        points[key][int(float(step))] = float(text)
                    except ValueError:
                        continue
    return {k: (np.array(sorted(v)), np.array([v[s] for s in sorted(v)])) for k, v in points.items()}


def smooth(steps: np.ndarray, values: np.ndarray, window: int) -> np.ndarray:
    """Trailing moving average over the last ``window`` *steps* (not logged points: metrics are
    logged every ``log_every_n_steps``), clipped at the start, to read noisy per-step losses."""
    if window <= 1 or values.size < 2:
        return values
    cumsum = np.cumsum(np.insert(values, 0, 0.0))
    idx = np.arange(1, values.size + 1)
    lo = np.searchsorted(steps, steps - window, side="right")  # first point inside the window
    return (cumsum[idx] - cumsum[lo]) / (idx - lo)


def plot(runs: dict[str, Series], out: Path, window: int = 20) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(13, 8.5))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    styles = ["-", "--", ":", "-."]
    for ax, (title, columns, twin_col) in zip(axes.flat, PANELS, strict=True):
        twin = ax.twinx() if twin_col and any(twin_col in s for s in runs.values()) else None
        drawn = 0
        for r, (name, series) in enumerate(runs.items()):
            color = colors[r % len(colors)]
            for c, column in enumerate(columns):
                if column not in series:
                    continue
                steps, values = series[column]
                is_val = column.startswith("val/")
                ax.plot(steps, values if is_val else smooth(steps, values, window),
                        linestyle=styles[c % len(styles)], marker="o" if is_val else None,
                        color=color, label=f"{name}: {column}" if len(runs) > 1 else column)
                drawn += 1
            if twin is not None and twin_col in series:
                twin.plot(*series[twin_col], color=color, alpha=0.35, linewidth=1,
                          label=f"{name}: {twin_col}" if len(runs) > 1 else twin_col)
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if twin is not None:
            twin.set_ylabel("kd/weight")
            twin.legend(loc="upper center", fontsize=7)
        if drawn:
            ax.legend(fontsize=7)
        else:
            ax.text(0.5, 0.5, "not logged in these runs\n(" + ", ".join(columns) + ")",
                    ha="center", va="center", transform=ax.transAxes, fontsize=8)
    fig.suptitle(f"IndraQuantum training monitor (train curves: {window}-step moving average)")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


@entry_point
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path, help="run directories or metrics.csv files")
    parser.add_argument("--out", type=Path, default=Path("indra_monitor.png"))
    parser.add_argument("--smooth", type=int, default=20, help="moving-average window (steps)")
    args = parser.parse_args(argv)
    try:
        runs = {}
        for i, target in enumerate(args.runs):
            run_dir = target.parents[2] if target.is_file() and len(target.parents) > 2 else target
            name = "/".join(run_dir.resolve().parts[-2:])  # e.g. full_recipe/seed1
            runs[name if name not in runs else f"{name} ({i})"] = read_series(target)
    except FileNotFoundError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {plot(runs, args.out, args.smooth)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
