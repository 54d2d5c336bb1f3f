"""Evaluate a checkpoint: ``python -m experiments.evaluate ckpt_path=<file> [data=<name> ...]``.

Prints and logs validation and test loss, perplexity and bits per character. The data config
and tokenizer stored in the checkpoint are used unless ``data=...`` is given; ``+data.<key>=...``
without ``data=`` changes single keys of the stored config (e.g.
``+data.alpaca.response_only_loss=true`` scores Alpaca responses only). The tokenizer always comes
from the checkpoint (a model is only meaningful with the tokenizer it was trained on).
"""

from __future__ import annotations

import logging
from typing import Any

import hydra
import lightning as L
from omegaconf import DictConfig, OmegaConf

from experiments import CONFIG_DIR
from experiments.utils import (
    apply_extras,
    instantiate_group,
    load_checkpoint,
    load_module,
    log_hyperparameters,
    platform_meta,
    task_wrapper,
)

log = logging.getLogger("experiments.evaluate")


def _print_table(metrics: dict[str, float], ckpt_path: str) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"Evaluation of {ckpt_path}")
    for column in ("metric", "validation", "test"):
        table.add_column(column, justify="right" if column != "metric" else "left")
    names = sorted({k.split("/", 1)[1] for k in metrics if k.startswith(("val/", "test/"))})
    for name in names:
        row = [metrics.get(f"{stage}/{name}") for stage in ("val", "test")]
        table.add_row(name, *("-" if v is None else f"{v:.4f}" for v in row))
    Console().print(table)


def resolve_data_config(given: DictConfig | None, stored: dict[str, Any]) -> DictConfig:
    """The data config to evaluate on: ``data=<name>`` (has a ``_target_``) replaces the stored
    one; a partial ``+data.<key>=...`` is merged onto it; nothing given means the stored one."""
    if given is not None and "_target_" in given:
        return given
    base = OmegaConf.create(stored)
    return OmegaConf.merge(base, given) if given is not None else base


@task_wrapper
def evaluate(cfg: DictConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    L.seed_everything(cfg.seed, workers=True)
    ckpt = load_checkpoint(cfg.ckpt_path)
    meta = platform_meta(ckpt, cfg.ckpt_path)
    data_cfg = resolve_data_config(cfg.get("data"), meta["config"]["data"])
    wanted = data_cfg.get("tokenizer") or {}
    if wanted.get("kind") != meta["tokenizer"].get("kind"):
        log.warning(f"data.tokenizer asks for {wanted.get('kind')!r}; using the checkpoint's "
                    f"{meta['tokenizer'].get('kind')!r} tokenizer, the one the model was trained with")
    apply_extras(cfg)
    datamodule = hydra.utils.instantiate(data_cfg, tokenizer=meta["tokenizer"], _convert_="all")
    model = load_module(ckpt, meta)
    del ckpt
    loggers = instantiate_group(cfg.get("logger"), "logger")
    trainer: L.Trainer = hydra.utils.instantiate(cfg.trainer, logger=loggers, callbacks=[])
    log_hyperparameters(cfg, model, loggers)

    metrics: dict[str, float] = {}
    for run in (trainer.validate, trainer.test):
        for result in run(model, datamodule=datamodule):
            metrics.update({k: float(v) for k, v in result.items()})
    _print_table(metrics, cfg.ckpt_path)
    return metrics, {"model": model, "datamodule": datamodule, "trainer": trainer}


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="eval")
def main(cfg: DictConfig) -> None:
    evaluate(cfg)


if __name__ == "__main__":
    main()
