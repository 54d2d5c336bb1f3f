"""The safetensors export directory: the one way the platform writes weights + config for others.

    <dir>/model.safetensors   the bare architecture's state dict (tied tensors stored once; the
                              aliases are in the file's ``__metadata__``)
    <dir>/config.json         architecture name and its config, the recipe, the data config and
                              the tokenizer spec (without its JSON), sha256 of the two files
    <dir>/tokenizer.json      the Hugging Face tokenizer JSON (``{"kind": "byte"}`` for the byte
                              tokenizer, which has no Hugging Face form)

Reading it back (:func:`read_export_dir`) uses safetensors and ``json`` only (no pickle) and
returns the same shape of dict ``lit_models.checkpoints.load_checkpoint`` returns, so every
loader (``load_net``, ``load_module``, evaluate, generate, the server) validates it exactly as a
checkpoint: the architecture must be registered, ``arch_config`` is bound by its dataclass, the
recipe and data config are looked up in the allow-lists, and nothing named in the file is imported.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from lhp.errors import UserError

FORMAT = "lhp-export"
FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
TOKENIZER_FILE = "tokenizer.json"
ALIASES_KEY = "aliases"  # safetensors metadata: {"lm_head.weight": "wte.weight"} (tied tensors)
RECIPE = "lit_models.language_model.LanguageModel"  # every export evaluates with the CE recipe


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_safetensors(tensors: Mapping[str, torch.Tensor], path: str | os.PathLike,
                      metadata: Mapping[str, str] | None = None) -> Path:
    """Write ``tensors`` to one safetensors file, atomically (temp file + rename).

    Tensors sharing memory (tied weights) are stored once; the others' names map to it in the
    ``aliases`` metadata, which :func:`read_safetensors` expands again. Used by the exporter and
    by the H2Q weight store's ``export_safetensors``.
    """
    from safetensors.torch import save_file

    from lit_models.compression.store import split_tied

    path = Path(path)
    unique, aliases = split_tied(tensors)
    unique = {name: t.detach().cpu().contiguous() for name, t in unique.items()}
    meta = dict(metadata or {})
    if aliases:
        meta[ALIASES_KEY] = json.dumps(aliases, sort_keys=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        save_file(unique, str(tmp), metadata=meta)
        os.chmod(tmp, 0o644)  # a model file for others: readable like the config next to it
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def read_safetensors(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors (aliases expanded to the same tensor) and metadata of a safetensors file."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118 - not a dict
    except (SafetensorError, OSError) as err:
        raise UserError(f"cannot read safetensors file {path}: {err}") from None
    try:
        aliases = json.loads(meta.get(ALIASES_KEY, "{}"))
        for name, target in aliases.items():
            tensors[name] = tensors[target]
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        raise UserError(f"{path}: unreadable {ALIASES_KEY!r} metadata ({err!r}); the file is "
                        "damaged") from None
    return tensors, meta


def is_export_dir(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a safetensors export directory (config.json + model.safetensors)."""
    path = Path(path)
    return path.is_dir() and (path / CONFIG_FILE).is_file() and (path / WEIGHTS_FILE).is_file()


def export_config(arch: str, arch_config: Mapping[str, Any], hparams: Mapping[str, Any],
                  meta: Mapping[str, Any], source: Mapping[str, Any]) -> dict[str, Any]:
    """config.json's content (without the file digests): primitives only."""
    tokenizer = meta.get("tokenizer")
    tok = {k: v for k, v in tokenizer.items() if k != "json"} if isinstance(tokenizer, dict) else None
    stored = meta["config"]
    return {
        "format": FORMAT, "format_version": FORMAT_VERSION,
        "architecture": arch, "arch_config": dict(arch_config),
        "recipe": RECIPE, "loss_weights": dict(hparams.get("loss_weights") or {}),
        "data": stored.get("data"), "run_name": stored.get("run_name"),
        "tokenizer": tok, "source": dict(source),
    }


