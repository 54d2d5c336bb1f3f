"""Glue shared by the entry points: instantiation, config printing, run info, checkpoint meta."""

from __future__ import annotations

import contextlib
import functools
import importlib
import importlib.metadata
import logging
import math
import re
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import hydra
import torch
from hydra.errors import InstantiationException
from lightning.pytorch.loggers import Logger, WandbLogger
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict

from experiments import REPO_ROOT
from lhp import identity
from lhp.errors import UserError, user_error_in

log = logging.getLogger("experiments")
PACKAGES = ("torch", "lightning", "torchmetrics", "hydra-core", "omegaconf", "wandb", "numpy")


# Third-party classes a config may name (besides classes defined in the platform's own
# packages): Lightning's public callbacks, loggers and Trainer, by public or defining path.
_THIRD_PARTY_MODULES = ("lightning.pytorch.callbacks", "lightning.pytorch.loggers")
_OWN_PACKAGES = ("lit_models", "datamodules", "callbacks", "experiments")


@functools.cache
def _third_party_classes() -> frozenset[str]:
    from lightning.pytorch import Trainer

    classes = [Trainer]
    for module in _THIRD_PARTY_MODULES:
        mod = importlib.import_module(module)
        classes += [getattr(mod, name) for name in mod.__all__]
    paths = {"lightning.pytorch.trainer.Trainer", "lightning.pytorch.Trainer", "lightning.Trainer"}
    for module in _THIRD_PARTY_MODULES:
        paths |= {f"{module}.{name}" for name in importlib.import_module(module).__all__}
    paths |= {f"{c.__module__}.{c.__qualname__}" for c in classes if isinstance(c, type)}
    return frozenset(p for p in paths if "Lambda" not in p)  # LambdaCallback runs callables


def check_target(target: Any, key: str) -> None:
    """Refuse a ``_target_`` that is not a platform class or an allowed Lightning class.

    Files are data, never code: whatever a YAML, study file or override names, only classes
    *defined* in the platform's packages (``obj.__module__`` must match, so a re-export such as
    ``lit_models.atlas.subprocess.Popen`` is refused) or Lightning's callbacks, loggers and
    Trainer are ever constructed.
    """
    where = f"config key {key}._target_"
    if not isinstance(target, str) or not re.fullmatch(r"[A-Za-z_][\w.]*", target):
        raise UserError(f"{where}: {target!r} is not a class path")
    if target in _third_party_classes():
        return
    if target.split(".")[0] not in _OWN_PACKAGES:
        raise UserError(f"{where}: {target!r} is not a platform class; only classes of "
                        f"{list(_OWN_PACKAGES)} and Lightning callbacks/loggers/Trainer are built")
    from hydra._internal.utils import _locate

    try:
        obj = _locate(target)
    except ImportError as err:
        raise UserError(f"{where}: cannot find {target!r} ({err})") from None
    if not isinstance(obj, type) or f"{obj.__module__}.{obj.__qualname__}" != target:
        raise UserError(f"{where}: {target!r} is not a class defined in the platform")


def check_targets(cfg: Any, key: str) -> None:
    """:func:`check_target` on every ``_target_`` of a (nested) config."""
    if isinstance(cfg, DictConfig | dict):
        for name, value in cfg.items():
            sub = f"{key}.{name}" if key else str(name)
            if name == "_target_":
                check_target(value, key)
            else:
                check_targets(value, sub)
    elif isinstance(cfg, ListConfig | list | tuple):
        for i, value in enumerate(cfg):
            check_targets(value, f"{key}[{i}]")


@contextlib.contextmanager
def torch_threads(n: int | None):
    """Run the block with ``n`` torch CPU threads (None: unchanged), restoring the count after."""
    before = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def available_cpus() -> int:
    """CPU cores this process may use (its affinity; under Slurm the job's cores on the node)."""
    import os

    return max(len(os.sched_getaffinity(0)), int(os.environ.get("SLURM_CPUS_ON_NODE") or 0))


def check_devices(trainer_cfg: Any) -> None:
    """``trainer.devices`` (an int) fits this machine: at most its GPUs, or on CPU one process
    per available core. Other forms ("auto", lists) are left to Lightning."""
    devices, accelerator = trainer_cfg.get("devices"), trainer_cfg.get("accelerator")
    if not isinstance(devices, int) or isinstance(devices, bool) or devices < 1:
        return
    gpus = torch.cuda.device_count()
    if accelerator in ("gpu", "cuda") or (accelerator == "auto" and gpus):
        if devices > gpus:
            raise UserError(f"trainer.devices={devices}, but this machine has {gpus} GPU(s): set "
                            f"trainer.devices<={gpus}, or trainer.accelerator=cpu for CPU processes")
    elif accelerator in ("cpu", "auto") and devices > available_cpus():
        raise UserError(f"trainer.devices={devices} CPU processes, but only {available_cpus()} CPU "
                        f"core(s) are available here: set trainer.devices<={available_cpus()} "
                        "(one core per process)")


