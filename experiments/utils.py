"""Glue shared by the entry points: instantiation, config printing, run info, checkpoint meta."""

from __future__ import annotations

import contextlib
import functools
import importlib.metadata
import logging
import math
import subprocess
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import hydra
import torch
from lightning.pytorch.loggers import Logger, WandbLogger
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf, open_dict

from experiments import REPO_ROOT

log = logging.getLogger("experiments")
PACKAGES = ("torch", "lightning", "torchmetrics", "hydra-core", "omegaconf", "wandb", "numpy")


def instantiate_group(cfg: DictConfig | None, kind: str) -> list[Any]:
    """Instantiate every ``_target_`` entry of a config group (callbacks or loggers)."""
    objects: list[Any] = []
    for name, conf in (cfg or {}).items():
        if isinstance(conf, DictConfig) and "_target_" in conf:
            log.info(f"Instantiating {kind} <{conf._target_}> ({name})")
            objects.append(hydra.utils.instantiate(conf, _convert_="all"))
    return objects


def apply_extras(cfg: DictConfig) -> None:
    """Optional start-up utilities controlled by ``extras``."""
    extras = cfg.get("extras") or {}
    if extras.get("ignore_warnings"):
        warnings.filterwarnings("ignore")
    if extras.get("print_config"):
        print_config_tree(cfg, save_to=cfg.paths.get("output_dir"))


@rank_zero_only
def print_config_tree(cfg: DictConfig, save_to: str | None = None) -> None:
    """Print the resolved config as a rich tree (and save it next to the run)."""
    import rich
    import rich.syntax
    import rich.tree

    tree = rich.tree.Tree("CONFIG", style="dim", guide_style="dim")
    order = ["data", "model", "callbacks", "logger", "trainer", "paths", "extras"]
    keys = [k for k in order if k in cfg] + [k for k in cfg if k not in order]
    for key in keys:
        value = cfg[key]
        text = OmegaConf.to_yaml(value, resolve=True) if isinstance(value, DictConfig) else str(value)
        tree.add(key, style="dim", guide_style="dim").add(rich.syntax.Syntax(text, "yaml"))
    rich.print(tree)
    if save_to:
        Path(save_to).mkdir(parents=True, exist_ok=True)
        with open(Path(save_to) / "config_tree.log", "w") as fh:
            rich.print(tree, file=fh)


def git_commit() -> str | None:
    """Commit of the project checkout (suffixed ``-dirty`` with uncommitted changes)."""
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True,
                             text=True, timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=REPO_ROOT, capture_output=True, text=True, timeout=5).stdout
        return sha + ("-dirty" if dirty.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def package_versions() -> dict[str, str]:
    versions = {"python": sys.version.split()[0]}
    for name in PACKAGES:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            versions[name] = importlib.metadata.version(name)
    return versions


def log_hyperparameters(cfg: DictConfig, model: torch.nn.Module, loggers: list[Logger]) -> None:
    """Log the resolved config as a nested dict, plus parameter counts, git commit, versions."""
    hparams = OmegaConf.to_container(cfg, resolve=True)
    hparams["model/params/total"] = sum(p.numel() for p in model.parameters())
    hparams["model/params/trainable"] = sum(p.numel() for p in model.parameters() if p.requires_grad)
    hparams["git_commit"] = git_commit()
    hparams["packages"] = package_versions()
    for lg in loggers:
        lg.log_hyperparams(hparams)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a platform checkpoint safely (``weights_only=True``) with a clear error."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    from lit_models.compression.store import is_weight_store

    if is_weight_store(path):  # written by the SQLite CheckpointIO plugin (plugins/sqlite_checkpoint)
        from lit_models.compression.checkpoint_io import read_checkpoint

        return read_checkpoint(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # unpickling errors have many types
        raise ValueError(f"cannot load checkpoint {path}: {err}") from err


def find_last_checkpoint(run_root: str | Path) -> Path | None:
    """Newest ``last.ckpt`` under ``<run_root>/*/checkpoints/`` (for ``resume=auto``)."""
    candidates = list(Path(run_root).glob("*/checkpoints/last.ckpt"))
    return max(candidates, key=lambda p: p.stat().st_mtime) if candidates else None


def set_in(cfg: DictConfig, key: str, value: Any) -> None:
    """``OmegaConf.update`` that works on struct configs (used to fill derived values)."""
    with open_dict(cfg):
        OmegaConf.update(cfg, key, value, merge=False)


def finish_wandb(failed: bool) -> None:
    """Close the active W&B run. Lightning's WandbLogger never finishes the run it opened, so
    without this a crashed run stays 'running' and the next run in the process reuses it."""
    if "wandb" not in sys.modules:
        return
    import wandb

    if wandb.run is not None:
        wandb.finish(exit_code=1 if failed else 0)


def wandb_loggers(loggers: list[Logger]) -> list[WandbLogger]:
    return [lg for lg in loggers if isinstance(lg, WandbLogger)]


def task_wrapper(fn: Callable[[DictConfig], Any]) -> Callable[[DictConfig], Any]:
    """Log failures with the output dir, and always finish the W&B run (even on error)."""

    @functools.wraps(fn)
    def wrapped(cfg: DictConfig) -> Any:
        failed = True
        try:
            result = fn(cfg)
            failed = False
            return result
        except Exception:
            log.exception("Run failed")
            raise
        finally:
            finish_wandb(failed)
            log.info(f"Output dir: {cfg.paths.output_dir}")

    return wrapped


def metric_value(metrics: dict[str, Any], name: str | None) -> float | None:
    """The value of ``optimized_metric`` for sweeps (None, with a warning, if never logged)."""
    if not name:
        return None
    if name not in metrics:
        log.warning(f"optimized_metric={name!r} was not logged (no validation ran?); "
                    f"logged: {sorted(metrics)}")
        return None
    value = float(metrics[name])
    return value if math.isfinite(value) else math.inf


def platform_meta(ckpt: dict[str, Any], path: str | Path) -> dict[str, Any]:
    """The ``platform`` block that experiments.train stores in every checkpoint."""
    meta = ckpt.get("platform")
    if not meta or not meta.get("config"):
        raise ValueError(
            f"checkpoint {path} has no platform metadata (config/tokenizer); "
            "was it written by experiments.train?"
        )
    return meta


def load_module(ckpt: dict[str, Any], meta: dict[str, Any]) -> Any:
    """Rebuild the LightningModule from an already loaded checkpoint dict (no second read).

    Same as ``Cls.load_from_checkpoint``: construct from the saved hyper-parameters, load the
    weights strictly, then run the module's own ``on_load_checkpoint``.
    """
    module_cls = hydra.utils.get_class(meta["config"]["model"]["_target_"])
    module = module_cls(**ckpt["hyper_parameters"])
    module.load_state_dict(ckpt["state_dict"], strict=True)
    module.on_load_checkpoint(ckpt)
    return module.eval()


def compose_config(config_name: str, overrides: list[str], output_dir: str | Path) -> DictConfig:
    """Compose ``conf/<config_name>.yaml`` in-process as the CLI would, writing to ``output_dir``.

    For tests and benchmarks: fills the ``hydra.*`` runtime values that ``@hydra.main`` would,
    and registers the config so ``${hydra:...}`` interpolations resolve.
    """
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig

    from experiments import CONFIG_DIR

    with initialize_config_dir(version_base="1.3", config_dir=CONFIG_DIR):
        cfg = compose(config_name, overrides=overrides, return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(output_dir)
        cfg.hydra.runtime.cwd = str(REPO_ROOT)
        cfg.hydra.job.num = 0
    HydraConfig().set_config(cfg)
    return cfg
