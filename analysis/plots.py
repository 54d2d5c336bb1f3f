"""Plots of grouped runs (matplotlib, Agg): curves per group with a band over its seeds, the
headline metric per group with error bars, and the metric against each swept parameter."""

from __future__ import annotations

import math
import re
import statistics
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from analysis.runs import (
    FLOPS_KEY,
    SEED_KEY,
    TOKENS_KEY,
    Group,
    Run,
    differing_keys,
    mean_std,
)

SWEEP_MIN_VALUES = 4  # a numeric key with more distinct values than 3 is a sweep
LOG_SPAN = 20  # values this many times apart read best on a log axis
BANDS = ("minmax", "std")
XAXES = ("step", "tokens", "flops")
# x axis -> (the series it is read from, interpolated at each point's step; its label)
X_SERIES = {"tokens": (TOKENS_KEY, "tokens seen"), "flops": (FLOPS_KEY, "training FLOPs")}
MAX_LEGEND = 24
LINESTYLES = ("-", "--", ":", "-.")
SAFE_NAME = re.compile(r"[^\w.-]")


@dataclass(frozen=True)
class Panel:
    """One subplot: its title, the columns drawn (a line style each), a column on a twin axis."""

    title: str
    columns: tuple[str, ...]
    twin: str | None = None


INDRA_PANELS = (
    Panel("Total loss", ("train/loss", "val/loss")),
    Panel("CE vs KD", ("train/loss_ce", "train/loss_kd"), "kd/weight"),
    Panel("Phase / magnitude stability", ("train/mag_salience", "train/phase_dispersion",
                                          "train/teacher_confidence", "train/teacher_entropy")),
    Panel("Phase / magnitude alignment losses", ("train/loss_phase", "train/loss_mag")),
)
# name -> (panels, default moving-average window in steps, title)
PRESETS: dict[str, tuple[tuple[Panel, ...], int, str]] = {
    "indra": (INDRA_PANELS, 20, "IndraQuantum training monitor")}


def default_panels(metrics: Sequence[str]) -> tuple[Panel, ...]:
    """Training loss, then each of the first three metrics."""
    return (Panel("Training: train/loss", ("train/loss",)),
            *(Panel(m, (m,)) for m in metrics[:3] if m != "train/loss"))


def smooth(steps: np.ndarray, values: np.ndarray, window: int) -> np.ndarray:
    """Trailing moving average over the last ``window`` *steps* (not logged points: metrics are
    logged every ``log_every_n_steps``), clipped at the start, to read noisy per-step losses."""
    if window <= 1 or values.size < 2:
        return values
    cumsum = np.cumsum(np.insert(values, 0, 0.0))
    idx = np.arange(1, values.size + 1)
    lo = np.searchsorted(steps, steps - window, side="right")  # first point inside the window
    return (cumsum[idx] - cumsum[lo]) / (idx - lo)


def _xs(run: Run, steps: np.ndarray, x: str) -> np.ndarray | None:
    """The x values at ``steps``: the step, or the x series (cumulative, 0 before step 0)
    linearly interpolated at each step; None if the run does not log that series."""
    if x == "step":
        return steps.astype(float)
    found = run.series.get(X_SERIES[x][0])
    if found is None or not found[0].size:
        return None
    return np.interp(steps, np.insert(found[0], 0, -1), np.insert(found[1], 0, 0.0))


def runs_without_x(runs: Sequence[Run], x: str) -> list[Run]:
    """The runs with metrics but not the series the x axis is read from (left out of curves)."""
    return [] if x == "step" else [r for r in runs if r.series and X_SERIES[x][0] not in r.series]


def curve(runs: Sequence[Run], column: str, x: str = "step", window: int = 0,
          band: str = "minmax") -> tuple[np.ndarray, ...] | None:
    """(x, mean, low, high) of ``column`` over ``runs`` on the union of their x values (a run
    counts only inside its own range); low/high are None for one run."""
    tracks = []
    for run in runs:
        series = run.series.get(column)
        xs = None if series is None or not series[0].size else _xs(run, series[0], x)
        if xs is not None:
            train = not column.startswith(("val/", "test/"))
            tracks.append((xs, smooth(series[0], series[1], window) if train else series[1]))
    if not tracks:
        return None
    if len(tracks) == 1:
        return tracks[0][0], tracks[0][1], None, None
    grid = np.unique(np.concatenate([xs for xs, _ in tracks]))
    stack = np.vstack([np.interp(grid, xs, ys, left=np.nan, right=np.nan) for xs, ys in tracks])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        mean = np.nanmean(stack, axis=0)
        if band == "std":
            spread = np.nanstd(stack, axis=0, ddof=1)
            spread = np.where(np.isfinite(spread), spread, 0.0)
            return grid, mean, mean - spread, mean + spread
        return grid, mean, np.nanmin(stack, axis=0), np.nanmax(stack, axis=0)


