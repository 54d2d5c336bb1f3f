"""A CSV logger whose history survives a resume: one run directory, one unbroken metrics.csv.

Lightning's ``CSVLogger`` either starts a new ``version_N`` directory on every launch (splitting a
resumed run's history) or, with a fixed version, deletes the existing ``metrics.csv``. This one
keeps the file and, when the run resumes from a checkpoint at step ``s``, drops the rows logged
after ``s`` (those steps are trained again) before appending.
"""

from __future__ import annotations

import csv
import io
import os
from typing import Any

from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter

from datamodules.files import write_atomic


class _KeepingWriter(ExperimentWriter):
    """Appends to an existing metrics.csv instead of deleting it."""

    def _check_log_dir_exists(self) -> None:
        if os.path.isfile(self.metrics_file_path):
            with open(self.metrics_file_path, newline="") as fh:
                self.metrics_keys = sorted(csv.DictReader(fh).fieldnames or [])


class ResumableCSVLogger(CSVLogger):
    """``CSVLogger`` (same arguments, default ``version=0``) that continues its history."""

    def __init__(self, *args: Any, version: int | str | None = 0, **kwargs: Any) -> None:
        super().__init__(*args, version=version, **kwargs)

    @property
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _KeepingWriter(log_dir=self.log_dir)
        return self._experiment

    def resume_at(self, step: int) -> int:
        """Drop rows logged at ``step`` or later (they are trained again); returns rows kept."""
        path = self.experiment.metrics_file_path
        if not os.path.isfile(path):
            return 0
        with open(path, newline="") as fh:
            reader = csv.DictReader(fh)
            fields = reader.fieldnames or []
            rows = [r for r in reader if _step(r) < step]
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
        write_atomic(path, lambda fh: fh.write(out.getvalue().encode()))
        self.experiment.metrics_keys = sorted(fields)
        return len(rows)


def _step(row: dict[str, str]) -> float:
    try:
        return float(row.get("step") or 0)
    except ValueError:
        return 0.0
