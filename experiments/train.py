"""Train any experiment: ``python -m experiments.train experiment=smoke [overrides]``.

``train(cfg)`` seeds, builds datamodule/model/callbacks/loggers/trainer from config, fits,
optionally tests, and returns ``(metrics, objects)``; ``main`` returns ``optimized_metric``.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import hydra
import lightning as L
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from callbacks.csv_logger import ResumableCSVLogger
from callbacks.last_checkpoint import last_checkpoint_path
from callbacks.run_metadata import RunMetadata
from experiments import CONFIG_DIR
from experiments.launch import cluster_plugins, requeued, stop_if_preempted
from experiments.utils import (
    apply_extras,
    check_devices,
    check_target,
    git_commit,
    instantiate,
    instantiate_group,
    log_hyperparameters,
    metric_value,
    set_in,
    task_wrapper,
    wandb_loggers,
    write_summary,
)
from lhp.config_check import check_config
from lhp.errors import UserError, entry_point
from lit_models.checkpoints import (
    check_recipe_fits_data,
    check_state_dict_fits,
    is_sharded_checkpoint,
    load_checkpoint,
    select_resume_checkpoint,
)

log = logging.getLogger("experiments.train")


def resolve_ckpt_path(cfg: DictConfig) -> tuple[str | None, dict[str, Any]]:
    """The checkpoint to resume from and its loaded dict.

    ``ckpt_path`` if given. ``resume=auto``: the newest good checkpoint of this run identity
    (``select_resume_checkpoint`` over this experiment's runs, the run's own directory first); a
    checkpoint in the run's own directory whose stored config differs outside the execution-only
    keys is refused, listing each key with both values (``resume=force`` takes it anyway).
    ``resume=null``: start fresh, but never over a run already in the output directory.
    """
    own_dir = Path(cfg.paths.output_dir)
    if cfg.get("ckpt_path"):
        return str(cfg.ckpt_path), load_checkpoint(cfg.ckpt_path, sharded=True)
    resume = cfg.get("resume")
    if resume in (None, False, "never") and requeued():
        resume = "auto"  # a requeued Slurm job continues its own run
    if resume in (None, False, "never"):
        existing = sorted(own_dir.glob("checkpoints/*.ckpt"))
        if existing:
            raise UserError(f"{own_dir} already holds this run ({existing[0].name}, ...): continue "
                            "it with resume=auto, train longer with resume=auto "
                            "trainer.max_steps=<more>, or use another seed/run_name to start a new one")
        return None, {}
    if resume not in ("auto", "force"):
        raise UserError(f"config key resume: must be null, 'auto' or 'force', got {resume!r} "
                        "(use ckpt_path=<file> for a given checkpoint)")
    run_root = Path(cfg.paths.log_dir) / cfg.task_name / cfg.run_name
    requested = OmegaConf.to_container(cfg, resolve=True)
    found, ckpt, diffs = select_resume_checkpoint(run_root, requested, own_dir)
    if diffs:
        listed = "; ".join(f"{k}: checkpoint {old!r} vs now {new!r}" for k, old, new in diffs)
        if resume != "force":
            raise UserError(f"resume=auto: {found} was trained with a different config ({listed}); "
                            "resume=force continues it anyway, or change run_name/seed for a new run")
        log.warning(f"resume=force: continuing {found} despite config differences: {listed}")
    if found:
        log.info(f"resume={resume}: continuing from {found} (step {ckpt.get('global_step')})")
    else:
        log.info(f"resume={resume}: no checkpoint of this run identity under {run_root}; starting fresh")
    return (str(found) if found else None), ckpt


def check_before_work(cfg: DictConfig) -> None:
    """Config values, constructible targets and a recipe that fits the data, before any work."""
    check_config(OmegaConf.to_container(cfg, resolve=True))
    check_devices(cfg.trainer)
    for key in ("data", "model"):
        check_target(cfg[key].get("_target_"), key)
    check_recipe_fits_data(hydra.utils.get_class(cfg.model._target_),
                           hydra.utils.get_class(cfg.data._target_),
                           f"model={cfg.model._target_} with data={cfg.data._target_}")


def _log_checkpoint_artifact(trainer: L.Trainer, path: str) -> None:
    """Attach the final checkpoint to the W&B run as a model artifact (synced with the run).

    Lightning's ``WandbLogger(log_model=...)`` refuses offline mode, which is our default, so
    the artifact is logged on the logger's run object directly.
    """
    import wandb

    for lg in wandb_loggers(trainer.loggers):
        artifact = wandb.Artifact(name=f"model-{lg.version}", type="model")
        artifact.add_file(path, name=Path(path).name)
        lg.experiment.log_artifact(artifact, aliases=["latest", "final"])
        log.info(f"Logged checkpoint {path} as W&B artifact model-{lg.version}")


@task_wrapper
def train(cfg: DictConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    if cfg.get("seed") is not None:
        L.seed_everything(cfg.seed, workers=True)

    check_before_work(cfg)
    ckpt_path, ckpt = resolve_ckpt_path(cfg)
    meta = ckpt.get("platform") or {}

    log.info(f"Instantiating datamodule <{cfg.data._target_}>")
    datamodule: L.LightningDataModule = instantiate(cfg.data, "data", _convert_="all")
    if cfg.model.arch_config.get("vocab_size") is None:
        set_in(cfg, "model.arch_config.vocab_size", datamodule.vocab_size)
    if meta.get("wandb_run_id") and "wandb" in (cfg.get("logger") or {}):
        set_in(cfg, "logger.wandb.id", meta["wandb_run_id"])  # continue the same W&B run
        set_in(cfg, "logger.wandb.resume", "allow")
    apply_extras(cfg)

    log.info(f"Instantiating model <{cfg.model._target_}> ({cfg.model.arch})")
    model: L.LightningModule = instantiate(cfg.model, "model", _convert_="all")
    if ckpt_path and is_sharded_checkpoint(ckpt_path):
        if "FSDP2Strategy" not in str(OmegaConf.select(cfg, "trainer.strategy._target_")):
            raise UserError(f"ckpt_path: {ckpt_path} is a sharded checkpoint directory; resume it "
                            "with trainer=fsdp (any number of processes)")
    elif ckpt_path:
        check_state_dict_fits(model, ckpt.get("state_dict") or {}, f"checkpoint {ckpt_path}")
    start_step = int(ckpt.get("global_step", 0)) if ckpt_path else 0
    del ckpt
    callbacks = instantiate_group(cfg.get("callbacks"), "callback")
    callbacks.append(RunMetadata(OmegaConf.to_container(cfg, resolve=True), git_commit()))
    loggers = instantiate_group(cfg.get("logger"), "logger")
    log.info(f"Instantiating trainer <{cfg.trainer._target_}>")
    # inside Slurm: Lightning's auto-requeue off (submitit or the batch script owns USR1)
    cluster = cluster_plugins()
    plugins = {"plugins": [*instantiate_group(OmegaConf.create({str(i): p for i, p in enumerate(
        cfg.trainer.get("plugins") or [])}), "trainer plugin"), *cluster]} if cluster else {}
    trainer: L.Trainer = instantiate(cfg.trainer, "trainer", callbacks=callbacks, logger=loggers,
                                     **plugins)
    log_hyperparameters(cfg, model, loggers, datamodule)
    for lg in loggers:
        if isinstance(lg, ResumableCSVLogger):  # one unbroken history: drop rows to be redone
            lg.resume_at(start_step)
    objects = {"cfg": cfg, "datamodule": datamodule, "model": model, "callbacks": callbacks,
               "loggers": loggers, "trainer": trainer}

    if cfg.get("train", True):
        log.info(f"Starting training{' from ' + ckpt_path if ckpt_path else ''}")
        trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}

    ckpt_cb = trainer.checkpoint_callback
    best = ckpt_cb.best_model_path if ckpt_cb else ""
    final = last_checkpoint_path(trainer) or best  # read before test() reloads
    if cfg.get("test"):
        log.info(f"Starting testing ({'best checkpoint ' + best if best else 'current weights'})")
        trainer.test(model, datamodule=datamodule, ckpt_path=best or None, weights_only=True)
        metrics.update({k: float(v) for k, v in trainer.callback_metrics.items()})
    write_summary(loggers, metrics, float(ckpt_cb.best_model_score)
                  if ckpt_cb is not None and ckpt_cb.best_model_score is not None else None)
    if trainer.is_global_zero:  # other ranks of a multi-process run share these results
        if cfg.get("log_checkpoint_artifact") and final:
            _log_checkpoint_artifact(trainer, final)
        _print_summary(metrics, best, trainer)
    _end_process_group()
    return metrics, objects


def _end_process_group() -> None:
    """Every rank of a multi-process run ends here: release the process group together.

    Left to interpreter exit, gloo's worker threads are destroyed while joinable and a rank can
    abort ("terminate called without an active exception"), which makes Lightning's launcher
    kill the run after it finished.
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def _print_summary(metrics: dict[str, float], best: str, trainer: L.Trainer) -> None:
    if 0 < trainer.global_step < trainer.max_steps:
        log.warning(f"training stopped at step {trainer.global_step} of trainer.max_steps="
                    f"{trainer.max_steps} (a time limit, token budget or early stop ended it)")
    lines = [f"{k} = {metrics[k]:.4f}" for k in sorted(metrics) if k.split("/")[0] in ("val", "test", "baseline")]
    if "val/loss" in metrics and "baseline/bigram_val_loss" in metrics:
        gap = metrics["baseline/bigram_val_loss"] - metrics["val/loss"]
        verdict = "beats" if gap > 0 else "does NOT beat"
        lines.append(f"model {verdict} the bigram baseline on validation by {gap:+.4f} nats/token")
    if best:
        lines.append(f"best checkpoint: {best}")
    log.info("Final metrics:\n  " + "\n  ".join(lines))


@entry_point
@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="train")
def main(cfg: DictConfig) -> float | None:
    sweeping = HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN
    try:
        metrics, _ = train(cfg)
    except Exception:
        stop_if_preempted()  # a requeued Slurm job: its next attempt gives the result
        # In a sweep, one failed trial (e.g. out of memory) scores worst instead of killing it.
        if sweeping:
            log.error("Trial failed; returning a worst-case score")
            return math.inf
        raise
    stop_if_preempted()
    value = metric_value(metrics, cfg.get("optimized_metric"))
    return math.inf if value is None and sweeping else value


if __name__ == "__main__":
    main()
