"""Training runs read offline from their directories, and grouped by configuration.

A run directory is a training output dir: ``.hydra/config.yaml`` (the composed config Hydra
saves) and ``csv/version_*/metrics.csv`` (Lightning's CSVLogger, every version: resumed runs read
whole, a later version winning a step). Problems with a run's files become notes, never errors;
only "nothing to compare at all" is a ``UserError``.
"""

from __future__ import annotations

import csv
import glob
import io
import math
import os
import re
import statistics
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from lhp.errors import UserError
from lhp.identity import flatten as identity_flatten

Series = tuple[np.ndarray, np.ndarray]  # (steps, values), steps ascending
CONFIG_FILE = Path(".hydra") / "config.yaml"
METRICS_GLOB = "csv/version_*/metrics.csv"
TOKENS_KEY = "train/tokens_seen"
FLOPS_KEY = "train/flops"  # cumulative analytic training FLOPs (tokens seen x FLOPs per token)
SEED_KEY = "seed"
# Where a run lives, how it is executed and what it is called, not what it is: never a column.
IGNORED_PREFIXES = ("paths.", "hydra.", "logger.", "extras.")
IGNORED_KEYS = frozenset({"ckpt_path", "resume", "task_name", "run_name", "group", "job_type",
                          "tags"})
LOCATION_LEAVES = frozenset({"dirpath", "save_dir", "default_root_dir", "output_dir", "log_dir",
                             "data_dir", "mock_path"})
SKIP_DIRS = frozenset({"wandb", "checkpoints", "csv"})  # never hold runs: not searched
# A metric whose last name part ends so is better lower (val/bpc, val/word_ppl, val/recon_wrong);
# others (val/recon_acc) have no "best" in the min sense of Run.best.
LOWER_IS_BETTER = re.compile(r"(loss|ppl|perplexity|bpc|bpb|nll|wrong|error|err)$")


@dataclass
class Run:
    """One run: its flattened config, its metric series and (optionally) stored final values."""

    path: Path
    name: str
    config: dict[str, Any] = field(default_factory=dict)
    series: dict[str, Series] = field(default_factory=dict)
    values: dict[str, float] = field(default_factory=dict)  # e.g. a study's result.json

    def has(self, metric: str) -> bool:
        return metric in self.values or metric in self.series

    def final(self, metric: str) -> float | None:
        """The stored value, else the last logged one."""
        if metric in self.values:
            return self.values[metric]
        series = self.series.get(metric)
        return float(series[1][-1]) if series is not None and series[1].size else None

    def best(self, metric: str) -> float | None:
        """The smallest finite logged value (nan if none is finite)."""
        series = self.series.get(metric)
        if series is None or not series[1].size:
            return None
        finite = series[1][np.isfinite(series[1])]
        return float(finite.min()) if finite.size else math.nan


def lower_is_better(metric: str) -> bool:
    """Whether ``metric`` is a loss-like one (its best is its minimum)."""
    return bool(LOWER_IS_BETTER.search(metric.rsplit("/", 1)[-1]))


@dataclass
class Group:
    """Runs that share the grouping keys (typically the seeds of one configuration)."""

    label: str
    runs: list[Run]


def is_run_dir(path: Path) -> bool:
    return (path / CONFIG_FILE).is_file() or any(path.glob(METRICS_GLOB))


def _natural(path: Path) -> list[Any]:
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", str(path))]


def _runs_below(root: Path) -> list[Path]:
    found = []
    for here, dirnames, _ in os.walk(root):
        if Path(here) != root and is_run_dir(Path(here)):
            found.append(Path(here))
            dirnames.clear()
            continue
        dirnames[:] = [d for d in dirnames if d not in SKIP_DIRS and not d.startswith(".")]
    return sorted(found, key=_natural)


