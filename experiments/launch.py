"""Hydra launchers (``conf/hydra/launcher/``): checks before submitting, thread limits per job,
Slurm preemption's one owner, and dispatching a list of runs (``lhp study --jobs/--launcher``).

- ``LauncherCallback`` (a Hydra callback, ``conf/hydra/default.yaml``): before a multirun on
  ``hydra/launcher=slurm`` it checks that ``sbatch`` exists, the controller answers, the partition
  exists and the time limit reaches the first checkpoint, each failure one line naming the launcher
  key; in every ``submitit_local`` job it sets the thread count to ``hydra.launcher.cpus_per_task``.
- ``cluster_plugins()``: inside Slurm, Lightning's ``SLURMEnvironment`` with ``auto_requeue`` off:
  USR1 belongs to submitit's handler (launcher jobs) or the batch script (``scripts/sbatch_ddp.sh``),
  which requeue without saving; the requeued job resumes from ``checkpoints/last.ckpt``.
- ``launch(...)``: run job override lists through a Hydra launcher in-process, ``jobs`` at a time.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from lhp.errors import EXIT_USER_ERROR, UserError, one_line

LAUNCHERS = ("slurm", "submitit_local")
REQUEUE_ENV = "SLURM_RESTART_COUNT"


def launcher_kind(config: DictConfig) -> str | None:
    """'slurm', 'submitit_local' or None (Hydra's basic launcher) from ``hydra.launcher._target_``."""
    target = str(OmegaConf.select(config, "hydra.launcher._target_", default="") or "")
    if target.endswith("submitit_launcher.SlurmLauncher"):
        return "slurm"
    if target.endswith("submitit_launcher.LocalLauncher"):
        return "submitit_local"
    return None


def _slurm(cmd: list[str], what: str) -> str:
    """stdout of a Slurm client command; a missing controller becomes one clear error."""
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=False)
    except subprocess.TimeoutExpired:
        done = None
    if done is None or done.returncode != 0:
        lines = (done.stderr or done.stdout).strip().splitlines() if done else []
        detail = (lines[0].strip() if lines else f"exit {done.returncode}") if done \
            else "no answer in 30 s"
        raise UserError(f"hydra/launcher=slurm: the Slurm controller does not answer ({what}: "
                        f"{detail}); check `scontrol ping` or ask the cluster's admins "
                        "(the local test cluster: scripts/local_slurm.sh start)")
    return done.stdout