def instantiate(cfg: DictConfig, key: str, **kwargs: Any) -> Any:
    """``hydra.utils.instantiate`` after :func:`check_targets` on the whole subtree."""
    check_targets(cfg, key)
    try:
        return hydra.utils.instantiate(cfg, **kwargs)
    except InstantiationException as err:  # a constructor's UserError comes through unwrapped
        cause = user_error_in(err)
        if cause is not None:
            raise cause from None
        raise


def instantiate_group(cfg: DictConfig | None, kind: str) -> list[Any]:
    """Instantiate every ``_target_`` entry of a config group (callbacks or loggers)."""
    objects: list[Any] = []
    for name, conf in (cfg or {}).items():
        if isinstance(conf, DictConfig) and "_target_" in conf:
            log.info(f"Instantiating {kind} <{conf._target_}> ({name})")
            objects.append(instantiate(conf, f"{kind}s.{name}", _convert_="all"))
    return objects


def apply_extras(cfg: DictConfig) -> None:
    """Optional start-up utilities controlled by ``extras``."""
    extras = cfg.get("extras") or {}
    if extras.get("ignore_warnings"):
        warnings.filterwarnings("ignore")
    if extras.get("print_config"):
        print_config_tree(cfg, save_to=cfg.paths.get("output_dir"), show=_first_job())


def _first_job() -> bool:
    """True outside a multirun and for its first job: a sweep prints its config tree once."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return True
    hc = HydraConfig.get()
    return hc.mode != RunMode.MULTIRUN or hc.job.num == 0


@rank_zero_only
def print_config_tree(cfg: DictConfig, save_to: str | None = None, show: bool = True) -> None:
    """Print the resolved config as a rich tree (if ``show``) and save it next to the run."""
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
    if show:
        rich.print(tree)
    if save_to:
        Path(save_to).mkdir(parents=True, exist_ok=True)
        with open(Path(save_to) / "config_tree.log", "w") as fh:
            rich.print(tree, file=fh)


def git_commit() -> str | None:
    """Commit of the project checkout (suffixed ``-dirty`` with uncommitted changes)."""
    return identity.git_commit(REPO_ROOT)


def package_versions() -> dict[str, str]:
    versions = {"python": sys.version.split()[0]}
    for name in PACKAGES:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            versions[name] = importlib.metadata.version(name)
    return versions


def log_hyperparameters(cfg: DictConfig, model: torch.nn.Module, loggers: list[Logger],
                        datamodule: Any = None) -> None:
    """Log the resolved config once, as one nested tree, plus the derived facts: parameter
    counts, tokens per optimizer step, tokenizer, run name, git commit, package versions.

    The LightningModules save their hyper-parameters with ``logger=False``, so this is the only
    copy a dashboard sees (no ``optimizer.lr`` beside ``model.optimizer.lr``).
    """
    hparams = OmegaConf.to_container(cfg, resolve=True)
    hparams.pop("hydra", None)
    hparams["model/params/total"] = sum(p.numel() for p in model.parameters())
    hparams["model/params/trainable"] = sum(p.numel() for p in model.parameters() if p.requires_grad)
    batch, block = getattr(datamodule, "batch_size", None), getattr(datamodule, "block_size", None)
    if batch and block:
        trainer_cfg = cfg.get("trainer") or {}
        devices = trainer_cfg.get("devices", 1)
        per_node = devices if isinstance(devices, int) and devices > 0 else 1
        hparams["data/tokens_per_step"] = (batch * block * int(trainer_cfg.get("accumulate_grad_batches", 1))
                                           * per_node * int(trainer_cfg.get("num_nodes", 1)))
        from lit_models.archs import ARCHITECTURES, make_config

        if hasattr(getattr(model, "hparams", None), "arch_config") and \
                model.hparams.arch in ARCHITECTURES:  # token architectures: analytic FLOPs
            hparams["model/flops_per_token"] = make_config(
                model.hparams.arch, model.hparams.arch_config).training_flops_per_token(
                block, batch * block)
    tokenizer = getattr(datamodule, "tokenizer", None)
    if tokenizer is not None:
        hparams["data/tokenizer"] = {"kind": tokenizer.to_dict().get("kind"),
                                     "vocab_size": tokenizer.vocab_size}
    wandb_cfg = (cfg.get("logger") or {}).get("wandb") or {}
    hparams["run/name"] = wandb_cfg.get("name") or cfg.get("run_name")
    hparams["git_commit"] = git_commit()
    hparams["packages"] = package_versions()
    for lg in loggers:
        lg.log_hyperparams(hparams)


def write_summary(loggers: list[Logger], metrics: dict[str, float], best_val: float | None) -> None:
    """Best and final ``val/loss`` (and every test figure) in the W&B run summary, so a
    workspace table sorts runs by what they reached, not by their last logged step."""
    summary = {k: v for k, v in metrics.items() if k.startswith("test/")}
    if "val/loss" in metrics:
        summary["val/loss_final"] = metrics["val/loss"]
    if best_val is not None and math.isfinite(best_val):
        summary["val/loss_best"] = best_val
    for lg in wandb_loggers(loggers):
        lg.experiment.summary.update(summary)


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
        except UserError as err:
            log.error(f"Run failed: {err}")  # the boundary prints it; no traceback for these
            raise
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