def find_runs(targets: Sequence[str | Path], notes: list[str]) -> list[Path]:
    """Run directories named by ``targets`` (run dirs, globs, or dirs holding runs, e.g. a study).

    What matches nothing or is not a run becomes a note; nothing at all is a ``UserError``.
    """
    found: dict[Path, None] = {}
    for target in map(str, targets):
        magic = glob.has_magic(target)
        matches = sorted(glob.glob(os.path.expanduser(target)), key=_natural) if magic else \
            ([target] if os.path.exists(target) else [])
        if not matches:
            notes.append(f"{target}: " + ("the pattern matched nothing" if magic
                                          else "no such file or directory"))
        for match in map(Path, matches):
            if match.name == "metrics.csv" and match.parent.name.startswith("version_"):
                match = match.parents[2]  # a run's metrics.csv names its run
            if match.is_dir() and is_run_dir(match):
                found[match.resolve()] = None
            elif match.is_dir() and (inner := _runs_below(match)):
                found.update((p.resolve(), None) for p in inner)
            else:
                notes.append(f"{match}: not a run directory (no {CONFIG_FILE} and no "
                             f"{METRICS_GLOB}, nor any run below it); skipped")
    if not found:
        raise UserError("nothing to compare: " + "; ".join(notes) + " (a run directory holds "
                        f"{CONFIG_FILE} or {METRICS_GLOB})")
    return list(found)


def run_names(dirs: Sequence[Path]) -> list[str]:
    """The shortest trailing paths, equally deep, that tell the runs apart (``learned/seed1``)."""
    parts = [d.parts for d in dirs]
    for depth in range(1, max(map(len, parts)) + 1):
        names = ["/".join(p[-depth:]) for p in parts]
        if len(set(names)) == len(names):
            return names
    return [str(d) for d in dirs]


def text(value: Any) -> str:
    """A config value as YAML-like text (``null``, ``[0.9, 0.95]``)."""
    if isinstance(value, list | tuple):
        return "[" + ", ".join(map(text, value)) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {text(v)}" for k, v in value.items()) + "}"
    return "null" if value is None else str(value)


def flatten(tree: dict[str, Any]) -> dict[str, Any]:
    """Dotted keys -> leaf values (``lhp.identity.flatten``); lists become their text."""
    return {k: text(v) if isinstance(v, list | dict) else v for k, v in identity_flatten(tree).items()}


def load_config(run_dir: Path, notes: list[str]) -> dict[str, Any]:
    """The run's flattened ``.hydra/config.yaml`` (``{}`` if it has none or it is unreadable)."""
    file = run_dir / CONFIG_FILE
    if not file.is_file():
        return {}
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    try:
        tree = yaml.load(file.read_text(encoding="utf-8", errors="replace"), Loader=loader)
    except yaml.YAMLError as err:
        notes.append(f"{file}: unreadable YAML ({' '.join(str(err).split())[:120]}); "
                     "its configuration is left out")
        return {}
    if not isinstance(tree, dict):
        notes.append(f"{file}: not a mapping; its configuration is left out")
        return {}
    return flatten(tree)


def _version(path: Path) -> int:
    tail = path.parent.name.rsplit("_", 1)[-1]
    return int(tail) if tail.isdigit() else -1


def _read_csv(file: Path, points: dict[str, dict[int, float]], notes: list[str]) -> None:
    """Add ``file``'s numbers to ``points``; a ragged or non-numeric row is counted and skipped."""
    raw = file.read_bytes().decode("utf-8", errors="replace").replace("\x00", "")
    reader = csv.reader(io.StringIO(raw))
    bad, total, first_bad = 0, 0, 0
    try:
        header = next(reader, None)
        if not header or "step" not in header:
            notes.append(f"{file}: no CSV header with a 'step' column (corrupt, or not a "
                         "Lightning CSVLogger file); skipped")
            return
        step_at = header.index("step")
        skip = {step_at, header.index("epoch") if "epoch" in header else step_at}
        for row in reader:
            if not row:
                continue
            total += 1
            try:
                if len(row) != len(header):
                    raise ValueError("ragged")
                if not row[step_at]:
                    continue
                step = int(float(row[step_at]))
                for i, cell in enumerate(row):
                    if cell and i not in skip:
                        points[header[i]][step] = float(cell)
            except ValueError:
                bad += 1
                first_bad = first_bad or reader.line_num
    except csv.Error as err:
        notes.append(f"{file}: corrupt CSV at line {reader.line_num} ({err}); used the rows "
                     "before it")
        return
    if bad:
        notes.append(f"{file}: corrupt CSV: {bad} of {total} rows unreadable (ragged or not "
                     f"numbers, first at line {first_bad}); used the rest")


def load_series(run_dir: Path, notes: list[str]) -> dict[str, Series]:
    """Metric -> (steps, values) over every CSV version of the run."""
    points: dict[str, dict[int, float]] = defaultdict(dict)
    for file in sorted(run_dir.glob(METRICS_GLOB), key=_version):
        _read_csv(file, points, notes)
    series = {}
    for key, by_step in points.items():
        steps = np.array(sorted(by_step), dtype=np.int64)
        series[key] = (steps, np.array([by_step[s] for s in steps.tolist()], dtype=float))
    return series


