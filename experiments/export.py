"""Export a checkpoint: ``python -m experiments.export ckpt_path=<file> format=<format>``.

Formats (``lit_models.exporting``, docs/export.md): ``safetensors`` (weights + config.json +
tokenizer.json, loadable without pickle by evaluate, generate and serve), ``onnx`` (the forward
pass, and for the GPT a variant with explicit past keys/values, each checked against PyTorch
with ONNX Runtime) and ``onnx-int8`` (ONNX Runtime dynamic quantization of the ONNX export).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from experiments import CONFIG_DIR
from lhp.config_check import check_config
from lhp.errors import entry_point
from lit_models.exporting.exporter import export

log = logging.getLogger("experiments.export")


def default_out(ckpt_path: str | Path, fmt: str) -> Path:
    """``<checkpoint dir>/<checkpoint stem>-<format>`` (a directory export: next to it)."""
    path = Path(ckpt_path)
    return path.parent / f"{path.stem}-{fmt}"


def run_export(cfg: DictConfig) -> dict[str, Any]:
    """Export ``cfg.ckpt_path``; prints the files written and, for ONNX, the parity figures."""
    check_config(OmegaConf.to_container(cfg, resolve=True))
    out = Path(cfg.out) if cfg.get("out") else default_out(cfg.ckpt_path, cfg.format)
    config = export(cfg.ckpt_path, out, cfg.format, overwrite=bool(cfg.overwrite),
                    parity_tokens=int(cfg.parity_tokens))
    for name in sorted(config["files"]):
        print(f"{out / name}  {(out / name).stat().st_size / 1e6:.2f} MB")
    for name, checks in (config.get("onnx") or {}).get("parity", {}).items():
        for precision, r in checks.items():
            print(f"parity {name} {precision}: max |Δlogit| {r['max_abs_logit_diff']:.3g} "
                  f"(relative {r['rel_logit_diff']:.3g}), greedy tokens equal "
                  f"{r['greedy_tokens_equal']}/{r['greedy_tokens']}")
    print(f"exported {cfg.ckpt_path} as {cfg.format} to {out}")
    return config


@entry_point
@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="export")
def main(cfg: DictConfig) -> None:
    run_export(cfg)


if __name__ == "__main__":
    main()
