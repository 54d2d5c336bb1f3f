"""Compare training runs offline, from their run directories alone (``lhp compare``).

Runs (``analysis.runs``) are grouped by configuration keys (``auto``: every key that differs
except the seed), tabulated as mean ± sample std over seeds (Markdown, CSV, self-contained HTML)
and plotted (``analysis.plots``). Bad input never stops the report: each problem becomes one
note, and only "nothing to compare at all" is an error. The study runner's summary is built from
the same table and plots.
"""

from __future__ import annotations

import base64
import csv
import html
import math
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from analysis.plots import X_SERIES, Panel, runs_without_x, write_plots
from analysis.runs import (
    METRICS_GLOB,
    SEED_KEY,
    Group,
    Run,
    differing_keys,
    find_runs,
    group_runs,
    load_run,
    mean_std,
    run_names,
    text,
)

# --------------------------------------------------------------------------- tables


@dataclass(frozen=True)
class Column:
    """A table column: its header, its CSV name and how a run's value is read."""

    header: str
    key: str
    value: Callable[[Run], float | None]
    spec: str | None = None  # format; None: 4 decimals, 2 from 100 on


def metric_columns(metrics: Sequence[str]) -> list[Column]:
    """Best (min) and final of each metric."""
    return [column for m in metrics for column in (
        Column(f"{m} best", f"{m}_best", lambda run, m=m: run.best(m)),
        Column(f"{m} final", f"{m}_final", lambda run, m=m: run.final(m)))]


def format_stat(mean: float | None, std: float | None, spec: str | None = None,
                spread: bool = True) -> str:
    """``mean ± std`` (``—`` for a missing value or std); just the value without ``spread``."""
    if mean is None:
        return "—"
    if spec is None:
        spec = ".2f" if math.isfinite(mean) and abs(mean) >= 100 else ".4f"
    text = format(mean, spec)
    return f"{text} ± {'—' if std is None else format(std, spec)}" if spread else text


@dataclass
class Row:
    label: str
    runs: list[Run]
    config: dict[str, str]
    stats: dict[str, tuple[float | None, float | None]]  # column key -> (mean, std)


def _config_cell(runs: Sequence[Run], key: str) -> str:
    values = dict.fromkeys(text(r.config[key]) if key in r.config else "—" for r in runs)
    return " / ".join(values) if values else "—"


@dataclass
class Table:
    """Rows of runs or groups: config keys that differ, then statistics of the columns."""

    rows: list[Row]
    columns: list[Column]
    config_keys: list[str]
    grouped: bool
    label_header: str = "run"
    count_header: str = "n"

    def header(self) -> list[str]:
        return [self.label_header, *([self.count_header] if self.grouped else []),
                *self.config_keys, *(c.header for c in self.columns)]

    def cells(self, row: Row) -> list[str]:
        return [row.label, *([str(len(row.runs))] if self.grouped else []),
                *(row.config[k] for k in self.config_keys),
                *(format_stat(*row.stats[c.key], c.spec, self.grouped) for c in self.columns)]

    def markdown(self) -> str:
        def line(cells: Iterable[str]) -> str:
            return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

        align = ["---", *(["---:"] if self.grouped else []), *(["---"] * len(self.config_keys)),
                 *(["---:"] * len(self.columns))]
        return "\n".join([line(self.header()), "|" + "|".join(align) + "|",
                          *(line(self.cells(row)) for row in self.rows)])

    def records(self) -> tuple[list[str], list[dict[str, Any]]]:
        """CSV fields and rows: numbers unformatted, ``<key>_mean``/``_std`` when grouped."""
        stat_fields = [f"{c.key}_{s}" for c in self.columns for s in ("mean", "std")] \
            if self.grouped else [c.key for c in self.columns]
        fields = [self.label_header, *([self.count_header, "seeds"] if self.grouped else []),
                  *self.config_keys, *stat_fields, *([] if self.grouped else ["path"])]
        records = []
        for row in self.rows:
            record: dict[str, Any] = {self.label_header: row.label, **row.config}
            for c in self.columns:
                mean, std = row.stats[c.key]
                if self.grouped:
                    record.update({f"{c.key}_mean": mean, f"{c.key}_std": std})
                else:
                    record[c.key] = mean
            if self.grouped:
                record[self.count_header] = len(row.runs)
                record["seeds"] = " ".join(text(r.config.get(SEED_KEY, "?")) for r in row.runs)
            else:
                record["path"] = str(row.runs[0].path)
            records.append(record)
        return fields, records

    def write_csv(self, path: Path) -> Path:
        fields, records = self.records()
        with open(path, "w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=fields)
            writer.writeheader()
            writer.writerows({k: "" if v is None else v for k, v in r.items()} for r in records)
        return path

    def html(self) -> str:
        head = "".join(f"<th>{html.escape(h)}</th>" for h in self.header())
        body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in self.cells(row))
                       + "</tr>" for row in self.rows)
        return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def table_groups(table: Table) -> list[Group]:
    """The table's rows as groups, in its order (for the plots)."""
    return [Group(row.label, row.runs) for row in table.rows]


