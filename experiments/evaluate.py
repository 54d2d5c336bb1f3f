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
    instantiate,
    instantiate_group,
    log_hyperparameters,
    task_wrapper,
)
from lhp.config_check import check_config
from lhp.errors import entry_point
from lit_models.checkpoints import (
    DATAMODULES,
    build_stored_datamodule,
    check_recipe_fits_data,
    load_checkpoint,
    load_module,
    platform_meta,
    recipe_class,
    stored_class,
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
    check_config(OmegaConf.to_container(cfg, resolve=True))
    L.seed_everything(cfg.seed, workers=True)
    ckpt = load_checkpoint(cfg.ckpt_path)
    meta = platform_meta(ckpt, cfg.ckpt_path)
    data_cfg = resolve_data_config(cfg.get("data"), meta["config"].get("data") or {})
    data_cls = stored_class(data_cfg, DATAMODULES, "datamodule", cfg.ckpt_path)
    check_recipe_fits_data(recipe_class(meta, cfg.ckpt_path), data_cls,
                           f"evaluate {cfg.ckpt_path} on data={data_cfg.get('_target_')}")
    data_args = OmegaConf.to_container(data_cfg, resolve=True)
    stored_tok = meta.get("tokenizer")
    if isinstance(stored_tok, dict):  # token models: always the tokenizer the model was trained with
        wanted = data_args.get("tokenizer") or {}
        if wanted.get("kind") != stored_tok.get("kind"):
            log.warning(f"data.tokenizer asks for {wanted.get('kind')!r}; using the checkpoint's "
                        f"{stored_tok.get('kind')!r} tokenizer, the one the model was trained with")
        data_args["tokenizer"] = stored_tok
    apply_extras(cfg)
    datamodule = build_stored_datamodule(data_args, cfg.ckpt_path)
    model = load_module(ckpt, meta, cfg.ckpt_path)
    del ckpt
    loggers = instantiate_group(cfg.get("logger"), "logger")
    trainer: L.Trainer = instantiate(cfg.trainer, "trainer", logger=loggers, callbacks=[])
    log_hyperparameters(cfg, model, loggers, datamodule)

    metrics: dict[str, float] = {}
    for run in (trainer.validate, trainer.test):
        for result in run(model, datamodule=datamodule):
            metrics.update({k: float(v) for k, v in result.items()})
    _print_table(metrics, cfg.ckpt_path)
    return metrics, {"model": model, "datamodule": datamodule, "trainer": trainer}


@entry_point
@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="eval")
def main(cfg: DictConfig) -> None:
    evaluate(cfg)


if __name__ == "__main__":
    main()
