"""The one exporter: a platform checkpoint -> a directory in one of :data:`FORMATS`.

Every format writes into a temporary directory next to the target and renames it at the end, so
a failure (bad input, an architecture that cannot export, a parity check that fails) leaves
nothing behind; ``overwrite`` replaces only a previous export.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lhp.errors import UserError
from lit_models.checkpoints import load_checkpoint, load_module, platform_meta, require_kind
from lit_models.exporting.safetensors_dir import (
    CONFIG_FILE,
    FORMAT,
    TOKENIZER_FILE,
    export_config,
    sha256,
    tokenizer_text,
    write_export_dir,
)

log = logging.getLogger(__name__)
FORMATS = ("safetensors", "onnx", "onnx-int8")
MODEL_FILE = "model.onnx"
PAST_FILE = "model_with_past.onnx"
# fp32 parity bar: max |Δlogit| relative to the largest |logit| (issue 22)
MAX_REL_LOGIT_DIFF = 1e-4


def check_target(out: Path, overwrite: bool) -> None:
    """Refuse a target that exists and is not empty, unless ``overwrite`` and it is an export."""
    if not out.exists():
        return
    if not out.is_dir():
        raise UserError(f"export target {out} exists and is not a directory; choose another out=")
    if not any(out.iterdir()):
        return
    if not overwrite:
        raise UserError(f"export target {out} exists and is not empty; pass overwrite=true to "
                        "replace a previous export, or choose another out=")
    try:
        previous = json.loads((out / CONFIG_FILE).read_text(encoding="utf-8")).get("format")
    except (OSError, ValueError, AttributeError):
        previous = None
    if previous != FORMAT:
        raise UserError(f"export target {out} is not a previous export (no {CONFIG_FILE} of "
                        f"format {FORMAT!r}); overwrite=true only replaces exports: choose another out=")


def _replace(tmp: Path, out: Path) -> None:
    """Move the finished export into place (the old one, if any, is removed after the move)."""
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, old)
    os.replace(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def export(ckpt_path: str | Path, out: str | Path, fmt: str = "safetensors",
           overwrite: bool = False, parity_tokens: int = 64) -> dict[str, Any]:
    """Export checkpoint ``ckpt_path`` to directory ``out`` in format ``fmt``; its config.json."""
    if fmt not in FORMATS:
        raise UserError(f"unknown export format {fmt!r}; one of: {', '.join(FORMATS)}")
    out = Path(out)
    check_target(out, overwrite)
    ckpt = load_checkpoint(ckpt_path)
    meta = platform_meta(ckpt, ckpt_path)
    require_kind(meta, ckpt_path, "tokens", f"export format={fmt}")
    module = load_module(ckpt, meta, ckpt_path)
    hp = dict(module.hparams)
    source = {"checkpoint": str(ckpt_path), "global_step": ckpt.get("global_step")}
    del ckpt
    config = export_config(hp["arch"], hp["arch_config"], hp, meta, source)
    config["export_format"] = fmt
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        if fmt == "safetensors":
            config = write_export_dir(tmp, module.net, config, meta)
        else:
            config = write_onnx_dir(tmp, module.net, config, meta, fmt == "onnx-int8", parity_tokens)
        _replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info(f"exported {ckpt_path} ({hp['arch']}) as {fmt} to {out}")
    return config


def onnx_models(net: nn.Module) -> dict[str, tuple[nn.Module, tuple, list[str], list[str], dict]]:
    """File name -> (module, example inputs, input names, output names, symbolic axes)."""
    from lit_models.archs.gpt import GPT
    from lit_models.exporting.onnx_models import GPTWithPast, LogitsOnly, exportable, past_shape

    graph = exportable(net)
    block = net.config.block_size
    ids = torch.randint(0, net.config.vocab_size, (2, min(block, 8)))
    models = {MODEL_FILE: (LogitsOnly(graph), (ids,), ["input_ids"], ["logits"],
                           {"input_ids": (0, 1)})}
    if type(net) is GPT:
        short = ids[:, : max(1, min(2, block - 3))]
        past = torch.randn(past_shape(net, 2, min(3, block - short.size(1))))
        models[PAST_FILE] = (GPTWithPast(graph), (short, past, past.clone()),
                             ["input_ids", "past_keys", "past_values"],
                             ["logits", "present_keys", "present_values"],
                             {"input_ids": (0, 1), "past_keys": (1, 3), "past_values": (1, 3)})
    return models


def write_onnx_dir(tmp: Path, net: nn.Module, config: dict[str, Any], meta: Mapping[str, Any],
                   int8: bool, parity_tokens: int) -> dict[str, Any]:
    """model.onnx (+ model_with_past.onnx for the GPT), tokenizer.json and config.json with the
    exporter used and the parity results of each file against PyTorch."""
    from lit_models.exporting.onnx_models import OrtNet, export_onnx, parity, quantize_int8

    arch = config["architecture"]
    exporters, checks = {}, {}
    for name, (module, args, inputs, outputs, axes) in onnx_models(net).items():
        path = tmp / name
        fp32 = tmp / f"fp32-{name}" if int8 else path
        exporters[name] = export_onnx(module, args, fp32, inputs, outputs, axes,
                                      f"architecture {arch!r} ({name})")
        result = parity(net, OrtNet(fp32, net.config), parity_tokens)
        if result["rel_logit_diff"] > MAX_REL_LOGIT_DIFF or not result["greedy_identical"]:
            raise UserError(f"{name} of architecture {arch!r} does not compute what PyTorch does: "
                            f"max |Δlogit| {result['max_abs_logit_diff']:.3g} (relative "
                            f"{result['rel_logit_diff']:.3g}, bar {MAX_REL_LOGIT_DIFF}), greedy "
                            f"tokens equal {result['greedy_tokens_equal']}/{parity_tokens}; "
                            "nothing was written")
        checks[name] = {"fp32": result}
        if int8:
            quantize_int8(fp32, path)
            fp32.unlink()
            checks[name]["int8"] = parity(net, OrtNet(path, net.config), parity_tokens)
    (tmp / TOKENIZER_FILE).write_text(tokenizer_text(meta), encoding="utf-8")
    files = [*exporters, TOKENIZER_FILE]
    config = {**config, "onnx": {"opset": 18, "exporter": exporters, "parity": checks,
                                 "quantization": "dynamic int8 (onnxruntime)" if int8 else None},
              "files": {name: sha256(tmp / name) for name in files}}
    (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=1, sort_keys=True) + "\n",
                                   encoding="utf-8")
    return config