def build_table(groups: Sequence[Group], columns: Sequence[Column], config_keys: Sequence[str],
                *, grouped: bool, sort: bool = True, label_header: str = "run",
                count_header: str = "n") -> Table:
    """One row per group; sorted by the first column's mean (blank last) when ``sort``."""
    rows = [Row(g.label, g.runs, {k: _config_cell(g.runs, k) for k in config_keys},
                {c.key: mean_std(c.value(r) for r in g.runs) for c in columns}) for g in groups]
    if sort and columns:
        first = columns[0].key

        def order(row: Row) -> tuple[bool, float]:
            mean = row.stats[first][0]
            return mean is None or math.isnan(mean), mean if mean is not None else 0.0

        rows.sort(key=order)
    return Table(rows, list(columns), list(config_keys), grouped, label_header, count_header)



# --------------------------------------------------------------------------- comparison


@dataclass
class Comparison:
    """Loaded runs, their groups and table, and the notes about bad or partial input."""

    runs: list[Run]
    groups: list[Group]
    table: Table
    metrics: list[str]
    notes: list[str]


def metric_notes(runs: Sequence[Run], metrics: Sequence[str]) -> list[str]:
    """A note per metric that some (or all) runs with metrics do not log."""
    logged = [r for r in runs if r.series or r.values]
    notes = []
    for metric in metrics:
        missing = [r.name for r in logged if not r.has(metric)]
        if logged and len(missing) == len(logged):
            known = sorted({k for r in logged for k in r.series if k.startswith(("val/", "test/"))})
            notes.append(f"metric {metric!r} is logged by none of the runs; its columns are blank "
                         f"(logged: {', '.join(known[:12]) or 'no val/test metric'})")
        elif missing:
            shown = ", ".join(missing[:5]) + (", …" if len(missing) > 5 else "")
            notes.append(f"metric {metric!r} is not logged by {len(missing)} of {len(logged)} "
                         f"runs ({shown}); blank for them")
    return notes


def compare(targets: Sequence[str | Path], metrics: Sequence[str] = ("val/loss",),
            group_by: str | Sequence[str] = "auto") -> Comparison:
    """Find, load, group and tabulate runs; sorted by the first metric's best."""
    notes: list[str] = []
    dirs = find_runs(targets, notes)
    runs = [load_run(d, name, notes) for d, name in zip(dirs, run_names(dirs), strict=True)]
    for run in runs:
        if not run.series:
            where = "no rows in its metrics.csv" if any(run.path.glob(METRICS_GLOB)) else \
                f"no {METRICS_GLOB}"
            why = "it failed, see failed.txt" if (run.path / "failed.txt").is_file() else \
                "still running, or trained without logger=csv"
            notes.append(f"{run.path}: no metrics logged yet ({where}: {why}); its cells are "
                         "blank")
    notes += metric_notes(runs, metrics)
    groups = group_runs(runs, group_by)
    grouped = any(len(g.runs) > 1 for g in groups)
    keys = [k for k in differing_keys(runs) if not (grouped and k == SEED_KEY)]
    table = build_table(groups, metric_columns(metrics), keys, grouped=grouped,
                        label_header="group" if grouped else "run")
    return Comparison(runs, groups, table, list(metrics), notes)