def tokenizer_text(meta: Mapping[str, Any]) -> str:
    """tokenizer.json's content: the Hugging Face JSON, or the spec for the byte tokenizer."""
    tokenizer = meta.get("tokenizer")
    if not isinstance(tokenizer, dict):
        raise UserError("the checkpoint stores no tokenizer, so an export could not be used on text")
    if "json" in tokenizer:
        return tokenizer["json"]
    return json.dumps(tokenizer, sort_keys=True)


def write_export_dir(out: Path, net: torch.nn.Module, config: dict[str, Any],
                     meta: Mapping[str, Any]) -> dict[str, Any]:
    """Write model.safetensors, tokenizer.json and config.json (with their digests) into ``out``."""
    write_safetensors(net.state_dict(), out / WEIGHTS_FILE, {"format": FORMAT})
    (out / TOKENIZER_FILE).write_text(tokenizer_text(meta), encoding="utf-8")
    config = {**config, "files": {name: sha256(out / name) for name in (WEIGHTS_FILE, TOKENIZER_FILE)}}
    (out / CONFIG_FILE).write_text(json.dumps(config, indent=1, sort_keys=True) + "\n",
                                   encoding="utf-8")
    return config


def read_export_config(path: Path) -> dict[str, Any]:
    """config.json of an export directory, its format checked (files: see ``check_files``)."""
    try:
        config = json.loads((path / CONFIG_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise UserError(f"cannot read {path / CONFIG_FILE}: {err}") from None
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise UserError(f"{path / CONFIG_FILE} is not an {FORMAT} config (no \"format\": "
                        f"\"{FORMAT}\"); export a checkpoint with `lhp export`")
    if config.get("format_version") != FORMAT_VERSION:
        raise UserError(f"{path / CONFIG_FILE}: format_version {config.get('format_version')!r} "
                        f"is not {FORMAT_VERSION}, the one this platform reads")
    return config


def check_files(path: Path, config: Mapping[str, Any], names: tuple[str, ...]) -> None:
    """The sha256 of each of ``names`` in ``path`` matches config.json's ``files``."""
    files = config.get("files")
    for name in names:
        want = files.get(name) if isinstance(files, dict) else None
        if not (path / name).is_file():
            raise UserError(f"export {path} is incomplete: {name} is missing")
        if want != sha256(path / name):
            raise UserError(f"export {path}: {name} does not match the sha256 in {CONFIG_FILE}; "
                            "the file was modified or damaged: export the checkpoint again")


def read_export_dir(path: str | os.PathLike) -> dict[str, Any]:
    """A safetensors export directory as a checkpoint-shaped dict (``state_dict`` with the
    recipe's ``net.`` prefix, ``hyper_parameters``, ``platform``), read without pickle. The
    checkpoint validation of ``lit_models.checkpoints`` then applies unchanged."""
    path = Path(path)
    config = read_export_config(path)
    if config.get("export_format") != "safetensors":
        raise UserError(f"{path} is an {config.get('export_format')!r} export; evaluate, generate "
                        "and serve read safetensors exports (`lhp export ... format=safetensors`)")
    check_files(path, config, (WEIGHTS_FILE, TOKENIZER_FILE))
    tensors, _ = read_safetensors(path / WEIGHTS_FILE)
    tokenizer = config.get("tokenizer")
    if isinstance(tokenizer, dict):
        text = (path / TOKENIZER_FILE).read_text(encoding="utf-8")
        tokenizer = dict(tokenizer) if tokenizer.get("kind") == "byte" else {**tokenizer, "json": text}
    hparams = {"arch": config.get("architecture"), "arch_config": config.get("arch_config"),
               "loss_weights": config.get("loss_weights") or {}}
    return {
        "state_dict": {f"net.{k}": v for k, v in tensors.items()},
        "hyper_parameters": hparams,
        "platform": {"config": {"model": {"_target_": config.get("recipe")},
                                "data": config.get("data"), "run_name": config.get("run_name")},
                     "tokenizer": tokenizer, "export": {"format": config.get("export_format"),
                                                        "source": config.get("source")}},
    }