def _log_span(values: Sequence[float]) -> bool:
    """Positive values at least LOG_SPAN times apart (a log axis reads them best)."""
    positive = [v for v in values if v > 0]
    return bool(positive) and max(positive) / min(positive) >= LOG_SPAN


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _colors(plt: Any, n: int) -> list[Any]:
    if n <= 10:
        return [plt.get_cmap("tab10")(i) for i in range(n)]
    if n <= 20:
        return [plt.get_cmap("tab20")(i) for i in range(n)]
    return list(plt.get_cmap("turbo")(np.linspace(0.05, 0.95, n)))


def _save(plt: Any, fig: Any, out: Path) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out


def plot_curves(groups: Sequence[Group], panels: Sequence[Panel], out: Path, *,
                x: str = "step", band: str = "minmax", window: int = 0,
                title: str | None = None) -> Path | None:
    """Each panel's columns per group (one colour each, a band over its seeds); None if no run
    logged any of them."""
    columns = {c for p in panels for c in p.columns}
    if not any(columns & run.series.keys() for g in groups for run in g.runs):
        return None
    plt = _pyplot()
    ncols = 1 if len(panels) == 1 else 2
    nrows = math.ceil(len(panels) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(6.4 * ncols, 4.0 * nrows), squeeze=False)
    colors = _colors(plt, len(groups))
    ends: list[float] = []  # where each curve ends on the x axis
    for ax, panel in zip(axes.flat, panels, strict=False):
        twin, drawn = None, 0
        for group, color in zip(groups, colors, strict=True):
            for c, column in enumerate(panel.columns):
                found = curve(group.runs, column, x, window, band)
                if found is None:
                    continue
                xs, mean, lo, hi = found
                ends.append(float(xs[-1]))
                label = column if len(groups) == 1 else group.label if len(
                    panel.columns) == 1 else f"{group.label}: {column}"
                dots = column.startswith(("val/", "test/")) and xs.size <= 60
                ax.plot(xs, mean, color=color, linestyle=LINESTYLES[c % len(LINESTYLES)],
                        marker="o" if dots else None, markersize=3, linewidth=1.3, label=label)
                if lo is not None:
                    ax.fill_between(xs, lo, hi, color=color, alpha=0.18, linewidth=0)
                drawn += 1
            found = curve(group.runs, panel.twin, x) if panel.twin else None
            if found is not None:
                twin = twin or ax.twinx()
                twin.plot(found[0], found[1], color=color, alpha=0.4, linewidth=1)
                twin.set_ylabel(panel.twin)
        ax.set_title(panel.title, fontsize=10)
        ax.set_xlabel(X_SERIES[x][1] if x in X_SERIES else "step")
        ax.grid(alpha=0.3)
        if not drawn:
            where = f"\n(or without {X_SERIES[x][0]} for the x axis)" if x in X_SERIES else ""
            ax.text(0.5, 0.5, f"not logged in these runs\n({', '.join(panel.columns)}){where}",
                    ha="center", va="center", transform=ax.transAxes, fontsize=8)
        elif drawn <= MAX_LEGEND:
            ax.legend(fontsize=7)
        else:
            ax.text(0.99, 0.99, f"{drawn} curves (legend left out)", ha="right", va="top",
                    transform=ax.transAxes, fontsize=7)
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    if x in X_SERIES and _log_span(ends):  # runs of very different lengths: log x
        for ax in axes.flat[:len(panels)]:
            ax.set_xscale("log", nonpositive="mask")
    notes = [f"bands: {'min–max' if band == 'minmax' else '±1 std'} over seeds"
             if any(len(g.runs) > 1 for g in groups) else "",
             f"train curves: {window}-step moving average" if window > 1 else ""]
    notes = [n for n in notes if n]
    fig.suptitle((title or "Training curves") + (f" ({'; '.join(notes)})" if notes else ""),
                 fontsize=11)
    fig.tight_layout()
    return _save(plt, fig, out)