def check_slurm(launcher: Mapping[str, Any], checkpoint_minutes: float | None) -> None:
    """Refuse a Slurm launch that cannot work, before anything is submitted."""
    timeout_s = float(launcher.get("timeout_min") or 0) * 60
    delay = float(launcher.get("signal_delay_s") or 0)
    window = timeout_s - delay
    if window <= 0:
        raise UserError(f"hydra.launcher.timeout_min={launcher.get('timeout_min')}: the job would be "
                        f"signalled (hydra.launcher.signal_delay_s={delay:g} s before the limit) "
                        "before it starts; raise timeout_min")
    if checkpoint_minutes is not None and window <= 60 * checkpoint_minutes:
        need = int((60 * checkpoint_minutes + delay) // 60) + 1
        raise UserError(f"hydra.launcher.timeout_min={launcher.get('timeout_min')}: the job is "
                        f"signalled after {window:g} s, before its first checkpoint "
                        f"(callbacks.last_checkpoint.every_n_minutes={checkpoint_minutes:g}), so a "
                        f"requeued job would never progress; use timeout_min>={need} or a smaller "
                        "every_n_minutes")
    if shutil.which("sbatch") is None:
        raise UserError("hydra/launcher=slurm: `sbatch` not found on PATH: run on a Slurm login "
                        "node (or start the local test cluster: scripts/local_slurm.sh start), or "
                        "use hydra/launcher=submitit_local to run on this machine")
    _slurm(["scontrol", "ping"], "scontrol ping")
    listed = _slurm(["sinfo", "-h", "-o", "%P"], "sinfo").split()
    partitions = [p.rstrip("*") for p in listed]
    partition = launcher.get("partition")
    if partition is not None and str(partition) not in partitions:
        raise UserError(f"hydra.launcher.partition={partition}: no such partition on this cluster; "
                        f"available: {', '.join(listed) or '(none)'} (* = default; null uses it)")


def checkpoint_minutes(config: DictConfig) -> float | None:
    """The time trigger of the run's ``last.ckpt`` (None: no time trigger or no such callback)."""
    value = OmegaConf.select(config, "callbacks.last_checkpoint.every_n_minutes", default=None)
    return None if value is None else float(value)


def limit_threads(n: int | None) -> None:
    """``n`` threads for this job's numerics (torch, OpenMP, MKL), so parallel jobs share cores."""
    if not n:
        return
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[name] = str(n)
    import torch

    torch.set_num_threads(int(n))


class LauncherCallback(Callback):
    """Hydra callback: Slurm checks before a multirun; threads per job in ``submitit_local``."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        if launcher_kind(config) != "slurm":
            return
        try:
            check_slurm(config.hydra.launcher, checkpoint_minutes(config))
        except UserError as err:  # Hydra turns a callback's exception into a warning: stop here
            print(one_line(err), file=sys.stderr, flush=True)
            raise SystemExit(EXIT_USER_ERROR) from None

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        kind = launcher_kind(config)
        if kind == "submitit_local":
            limit_threads(OmegaConf.select(config, "hydra.launcher.cpus_per_task", default=None))
        elif kind == "slurm":  # the CPUs Slurm gave each task (without task/affinity it binds none)
            limit_threads(int(os.environ.get("SLURM_CPUS_PER_TASK") or 0))
            _note_preemption()


_PREEMPTED = threading.Event()


def _note_preemption() -> None:
    """Remember that submitit's USR1 handler ran (it still does all the work): the job was requeued,
    so this attempt must end without a result, whatever the training code made of its exit."""
    handler = signal.getsignal(signal.SIGUSR1)
    if not callable(handler) or getattr(handler, "_lhp_noted", False):
        return

    def noted(signum: int, frame: Any) -> None:
        _PREEMPTED.set()
        handler(signum, frame)

    noted._lhp_noted = True  # type: ignore[attr-defined]
    signal.signal(signal.SIGUSR1, noted)


def stop_if_preempted() -> None:
    """End a requeued job's attempt with ``SystemExit`` (no result for the launcher: the requeued
    job delivers it), even when the interruption surfaced as another exception or none."""
    if _PREEMPTED.is_set():
        raise SystemExit(-1)


def cluster_plugins() -> list[Any]:
    """Inside a Slurm job: ``SLURMEnvironment(auto_requeue=False)``, else nothing.

    Lightning's own USR1 handler would save an extra checkpoint in the middle of a step (a
    collective in DDP) and requeue too; submitit's handler (or the batch script's trap) is the one
    owner of USR1, and the requeued job resumes from ``last.ckpt``.
    """
    from lightning.fabric.plugins.environments import SLURMEnvironment

    return [SLURMEnvironment(auto_requeue=False)] if SLURMEnvironment.detect() else []


def requeued() -> bool:
    """True in a Slurm job that was requeued (preempted or timed out): it continues its run."""
    return int(os.environ.get(REQUEUE_ENV) or 0) > 0


def launch(config_dir: str, config_name: str, launcher: str, base: Sequence[str],
           jobs: Sequence[Sequence[str]], task: Callable[[DictConfig], Any],
           parallel: int) -> list[Any]:
    """Run ``task`` once per override list of ``jobs`` through ``hydra/launcher=<launcher>``.

    ``base``: overrides of the master config (``hydra.sweep.dir=...``, ``hydra.launcher.*``).
    Returns one ``hydra.core.utils.JobReturn`` per job, or the exception that ended a job whose
    process died (submitit's ``UncompletedJobError``). ``submitit_local`` starts every job of one
    ``launch`` at once, so the jobs go in waves of ``parallel``; Slurm gets them all, with
    ``array_parallelism=parallel``.
    """
    from hydra import compose, initialize_config_dir
    from hydra._internal.callbacks import Callbacks
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from hydra.core.plugins import Plugins
    from hydra.types import HydraContext

    if launcher not in LAUNCHERS:
        raise UserError(f"launcher {launcher!r}: expected one of {', '.join(LAUNCHERS)}")
    extra = [f"hydra.launcher.array_parallelism={parallel}"] if launcher == "slurm" else []
    with initialize_config_dir(version_base="1.3", config_dir=config_dir), \
            warnings.catch_warnings():
        # conf/hydra/launcher/submitit_local.yaml shares the plugin's name: Hydra then validates
        # it against the plugin's schema (what we want) and warns that this is deprecated
        warnings.filterwarnings("ignore", message=r"(?s).*validated against ConfigStore schema")
        cfg = compose(config_name, overrides=[f"hydra/launcher={launcher}", *extra, *base],
                      return_hydra_config=True)
        HydraConfig.instance().set_config(cfg)
        if launcher == "slurm":
            check_slurm(cfg.hydra.launcher, checkpoint_minutes(cfg))
        context = HydraContext(config_loader=GlobalHydra.instance().config_loader(),
                               callbacks=Callbacks(cfg))
        hydra_launcher = Plugins.instance().instantiate_launcher(
            hydra_context=context, task_function=task, config=cfg)
        waves = [list(jobs)] if launcher == "slurm" else \
            [list(jobs[i:i + parallel]) for i in range(0, len(jobs), parallel)]
        results: list[Any] = []
        for wave in waves:
            try:
                results += list(hydra_launcher.launch(wave, initial_job_idx=len(results)))
            except Exception as err:  # a job's process died: every run of the wave is reported
                results += [err] * len(wave)
        return results
