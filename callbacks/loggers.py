"""Lightning's TensorBoardLogger, checked at construction and feeding TensorBoard's HParams tab.

``logger=tensorboard`` (or ``logger=all``) builds it from ``conf/logger/tensorboard.yaml``.
TensorBoard is an optional extra: without it the constructor raises a ``UserError`` that says
``pip install -e '.[tb]'`` (Lightning's own logger would fail later, on first use).

Lightning writes the HParams summaries only together with metrics (``hp_metric`` by default,
a fake ``-1`` scalar). This logger writes them on the first ``log_hyperparams`` call (the
platform's, with the whole resolved config), flattened to ``model/optimizer/lr``-style keys of
scalar or string values and related to real metric series (``hp_metrics``: ``val/loss``), with no
scalar of its own. TensorBoard reads the first HParams summary of a run, so later calls (Lightning's
own, with the module's hyper-parameters) only update ``hparams.yaml``.

A run keeps one directory (``version: 0`` in the config, like the CSV logger), so a resume adds an
events file beside the first. Its first metrics at step ``s`` come with a restart marker
(``SessionLog.START``, as ``SummaryWriter(purge_step=s)`` writes): TensorBoard then drops the old
events at steps ``>= s``, which the resumed run trains and logs again, and shows one unbroken series.
"""

from __future__ import annotations

import importlib.util
from argparse import Namespace
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lightning.fabric.utilities.logger import _convert_params, _flatten_dict
from lightning.pytorch.loggers import TensorBoardLogger as _LightningTensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only

from lhp.errors import UserError

INSTALL_HINT = "pip install -e '.[tb]'"


class TensorBoardLogger(_LightningTensorBoardLogger):
    """Lightning's TensorBoardLogger; the HParams tab relates the run's config to ``hp_metrics``."""

    def __init__(
        self,
        save_dir: str | Path,
        name: str | None = "tensorboard",
        version: int | str | None = None,
        log_graph: bool = False,
        default_hp_metric: bool = False,
        prefix: str = "",
        sub_dir: str | Path | None = None,
        hp_metrics: Sequence[str] = ("val/loss",),
        **kwargs: Any,
    ) -> None:
        if importlib.util.find_spec("tensorboard") is None:
            raise UserError("logger=tensorboard needs the tensorboard package, an optional extra "
                            f"of this platform: install it with {INSTALL_HINT}")
        if isinstance(hp_metrics, str) or not all(isinstance(m, str) and m for m in hp_metrics):
            raise UserError(f"logger.tensorboard.hp_metrics must be a list of metric names such as "
                            f"['val/loss'], got {hp_metrics!r}")
        super().__init__(save_dir=save_dir, name=name, version=version, log_graph=log_graph,
                         default_hp_metric=default_hp_metric, prefix=prefix, sub_dir=sub_dir,
                         **kwargs)
        self.hp_metrics = tuple(hp_metrics)
        self._hparams_written = False
        # events already in this run's directory: a resumed (or restarted) run
        self._restart_pending = any(Path(self.log_dir).glob("events.out.tfevents.*"))

    @rank_zero_only
    def log_hyperparams(
        self,
        params: dict[str, Any] | Namespace,
        metrics: dict[str, Any] | None = None,
        step: int | None = None,
    ) -> None:
        """Lightning's ``log_hyperparams``; the first call also writes the HParams summaries."""
        super().log_hyperparams(params, metrics=metrics, step=step)
        if self._hparams_written or metrics is not None or self._default_hp_metric \
                or not self.hp_metrics:
            return  # Lightning wrote them itself, or they are already written
        from torch.utils.tensorboard.summary import hparams

        flat = self._sanitize_params(_flatten_dict(_convert_params(params)))
        writer = self.experiment._get_file_writer()
        for summary in hparams(flat, dict.fromkeys(self.hp_metrics, 0.0)):
            writer.add_summary(summary, step)
        self._hparams_written = True

    @rank_zero_only
    def log_metrics(self, metrics: dict[str, Any], step: int | None = None) -> None:
        """Lightning's ``log_metrics``; a resumed run's first call marks the restart at ``step``."""
        if self._restart_pending and step is not None:
            from tensorboard.compat.proto.event_pb2 import Event, SessionLog

            writer = self.experiment._get_file_writer()
            writer.add_event(Event(step=step, session_log=SessionLog(status=SessionLog.START)))
        self._restart_pending = False
        super().log_metrics(metrics, step)