def plot_points(groups: Sequence[Group], metric: str, out: Path,
                stat: str = "best") -> Path | None:
    """The metric per group: each run a grey dot, the mean with ± std error bars; best on top."""
    read = (lambda r: r.best(metric)) if stat == "best" else (lambda r: r.final(metric))
    points = [(g.label, vs) for g in groups
              if (vs := [v for r in g.runs if (v := read(r)) is not None and math.isfinite(v)])]
    if not points:
        return None
    points.sort(key=lambda p: statistics.fmean(p[1]))
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.5, min(1.6 + 0.32 * len(points), 18)))
    for y, (_, values) in enumerate(points):
        ax.scatter(values, [y] * len(values), color="0.6", s=12, zorder=2)
        std = statistics.stdev(values) if len(values) > 1 else 0.0
        ax.errorbar(statistics.fmean(values), y, xerr=std, fmt="o", color="C0", capsize=3,
                    zorder=3)
    ax.set_yticks(range(len(points)), [label for label, _ in points],
                  fontsize=8 if len(points) < 30 else 6)
    ax.invert_yaxis()
    ax.set_xlabel(f"{stat} {metric}  (mean ± std over seeds; grey: runs)")
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return _save(plt, fig, out)


def sweep_keys(runs: Sequence[Run], keys: Sequence[str]) -> list[str]:
    """Numeric keys (the seed aside) with more than 3 distinct values."""
    swept = []
    for key in keys:
        values = [r.config[key] for r in runs if key in r.config]
        numeric = values and all(isinstance(v, int | float) and not isinstance(v, bool)
                                 for v in values)
        if key != SEED_KEY and numeric and len(set(values)) >= SWEEP_MIN_VALUES:
            swept.append(key)
    return swept


def plot_sweep(runs: Sequence[Run], key: str, metric: str, out: Path) -> Path | None:
    """Best ``metric`` against the swept ``key``: runs as dots, mean ± std per value."""
    points = [(float(r.config[key]), v) for r in runs
              if key in r.config and (v := r.best(metric)) is not None and math.isfinite(v)]
    if not points:
        return None
    xs = sorted({x for x, _ in points})
    stats = [mean_std(v for x2, v in points if x2 == x) for x in xs]
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    ax.scatter(*zip(*points, strict=True), color="0.6", s=12, zorder=2, label="runs")
    ax.errorbar(xs, [m for m, _ in stats], yerr=[s or 0.0 for _, s in stats], marker="o",
                capsize=3, color="C0", zorder=3, label="mean ± std")
    if xs[0] > 0 and _log_span(xs):
        ax.set_xscale("log")
    ax.set_xlabel(key)
    ax.set_ylabel(f"best {metric}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(plt, fig, out)


def plot_against_flops(groups: Sequence[Group], metric: str, out_dir: Path, *,
                       band: str = "std", title: str | None = None) -> Path | None:
    """``metric`` against training FLOPs per group, mean with a band over seeds
    (``<metric>_flops.png``, e.g. val_bpc_flops.png): equal compute on one axis. None unless
    some run logs both ``metric`` and train/flops."""
    if not any({metric, FLOPS_KEY} <= run.series.keys() for g in groups for run in g.runs):
        return None
    panel = Panel(f"{metric} against training FLOPs", (metric,))
    return plot_curves(groups, [panel], out_dir / f"{SAFE_NAME.sub('_', metric)}_flops.png",
                       x="flops", band=band, title=title)


def write_plots(groups: Sequence[Group], out_dir: Path, metric: str, panels: Sequence[Panel], *,
                x: str = "step", band: str = "minmax", window: int = 0, stat: str = "best",
                title: str | None = None) -> list[Path]:
    """curves.png, headline.png and sweep_<key>.png in ``out_dir`` (those with something to
    draw), groups in the given order."""
    runs = [run for g in groups for run in g.runs]
    made = [plot_curves(groups, panels, out_dir / "curves.png", x=x, band=band, window=window,
                        title=title),
            plot_points(groups, metric, out_dir / "headline.png", stat),
            *(plot_sweep(runs, key, metric, out_dir / f"sweep_{SAFE_NAME.sub('_', key)}.png")
              for key in sweep_keys(runs, differing_keys(runs)))]
    return [p for p in made if p is not None]