def load_run(run_dir: Path, name: str | None = None, notes: list[str] | None = None,
             values: dict[str, float] | None = None) -> Run:
    """A run from its directory; problems with its files go to ``notes``, never raise."""
    notes = [] if notes is None else notes
    return Run(run_dir, name or run_dir.name, load_config(run_dir, notes),
               load_series(run_dir, notes), dict(values or {}))


# --------------------------------------------------------------------------- grouping


def _ignored(key: str) -> bool:
    return (key.startswith(IGNORED_PREFIXES) or key in IGNORED_KEYS
            or key.rsplit(".", 1)[-1] in LOCATION_LEAVES)


def _identity(config: dict[str, Any], key: str) -> str:
    return repr(config[key]) if key in config else "<missing>"


def differing_keys(runs: Sequence[Run]) -> list[str]:
    """Config keys whose value (or presence) differs across runs, in config order."""
    keys = dict.fromkeys(k for run in runs for k in run.config if not _ignored(k))
    return [k for k in keys if len({_identity(run.config, k) for run in runs}) > 1]


def short_names(keys: Sequence[str]) -> dict[str, str]:
    """The shortest dotted suffix of each key that no other key ends with (``lr``)."""
    names = {}
    for key in keys:
        parts = key.split(".")
        for n in range(1, len(parts) + 1):
            suffix = ".".join(parts[-n:])
            if all(k == key or not (k == suffix or k.endswith("." + suffix)) for k in keys):
                break
        names[key] = suffix
    return names


def resolve_keys(names: Sequence[str], runs: Sequence[Run]) -> list[str]:
    """Full dotted keys for ``--group-by`` names (a key, or a unique suffix such as ``lr``)."""
    known = dict.fromkeys(k for run in runs for k in run.config)
    keys = []
    for name in names:
        matches = [name] if name in known else [k for k in known if k.endswith("." + name)]
        if len(matches) != 1:
            differing = ", ".join(differing_keys(runs)) or "(none)"
            what = "is ambiguous: " + ", ".join(matches) if matches else "is in no run's config"
            raise UserError(f"--group-by {name!r} {what}; keys that differ: {differing}")
        keys.append(matches[0])
    return keys


def _common_name(runs: Sequence[Run], depth: int | None) -> str:
    """The directory the runs share (``learned`` for ``learned/seed1``, ``learned/seed2``),
    at most ``depth`` levels deep."""
    common = []
    for level in zip(*(Path(r.name).parts for r in runs), strict=False):
        if len(set(level)) > 1:
            break
        common.append(level[0])
    return "/".join(common[:depth])


def group_runs(runs: Sequence[Run], by: str | Sequence[str] = "auto") -> list[Group]:
    """Groups by config keys: ``auto`` (every differing key but the seed), ``run`` (one group
    per run) or a list of keys. Labelled by the group's common directory, else ``key=value``."""
    if by == "run":
        return [Group(run.name, [run]) for run in runs]
    keys = ([k for k in differing_keys(runs) if k != SEED_KEY] if by == "auto"
            else resolve_keys([by] if isinstance(by, str) else by, runs))
    buckets: dict[tuple[str, ...], list[Run]] = {}
    for run in runs:
        buckets.setdefault(tuple(_identity(run.config, k) for k in keys), []).append(run)
    depths = {len(Path(r.name).parts) for r in runs}
    seeds_below = len(depths) == 1 and min(depths) > 1 and any(len(rs) > 1 for rs in
                                                                  buckets.values())
    labels = [_common_name(rs, min(depths) - 1 if seeds_below else None)
              for rs in buckets.values()]
    if not all(labels) or len(set(labels)) < len(labels):
        short = short_names(keys)
        labels = [", ".join(f"{short[k]}={text(rs[0].config.get(k, '-'))}" for k in keys)
                  or "all runs" for rs in buckets.values()]
    return [Group(label, rs) for label, rs in zip(labels, buckets.values(), strict=True)]


def mean_std(values: Iterable[float | None]) -> tuple[float | None, float | None]:
    """Mean and sample std (ddof=1; None for one value) of the values that are not None."""
    present = [float(v) for v in values if v is not None]
    if not present:
        return None, None
    return statistics.fmean(present), statistics.stdev(present) if len(present) > 1 else None