def markdown_report(comparison: Comparison) -> str:
    """The table, then the notes."""
    notes = ["", "Notes:", *(f"- {n}" for n in comparison.notes)] if comparison.notes else []
    return "\n".join([comparison.table.markdown(), *notes])


def html_report(comparison: Comparison, images: Sequence[Path], title: str) -> str:
    """One self-contained page: the table, the notes, the images inlined."""
    notes = "".join(f"<li>{html.escape(n)}</li>" for n in comparison.notes)
    pictures = "".join(
        f'<figure><img alt="{p.stem}" src="data:image/png;base64,'
        f'{base64.b64encode(p.read_bytes()).decode()}"><figcaption>{p.name}</figcaption></figure>'
        for p in images)
    style = ("body{font:14px sans-serif;margin:2em}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}"
             "td:first-child,th:first-child{text-align:left}img{max-width:100%}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}"
            f"</title><style>{style}</style></head><body><h1>{html.escape(title)}</h1>"
            f"{comparison.table.html()}{f'<h2>Notes</h2><ul>{notes}</ul>' if notes else ''}"
            f"{pictures}</body></html>\n")


def write_report(comparison: Comparison, out_dir: Path, panels: Sequence[Panel], *,
                 x: str = "step", band: str = "minmax", window: int = 0,
                 title: str | None = None) -> list[Path]:
    """compare.md, compare.csv, the plots and compare.html (the plots inlined) in ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    without = [r.name for r in runs_without_x(comparison.runs, x)]
    if without:
        shown = ", ".join(without[:5]) + (", …" if len(without) > 5 else "")
        comparison.notes.append(f"--x {x}: {len(without)} runs have no {X_SERIES[x][0]} "
                                f"({shown}); left out of the curves")
    images = write_plots(table_groups(comparison.table), out_dir, comparison.metrics[0], panels, x=x,
                         band=band, window=window, title=title)
    (out_dir / "compare.md").write_text(markdown_report(comparison) + "\n", encoding="utf-8")
    page = out_dir / "compare.html"
    page.write_text(html_report(comparison, images, f"Comparison of {len(comparison.runs)} runs"),
                    encoding="utf-8")
    return [out_dir / "compare.md", comparison.table.write_csv(out_dir / "compare.csv"),
            page, *images]


def log_to_wandb(comparison: Comparison, images: Sequence[Path], out_dir: Path,
                 project: str = "lhplatform", name: str | None = None) -> Path:
    """Log the table and images to a W&B run (an analysis run, not a training one: wandb is used
    directly). Offline unless WANDB_MODE says otherwise; returns the run's directory."""
    import wandb

    fields, records = comparison.table.records()
    run = wandb.init(project=project, name=name, job_type="compare", dir=str(out_dir),
                     mode=os.environ.get("WANDB_MODE") or "offline",
                     config={"runs": [str(r.path) for r in comparison.runs],
                             "metrics": comparison.metrics})
    try:
        run.log({"compare/table": wandb.Table(columns=fields,
                                              data=[[r.get(f) for f in fields] for r in records]),
                 **{f"compare/{p.stem}": wandb.Image(str(p)) for p in images}})
        run.summary["notes"] = "\n".join(comparison.notes)
    finally:
        run.finish()
    return Path(run.dir).parent
